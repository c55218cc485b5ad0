"""The offline job's faults table: each fault injected into a real `zeroshot score` run (its
own local Ray, the null backend slowed to a device's pace, tiny fixture), then recovered the
way a user would (the same run going on, or the same command re-run), with every row checked.

Columns: fault | rows lost / written twice after recovery | exit codes (run, then re-run) |
lines on stderr | time: from the fault to the run stopping or going on (first file after a
kill), and the re-run that finishes the job.

Prints one table (markdown) and writes benchmarks/results/faults_offline.{json,png}.

    python -m benchmarks.faults_offline [--rows 960]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import RESULTS, write_results

LABELS = "sports,politics,business"
WORDS = "the match vote market team budget league price election growth".split()


def make_input(directory: Path, n: int, files: int = 4, words: int = 12, noise: int = 0) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    per = -(-n // files)
    for k in range(files):
        ids = list(range(k * per, min(n, (k + 1) * per)))
        texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(words)) + f" #{i} "
                 + random.Random(i).randbytes(noise // 2).hex() for i in ids]  # fmt: skip
        pq.write_table(pa.table({"i": ids, "text": texts}), directory / f"part-{k}.parquet")
    return directory


def cmd(src: Path, out: Path, model: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "zeroshot", "score", str(src), str(out), "--labels", LABELS,
            "--model", model, "--backend", "null", "--id-column", "i", "--batch-size", "16",
            "--rows-per-file", "16", "--no-progress", *extra]  # fmt: skip


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return proc.returncode, stderr


def files(out: Path) -> list[Path]:
    return list(out.glob("part-*.parquet")) if out.exists() else []


def wait_for(proc, what, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended first: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise RuntimeError("timed out")


def ray_process(proc, needle: str):
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if needle in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def check(out: Path, n: int) -> tuple[int, int]:
    """(rows lost, rows written twice)."""
    import pyarrow.dataset as pads

    if not files(out):
        return n, 0
    ids = pads.dataset(str(out), format="parquet").to_table(columns=["i"]).column(0).to_pylist()
    counts = Counter(ids)
    return n - len(counts), sum(c - 1 for c in counts.values())


def lines(stderr: str) -> int:
    return len([line for line in stderr.splitlines() if line.strip()])


def rerun(src, out, model, *extra) -> tuple[int, float, str]:
    t0 = time.monotonic()
    code, stderr = finish(start(cmd(src, out, model, *extra)))
    return code, time.monotonic() - t0, stderr


def scenario_kill(name, src, out, model, n, needle: str | None, pace: list[str]) -> dict:
    """SIGKILL the driver (needle None) or the Ray process whose command line has `needle`."""
    shutil.rmtree(out, ignore_errors=True)
    proc = start(cmd(src, out, model, *pace))
    if needle is None:
        wait_for(proc, lambda: len(files(out)) >= 3)
        os.kill(proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        code, stderr = finish(proc)
        stop = time.monotonic() - t_kill
    else:
        victim = wait_for(proc, lambda: ray_process(proc, needle))
        before = len(files(out))
        victim.kill()
        t_kill = time.monotonic()
        try:  # time to the next file: the pipeline going on after the kill
            wait_for(proc, lambda: len(files(out)) > before, timeout=120)
            stop = time.monotonic() - t_kill
        except RuntimeError:
            stop = float("nan")
        code, stderr = finish(proc)
    row = {"fault": name, "exit": [code], "stderr_lines": lines(stderr), "after_fault_s": stop}
    if code != 0:
        code2, seconds, _ = rerun(src, out, model)
        row["exit"].append(code2)
        row["rerun_s"] = seconds
    row["lost"], row["twice"] = check(out, n)
    return row


def scenario_signal(name, src, out, model, n, sig) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = start(cmd(src, out, model, "--null-pairs-per-s", "150"))
    wait_for(proc, lambda: len(files(out)) >= 2)
    os.kill(proc.pid, sig)
    t0 = time.monotonic()
    code, stderr = finish(proc)
    stop = time.monotonic() - t0
    code2, seconds, _ = rerun(src, out, model)
    lost, twice = check(out, n)
    return {"fault": name, "exit": [code, code2], "stderr_lines": lines(stderr),
            "after_fault_s": stop, "rerun_s": seconds, "lost": lost, "twice": twice,
            "message": stderr.strip().splitlines()[-1][:160] if stderr.strip() else ""}  # fmt: skip


@contextlib.contextmanager
def tmpfs(size: str):
    mnt = Path(tempfile.mkdtemp(prefix="zs-disk-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:  # fmt: skip
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def scenario_failure(name, src, out, model, n, *extra, fix=None) -> dict:
    t0 = time.monotonic()
    code, stderr = finish(start(cmd(src, out, model, *extra)))
    seconds = time.monotonic() - t0
    row = {"fault": name, "exit": [code], "stderr_lines": lines(stderr), "after_fault_s": seconds,
           "message": stderr.strip().splitlines()[-1][:160] if stderr.strip() else ""}  # fmt: skip
    broken = [p for p in out.glob("*") if p.name.startswith("_tmp-")] if out.exists() else []
    row["half_written_files"] = len(broken)
    if fix is not None:
        fix()
        code2, seconds2, _ = rerun(src, out, model, *extra)
        row["exit"].append(code2)
        row["rerun_s"] = seconds2
        row["lost"], row["twice"] = check(out, n)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=960)
    args = ap.parse_args()
    from zeroshot.fixtures import make_test_model

    work = RESULTS / "faults_offline_work"
    work.mkdir(parents=True, exist_ok=True)
    model = str(work / "tiny")
    if not (work / "tiny" / "model.safetensors").exists():
        make_test_model(model, "tiny")
    n = args.rows
    src = make_input(work / "in", n)
    out = work / "out"
    slow = ["--null-pairs-per-s", "150"]
    rows = [
        scenario_kill(
            "driver SIGKILL mid-run, same command re-run", src, out, model, n, None, slow
        ),  # fmt: skip
        scenario_kill(
            "scoring actor SIGKILL mid-run", src, out, model, n, "MapBatches(Score)", slow
        ),  # fmt: skip
    ]
    long_src = make_input(work / "in_long", 3000, words=400)
    rows.append(scenario_kill("encode worker SIGKILL mid-run", long_src, out, model, 3000,
                              "MapBatches(encode)", []))  # fmt: skip
    rows.append(scenario_signal("Ctrl-C (SIGINT), same command re-run", src, out, model, n,
                                signal.SIGINT))  # fmt: skip
    rows.append(scenario_signal("SIGTERM, same command re-run", src, out, model, n,
                                signal.SIGTERM))  # fmt: skip
    with tmpfs("300k") as disk:
        if disk is not None:
            big = make_input(work / "in_big", 3000, noise=400)
            flags = ("--batch-size", "256", "--rows-per-file", "256")
            rows.append(scenario_failure(
                "disk full (300 KiB tmpfs), re-run with room", big, disk / "out", model, 3000,
                *flags, fix=lambda: subprocess.run(
                    ["mount", "-o", "remount,size=64m", str(disk)], check=True),
            ))  # fmt: skip
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            rows.append(scenario_failure("read-only output", src, disk / "ro_out", model, n))
    import pyarrow.parquet as pq

    damaged = make_input(work / "in_bad", 400, files=2, words=30)
    bad = damaged / "part-1.parquet"
    pq.write_table(pq.read_table(bad), bad, compression="snappy")
    meta = pq.read_metadata(bad).row_group(0).column(0)
    data = bytearray(bad.read_bytes())
    at = (meta.dictionary_page_offset or meta.data_page_offset) + 40
    data[at : at + 200] = b"\xff" * 200
    bad.write_bytes(bytes(data))
    shutil.rmtree(work / "out_bad", ignore_errors=True)
    rows.append(scenario_failure(
        "damaged data page (valid footer), file replaced, re-run", damaged, work / "out_bad",
        model, 400, fix=lambda: make_input(work / "fresh", 400, files=2, words=30)
        and (work / "fresh" / "part-1.parquet").replace(bad),
    ))  # fmt: skip
    failing = work / "in_fail"
    shutil.rmtree(failing, ignore_errors=True)
    failing.mkdir()
    import pyarrow as pa

    pq.write_table(pa.table({"i": [0, 1, 2], "text": pa.array([None, "", None], pa.string())}),
                   failing / "a.parquet")  # fmt: skip
    shutil.rmtree(work / "out_fail", ignore_errors=True)
    rows.append(scenario_failure("every row fails (null/empty texts)", failing,
                                 work / "out_fail", model, 3))  # fmt: skip

    write_results("faults_offline", {"rows": n, "faults": rows})
    print(table(rows))
    plot(rows)


def _fmt(row: dict, key: str) -> str:
    v = row.get(key)
    return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def table(rows: list[dict]) -> str:
    head = ("| fault | rows lost / twice | exit codes (run, re-run) | stderr lines | "
            "after the fault (s) | re-run (s) |")  # fmt: skip
    out = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lost = f"{r['lost']} / {r['twice']}" if "lost" in r else "-"
        codes = ", ".join(map(str, r["exit"]))
        times = f"{_fmt(r, 'after_fault_s')} | {_fmt(r, 'rerun_s')}"
        out.append(f"| {r['fault']} | {lost} | {codes} | {r['stderr_lines']} | {times} |")
    return "\n".join(out)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [[r["fault"], f"{r.get('lost', '-')} / {r.get('twice', '-')}",
              ", ".join(map(str, r["exit"])), str(r["stderr_lines"]), _fmt(r, "after_fault_s"),
              _fmt(r, "rerun_s")] for r in rows]  # fmt: skip
    fig, ax = plt.subplots(figsize=(13, 0.45 * len(rows) + 1))
    ax.axis("off")
    t = ax.table(cells, colLabels=["fault", "lost / twice", "exit", "stderr lines",
                                   "after fault (s)", "re-run (s)"], loc="center")  # fmt: skip
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.auto_set_column_width(list(range(6)))
    ax.set_title("offline job faults (tiny fixture, null backend, 2-core CPU host)")
    fig.tight_layout()
    fig.savefig(RESULTS / "faults_offline.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
