"""Dispatch: the ledger's queue -> batches -> an executor -> results recorded.

One implementation for the daemon and for ``ocr-inbox ocr``: claiming
batches, attempts and retries, quarantine of an image that kills workers,
pauses while the outbox or the state disk refuses writes. Dispatch is the one
writer of results: it writes each image's JSON (atomically) and then records
it in the ledger, so wherever OCR runs, nothing else writes the outbox.

Which failure is whose:

- the image's (unreadable, corrupt, too large, an engine error on it, a name
  the outbox cannot hold): quarantined at once with its reason;
- a worker dying on it (``worker_crashed``, or ``worker_stuck`` when it was
  killed for silence): tried again, quarantined after ``pool.max_attempts``;
  when the next image's decode ran beside it, both are suspects (a retry runs
  alone, so the second crash is blamed exactly);
- the machine's (memory pressure, a GPU error): ``pool.crash_breaker``
  different images crashing workers in a row with no success between is a
  crash storm: dispatch pauses for ``pool.crash_pause_s`` (doubling while the
  storm lasts), the crashes of that streak are not counted against the images,
  and one image done ends it;
- the file's own motion (changed or vanished while read): back to intake,
  which settles it and queues the new version;
- the outbox's or state disk's (full, read-only, unwritable): nobody's; the
  image goes back to the queue and dispatch pauses for ``pool.output_retry_s``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from ocr_inbox import atomic
from ocr_inbox.config import PoolSettings
from ocr_inbox.errors import StateError
from ocr_inbox.executors import messages as m
from ocr_inbox.executors.base import Executor
from ocr_inbox.ledger import Ledger, in_use
from ocr_inbox.metrics import Recorder
from ocr_inbox.outbox import document, names

log = structlog.get_logger(__name__)

#: errors of an output *path* (a directory where the JSON goes, a name too long):
#: that image fails; any other write error is the outbox's and pauses everything
_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EINVAL, errno.ELOOP})
#: reasons of an image that took a worker down with it
CRASH_REASONS = ("worker_crashed", "worker_stuck")
#: STATE_DIR/requests/: what ``ocr-inbox retry`` asks of a running daemon (the one ledger writer)
REQUESTS_DIR = "requests"
#: a storm's pause doubles each time it goes on, up to this many times ``crash_pause_s``
MAX_STORM_FACTOR = 16


class Dispatch:
    def __init__(
        self,
        ledger: Ledger,
        executor: Executor,
        outbox: Path,
        settings: PoolSettings,
        *,
        on_moved: Callable[[str], None],
        on_done: Callable[[str, int, int], None] = lambda rel, size, mtime_ns: None,
        on_result: Callable[[str, bool], None] = lambda rel, ok: None,
        recorder: Recorder = Recorder(),
    ) -> None:
        self.ledger = ledger
        self.executor = executor
        self.outbox = outbox
        self.settings = settings
        #: a file changed or vanished under a worker: intake looks at it again
        self.on_moved = on_moved
        #: an image's result was recorded (size and mtime of the version OCR'd)
        self.on_done = on_done
        #: an image finished for good: done (True) or quarantined (False)
        self.on_result = on_result
        #: the metrics (the base records nothing)
        self.recorder = recorder
        self.paused_until = 0.0
        #: the crash breaker: different images that crashed workers since the last one done
        self._streak: dict[str, None] = {}
        #: storms in a row (pauses double); 0 = the breaker is closed
        self._storms = 0
        self.storm_until = 0.0
        #: events the ledger could not take yet (state disk refusing writes), oldest first
        self._backlog: list[m.Event] = []
        self._job_ids = itertools.count(1)
        self._batch_ids = itertools.count(1)

    @property
    def paused(self) -> bool:
        return time.monotonic() < self.paused_until

    @property
    def storm(self) -> bool:
        """Paused by the crash breaker."""
        return time.monotonic() < self.storm_until

    @property
    def pause_reason(self) -> str:
        """Why no work is handed out ("" = it is)."""
        if self.paused:
            return "output paused"
        if self.storm:
            return "crash storm: dispatch paused"
        return ""

    def pause(self, event: str, **why: object) -> None:
        """Stop handing out work for ``output_retry_s``; logged once per pause."""
        if not self.paused:
            log.error(event, retry_in_s=self.settings.output_retry_s, **why)
            self.recorder.paused(str(why.get("reason", event)))
        self.paused_until = time.monotonic() + self.settings.output_retry_s

    # -- out ------------------------------------------------------------------

    def fill(self) -> None:
        """Give every idle worker a batch from the queue (smaller batches when it runs short)."""
        if self.paused or self.storm:
            return
        while self.executor.capacity() > 0:
            per = self.settings.batch_size
            queued = self.ledger.pending_count(per * self.executor.size)
            size = max(1, min(per, math.ceil(queued / self.executor.size)))
            now = time.time()
            rows = self.ledger.claim(size, now)
            if not rows:
                return
            for r in rows:
                self.recorder.queue_wait(now - r.queued_at)
            jobs = tuple(m.Job(next(self._job_ids), r.rel, attempt=r.attempts + 1) for r in rows)
            self.executor.submit(m.Batch(next(self._batch_ids), jobs))

    # -- back -----------------------------------------------------------------

    def record(self, events: Iterable[m.Event]) -> None:
        """Record results; what the ledger can't take now is kept and tried again on the next call."""
        self._backlog.extend(events)
        while self._backlog:
            try:
                self._record(self._backlog[0])
            except sqlite3.OperationalError as exc:
                self.state_write_failed(exc)
                return
            self._backlog.pop(0)

    def state_write_failed(self, exc: Exception) -> None:
        self.pause("ledger_write_failed", error=str(exc), state_dir=str(self.ledger.path.parent))

    def _record(self, ev: m.Event) -> None:
        if isinstance(ev, m.Done):
            self._done(ev)
        elif isinstance(ev, m.Failed):
            self._failed(ev)
        elif isinstance(ev, m.WorkerLost):
            self._lost(ev)
        elif isinstance(ev, m.WorkerExit):
            self.recorder.worker_exit(ev.reason)
        elif isinstance(ev, m.BatchDone):
            self.recorder.worker_rss(ev.slot, ev.rss_bytes)

    def _done(self, ev: m.Done) -> None:
        rel, now = ev.job.rel, time.time()
        if not self.ledger.running_version(rel, ev.size, ev.mtime_ns):
            # a newer version arrived meanwhile (or the image left): its result is not written
            self.ledger.done(rel, ev.size, ev.mtime_ns, "", ev.elapsed_ms, now)
            log.info("result_outdated", path=rel)
            return
        dest = names.json_path_for(self.outbox, rel)
        doc = document.Document(
            source=document.SourceInfo(rel, ev.size, ev.mtime_ns, ev.sha256),
            engine=ev.engine,
            pages=ev.pages,
            elapsed_ms=ev.elapsed_ms,
        )
        try:
            document.write(dest, doc)
        except OSError as exc:
            if exc.errno in _NAME_ERRNOS:
                detail = f"cannot write {dest}: {exc.strerror or exc}"
                if self.ledger.failed(rel, "output_name", detail, now, retry=False):
                    self.recorder.image_failed("output_name")
                log.warning("image_failed", path=rel, reason="output_name", detail=detail)
                self.on_result(rel, False)
                return
            self.ledger.release([rel], now)
            reason = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "output_error"
            self.pause("output_paused", reason=reason, path=rel, detail=str(exc))
            return
        self.ledger.done(rel, ev.size, ev.mtime_ns, str(dest), ev.elapsed_ms, now, pages=ev.pages)
        log.info("image_done", path=rel, slot=ev.slot, pages=len(ev.pages), lines=ev.lines, ms=ev.elapsed_ms)
        self.recorder.image_done(ev.elapsed_ms / 1000)
        self._streak.clear()
        if self._storms:
            log.info("crash_storm_over", path=rel)
            self._storms, self.storm_until = 0, 0.0
        self.on_result(rel, True)
        self.on_done(rel, ev.size, ev.mtime_ns)

    def _failed(self, ev: m.Failed) -> None:
        rel, now = ev.job.rel, time.time()
        if ev.transient:
            # it moved under the worker: not its fault; intake settles and queues what is there now
            self.ledger.release([rel], now)
            self.on_moved(rel)
            return
        if self.ledger.failed(rel, ev.reason, ev.detail, now, retry=False):
            self.recorder.image_failed(ev.reason)
        self.on_result(rel, False)

    def _lost(self, ev: m.WorkerLost) -> None:
        now = time.time()
        self.ledger.release([j.rel for j in ev.unstarted], now)
        suspects = ev.suspects
        if not suspects:
            return
        if self.storm:
            # work handed out before the pause: a storm's crash is not the image's
            self.ledger.release([j.rel for j in suspects], now)
            log.warning("image_released", paths=",".join(j.rel for j in suspects), reason="crash_storm", cause=ev.cause)
            return
        for j in suspects:
            self._streak[j.rel] = None
        breaker = self.settings.crash_breaker
        if breaker and len(self._streak) >= breaker:
            self._trip(ev, suspects, now)
            return
        for j in suspects:
            self._count_crash(ev, j, beside=len(suspects) > 1, now=now)

    def _count_crash(self, ev: m.WorkerLost, j: m.Job, *, beside: bool, now: float) -> None:
        final = j.attempt >= self.settings.max_attempts
        what = "the worker died" if ev.reason == "worker_crashed" else "the worker hung"
        both = " (another image was being decoded or OCR'd beside it)" if beside else ""
        detail = f"{what} on it ({ev.cause}){both}; attempt {j.attempt} of {self.settings.max_attempts}"
        recorded = self.ledger.failed(j.rel, ev.reason, detail, now, retry=not final)
        if final:
            log.error("image_quarantined", path=j.rel, reason=ev.reason, cause=ev.cause)
            if recorded:
                self.recorder.image_failed(ev.reason)
            self.on_result(j.rel, False)
        else:
            log.warning("image_retry", path=j.rel, attempt=j.attempt + 1, reason=ev.reason, cause=ev.cause)

    def _trip(self, ev: m.WorkerLost, suspects: tuple[m.Job, ...], now: float) -> None:
        """A crash storm: pause; the streak's crashes are not counted against its images.

        Only the first storm refunds them: if crashes go on after a pause, they count
        again, so images that really kill workers are still quarantined, slowly.
        """
        streak = list(self._streak)
        self._streak.clear()
        self.ledger.release([j.rel for j in suspects], now)
        if self._storms == 0:
            self.ledger.requeue_failed(now, CRASH_REASONS, streak)
            self.ledger.forgive(streak, now)
        pause = self.settings.crash_pause_s * min(2.0**self._storms, MAX_STORM_FACTOR)
        self._storms += 1
        self.storm_until = time.monotonic() + pause
        self.recorder.paused("crash_storm")
        log.error(
            "crash_storm_paused",
            images=len(streak),
            storms=self._storms,
            pause_s=pause,
            cause=ev.cause,
            note="different images crash workers in a row: the machine, not the images; they stay queued",
        )

    # -- requests from `ocr-inbox retry` ------------------------------------------

    def take_requests(self) -> int:
        """Apply the retry requests left in STATE_DIR/requests/ by ``ocr-inbox retry``; returns images requeued."""
        folder = self.ledger.path.parent / REQUESTS_DIR
        try:
            entries = sorted(e for e in os.listdir(folder) if e.endswith(".json") and not e.startswith("."))
        except OSError:
            return 0
        total = 0
        for name in entries:
            path = folder / name
            try:
                req = json.loads(path.read_text(encoding="utf-8"))
                reasons, paths = list(map(str, req.get("reasons", []))), list(map(str, req.get("paths", [])))
            except (OSError, ValueError, AttributeError, TypeError) as exc:
                log.warning("retry_request_invalid", file=str(path), error=str(exc))
            else:
                n = self.ledger.requeue_failed(time.time(), reasons, paths)
                total += n
                log.info("retry_applied", images=n, reasons=",".join(reasons), paths=len(paths))
            with contextlib.suppress(OSError):
                path.unlink()
        return total

    # -- the end ----------------------------------------------------------------

    def drain(self, deadline_s: float) -> None:
        """Let in-flight batches finish (recording their results), then stop the workers;
        what did not finish goes back to the queue."""
        end = time.monotonic() + deadline_s
        while self.executor.busy() and time.monotonic() < end:
            self.record(self.executor.poll(0.5))
        unfinished = self.executor.in_flight()
        self.executor.stop()
        self.record(())
        if unfinished:
            self.ledger.release([j.rel for j in unfinished], time.time())
            log.info("returned_to_queue", images=len(unfinished))


# -- `ocr-inbox retry` --------------------------------------------------------------


def request_retry(state_dir: Path, reasons: list[str], paths: list[str]) -> Path:
    """Leave a retry request for the running daemon, which applies it at its next loop pass."""
    dest = state_dir / REQUESTS_DIR / f"retry-{time.time_ns()}-{os.getpid()}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(dest, {"reasons": reasons, "paths": paths})
    return dest


def retry_failed(state_dir: Path, reasons: list[str], paths: list[str]) -> int | None:
    """Requeue failed images: directly when no daemon runs (returns how many), else through a
    request the daemon applies (returns None)."""
    if not in_use(state_dir):
        try:
            with Ledger.open(state_dir) as ledger:
                return ledger.requeue_failed(time.time(), reasons, paths)
        except StateError:
            if not in_use(state_dir):  # a daemon started meanwhile: ask it
                raise
    request_retry(state_dir, reasons, paths)
    return None
