"""Faults of the offline job with real processes and real signals: the driver, a scoring actor
and an encode worker SIGKILLed mid-run, Ctrl-C, a full disk, a read-only output, a damaged
input page, a job whose rows all fail. Each ends in one clear line and a distinct exit code,
and after the re-run every input row is in the output exactly once.

The job runs as `python -m zeroshot score` (its own local Ray) on the null backend slowed to a
device's pace (--null-pairs-per-s), with small blocks and files so a kill lands mid-run.
Tests marked `slow` repeat the kills at several points; everything else is the short form CI
runs.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from procs import children_named

from pipelines.errors import AllRowsFailedError, InputDataError, OutputError
from pipelines.files import inspect_output

# The long suite (`python3 -m pytest -m slow`).
pytestmark = [pytest.mark.ray, pytest.mark.slow]

LABELS = "sports,politics,business"
WORDS = "the match vote market team budget league price election growth".split()


def make_input(directory: Path, n: int, files: int = 4, words: int = 12, noise: int = 0) -> Path:
    """`n` rows (`i` = 0..n-1) in `files` files; `noise` random hex characters per text make
    the output incompressible (to fill a disk)."""
    directory.mkdir(parents=True, exist_ok=True)
    per = -(-n // files)
    for k in range(files):
        ids = list(range(k * per, min(n, (k + 1) * per)))
        texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(words)) + f" #{i} "
                 + random.Random(i).randbytes(noise // 2).hex() for i in ids]  # fmt: skip
        pq.write_table(pa.table({"i": ids, "text": texts}), directory / f"part-{k}.parquet")
    return directory


def score_cmd(src: Path, out: Path, model: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "zeroshot", "score", str(src), str(out), "--labels", LABELS,
            "--model", model, "--backend", "null", "--id-column", "i", "--batch-size", "16",
            "--rows-per-file", "16", "--no-progress", *extra]  # fmt: skip


def start(cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = start(cmd)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the run's process group (the Ray it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def files_written(out: Path) -> int:
    return len(list(out.glob("part-*.parquet"))) if out.exists() else 0


def wait_for(proc: subprocess.Popen, what, timeout: float = 180):
    """Poll `what()` until it returns something truthy while the run goes on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        assert proc.poll() is None, f"the run ended first:\n{proc.stderr.read()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def ray_process(proc: subprocess.Popen, needle: str):
    """A live process of the run's Ray whose command line names `needle`."""
    found = children_named(proc.pid, needle)
    return found[0] if found else None


def assert_exactly_once(out: Path, n: int) -> None:
    state = inspect_output(str(out))
    assert state.broken == [] and not list(out.glob("_tmp-*"))
    ids = pads.dataset(str(out), format="parquet").to_table(columns=["i"]).column(0).to_pylist()
    counts = Counter(ids)
    assert sorted(counts) == list(range(n)), "rows lost"
    assert set(counts.values()) == {1}, "rows written twice"


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error (")]
    assert len(errors) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_driver_killed_then_rerun_finishes_exactly_once(tmp_path, tiny_model):
    n = 480
    src, out = make_input(tmp_path / "in", n), tmp_path / "out"
    cmd = score_cmd(src, out, tiny_model, "--null-pairs-per-s", "150")
    proc = start(cmd)
    try:
        wait_for(proc, lambda: files_written(out) >= 3)
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone
        proc.wait(timeout=30)
    finally:
        kill_group(proc)  # the Ray it had started
    partial = inspect_output(str(out)).num_rows
    assert 0 < partial < n
    again = run(score_cmd(src, out, tiny_model))
    assert again.returncode == 0, again.stderr[-3000:]
    # A write that was renaming into place as the driver died may land after the count above.
    written, before = re.search(r"this run +([\d,]+) rows \(([\d,]+) already there\)",
                                again.stdout).groups()  # fmt: skip
    before, written = int(before.replace(",", "")), int(written.replace(",", ""))
    assert before >= partial and before + written == n
    assert_exactly_once(out, n)


@pytest.mark.parametrize(
    "needle, rows, words, pace",
    [
        # The scoring actor: a slow emulated device, so the actor is busy when it dies.
        ("MapBatches(Score)", 480, 12, ["--null-pairs-per-s", "150"]),
        # An encode worker: long texts and an instant device, so encoding is the busy stage.
        ("MapBatches(encode)", 3000, 400, []),
    ],
)
def test_worker_killed_mid_run_the_job_still_finishes_exactly_once(
    tmp_path, tiny_model, needle, rows, words, pace
):
    """SIGKILL the scoring actor (Ray restarts it and retries its calls) or a worker running an
    encode task (Ray retries the task): the run ends with every row exactly once (or, if it
    gives up, with one clear line, and a re-run finishes the job)."""
    src, out = make_input(tmp_path / "in", rows, words=words), tmp_path / "out"
    proc = start(score_cmd(src, out, tiny_model, *pace))
    try:
        victim = wait_for(proc, lambda: ray_process(proc, needle))
        victim.kill()
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        kill_group(proc)
    if proc.returncode != 0:
        assert "Traceback" not in stderr, stderr[-3000:]
        again = run(score_cmd(src, out, tiny_model))
        assert again.returncode == 0, again.stderr[-3000:]
    assert_exactly_once(out, rows)


def test_ctrl_c_stops_cleanly_with_one_line_and_rerun_resumes(tmp_path, tiny_model):
    n = 480
    src, out = make_input(tmp_path / "in", n), tmp_path / "out"
    proc = start(score_cmd(src, out, tiny_model, "--null-pairs-per-s", "150"))
    try:
        wait_for(proc, lambda: files_written(out) >= 2)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        stopped = time.monotonic() - t0
    finally:
        kill_group(proc)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), stderr[-3000:]
    assert "run the same command again to resume" in lines[0]
    assert stopped < 30
    again = run(score_cmd(src, out, tiny_model))
    assert again.returncode == 0, again.stderr[-3000:]
    assert_exactly_once(out, n)


def test_sigterm_stops_like_ctrl_c(tmp_path, tiny_model):
    n = 480
    src, out = make_input(tmp_path / "in", n), tmp_path / "out"
    proc = start(score_cmd(src, out, tiny_model, "--null-pairs-per-s", "150"))
    try:
        wait_for(proc, lambda: files_written(out) >= 2)
        os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert "run the same command again to resume" in stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs (real ENOSPC); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode()[:200]}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_one_clear_error_and_nothing_half_written(tmp_path, tiny_model, small_disk):
    n = 3000
    src = make_input(tmp_path / "in", n, noise=400)  # ~1.2 MB of output for a 300 KiB disk
    out = small_disk / "out"
    result = run(score_cmd(src, out, tiny_model, "--batch-size", "256", "--rows-per-file", "256"))
    line = assert_one_line_error(result, OutputError.exit_code, "output_unwritable", str(out))
    assert "No space left on device" in line or "[Errno 28]" in line
    state = inspect_output(str(out))
    assert 0 <= state.num_rows < n and state.broken == []
    assert not list(out.glob("_tmp-*"))  # nothing half-written left
    for f in state.files:  # what is there is whole and counts
        assert pq.read_table(f).num_rows > 0
    # Room again: the re-run finishes the job, every row once.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run(score_cmd(src, out, tiny_model, "--batch-size", "256", "--rows-per-file", "256"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert_exactly_once(out, n)


def test_read_only_output_fails_before_ray(tmp_path, tiny_model, small_disk):
    src = make_input(tmp_path / "in", 40)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    t0 = time.monotonic()
    result = run(score_cmd(src, small_disk / "out", tiny_model))
    assert_one_line_error(result, OutputError.exit_code, "output_unwritable", str(small_disk))
    assert "Ray" not in result.stderr  # refused before a cluster was started
    assert time.monotonic() - t0 < 30


def test_damaged_input_page_is_one_clear_error(tmp_path, tiny_model):
    from test_pipelines_params import damage_a_page

    n = 400
    src = make_input(tmp_path / "in", n, files=2, words=30)
    bad = src / "part-1.parquet"
    pq.write_table(pq.read_table(bad), bad, compression="snappy")
    damage_a_page(bad)
    out = tmp_path / "out"
    result = run(score_cmd(src, out, tiny_model))
    assert_one_line_error(result, InputDataError.exit_code, "input_unreadable", str(bad))
    state = inspect_output(str(out))
    assert state.broken == [] and not list(out.glob("_tmp-*"))
    # The rows written are whole (from the good file) and count on a re-run once the file is
    # replaced.
    make_input(tmp_path / "fresh", n, files=2, words=30)
    (tmp_path / "fresh" / "part-1.parquet").replace(bad)
    again = run(score_cmd(src, out, tiny_model))
    assert again.returncode == 0, again.stderr[-3000:]
    assert_exactly_once(out, n)


def test_a_job_whose_rows_all_fail_is_not_ok(tmp_path, tiny_model):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"i": [0, 1, 2], "text": pa.array([None, "", None], pa.string())}),
                   src / "a.parquet")  # fmt: skip
    result = run(score_cmd(src, tmp_path / "out", tiny_model))
    assert_one_line_error(result, AllRowsFailedError.exit_code, "all_rows_failed")
    assert "[OK]" not in result.stdout and "[ALL ROWS FAILED]" in result.stdout
    assert_exactly_once(tmp_path / "out", 3)  # the rows are there, with their errors


def test_driver_killed_at_several_points_every_row_once(tmp_path, tiny_model):
    n = 960
    src, out = make_input(tmp_path / "in", n), tmp_path / "out"
    cmd = score_cmd(src, out, tiny_model, "--null-pairs-per-s", "250")
    for target in (2, 9, 20, 35):
        proc = start(cmd)
        try:
            wait_for(proc, lambda t=target: files_written(out) >= t)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            kill_group(proc)
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_exactly_once(out, n)


def test_scoring_actor_killed_twice_in_one_run(tmp_path, tiny_model):
    n = 960
    src, out = make_input(tmp_path / "in", n), tmp_path / "out"
    proc = start(score_cmd(src, out, tiny_model, "--null-pairs-per-s", "200"))
    try:
        for target in (3, 25):
            wait_for(proc, lambda t=target: files_written(out) >= t, timeout=240)
            victim = wait_for(proc, lambda: ray_process(proc, "MapBatches(Score)"))
            pid = victim.pid
            victim.kill()
            wait_for(proc, lambda p=pid: (ray_process(proc, "MapBatches(Score)") or None)
                     and ray_process(proc, "MapBatches(Score)").pid != p, timeout=120)  # fmt: skip
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        kill_group(proc)
    if proc.returncode != 0:
        again = run(score_cmd(src, out, tiny_model))
        assert again.returncode == 0, again.stderr[-3000:]
    assert_exactly_once(out, n)
