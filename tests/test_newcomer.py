"""What a newcomer meets in the first hour (issue 11): labels, an unreachable hub, the command
line's help and version, the benchmarks' extra, the cluster renderer run from anywhere."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
