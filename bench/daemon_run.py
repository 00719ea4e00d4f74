"""The tests' daemon harness, plus what a benchmark reads off a run: RSS/CPU
samples of the main process and its children, timings, progress from STATUS=.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from common import MODELS, REPO

sys.path.insert(0, str(REPO / "tests"))
from daemon_harness import Daemon  # noqa: E402


class DaemonRun(Daemon):
    """One run of the real daemon (fake or real engine) with RSS sampling."""

    def __init__(self, root: Path, config: str, name: str, models: Path = MODELS, sample_s: float = 0.5) -> None:
        super().__init__(root, models, config, name=name)
        self.sample_s = sample_s
        self.samples: list[dict[str, Any]] = []  # t, rss (main), kids {pid: rss}, done
        self._sampling = threading.Event()

    def start(self, *extra: str) -> DaemonRun:
        super().start(*extra)
        assert self.proc is not None
        self.ps = psutil.Process(self.proc.pid)
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _sample(self) -> None:
        while not self._sampling.is_set() and self.proc is not None and self.proc.poll() is None:
            try:
                rss = self.ps.memory_info().rss
                kids = {}
                for c in self.ps.children(recursive=False):
                    with contextlib.suppress(psutil.Error):
                        kids[c.pid] = c.memory_info().rss
                self.samples.append({"t": time.monotonic() - self.t_start, "rss": rss, "kids": kids, "done": self.done()})
            except psutil.Error:
                return
            self._sampling.wait(self.sample_s)

    # -- observations ---------------------------------------------------------

    def ready_s(self, timeout: float = 900) -> float:
        """Seconds from start to READY=1."""
        self.ready(timeout)
        assert self.t_ready is not None
        return self.t_ready - self.t_start

    def status_text(self) -> str:
        with self._cond:
            for msg in reversed(self.messages):
                for line in msg.split("\n"):
                    if line.startswith("STATUS=") and "done" in line:
                        return line
        return ""

    def done(self) -> int:
        m = re.search(r"done (\d+)", self.status_text())
        return int(m.group(1)) if m else 0

    def events(self, name: str) -> list[dict[str, str]]:
        """The events with their values unquoted (figures, not log text)."""
        return [{k: v.strip('"') for k, v in e.items()} for e in super().events(name)]

    def event(self, name: str, timeout: float = 60) -> dict[str, str]:
        """The first ``name`` event, waiting for it to reach the log."""
        return self.until(lambda: (self.events(name) or [None])[0], name, timeout)

    def ledger_row(self, rel: str) -> tuple[str, ...] | None:
        """Read-only peek at one image's ledger row (what `status` reads, without a subprocess)."""
        try:
            con = sqlite3.connect(f"file:{self.state / 'ledger.sqlite3'}?mode=ro", uri=True, timeout=1)
            try:
                return con.execute("SELECT status FROM images WHERE rel = ?", (rel,)).fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            return None

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop_timed(self) -> tuple[int, float]:
        """SIGTERM and wait: the exit status and how long the drain took."""
        t0 = time.monotonic()
        rc = self.stop()
        self._sampling.set()
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        """Clean-up for a ``finally``: whatever state the run is in."""
        self._sampling.set()
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()


def clean_up(root: Path, keep: bool, runs: list[DaemonRun]) -> None:
    """End of a benchmark, however it ended: no daemon left running, the work dir gone unless kept."""
    for d in runs:
        d.kill()
    if keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
