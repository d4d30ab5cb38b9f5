"""Progress on long work, in a terminal and where no terminal is.

In a terminal it is a tqdm bar. Under a log file or a batch scheduler (stderr is not a TTY), a
bar would print nothing useful, so a line is logged about every 30 seconds instead —
``embed train: 12,288/100,000 texts (12.3%), 410 texts/s, ETA 3m34s`` — and one when the work
ends. ``ORM_CACHE_PROGRESS_SECONDS`` changes the interval. ``quiet`` silences both.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from .errors import ConfigError

log = logging.getLogger("orm_cache.progress")

DEFAULT_EVERY = 30.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_every() -> float:
    """Seconds between progress log lines: ``ORM_CACHE_PROGRESS_SECONDS``, else 30; a value
    that is not a non-negative number is a ValueError naming the variable."""
    raw = os.environ.get("ORM_CACHE_PROGRESS_SECONDS")
    if raw is None:
        return DEFAULT_EVERY
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every >= 0:  # also NaN
        raise ConfigError(f"ORM_CACHE_PROGRESS_SECONDS={raw!r} is not a number of seconds (e.g. 30)")
    return every


def _rate(done: int, elapsed: float, unit: str) -> str:
    """``410.2 texts/s``, or ``12.5s/config`` when each takes longer than a second."""
    if done and done / elapsed < 1:
        return f"{elapsed / done:,.1f}s/{unit}"
    return f"{done / elapsed:,.1f} {unit}s/s"


class Progress:
    """``update(n)`` as work is done; ``close()`` at the end. ``total`` may be None (unknown)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", quiet: bool = False,
                 every: float | None = None, stream=None, clock=time.monotonic):
        self.total, self.desc, self.unit, self.clock = total, desc, unit, clock
        self.done = 0
        self.postfix = ""
        stream = stream or sys.stderr
        self.every = progress_every() if every is None else every
        self._bar = None
        self._log = not quiet and not stream.isatty()
        if not quiet and stream.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=stream)
        self._t0 = self._last = clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._log and self.clock() - self._last >= self.every:
            self._last = self.clock()
            log.info(self.line())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def line(self, final: bool = False) -> str:
        """``desc: done/total unit (pct), rate, ETA`` (the summary line when ``final``)."""
        elapsed = max(self.clock() - self._t0, 1e-9)
        rate = self.done / elapsed
        speed = _rate(self.done, elapsed, self.unit)
        if final:
            text = f"{self.desc}: done, {self.done:,} {self.unit}s in {_duration(elapsed)} ({speed})"
        elif self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text = (f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}s ({100 * self.done / self.total:.1f}%), "
                    f"{speed}, ETA {_duration(eta) if eta != float('inf') else '?'}")
        else:
            text = f"{self.desc}: {self.done:,} {self.unit}s, {speed}, {_duration(elapsed)} so far"
        return text + (f", {self.postfix}" if self.postfix and not final else "")

    def close(self, stopped: bool = False) -> None:
        """End the bar; without a terminal, log the summary (``stopped``: the work did not finish)."""
        if self._bar is not None:
            self._bar.close()
        elif self._log and self.done:
            log.info(self.line(final=True).replace(": done,", ": stopped after", 1) if stopped else self.line(True))
        self._log = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(stopped=exc_type is not None)
        return False
