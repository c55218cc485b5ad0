"""Build cluster/Dockerfile with podman, on the stand-in base by default, with a CPU torch.

    python -m cluster.image.build --tag localhost/zeroshot:dev           # stand-in base
    python -m cluster.image.build --tag T --base rayproject/ray:2.60.0-py311-gpu --torch 2.13.0

What it passes is what the README's podman/Docker commands pass, plus this host's pip
sources (cluster/image/hostpip.py) for the RUN steps: the Dockerfile is the one users build.
torch is the CPU build unless asked otherwise: `TORCH_VERSION=2.13.0+cpu` can only resolve to
the CPU wheel (here from the local wheel directory, elsewhere from TORCH_INDEX_URL), never to
the multi-GB CUDA build an unpinned variant pulls.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.image import hostpip, podman, standin

REPO = podman.HERE.parent.parent
DOCKERFILE = REPO / "cluster" / "Dockerfile"
IGNOREFILE = REPO / "cluster" / "Dockerfile.dockerignore"
CPU_TORCH = "2.13.0+cpu"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass
class Built:
    tag: str
    seconds: float


def build(
    tag: str,
    base: str,
    torch_version: str = CPU_TORCH,
    secret_file: Path | None = None,
    build_args: dict[str, str] | None = None,
    context: Path = REPO,
    log=sys.stderr,
) -> Built:
    """`podman build` of cluster/Dockerfile as `tag` on `base`, the build context `context`
    (the repository root; the benchmark passes a copy with a changed file).
    On failure the image and the cached steps this build left behind are removed."""
    args = ["--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"TORCH_VERSION={torch_version}"]
    sources = hostpip.host_pip_sources()
    if torch_version.endswith("+cpu") and "PIP_FIND_LINKS" not in sources.build_args:
        # No local wheel directory: the CPU wheels' own index.
        args += ["--build-arg", f"TORCH_INDEX_URL={TORCH_CPU_INDEX}"]
    for name, value in (build_args or {}).items():
        args += ["--build-arg", f"{name}={value}"]
    if secret_file is not None:
        args += ["--secret", f"id=hf_token,src={secret_file}"]
    start = time.monotonic()
    # Docker finds the ignore file by its name; podman 4.3 is told.
    podman.build(tag, DOCKERFILE, context, "--ignorefile", str(IGNOREFILE), *args,
                 *sources.podman_args(), log=log)  # fmt: skip
    return Built(tag, time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", required=True, help="the image's name, e.g. localhost/zs:dev")
    parser.add_argument("--base", default=None, help="base image (default: the stand-in)")
    parser.add_argument("--torch", default=CPU_TORCH, help=f"TORCH_VERSION (default {CPU_TORCH})")
    args = parser.parse_args(argv)
    why = podman.problem()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    base = args.base or standin.ensure().tag
    built = build(args.tag, base, args.torch)
    size = podman.inspect_image(built.tag)["Size"]
    print(f"{built.tag}  built in {built.seconds:.0f} s on {base}, {size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
