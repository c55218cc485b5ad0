"""The stand-in base image: FOR TESTS ONLY, NOT FOR PRODUCTION.

cluster/Dockerfile is built FROM rayproject/ray:2.60.0-py311-gpu. The machines that test the
image reach Debian's mirror and the Python package registry but no container registry, so
they cannot pull it; this module makes a base that provides what the Dockerfile relies on
from the official one (listed in cluster/Dockerfile, built by standin-base.Containerfile): a
Debian bookworm root file system from mmdebstrap, imported into podman, then Ray from the
registry. No CUDA, no conda: an image on it proves the Dockerfile, the app and its
packaging, not the official base (cluster/README.md says what the test cannot prove).

    python -m cluster.image.standin            # build it (or say it exists) and print its tag
    python -m cluster.image.standin --remove   # remove it

The tag names a hash of everything that goes into the base, so a changed recipe is a new
image and an unchanged one is reused (a test that finds it leaves it; one that built it
removes it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from cluster.image import hostpip, podman

CONTAINERFILE = podman.HERE / "standin-base.Containerfile"
RAY_VERSION = "2.60.0"
SUITE = "bookworm"  # Debian 12: Python 3.11, the official image's Python
# What the Dockerfile and the RayService probes use from the base (bash and coreutils are in
# minbase): Python 3.11 and its venv module, wget (the probes), CA certificates (pip, the hub).
PACKAGES = ("ca-certificates", "python3", "python3-venv", "wget")
MIRROR = os.environ.get("ZEROSHOT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
REPOSITORY = "localhost/zeroshot-standin-base"


def tag() -> str:
    """The base's tag: the Ray version and a hash of the recipe."""
    recipe = "\n".join([CONTAINERFILE.read_text(), SUITE, *PACKAGES, RAY_VERSION])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"{REPOSITORY}:{RAY_VERSION}-{digest}"


@dataclass
class Base:
    tag: str
    built: bool  # made by this call (its maker removes it); False: found in the store
    seconds: float  # how long making it took (0 when found)


def ensure(log=sys.stderr) -> Base:
    """The stand-in base, built unless the store has it already."""
    ref = tag()
    if podman.image_exists(ref):
        return Base(ref, built=False, seconds=0.0)
    start = time.monotonic()
    rootfs_ref = f"localhost/zeroshot-standin-rootfs:{ref.rsplit(':', 1)[1]}"
    try:
        with tempfile.TemporaryDirectory(prefix="zeroshot-standin-") as tmp:
            tar = os.path.join(tmp, "rootfs.tar")
            print(f"standin: mmdebstrap {SUITE} -> {tar}", file=log, flush=True)
            subprocess.run(
                [
                    "mmdebstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(PACKAGES),
                    # The docs and translations are of no use in a container.
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    "--quiet",
                    SUITE,
                    tar,
                    MIRROR,
                ],
                check=True,
                timeout=900,
            )
            podman.run("import", "--quiet", tar, rootfs_ref, timeout=600)
        print(f"standin: building {ref}", file=log, flush=True)
        podman.build(ref, CONTAINERFILE, podman.HERE, "--build-arg", f"ROOTFS={rootfs_ref}",
                     "--build-arg", f"RAY_VERSION={RAY_VERSION}",
                     *hostpip.host_pip_sources().podman_args(), log=log)  # fmt: skip
    finally:
        # The base keeps the root file system's layer; the imported image itself goes.
        podman.remove_image(rootfs_ref)
    return Base(ref, built=True, seconds=time.monotonic() - start)


def remove() -> None:
    podman.remove_image(tag())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--remove", action="store_true", help="remove the stand-in base")
    args = parser.parse_args(argv)
    why = podman.problem()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    if args.remove:
        remove()
        return 0
    base = ensure()
    state = f"built in {base.seconds:.0f} s" if base.built else "exists"
    print(f"{base.tag}  ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
