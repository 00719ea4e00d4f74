"""Progress of long commands (``ocr``, ``index rebuild``): a rich bar on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Progress:
    def __init__(
        self, total: int, interactive: bool | None = None, log_every_s: float = 10.0, *, label: str = "OCR"
    ) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.t0 = time.monotonic()
        self.log_every_s = log_every_s
        self.label = label
        self._last_log = self.t0
        self._bar: Any = None
        if interactive if interactive is not None else sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.2f} img/s"),
                TextColumn("failed {task.fields[failed]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._bar.add_task("ocr", total=total, rate=0.0, failed=0)
            self._bar.start()

    @property
    def rate(self) -> float:
        dt = time.monotonic() - self.t0
        return (self.done + self.failed) / dt if dt > 0 else 0.0

    def advance(self, ok: bool) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done + self.failed, rate=self.rate, failed=self.failed)
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            left = self.total - self.done - self.failed
            eta = round(left / self.rate) if self.rate else None
            log.info("progress", of=self.label, done=self.done, failed=self.failed, total=self.total,
                     rate=round(self.rate, 3), eta_s=eta)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
