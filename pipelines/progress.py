"""What the user sees while the job runs: one progress line on a terminal (rows done, rows/s,
ETA), nothing otherwise unless a period is asked for (a line every N seconds, for a RayJob's
log), and Ray's own chatter kept out of both."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

# Lines Ray prints on every healthy run that are not the job's news:
# - the driver's C++ core worker, at ERROR, each time Ray Data starts an actor pool (its
#   constructor arguments are object refs by design; ray-project/ray#53727);
# - Ray Data, when its progress bars are off (the job draws its own).
NOISE = (
    re.compile(r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in "
               r"the object store and max_restarts > 0"),
    re.compile(r"Progress bars disabled\. To enable"),
)  # fmt: skip


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Rows written out of rows to do. `bar`: a line redrawn in place (a terminal); else,
    with `every_s`, a plain line at most every `every_s` seconds; else silent."""

    def __init__(
        self,
        total: int,
        *,
        bar: bool,
        every_s: float | None = None,
        stream: TextIO | None = None,
    ):
        self.total = total
        self.done = 0
        self.bar = bar
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._drawn = False

    @classmethod
    def for_terminal(
        cls, total: int, show: bool, every_s: float | None, stream: TextIO | None = None
    ) -> Progress:
        stream = stream or sys.stderr
        on_tty = show and stream.isatty()
        return cls(total, bar=on_tty, every_s=None if on_tty else every_s, stream=stream)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = self.total - self.done
        eta = _duration(left / rate) if rate > 0 and left > 0 else "-"
        return (
            f"scored {self.done:,} / {self.total:,} rows{share}  {rate:,.0f} rows/s  "
            f"elapsed {_duration(elapsed)}  ETA {eta}"
        )

    def update(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if self.bar:
            if now - self._last >= 0.1 or self.done >= self.total:
                self.stream.write("\r" + self.line() + "\x1b[K")
                self.stream.flush()
                self._drawn = True
                self._last = now
        elif self.every_s and now - self._last >= self.every_s:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last = now

    def close(self) -> None:
        """End the redrawn line so the next output starts on its own."""
        if self._drawn:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
            self.stream.flush()
            self._drawn = False


def quiet_ray() -> None:
    """Keep Ray's and Ray Data's INFO chatter (execution plans, per-operator dumps, 'Data sink
    finished') out of the job's output; warnings and errors still show, except two that
    every run prints: Ray Data's 'progress bars disabled' and the token-authentication
    notice of a Ray that this job starts on this machine."""
    from zeroshot import raylog

    raylog.quiet_driver_loggers()
    logging.getLogger("ray.data._internal").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # A failed task: Ray Data logs the worker's traceback at ERROR, then raises it to the
    # driver, which prints one line for the job's own errors and re-raises anything else
    # (its traceback then shows once). Ray Data's log file keeps the full trace either way.
    for name in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def filtered_stderr(noise=NOISE) -> Iterator[TextIO]:
    """Drop known-noise lines from everything written to file descriptor 2 (Ray's C++ core
    worker writes there directly, past Python's logging) while the block runs. Yields a
    stream on the real stderr for output that must not wait for a whole line (a progress
    line redrawn with \r)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (a notebook): nothing to do
        yield sys.stderr
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    real = os.fdopen(os.dup(saved), "w", buffering=1, errors="replace")

    def pump() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = [
                    line
                    for line in lines
                    if not any(p.search(line.decode("utf-8", "replace")) for p in noise)
                ]
                if kept:
                    os.write(saved, b"\n".join(kept) + b"\n")
        if pending:
            os.write(saved, pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield real
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)  # closes the pipe's last write end: the pump drains and stops
        thread.join(timeout=5)
        real.close()
        os.close(saved)
