"""What Ray may print in a `zeroshot serve` or `zeroshot score` run: our lines and real
warnings, not Ray's informational chatter (a `--verbose` run keeps it all).

Ray speaks in three places, each quieted here:
- the driver's own loggers (`ray`, `ray.serve`, `ray.data`): set to WARNING;
- lines of Ray processes (actors) and the cluster's error reports (the raylet's), forwarded
  to the driver's terminal: `filter_forwarded_lines` drops their INFO/DEBUG records (with a
  record's indented continuation lines) and the known-harmless lines in `FORWARDED_NOISE`,
  keeping warnings, errors, tracebacks and anything user code prints;
- the C++ core worker, which writes to file descriptor 2 directly (see
  `pipelines.progress.filtered_stderr`).

The log files under /tmp/ray/session_latest/logs keep everything either way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

# The keyword arguments of `ray.init` for a quiet driver (its own INFO lines, e.g. "Started a
# local Ray instance", off) or a verbose one (Ray's defaults).
QUIET_INIT = {"logging_level": logging.WARNING}

# A log record's first line, in Serve's format ("INFO 2026-12-07 06:16:28,893 serve 28697 --
# ...") or Ray's ("2026-12-07 06:16:21,856\tINFO worker.py:2029 -- ...").
_LEVEL = r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)"
_RECORD = re.compile(rf"^(?:{_LEVEL} \d{{4}}-\d\d-\d\d |\d{{4}}-\d\d-\d\d [\d:,.]+\s+{_LEVEL} )")
_QUIET_LEVELS = ("DEBUG", "INFO")

# Forwarded lines that every healthy run prints and that say nothing wrong:
# - a stop (`serve.shutdown`) kills the Serve controller while its own long-poll and shutdown
#   calls are pending; the raylet then reports each as a failed task "to be retried".
FORWARDED_NOISE = (
    re.compile(r"Task ServeController\.\w+ failed\. .*killed by `ray\.kill`"),
)  # fmt: skip


def quiet_driver_loggers() -> None:
    """The driver's Ray loggers to WARNING, and the token-authentication notice of a Ray this
    process starts on this machine (printed at WARNING on every start, wanted or not) off."""
    for name in ("ray", "ray.serve", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )


class WorkerLineFilter:
    """Decides, line by line, what of a Ray process's forwarded output to keep. A record's
    continuation lines (indented or blank, e.g. the Serve controller's bulleted start-up
    summary) go with their record; per process, since batches of different processes
    interleave."""

    def __init__(self) -> None:
        self._dropping: dict[tuple, bool] = {}

    def keep(self, batch: dict) -> list[str]:
        key = (batch.get("pid"), batch.get("is_err"))
        dropping = self._dropping.get(key, False)
        kept = []
        for line in batch.get("lines", ()):
            record = _RECORD.match(line)
            if record:
                dropping = (record.group(1) or record.group(2)) in _QUIET_LEVELS
            elif line.strip() and not line[:1].isspace():
                dropping = False  # not a continuation: someone's own print
            if dropping or any(p.search(line) for p in FORWARDED_NOISE):
                continue
            kept.append(line)
        self._dropping[key] = dropping
        return kept


def filter_forwarded_lines(keep: Callable[[dict], list[str]] | None = None) -> bool:
    """Put a filter in front of the driver's printer of what Ray processes print and of the
    errors the cluster reports (both go through `ray._private.worker.print_to_stdstream`;
    call before `ray.init`, which binds it). Returns False, changing nothing, where that
    printer is not where Ray 2.60 keeps it."""
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None:
        return False
    printer = getattr(printer, "unfiltered", printer)  # filter once, whoever calls again
    keep = keep or WorkerLineFilter().keep

    def filtered(data: dict, ignore_prefix: bool) -> None:
        lines = keep(data)
        if lines:
            printer({**data, "lines": lines}, ignore_prefix)

    filtered.unfiltered = printer
    worker.print_to_stdstream = filtered
    return True


def quiet(verbose: bool = False) -> dict:
    """Quiet the driver's loggers and Ray's forwarded lines (unless `verbose`) and return the
    `ray.init` keyword arguments to match. Call after `import ray.serve` (which sets its
    logger's level) and before `ray.init`."""
    if verbose:
        return {}
    quiet_driver_loggers()
    filter_forwarded_lines()
    return dict(QUIET_INIT)
