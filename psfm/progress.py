"""Progress of a long phase: a live one-line bar on a terminal, periodic log lines elsewhere.

:class:`Progress` counts what a phase has done (rows, samples or bytes) against its total.
When its stream (stderr by default) is a terminal it redraws one line in place with ``\\r``, at
most every :data:`BAR_INTERVAL_S` seconds, and ends that line with a newline when the count
reaches the total or on :meth:`Progress.close`::

    test [##########--------------]  42% 840,000/2,000,000 rows, 190,000 samples/s, ETA 6s

Anywhere else (a Ray job's log, a pipe, a file) it logs the same numbers as one line every
``every_s`` seconds::

    test: 840,000/2,000,000 rows, 190,000 samples/s, ETA 6s
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["BAR_INTERVAL_S", "Progress"]

log = logging.getLogger("psfm.runloop")

BAR_INTERVAL_S = 0.1  # the bar redraws at most 10 times a second
_BAR_CELLS = 24


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _duration(s: float) -> str:
    """``s`` seconds as 42s, 3m05s or 2h07m."""
    s = max(0, round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """``done`` of ``total`` of a phase named ``what``: a live bar on a terminal, else a log
    line every ``every_s`` seconds (module docstring).

    ``unit``: what the count counts (``"rows"``; ``"bytes"`` is shown in MiB); ``per``: what
    the rate counts (rows/s, samples/s; default the unit); ``detail``: a callable whose text is
    appended (metrics so far); ``total`` <= 0: unknown (no percentage, no ETA); ``stream``:
    the terminal to draw on (default ``sys.stderr`` at construction); ``logger``: where the
    lines go otherwise; ``end_at_total``: the bar ends when the count reaches the total (else
    only on :meth:`close`: a count that runs ahead of the work, like bytes read ahead).
    """

    def __init__(
        self,
        what: str,
        total_rows: float,
        every_s: float,
        per: str | None = None,
        detail: Callable[[], str] | None = None,
        *,
        unit: str = "rows",
        stream: TextIO | None = None,
        logger: logging.Logger | None = None,
        end_at_total: bool = True,
    ) -> None:
        self.what, self.total, self.every_s, self.detail = what, total_rows, every_s, detail
        self.unit = unit
        self.per = per or ("MiB" if unit == "bytes" else unit)
        self.stream = sys.stderr if stream is None else stream
        self.bar = _is_tty(self.stream)
        self.log = logger or log
        self.end_at_total = end_at_total
        self.rows: float = 0  # the count so far, in ``unit``
        self.t0 = self.last = time.perf_counter()
        self._width = 0  # characters of the bar line drawn last (0: none yet)
        self._shown: tuple[float, str] | None = None  # (count, detail) drawn last
        self._closed = False

    def add(self, rows: float) -> None:
        """Count ``rows`` more (negative: take back, when a part is done again)."""
        self.rows += rows
        now = time.perf_counter()
        if self.bar:
            done = self.end_at_total and 0 < self.total <= self.rows
            if not self._closed and (done or now - self.last >= BAR_INTERVAL_S):
                self.last = now
                self._draw(now)
                if done:
                    self.close()
        elif now - self.last >= self.every_s:
            self.last = now
            self.log.info("%s: %s", self.what, self._numbers(now, self._state()[1]))

    def close(self) -> None:
        """End the bar: draw it once more and end its line; nothing without a bar or when the
        bar ended already."""
        if self.bar and not self._closed:
            self._closed = True
            if self._width or self.rows:
                if self._shown != self._state():
                    self._draw(time.perf_counter())
                self.stream.write("\n")
                self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _state(self) -> tuple[float, str]:
        return self.rows, self.detail() if self.detail else ""

    def _amount(self, v: float) -> str:
        return f"{v / 2**20:,.1f}" if self.unit == "bytes" else f"{v:,.0f}"

    def _numbers(self, now: float, detail: str) -> str:
        """count[/total] unit, rate per/s[, ETA][detail]: the ETA before the detail, which a
        narrow terminal cuts off first."""
        unit = "MiB" if self.unit == "bytes" else self.unit
        scale = 2**20 if self.unit == "bytes" else 1
        rate = self.rows / max(now - self.t0, 1e-9)
        text = self._amount(self.rows)
        if self.total > 0:
            text += f"/{self._amount(self.total)}"
        text += f" {unit}, {rate / scale:,.0f} {self.per}/s"
        if self.total > 0:
            text += f", ETA {_duration(max(self.total - self.rows, 0) / max(rate, 1e-9))}"
        return text + detail

    def _draw(self, now: float) -> None:
        line = f"{self.what} "
        if self.total > 0:
            frac = min(max(self.rows / self.total, 0.0), 1.0)
            cells = int(frac * _BAR_CELLS)
            line += f"[{'#' * cells}{'-' * (_BAR_CELLS - cells)}] {100 * frac:3.0f}% "
        self._shown = self._state()
        line += self._numbers(now, self._shown[1])
        cols = shutil.get_terminal_size((100, 24)).columns - 1  # a wrapped line cannot redraw
        line = line[:cols]
        pad = " " * max(self._width - len(line), 0)  # blank what a longer last line left
        self._width = len(line)
        self.stream.write(f"\r{line}{pad}")
        self.stream.flush()
