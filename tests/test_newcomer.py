"""What a newcomer meets in the first hour (issue 11): labels, an unreachable hub, the command
line's help and version, the benchmarks' extra, the cluster renderer run from anywhere."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.config import JobConfig
from pipelines.job import prepare
from zeroshot.errors import DuplicateLabelsError, EmptyLabelError, ErrorType


def zeroshot(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zeroshot", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


# --- labels: the offline job follows the API's rule ------------------------------------------


@pytest.fixture
def parquet_input(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": ["hi there"], "id": [1]}), tmp_path / "in" / "a.parquet")
    return tmp_path


@pytest.mark.parametrize(
    ("labels", "error"),
    [("a, b, a", DuplicateLabelsError), (["a", "b", "a"], DuplicateLabelsError),
     (["a", " "], EmptyLabelError)],
)  # fmt: skip
def test_offline_job_refuses_empty_and_duplicate_labels(parquet_input, tiny_model, labels, error):
    cfg = JobConfig(
        input=str(parquet_input / "in"),
        output=str(parquet_input / "out"),
        labels=labels,
        model=tiny_model,
    )
    with pytest.raises(error) as info:
        prepare(cfg)
    assert info.value.type is ErrorType.INVALID_LABELS


def test_score_command_refuses_duplicate_labels_before_ray(parquet_input, tiny_model):
    out = zeroshot(
        "score", str(parquet_input / "in"), str(parquet_input / "out"),
        "--labels", "sports,sports", "--model", tiny_model,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "invalid_labels" in out.stderr and "'sports' is given more than once" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (parquet_input / "out").exists()


# --- no hub: asked once, fails in seconds, says what to do ------------------------------------


class StubHub:
    """A hub that never answers, on loopback: it reads each request line, records it and
    closes the connection, so every attempt to reach it is visible."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.requests.append(conn.recv(4096).split(b"\r\n", 1)[0].decode())
                except OSError:
                    self.requests.append("")

    def model_requests(self) -> list[str]:
        """Requests other than the hub client's own agent-registry lookup (huggingface_hub
        2.x fetches it once per process, without retries, for its User-Agent header)."""
        return [r for r in self.requests if "/api/agent-harnesses" not in r]

    def close(self):
        self.sock.close()


@pytest.fixture
def dead_hub(tmp_path):
    hub = StubHub()
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"))
    yield hub, env
    hub.close()


@pytest.mark.parametrize(
    "command", [["classify", "a text", "--labels", "a,b"], ["serve", "--port", "8999"]]
)
def test_unreachable_hub_is_asked_once_and_the_error_says_what_to_do(dead_hub, command):
    hub, env = dead_hub
    out = zeroshot(*command, env=env)
    assert out.returncode == 2, out.stderr
    assert hub.model_requests() == ["HEAD / HTTP/1.1"]  # one probe; no retries, no file asked
    model = "valhalla/distilbart-mnli-12-1"
    assert f"hf download {model} --local-dir DIR" in out.stderr
    assert "HF_HUB_OFFLINE=1" in out.stderr and hub.url in out.stderr
    assert "Traceback" not in out.stderr and "Retrying" not in out.stderr


def test_unreachable_hub_uses_the_cached_model(dead_hub, tiny_model, tmp_path):
    hub, env = dead_hub
    # The hub cache's layout: refs/main names the snapshot holding the files.
    repo = tmp_path / "hf" / "hub" / "models--test-org--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = zeroshot("classify", "a text", "--labels", "a,b", "--model", "test-org/tiny", env=env)
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)["labels"]) == ["a", "b"]
    assert hub.model_requests() == ["HEAD / HTTP/1.1"]  # every file came from the cache


# --- the command line: defaults, --version, sizes ---------------------------------------------


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    from zeroshot.cli import _PLUGINS, build_parser

    parsers = {}
    for name in ("classify", "make-test-model", *_PLUGINS):
        (sub,) = build_parser(name)._subparsers._group_actions
        parsers[name] = sub.choices[name]
    return parsers


def test_help_shows_every_default():
    parsers = subcommand_parsers()
    assert set(parsers) >= {"classify", "make-test-model", "serve", "score", "render"}
    missing = []
    for name, parser in parsers.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if action.default is None or isinstance(action.default, bool):
                continue  # nothing to show: no default, or an on/off switch (its absence)
            if action.default == argparse.SUPPRESS and action.dest.startswith("cfg:"):
                continue  # config flags: zeroshot.flags writes the field's default itself
            if action.dest in ("help", "version"):
                continue
            if not action.help or "(default: " not in formatter._expand_help(action):
                missing.append(f"zeroshot {name} {action.option_strings[0]}")
    assert not missing, missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
def test_serve_refuses_more_replicas_than_the_machine_holds(tiny_model):
    # Serve would start it with one ingress replica waiting for a CPU forever.
    out = zeroshot(
        "serve", "--model", tiny_model, "--backend", "null", "--num-cpus", "2",
        "--ingress-min-replicas", "2", "--ingress-replicas", "2", "--port", str(_free_port()),
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-2000:]
    assert "3 CPUs (ZeroShotIngress 2 x 1, ZeroShotClassifier 1 x 1); Ray has 2" in out.stderr
    assert "--ingress-min-replicas" in out.stderr and "Traceback" not in out.stderr


def test_version_names_the_installed_distribution():
    from importlib.metadata import version

    out = zeroshot("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"zeroshot-serving {version('zeroshot-serving')} (ray ")


def test_make_test_model_help_explains_the_sizes():
    out = zeroshot("make-test-model", "--help")
    text = " ".join(out.stdout.split())
    assert "tiny: 2 encoder layers" in text and "full: valhalla/distilbart-mnli-12-1" in text


# --- the cluster renderer: from anywhere, the RayJob's job as flags ---------------------------

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The project built as a wheel and installed into a directory of its own (no editable
    install, no checkout on the path): what `pip install` gives a user."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("zeroshot", "serve", "pipelines", "cluster"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp / "dist")]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("*.whl")
    target = tmp / "site"
    install = [*pip, "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return target


def test_render_runs_from_anywhere_with_the_installed_package(installed_wheel, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed_wheel)}
    out = zeroshot("render", "--labels", "spam, ham", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    # no checkout beside the installed module: the manifests land in ./kuberay
    written = sorted(p.name for p in (tmp_path / "kuberay").iterdir())
    assert written == ["raycluster.yaml", "rayjob.yaml", "rayservice.yaml"]
    service = yaml.safe_load((tmp_path / "kuberay" / "rayservice.yaml").read_text())
    # serveConfigV2 is the installed package's serve/config.yaml, verbatim
    packaged = (installed_wheel / "serve" / "config.yaml").read_text()
    assert service["spec"]["serveConfigV2"] == packaged


def test_the_installed_package_holds_the_playground_and_the_swagger_dependency(installed_wheel):
    from importlib.metadata import Distribution

    assert (installed_wheel / "serve" / "static" / "playground.html").is_file()
    (info,) = installed_wheel.glob("zeroshot_serving-*.dist-info")
    requires = Distribution.at(info).requires or []
    assert any(r.startswith("swagger-ui-bundle-v2") for r in requires)


def test_render_takes_the_rayjobs_job_as_flags(tmp_path):
    from cluster import render

    args = [
        "--input", "gs://bucket/tickets/", "--output", "gs://bucket/scored/",
        "--labels", "spam, ham", "--text-column", "body", "--id-column", "ticket_id",
        "--template", "This ticket is about {}.", "--multi-label", "--out", str(tmp_path),
    ]  # fmt: skip
    assert render.main(args) == 0
    job_manifest = yaml.safe_load((tmp_path / "rayjob.yaml").read_text())
    job = render.parse_score_entrypoint(job_manifest["spec"]["entrypoint"])
    assert (job.input, job.output) == ("gs://bucket/tickets/", "gs://bucket/scored/")
    assert job.labels == ["spam", "ham"] and job.multi_label
    assert (job.text_column, job.id_column) == ("body", "ticket_id")
    assert job.hypothesis_template == "This ticket is about {}."
    assert render.main([*args, "--check"]) == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--labels", "a, a"], "given more than once"),
     (["--input", "/local/dir"], "object-store paths")],
)  # fmt: skip
def test_render_refuses_a_job_that_would_fail_on_the_cluster(tmp_path, flags, message):
    out = zeroshot("render", *flags, "--out", str(tmp_path))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())


# --- benchmarks name their extra ----------------------------------------------------------------


@pytest.mark.parametrize(
    "module", ["benchmarks.serve_load", "benchmarks.engine", "benchmarks.offline"]
)
def test_a_benchmark_without_its_extra_says_which_to_install(module):
    # -S: no site-packages, so httpx, matplotlib & co. are really missing (stdlib only)
    out = subprocess.run(
        [sys.executable, "-S", "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 1
    assert "pip install -e '.[bench]'" in out.stderr and "httpx" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_guard_lists_the_bench_extra_of_pyproject():
    import tomllib

    from benchmarks.common import BENCH_EXTRA

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert sorted(BENCH_EXTRA) == sorted(extra["bench"])


# --- the Grafana dashboard ------------------------------------------------------------------------


def test_dashboard_queries_only_series_that_serve_metrics_defines():
    from dashboard import SERIES, dashboard_series, load, queries

    from serve.metrics import COUNTERS, HISTOGRAMS

    # How Ray 2.60 exports a Serve metric named X (as scraped by tests/test_ui.py).
    exported = {f"ray_{name}_total" for name in COUNTERS} | {
        f"ray_{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
    }
    used = dashboard_series()
    assert used <= exported, sorted(used - exported)
    # ... and every series of serve/metrics.py has a panel
    for name in (*HISTOGRAMS, *COUNTERS):
        assert any(series.startswith(f"ray_{name}") for series in used), name
    for title, expr in queries():
        assert SERIES.search(expr), title
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), title
    assert load()["panels"]


def test_dashboard_is_an_importable_grafana_dashboard():
    from dashboard import load

    board = load()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids, cells = set(), set()
    for panel in board["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        for x in range(pos["x"], pos["x"] + pos["w"]):  # no two panels overlap
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs)
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables or var.startswith("__"), var
    # next to Ray's own Serve dashboards
    assert {link["url"] for link in board["links"]} == {
        "/d/rayServeDashboard",
        "/d/rayServeDeploymentDashboard",
    }


# --- the README says it, CI installs it ---------------------------------------------------------


def test_readme_states_the_install_the_playground_and_the_dashboard():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    (torch,) = re.findall(r"pip install -q (torch==[\d.]+)", ci)
    # the CPU-only install: one exact command with its index, and what each way costs on disk
    assert f"pip install {torch} --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "6.3 GB" in readme and "1.8 GB" in readme
    assert "pip install -e '.[bench]'" in readme
    for path in ("docs/playground.png", "cluster/grafana/zeroshot-dashboard.json"):
        assert f"({path})" in readme, path  # linked, and there
        assert (REPO / path).is_file(), path
    assert (REPO / "docs" / "playground.png").read_bytes().startswith(b"\x89PNG")
    assert "hf download valhalla/distilbart-mnli-12-1 --local-dir DIR" in readme
    assert "HF_HUB_OFFLINE=1" in readme


def test_ci_installs_what_the_browser_tests_need():
    import tomllib

    ci = (REPO / ".ci" / "run").read_text()
    assert "apt-get install -y -qq chromium chromium-driver" in ci
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("selenium") for req in extra["test"])


def test_ci_runs_the_readmes_test_lines_in_a_fresh_virtualenv():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    block = readme.split("# run the tests", 1)[1].split("```", 1)[0].splitlines()[1:]
    lines = [line for line in block if line.strip()]
    assert lines == ["pip install -e '.[test]' && python3 -m pytest", "python3 -m pytest -m slow"]
    # the same lines, last in .ci/run, after a venv of its own is made and activated
    assert ci.rstrip().splitlines()[-len(lines) :] == lines
    assert 'python3 -m venv "$venv"' in ci and '. "$venv/bin/activate"' in ci
    assert ci.index("activate") < ci.index(lines[0])


# --- the words of the help and the errors agree with what the code does ----------------------


def test_top_level_help_is_a_sentence():
    out = zeroshot("--help")
    description = " ".join(out.stdout.split("positional arguments:")[0].split("\n", 2)[-1].split())
    assert description.startswith("Zero-shot text classification") and description.endswith(".")


def test_switches_show_no_default_and_an_inverted_one_describes_itself():
    serve_help = " ".join(zeroshot("serve", "--help").stdout.split())
    fast = serve_help.split("--no-fast-ingress ", 1)[1].split(" --", 1)[0]
    assert "(default:" not in fast and "Python proxy" in fast
    score_help = " ".join(zeroshot("score", "--help").stdout.split())
    progress = score_help.split("--no-progress ", 1)[1].split(" --progress-every", 1)[0]
    assert progress.startswith("No progress line"), progress


def test_a_load_error_in_python_does_not_speak_only_of_flags():
    from zeroshot import ZeroShotClassifier
    from zeroshot.errors import ModelLoadError

    # HF_HUB_OFFLINE=1 (conftest): a hub id not in the cache fails at once, with the fix
    with pytest.raises(ModelLoadError) as info:
        ZeroShotClassifier.from_pretrained("example-org/not-in-any-cache")
    assert "--model DIR on the command line" in info.value.message
    assert "the directory as the model in Python" in info.value.message
