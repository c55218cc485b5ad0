"""The host's pip sources, handed to an image build: build arguments plus read-only mounts.

A CPU machine's pip may find torch's CPU wheel where the build's pip would not (a local wheel
directory; an unpinned index would pull the multi-GB CUDA build), and may reach the registry
only through a TLS proxy whose CA is in the host's bundle, not in the image's. The image
build takes both as pip's own settings, PIP_FIND_LINKS and PIP_CERT, as build arguments
(pip reads them from the environment of every RUN step, and an unset argument is not in it),
with the directories and the file bind-mounted for the build's RUN steps only (podman build
--volume): nothing of the host lands in a layer, and the Dockerfile stays the one users
build. A machine without such settings passes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from urllib.parse import urlparse

# Where the host's files appear inside a build step.
MOUNT_ROOT = "/run/host-pip"
# pip's configuration scopes, most specific first (pip's own order of precedence).
SCOPES = (":env:", "site", "user", "global")


@dataclass
class PipSources:
    build_args: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)  # podman --volume HOST:CONTAINER:ro

    def podman_args(self) -> list[str]:
        args = []
        for name, value in self.build_args.items():
            args += ["--build-arg", f"{name}={value}"]
        for volume in self.volumes:
            args += ["--volume", volume]
        return args


def pip_config(python: str = sys.executable) -> dict[str, str]:
    """`pip config list` of `python`'s pip, one value per key, the most specific scope's."""
    proc = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    )
    found: dict[str, tuple[int, str]] = {}
    for line in proc.stdout.splitlines():
        name, sep, value = line.partition("=")
        scope, _, key = name.rpartition(".")
        if not sep or scope not in SCOPES:
            continue
        rank = SCOPES.index(scope)
        if key not in found or rank < found[key][0]:
            found[key] = (rank, value.strip().strip("'\""))
    return {key: value for key, (_, value) in found.items()}


def _local_path(value: str) -> str | None:
    path = urlparse(value).path if value.startswith("file://") else value
    return path if path and os.path.exists(path) else None


def host_pip_sources(python: str = sys.executable) -> PipSources:
    """The find-links directories and CA file this host's pip uses, as the build gets them.
    (Index URLs are not handed on: the registry is reachable from the build as from the
    host; the CA file is what it takes.)"""
    config = pip_config(python)
    sources = PipSources()
    links = []
    for i, value in enumerate(config.get("find-links", "").split()):
        local = _local_path(value)
        if local and os.path.isdir(local):
            target = f"{MOUNT_ROOT}/find-links-{i}"
            sources.volumes.append(f"{local}:{target}:ro")
            links.append(target)
    if links:
        sources.build_args["PIP_FIND_LINKS"] = " ".join(links)
    cert = _local_path(config.get("cert", ""))
    if cert and os.path.isfile(cert):
        target = f"{MOUNT_ROOT}/cert.pem"
        sources.volumes.append(f"{os.path.realpath(cert)}:{target}:ro")
        sources.build_args["PIP_CERT"] = target
    return sources
