"""A dependency-free progress bar for long loops (training, calibration, sweeps).

On a terminal it redraws one line in place; elsewhere (CI logs, pipes) it prints
one line when the loop ends, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """Wrap an iterable: ``for x in Progress(it, total, "epoch 1"): ...; bar.set(loss=0.3)``."""

    def __init__(self, iterable: Iterable[T], total: int | None = None, desc: str = "",
                 stream: TextIO | None = None, enabled: bool = True) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.stats: dict[str, float] = {}
        self.count = 0
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def set(self, **stats: float) -> None:
        """Show these numbers next to the bar (for example ``loss=0.31, acc=0.9``)."""
        self.stats.update(stats)

    def _line(self) -> str:
        elapsed = time.perf_counter() - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = self.count / self.total
            filled = int(24 * frac)
            bar = f"[{'#' * filled}{'.' * (24 - filled)}] {self.count}/{self.total}"
        else:
            bar = f"{self.count}"
        stats = " ".join(f"{k}={v:.4g}" for k, v in self.stats.items())
        return f"{self.desc} {bar} {rate:.1f} it/s {elapsed:.1f}s {stats}".strip()

    def __iter__(self) -> Iterator[T]:
        for item in self.iterable:
            yield item
            self.count += 1
            now = time.perf_counter()
            if self.enabled and self.tty and now - self._last_draw > 0.1:
                self.stream.write("\r" + self._line())
                self.stream.flush()
                self._last_draw = now
        if self.enabled:
            self.stream.write(("\r" if self.tty else "") + self._line() + "\n")
            self.stream.flush()
