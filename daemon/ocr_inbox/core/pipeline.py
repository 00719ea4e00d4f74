"""The core: the stages built once and wired together; ``run`` and ``ocr`` only drive it.

    intake (inbox/intake.py)       the file system -> ledger observations
    dispatch (core/dispatch.py)    ledger queue -> executor -> JSON + ledger
    folder PDFs (core/folder_pdfs.py)  quiet folders -> PDF builds

The stages do not call each other: dispatch and the PDF stage return events
(``core/events.py``) and ``_route`` hands each to the stage that needs it — a
file that moved under a worker or a build goes back to intake, a finished image
wakes its folder's PDF, and with ``[inbox] delete_processed`` a published PDF
(or, without PDFs, a done image) deletes its sources. Every event also goes back
to the driver, which counts what it shows (``ocr``'s progress bar).

One pass is ``step``: wait for results (or whatever the driver waits on), record
them, then intake, ``ocr-inbox retry``'s requests, hand out work, the PDFs.

"Drain" means one thing here: let an executor's batches in flight finish (their
results recorded), stop it, and return what it did not finish to the queue. The
stop drains the workers; a reload that changes the models drains the old pool
(``reload``: a new pool boots beside the running one, or in its place where the
executor cannot have two, as Ray).

Two modes: the daemon's (a watcher, settle time, periodic rescans, PDFs after
``quiet_seconds``) and the one-shot run's (``oneshot``: the tree as it is, PDFs
streamed while OCR goes on, no retry requests).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import structlog

from ocr_inbox import config, executors
from ocr_inbox.core.dispatch import Dispatch, prepare_requests
from ocr_inbox.core.events import Event, ImageDone, ImageFailed, ImageMoved, PdfPublished
from ocr_inbox.core.folder_pdfs import FolderPdfs
from ocr_inbox.executors.base import Executor
from ocr_inbox.executors.setup import preflight
from ocr_inbox.inbox.cleanup import delete_source
from ocr_inbox.inbox.intake import Intake
from ocr_inbox.ledger import ImageStatus, Ledger
from ocr_inbox.outbox.pdf_job import PdfPage
from ocr_inbox.service import notify, runs
from ocr_inbox.support import atomic, paths
from ocr_inbox.support.errors import BadArguments, EngineUnavailable, OcrInboxError, WorkerBootError
from ocr_inbox.support.recorder import Recorder

log = structlog.get_logger(__name__)

#: while a reload waits (new workers booting, old ones finishing) the working pool is served this often
SETTLE_TICK_S = 0.25
#: a stop's drain looks at the workers this often
DRAIN_TICK_S = 0.5
#: a one-shot run leaves alone the temp files younger than this: a daemon may be writing into the same outbox
ONESHOT_SWEEP_AGE_S = 60.0

#: what the driver does on each pass of a long wait inside the pipeline (a reload's boot, an old
#: pool's last batches): note its signals, feed the watchdog for the executor given; False once a
#: stop was asked
Tend = Callable[[Executor], bool]
#: makes an executor for the settings (``executors.create``; a test gives a fake)
MakeExecutor = Callable[[config.Settings, Path, int | None], Executor]


def _go_on(executor: Executor) -> bool:
    return True


def check_paths(inbox: Path, outbox: Path, state_dir: Path) -> None:
    """Both commands, before anything is opened: the inbox is a directory, and the outbox and
    the state dir are neither inside it nor above it."""
    if not inbox.is_dir():
        raise BadArguments(f"the inbox {inbox} is not a directory")
    problem = paths.check_layout(inbox, ("outbox", outbox), ("state dir", state_dir))
    if problem:
        raise BadArguments(problem)


class Pipeline:
    def __init__(
        self,
        settings: config.Settings,
        ledger: Ledger,
        inbox: Path,
        outbox: Path,
        *,
        oneshot: bool = False,
        pdfs: bool = True,
        recorder: Recorder = Recorder(),
        make_executor: MakeExecutor = executors.create,
    ) -> None:
        self.settings = settings
        self._make_executor = make_executor
        self.ledger = ledger
        self.inbox = inbox
        self.outbox = outbox
        self.oneshot = oneshot
        watch = settings.watch
        if oneshot:  # no settle time (the tree is taken as it is) and no periodic rescan
            watch = watch.model_copy(update={"settle_seconds": 0.0, "rescan_interval_s": 0.0})
        self.intake = Intake(inbox, outbox, ledger, watch, watch=not oneshot, recorder=recorder,
                             mode=settings.outbox.mode)
        #: the daemon's is always there (a reload may turn PDFs on); a one-shot run's only with --pdf
        self.pdfs = FolderPdfs(ledger, settings, inbox, outbox, recorder, stream=oneshot) if pdfs else None
        self.dispatch = Dispatch(ledger, outbox, settings.pool, recorder=recorder)
        self._executor: Executor | None = None
        #: the executor was drained (stopped): a second drain has nothing to do
        self._drained = False
        #: the driver asked to stop while a reload waited (``Tend``)
        self._stop_asked = False

    # ---------------------------------------------------------------- start

    def recover(self, state_dir: Path) -> tuple[int, int]:
        """What a crash left: running images back to the queue, temp files swept from the outbox;
        the run recorded for ``ocr-inbox search``; the daemon's ``ocr-inbox retry`` channel made.
        Returns (images recovered, temp files swept)."""
        recovered = self.ledger.recover(time.time())
        runs.record(state_dir, self.inbox, self.outbox)
        if not self.oneshot:
            prepare_requests(state_dir)  # `ocr-inbox retry`'s channel, the daemon's alone
        swept = atomic.sweep_temp_files(self.outbox, older_than_s=ONESHOT_SWEEP_AGE_S if self.oneshot else 0.0)
        return recovered, swept

    def create_workers(self, max_workers: int | None = None) -> Executor:
        """The configured executor, not started yet (``max_workers``: no more than there are images)."""
        self._executor = self._make_executor(self.settings, self.inbox, max_workers)
        self._drained = False
        return self._executor

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise RuntimeError("the pipeline has no workers yet (create_workers)")
        return self._executor

    @property
    def has_workers(self) -> bool:
        return self._executor is not None

    @property
    def unfinished(self) -> bool:
        """Images queued, running or settling: a one-shot run goes on while there are."""
        return bool(self.ledger.unfinished() or self.intake.settling)

    # ---------------------------------------------------------------- one pass

    def wait(self, timeout: float, waitables: Iterable[Any] = ()) -> list[Event]:
        """Wait up to ``timeout`` for the workers' results (or any of ``waitables``) and record them."""
        return self._route(self.dispatch.record(self.executor.poll(timeout, waitables)))

    @property
    def waitables(self) -> list[Any]:
        """What the stages wait on besides the workers (the watcher, a PDF build)."""
        return [*self.intake.waitables, *(self.pdfs.waitables if self.pdfs else [])]

    def step(self, timeout: float, waitables: Sequence[Any] = (), go_on: Callable[[], bool] = lambda: True) -> list[Event]:
        """One pass: wait for results and record them, then — unless ``go_on`` (the driver's look at its
        signals) says no — intake, retry requests, hand out work, the folder PDFs. Returns the events."""
        events = self.wait(timeout, [*waitables, *self.waitables])
        if not go_on():
            return events
        self.intake.step()
        if not self.oneshot:
            self.dispatch.take_requests()  # `ocr-inbox retry` while we hold the ledger
        self.dispatch.fill(self.executor)
        if self.pdfs is not None:
            quiet = 0.0 if self.oneshot else None  # a one-shot run's tree does not change: build at once
            events += self._route(self.pdfs.step(may_start=not self.dispatch.paused, quiet_seconds=quiet))
        return events

    def due_in(self) -> float | None:
        """Seconds until the next folder turns quiet (the driver wakes then); None: none waits."""
        if self.pdfs is None or self.dispatch.paused:
            return None
        return self.pdfs.due_in()

    def finish_pdfs(self) -> int:
        """Finish the build under way and build every folder's PDF still due, one after the other
        (a one-shot run's end); returns how many were published in this run."""
        pdfs = self.pdfs
        if pdfs is None:
            return 0
        pdfs.look_now()
        while True:
            self._route(pdfs.step(may_start=True, quiet_seconds=0.0))
            if not pdfs.busy:
                return pdfs.published
            wait(pdfs.waitables)
            self._route(pdfs.step(may_start=False))

    # ---------------------------------------------------------------- one channel

    def _route(self, events: list[Event]) -> list[Event]:
        """Hand each event to the stage that needs it; returns them for the driver."""
        for ev in events:
            if isinstance(ev, ImageMoved):
                # settled again, its new version queued; hashed even if its version looks the same
                # (a PDF build found its bytes are not the ones its JSON was made from)
                self.intake.track(ev.rel, verify=True)
            elif isinstance(ev, ImageDone | ImageFailed):
                if self.pdfs is not None:
                    self.pdfs.wake(ev.rel)  # its folder may be complete: no tick to wait for
                if isinstance(ev, ImageDone) and self._deletes_after_json():
                    self._delete_sources((PdfPage(ev.rel, ev.size, ev.mtime_ns),))
            elif isinstance(ev, PdfPublished) and self.settings.inbox.delete_processed:
                self._delete_sources(ev.pages)
        return events

    def _deletes_after_json(self) -> bool:
        """Without PDFs, ``delete_processed`` deletes a source once its JSON is recorded (the daemon;
        a one-shot run deletes nothing without a PDF)."""
        s = self.settings
        return s.inbox.delete_processed and not s.pdf.enabled and not self.oneshot

    def _delete_sources(self, pages: Iterable[PdfPage]) -> None:
        """``[inbox] delete_processed``: delete each source if it is still the version done."""
        root = str(self.inbox.resolve())
        for page in pages:
            row = self.ledger.get(page.rel)
            if row is None or row.status != ImageStatus.done or (row.size, row.mtime_ns) != (page.size, page.mtime_ns):
                continue  # a newer version arrived meanwhile: keep it
            # the whole version the ledger holds (ctime, inode too): a file rewritten since is kept
            why = delete_source(root, page.rel, page.size, page.mtime_ns, ctime_ns=row.ctime_ns, ino=row.ino)
            if why is None:
                self.ledger.source_deleted(page.rel, page.size, page.mtime_ns, time.time())
                log.info("source_deleted", path=page.rel)
            else:
                log.warning("source_kept", path=page.rel, reason=why)

    # ---------------------------------------------------------------- the drain, the stop

    def drain(self, deadline_s: float) -> list[Event]:
        """Let the batches in flight finish (at most ``deadline_s``, results recorded), stop the
        workers; what they did not finish goes back to the queue."""
        if self._executor is None or self._drained:
            return []
        self._drained = True
        return self._drain(self._executor, deadline_s, DRAIN_TICK_S, (), _go_on, beside=False)

    def stop(self, deadline_s: float) -> list[Event]:
        """The end: no more watching, a PDF build under way cancelled (nothing half-built is
        published: the next start builds it), the workers drained."""
        self.intake.stop()
        if self.pdfs is not None:
            self.pdfs.cancel()
        return self.drain(deadline_s)

    def _drain(
        self, ex: Executor, deadline_s: float, tick: float, waitables: Sequence[Any], tend: Tend, *, beside: bool
    ) -> list[Event]:
        """Drain ``ex``. ``beside``: another pool (``self.executor``) works meanwhile."""
        events: list[Event] = []
        end = time.monotonic() + deadline_s
        while ex.busy() and time.monotonic() < end:
            if beside:
                events += self._work_beside(waitables, tend)
                events += self._route(self.dispatch.record(ex.poll(0)))
            else:
                events += self._route(self.dispatch.record(ex.poll(tick, waitables)))
                self._stop_asked |= not tend(ex)
        unfinished = ex.in_flight()
        ex.stop()
        events += self._route(self.dispatch.record(()))
        if unfinished:
            self.ledger.release([j.rel for j in unfinished], time.time())
            log.info("returned_to_queue", images=len(unfinished))
        return events

    # ---------------------------------------------------------------- reload

    def reload(
        self, new: config.Settings, waitables: Sequence[Any], tend: Tend, drain_s: float, *, stopping: bool = False
    ) -> config.Settings:
        """Apply ``new`` settings (a SIGHUP); returns those in effect: the running workers' model,
        pool and executor settings stay when the new ones are refused or cannot boot.
        ``waitables`` and ``tend``: the driver's, served while new workers boot or old ones
        finish; ``stopping``: a stop was asked already (new workers are then not waited for)."""
        old, self.settings = self.settings, new
        self._stop_asked = stopping
        if old.watch != new.watch:
            self.intake.apply(new.watch)
        if old.ocr != new.ocr or old.pool != new.pool or old.executor != new.executor:
            try:
                preflight(new)
            except OcrInboxError as exc:
                rejected: str | None = str(exc)
            else:
                rejected = self._replace_workers(old, waitables, tend, drain_s)
            if rejected is not None:
                log.error("reload_rejected", reason=rejected, note="keeping the running workers")
                self.settings = new.model_copy(update={"ocr": old.ocr, "pool": old.pool, "executor": old.executor})
        self.dispatch.settings = self.settings.pool
        if self.pdfs is not None:
            self.pdfs.settings = self.settings
        self.intake.mode = self.settings.outbox.mode
        return self.settings

    def _replace_workers(self, previous: config.Settings, waitables: Sequence[Any], tend: Tend, drain_s: float) -> str | None:
        """Boot a pool for ``self.settings`` beside the running one, which keeps working; switch
        once every new worker is ready, then drain the old pool.

        Returns why the new pool was given up (it could not boot in time, or at all);
        the running pool is then untouched. Two pools at once hold the models twice
        for a while (docs/OPERATIONS.md). An executor that cannot have a second pool
        beside it (Ray) is replaced in place instead (``_replace_in_place``).
        """
        old = self.executor
        if not old.boots_beside:
            return self._replace_in_place(previous, waitables, tend, drain_s)
        log.info("workers_restarting", reason="model or pool settings changed")
        new = self._make_executor(self.settings, self.inbox, None)
        failure = self._boot_beside(new, waitables, tend)
        if failure is not None:
            new.stop()
            return failure
        self._executor, self.dispatch.settings = new, self.settings.pool  # from here on only the new pool gets work
        log.info("workers_switched", workers=new.size, old_busy=old.busy())
        self._drain(old, drain_s, SETTLE_TICK_S, waitables, tend, beside=True)
        return None

    def _replace_in_place(self, previous: config.Settings, waitables: Sequence[Any], tend: Tend, drain_s: float) -> str | None:
        """The running workers finish their batches and stop, then the new ones boot and take
        work as each is ready. If they cannot boot, workers with the ``previous`` settings
        are started again (and if those fail too, WorkerBootError: systemd restarts the daemon)."""
        log.info("workers_restarting", reason="model, pool or executor settings changed", mode="in_place")
        self._drain(self.executor, drain_s, SETTLE_TICK_S, waitables, tend, beside=False)
        new = self._make_executor(self.settings, self.inbox, None)
        self._executor, self.dispatch.settings = new, self.settings.pool  # it takes work as its workers get ready
        failure = self._boot_beside(new, waitables, tend)
        if failure is None:
            log.info("workers_switched", workers=new.size, old_busy=False)
            return None
        self._drain(new, drain_s, SETTLE_TICK_S, waitables, tend, beside=False)
        if self._stop_asked:
            return failure
        back = self._make_executor(previous, self.inbox, None)
        self._executor, self.dispatch.settings = back, previous.pool
        log.warning("workers_restoring", reason=failure, workers=back.size)
        again = self._boot_beside(back, waitables, tend)
        if again is not None:
            raise WorkerBootError(f"the workers with the running settings did not start again either: {again}")
        return failure

    def _boot_beside(self, new: Executor, waitables: Sequence[Any], tend: Tend) -> str | None:
        """Start ``new`` and wait for all its workers while the running pool goes on working;
        None once they are ready, else why not. Only ``new``'s own failures are caught here."""
        limit = self.settings.pool.boot_timeout_s
        end = time.monotonic() + limit
        notify.status(f"reloading: loading models on {new.size} new workers, the running ones go on")
        try:
            new.start()
            # (Ray adds actors after it connects, as it finds nodes: none yet is not ready)
            while new.size == 0 or new.ready_count() < new.size:
                if self._stop_asked:
                    return "a stop was requested while the new workers loaded"
                if time.monotonic() > end:
                    return f"timeout: the new workers were not ready within pool.boot_timeout_s = {limit:g} s"
                notify.extend_timeout(limit + 30)
                self._work_beside(waitables, tend)
                if new is not self.executor:  # (in place, new is the working one: its events are recorded)
                    # Ready / BootFailed: the executor counts them itself; dispatch counts exits (metrics)
                    self._route(self.dispatch.record(new.poll(0)))
        except (EngineUnavailable, WorkerBootError) as exc:
            return str(exc)
        return None

    def _work_beside(self, waitables: Sequence[Any], tend: Tend) -> list[Event]:
        """One pass of the working pool (``self.executor``) while another one boots or finishes
        its last batches: record, let the driver tend (signals, watchdog), hand out work."""
        ex = self.executor
        events = self._route(self.dispatch.record(ex.poll(SETTLE_TICK_S, waitables)))
        self._stop_asked |= not tend(ex)
        try:
            self.dispatch.fill(ex)
        except sqlite3.OperationalError as exc:  # disk full: the transaction rolled back
            self.dispatch.state_write_failed(exc)
        return events
