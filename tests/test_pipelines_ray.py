"""The offline job on a real local Ray (started once for the module) over real Parquet files:
every row accounted for, answers equal to the transformers pipeline, partitions kept, and an
interrupted run finished by a re-run without duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from reference import assert_same_result

from pipelines import JobConfig, run_job
from pipelines.files import inspect_output
from zeroshot import raylog

pytestmark = pytest.mark.ray

LABELS = ["sports", "politics", "business"]
TEXTS = [
    "The team won the match in the last minute",
    "Parliament passed the new budget law",
    "Stocks fell as investors worried about inflation",
    "Élections à Zürich 🙂 — the vote is close",
    "short",
    "A much longer text about the football season, the coach, the league and the players " * 12,
]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, **raylog.quiet())
    yield
    ray.shutdown()


def read_output(path) -> list[dict]:
    return pads.dataset(str(path), format="parquet").to_table().to_pylist()


def job(tmp, **kw) -> JobConfig:
    args = dict(labels=LABELS, batch_size=8, rows_per_file=None, show_progress=False)
    args["dtype"] = "float32"
    args.update(kw)
    return JobConfig(**args)


def check_scores(rows, reference, text_of, **pipeline_kw):
    checked = 0
    for row in rows:
        text = text_of(row)
        if row["error"] is not None:
            continue
        expected = reference(text, candidate_labels=LABELS, **pipeline_kw)
        assert_same_result({"sequence": text, **row}, expected)
        assert row["top_label"] == row["labels"][0] and row["top_score"] == row["scores"][0]
        checked += 1
    return checked


def test_mixed_writers_and_string_types(tmp_path, tiny_model, reference_pipeline):
    """pyarrow and pandas files; string, large_string and dictionary text; nulls, empty
    strings and a 0-row file, read through a glob. Every input column is kept."""
    src = tmp_path / "in"
    src.mkdir()
    texts = TEXTS + [None, ""]
    n = len(texts)
    pq.write_table(pa.table({"text": texts, "n": range(n)}), src / "plain.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "n": pa.array([], pa.int64())}),
                   src / "zero.parquet")  # fmt: skip
    pq.write_table(
        pa.table({"text": pa.array(texts).dictionary_encode(), "n": range(n, 2 * n)}),
        src / "dict.parquet",
    )
    pq.write_table(
        pa.table({"text": pa.array(texts, pa.large_string()), "n": range(2 * n, 3 * n)}),
        src / "large.parquet",
    )
    frame = pd.DataFrame({"text": texts, "n": range(3 * n, 4 * n)})
    frame.index = pd.Index(range(100, 100 + n), name="row")
    frame.to_parquet(src / "pandas.parquet", index=True)
    (src / "notes.txt").write_text("not data")

    summary = run_job(
        job(
            tmp_path, input=str(src / "*.parquet"), output=str(tmp_path / "out"), model=tiny_model
        )  # fmt: skip
    )
    assert summary.ok and summary.rows_in == summary.rows_out == 4 * n
    assert summary.rows_written == 4 * n and summary.errors == 4 * 2

    rows = read_output(tmp_path / "out")
    assert len(rows) == 4 * n
    assert sorted(r["n"] for r in rows) == list(range(4 * n))
    assert len({r["row_hash"] for r in rows}) == 4 * n  # the generated id: unique
    assert {r["row"] for r in rows if r["n"] >= 3 * n} == set(range(100, 100 + n))
    assert {r["row"] for r in rows if r["n"] < 3 * n} == {None}  # pandas' index column kept
    by_n = {r["n"]: r for r in rows}
    for block in range(4):
        assert by_n[block * n + n - 2]["error"] == "no_text: text is null."
        assert by_n[block * n + n - 1]["error"].startswith("no_text: text is empty")
    assert check_scores(rows, reference_pipeline, lambda r: r["text"]) == 4 * len(TEXTS)


def test_hive_tree_of_small_files_with_id_and_kept_columns(
    tmp_path, tiny_model, reference_pipeline
):
    """Many small files under lang=/part= directories; a user id column; --keep-columns; a
    custom template and multi-label."""
    src = tmp_path / "tree"
    text_of, lang_of = {}, {}
    i = 0
    for lang in ("en", "fr"):
        for part in range(10):
            ids, texts = [], []
            for k in range(4):
                uid = f"u-{i}"
                text = TEXTS[(i + k) % len(TEXTS)] if i % 7 else None
                text_of[uid], lang_of[uid] = text, lang
                ids.append(uid)
                texts.append(text)
                i += 1
            d = src / f"lang={lang}" / f"part={part}"
            d.mkdir(parents=True)
            pq.write_table(pa.table({"uid": ids, "body": texts, "x": [1.5] * 4}), d / "f.parquet")

    template = "This text is about {}."
    summary = run_job(
        job(
            tmp_path,
            input=str(src),
            output=str(tmp_path / "out"),
            model=tiny_model,
            text_column="body",
            id_column="uid",
            keep_columns="uid,lang",
            hypothesis_template=template,
            multi_label=True,
        )  # fmt: skip
    )
    assert summary.ok and summary.rows_out == len(text_of)

    rows = read_output(tmp_path / "out")
    assert set(rows[0]) == {"uid", "lang", "labels", "scores", "top_label", "top_score", "error"}
    assert Counter(r["uid"] for r in rows) == Counter({u: 1 for u in text_of})
    assert all(r["lang"] == lang_of[r["uid"]] for r in rows)  # partition column survives
    checked = check_scores(
        rows, reference_pipeline, lambda r: text_of[r["uid"]],
        multi_label=True, hypothesis_template=template,
    )  # fmt: skip
    assert checked == sum(t is not None for t in text_of.values())


def test_interrupted_run_is_finished_by_a_rerun(tmp_path, tiny_model, reference_pipeline):
    """Kill a real `zeroshot score` run mid-way (its own local Ray), leave a file cut off
    mid-write, re-run: every row exactly once. Then --overwrite starts afresh. The null
    backend, as slow as a 100-pairs/s device, makes the run long enough to interrupt."""
    src = tmp_path / "in.parquet"
    n = 160
    texts = [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(n)]
    pq.write_table(pa.table({"text": texts, "i": range(n)}), src)
    out = tmp_path / "out"

    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zeroshot",
            "score",
            str(src),
            str(out),
            "--labels",
            ",".join(LABELS),
            "--model",
            tiny_model,
            "--backend",
            "null",
            "--null-pairs-per-s",
            "100",
            "--batch-size",
            "8",
            "--rows-per-file",
            "8",
            "--no-progress",
        ],  # fmt: skip
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            done = list(out.glob("*.parquet")) if out.exists() else []
            if len(done) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    partial = inspect_output(str(out)).num_rows  # a file cut off by the kill is not counted
    assert 0 < partial < n

    # An interrupted write leaves a file without a footer.
    whole = next(out.glob("*.parquet")).read_bytes()
    (out / "cut-off.parquet").write_bytes(whole[: len(whole) // 2])

    cfg = job(
        tmp_path,
        input=str(src),
        output=str(out),
        model=tiny_model,
        backend="null",
        batch_size=32,
        rows_per_file=8,
    )
    summary = run_job(cfg)
    assert summary.ok and summary.rows_out == n
    assert summary.rows_before == partial
    assert summary.rows_written == n - summary.rows_before
    assert not (out / "cut-off.parquet").exists()
    rows = read_output(out)
    assert sorted(r["i"] for r in rows) == list(range(n))
    assert len({r["row_hash"] for r in rows}) == n
    # the null backend's fixed logits: every label equally likely, in every row
    assert all(r["scores"] == [pytest.approx(1 / 3)] * 3 for r in rows)

    again = run_job(cfg.model_copy(update={"overwrite": True, "backend": "torch"}))
    assert again.ok and again.rows_before == 0 and again.rows_written == n
    rows = read_output(out)
    assert len(rows) == n
    assert check_scores(rows[:20], reference_pipeline, lambda r: r["text"]) == 20


def test_asking_for_gpus_a_local_ray_lacks_is_a_clear_error(tmp_path, tiny_model):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": TEXTS}), src)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines",
            str(src),
            str(tmp_path / "out"),
            "--labels",
            "a,b",
            "--model",
            tiny_model,
            "--gpus-per-actor",
            "1",
            "--no-progress",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "1 GPU(s) needed, and the Ray this job started has 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_rerun_with_other_labels_refuses_and_same_labels_resume(tmp_path, tiny_model):
    """The new user's mistake: scoring into an output scored with other labels. Refused with
    exit 2 before Ray, output untouched; the same labels find everything done."""
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": TEXTS, "i": range(len(TEXTS))}), src)
    out = tmp_path / "out"
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)

    def score(labels: str, **more_env: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "zeroshot", "score", str(src), str(out), "--labels", labels,
               "--model", tiny_model, "--backend", "null", "--no-progress"]  # fmt: skip
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=180, env={**env, **more_env}
        )

    first = score("sports,politics,tech")
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = score("finance,weather")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "other parameters: labels ['sports', 'politics', 'tech'] there, " in other.stderr
    assert "['finance', 'weather'] now" in other.stderr and "--overwrite" in other.stderr
    assert "[OK]" not in other.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # Everything is there: answered from the output's record, without Ray (the address is
    # one nothing listens on, so a run that tried to connect would fail).
    same = score("sports,politics,tech", RAY_ADDRESS="127.0.0.1:9")
    assert same.returncode == 0, same.stderr[-2000:]
    assert f"0 rows ({len(TEXTS)} already there)" in same.stdout
    assert "nothing left to score: Ray not started" in same.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _score_log(tmp_path, tiny_model, *extra: str) -> str:
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": TEXTS}), src)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "zeroshot", "score", str(src), str(tmp_path / "out"),
           "--labels", ",".join(LABELS), "--model", tiny_model, "--no-progress",
           *extra]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout + run.stderr


def test_a_run_prints_our_lines_only(tmp_path, tiny_model):
    """A normal `zeroshot score` prints its progress and summary, none of Ray's INFO records
    (the driver's, the actors' forwarded ones, the stop's)."""
    quiet = _score_log(tmp_path, tiny_model)
    assert "[OK]" in quiet
    assert " INFO " not in quiet and "\tINFO " not in quiet, quiet[-3000:]
    assert "Started a local Ray instance" not in quiet


@pytest.mark.slow
def test_verbose_brings_rays_lines_back(tmp_path, tiny_model):
    verbose = _score_log(tmp_path, tiny_model, "--verbose")
    assert "[OK]" in verbose and "Started a local Ray instance" in verbose
