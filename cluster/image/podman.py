"""podman as the image test and benchmark run it: one place for its settings and its cleanup.

Every call gets CONTAINERS_CONF=cluster/image/containers.conf (unless the caller's
environment names another), so nothing is configured on the host beyond the packages that
cluster/image/setup-podman.sh installs. Images and containers are removed by the id or name
their maker recorded, never by a pattern: other people's images on the same host stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONF = HERE / "containers.conf"
SETUP = HERE / "setup-podman.sh"
# What to run to get podman here (the test's skip reason names it).
INSTALL_HINT = f"run {SETUP.relative_to(HERE.parent.parent)} as root (.ci/run does)"


class PodmanError(RuntimeError):
    """A podman command failed; the message holds its command line and the end of its output."""


def problem() -> str | None:
    """Why the image cannot be built and run on this machine, or None when it can."""
    missing = [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: {INSTALL_HINT}"
    proc = run("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if proc.returncode != 0:
        return f"`podman info` fails ({proc.stderr.strip()[-300:]}): {INSTALL_HINT}"
    return None


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONF))
    return env


def run(
    *args: str,
    check: bool = True,
    timeout: float | None = 600,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
) -> subprocess.CompletedProcess:
    """`podman ARGS...`, text output captured unless `stdout`/`stderr` say otherwise."""
    proc = subprocess.run(
        ["podman", *args],
        env=environment(),
        stdout=stdout,
        stderr=stderr,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        tail = ((proc.stderr or "") + (proc.stdout or ""))[-3000:]
        raise PodmanError(f"podman {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc


def popen(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["podman", *args], env=environment(), **kwargs)


def image_exists(ref: str) -> bool:
    return run("image", "exists", ref, check=False).returncode == 0


def image_ids() -> set[str]:
    """Every image id in the store, intermediate ones included (for cleaning up after a
    build that failed half-way: its finished steps stay behind as untagged images)."""
    out = run("images", "--all", "--quiet", "--no-trunc").stdout
    return {line.strip().removeprefix("sha256:") for line in out.splitlines() if line.strip()}


def inspect_image(ref: str) -> dict:
    (data,) = json.loads(run("image", "inspect", ref).stdout)
    return data


def remove_image(ref: str) -> None:
    """Remove one image (podman also removes the untagged parents it leaves dangling, i.e.
    the build's cached steps). Never forced: an image another one still uses stays."""
    run("rmi", ref, check=False)


def remove_new_untagged(before: set[str]) -> None:
    """After a failed build: remove the untagged images that were not there `before`."""
    new = image_ids() - before
    # Newest first: a child goes before the parent it keeps alive.
    for image in sorted(
        (inspect_image(i) for i in new),
        key=lambda d: d.get("Created", ""),
        reverse=True,
    ):
        if not image.get("RepoTags"):
            remove_image(image["Id"])


def build(tag: str, containerfile: Path, context: Path, *args: str, log=sys.stderr) -> None:
    """`podman build` of `containerfile` as `tag` (host network: pip and apt reach their
    registries as the host does), output to `log`. On failure the image and the cached steps
    this build left behind are removed."""
    before = image_ids()
    try:
        run("build", "--network", "host", "--file", str(containerfile), *args,
            "--tag", tag, str(context), stdout=log, stderr=subprocess.STDOUT,
            timeout=1800)  # fmt: skip
    except BaseException:
        remove_image(tag)
        remove_new_untagged(before)
        raise


def remove_container(name: str) -> None:
    run("rm", "--force", "--time", "5", name, check=False)


@contextlib.contextmanager
def container(name: str, *run_args: str, command: Sequence[str] = ()) -> Iterator[str]:
    """`podman run --detach --name NAME RUN_ARGS... [COMMAND]`, removed on exit whatever
    happened. Yields the name."""
    try:
        run("run", "--detach", "--name", name, *run_args, *command)
        yield name
    finally:
        remove_container(name)


def logs(name: str) -> str:
    proc = run("logs", name, check=False)
    return proc.stdout + proc.stderr
