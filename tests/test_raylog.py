"""What of Ray's forwarded output a quiet run keeps: warnings, errors, tracebacks and user
prints; not INFO/DEBUG records (with their continuation lines) or the stop's known reports."""

from __future__ import annotations

from zeroshot.raylog import WorkerLineFilter, filter_forwarded_lines

SERVE_INFO = "INFO 2026-12-07 06:16:28,893 serve 28697 -- Started Serve in namespace 'serve'."
RAY_INFO = "2026-12-07 06:16:21,856\tINFO worker.py:2029 -- Started a local Ray instance."
WARNING = "WARNING 2026-12-07 06:16:30,001 serve 28697 -- Replica took 31 s to start."
KILLED = (
    "Task ServeController.listen_for_change failed. Retrying 0 more times. Error: The actor "
    "died because it was killed by `ray.kill`."
)


def batch(lines: list[str], pid: int = 1, is_err: bool = True) -> dict:
    return {"pid": pid, "is_err": is_err, "lines": lines}


def test_info_records_and_their_continuations_go_warnings_stay():
    keep = WorkerLineFilter().keep
    lines = [SERVE_INFO, "  - ingress: 1 replica", "", WARNING, "  detail of the warning"]
    assert keep(batch(lines)) == [WARNING, "  detail of the warning"]
    assert keep(batch([RAY_INFO, "Traceback (most recent call last):", "  File x"])) == [
        "Traceback (most recent call last):",
        "  File x",
    ]


def test_a_users_print_ends_a_dropped_record():
    keep = WorkerLineFilter().keep
    assert keep(batch([SERVE_INFO, "scored 12 rows"])) == ["scored 12 rows"]


def test_continuations_follow_their_own_process_across_batches():
    keep = WorkerLineFilter().keep
    assert keep(batch([SERVE_INFO], pid=1)) == []
    assert keep(batch([WARNING], pid=2)) == [WARNING]
    # pid 1's record goes on in a later batch; pid 2's too
    assert keep(batch(["  more of the INFO"], pid=1)) == []
    assert keep(batch(["  more of the WARNING"], pid=2)) == ["  more of the WARNING"]


def test_the_stops_killed_controller_reports_go():
    keep = WorkerLineFilter().keep
    error = "ERROR 2026-12-07 06:20:00,000 serve 1 -- Replica crashed."
    assert keep(batch([KILLED, error])) == [error]


def test_the_printer_is_wrapped_once_and_passes_only_kept_lines(monkeypatch):
    from ray._private import worker

    printed = []
    monkeypatch.setattr(worker, "print_to_stdstream", lambda data, ignore: printed.append(data))
    assert filter_forwarded_lines()
    assert filter_forwarded_lines()  # again: still one filter in front of the printer
    worker.print_to_stdstream(batch([SERVE_INFO]), False)
    worker.print_to_stdstream(batch([SERVE_INFO, WARNING]), False)
    assert [d["lines"] for d in printed] == [[WARNING]]
