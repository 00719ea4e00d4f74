"""Dispatch: the ledger's queue -> batches -> an executor -> results recorded.

One implementation for the daemon and for ``ocr-inbox ocr``: claiming
batches, attempts and retries, quarantine of an image that kills workers,
pauses while the outbox or the state disk refuses writes. Dispatch is the one
writer of results: it writes each image's JSON (atomically) and then records
it in the ledger, so wherever OCR runs, nothing else writes the outbox.

Which failure is whose:

- the image's (unreadable, corrupt, too large, an engine error on it, a name
  the outbox cannot hold): quarantined at once with its reason;
- a worker dying on it: tried again, quarantined after ``pool.max_attempts``;
- the file's own motion (changed or vanished while read): back to intake,
  which settles it and queues the new version;
- the outbox's or state disk's (full, read-only, unwritable): nobody's; the
  image goes back to the queue and dispatch pauses for ``pool.output_retry_s``.
"""

from __future__ import annotations

import errno
import itertools
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from ocr_inbox.config import PoolSettings
from ocr_inbox.executors import messages as m
from ocr_inbox.executors.base import Executor
from ocr_inbox.ledger import Ledger
from ocr_inbox.outbox import document, names

log = structlog.get_logger(__name__)

#: errors of an output *path* (a directory where the JSON goes, a name too long):
#: that image fails; any other write error is the outbox's and pauses everything
_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EINVAL, errno.ELOOP})


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
        self.paused_until = 0.0
        #: events the ledger could not take yet (state disk refusing writes), oldest first
        self._backlog: list[m.Event] = []
        self._job_ids = itertools.count(1)
        self._batch_ids = itertools.count(1)

    @property
    def paused(self) -> bool:
        return time.monotonic() < self.paused_until

    def pause(self, event: str, **why: object) -> None:
        """Stop handing out work for ``output_retry_s``; logged once per pause."""
        if not self.paused:
            log.error(event, retry_in_s=self.settings.output_retry_s, **why)
        self.paused_until = time.monotonic() + self.settings.output_retry_s

    # -- out ------------------------------------------------------------------

    def fill(self) -> None:
        """Give every idle worker a batch from the queue (smaller batches when it runs short)."""
        if self.paused:
            return
        while self.executor.capacity() > 0:
            per = self.settings.batch_size
            queued = self.ledger.pending_count(per * self.executor.size)
            size = max(1, min(per, math.ceil(queued / self.executor.size)))
            rows = self.ledger.claim(size, time.time())
            if not rows:
                return
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
                self.ledger.failed(rel, "output_name", detail, now, retry=False)
                log.warning("image_failed", path=rel, reason="output_name", detail=detail)
                self.on_result(rel, False)
                return
            self.ledger.release([rel], now)
            reason = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "output_error"
            self.pause("output_paused", reason=reason, path=rel, detail=str(exc))
            return
        self.ledger.done(rel, ev.size, ev.mtime_ns, str(dest), ev.elapsed_ms, now)
        log.info("image_done", path=rel, slot=ev.slot, pages=len(ev.pages), lines=ev.lines, ms=ev.elapsed_ms)
        self.on_result(rel, True)
        self.on_done(rel, ev.size, ev.mtime_ns)

    def _failed(self, ev: m.Failed) -> None:
        rel, now = ev.job.rel, time.time()
        if ev.transient:
            # it moved under the worker: not its fault; intake settles and queues what is there now
            self.ledger.release([rel], now)
            self.on_moved(rel)
            return
        self.ledger.failed(rel, ev.reason, ev.detail, now, retry=False)
        self.on_result(rel, False)

    def _lost(self, ev: m.WorkerLost) -> None:
        now = time.time()
        self.ledger.release([j.rel for j in ev.unstarted], now)
        j = ev.in_flight
        if j is None:
            return
        final = j.attempt >= self.settings.max_attempts
        detail = f"the worker died on it ({ev.cause}); attempt {j.attempt} of {self.settings.max_attempts}"
        self.ledger.failed(j.rel, "worker_crashed", detail, now, retry=not final)
        if final:
            log.error("image_quarantined", path=j.rel, reason="worker_crashed", cause=ev.cause)
            self.on_result(j.rel, False)
        else:
            log.warning("image_retry", path=j.rel, attempt=j.attempt + 1, cause=ev.cause)

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
