"""``ocr-inbox run``: the daemon's main loop.

Three phases, like uvicorn's server: ``startup()`` (ledger, crash recovery,
workers loaded, first scan, READY), ``main_loop()`` (one pass: signals, worker
results, watcher events, settled files, dispatch, quiet folders, periodic
work, STATUS and WATCHDOG) and ``shutdown()`` (STOPPING, drain, persist, exit 0).

The supervisor is the ledger's only writer. Workers write JSON; the PDF child
writes PDFs; both report back here and the ledger records it.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

from ocr_inbox import atomic, cache, config, logs, notify
from ocr_inbox.errors import BadArguments, ConfigError, ExitCode, OcrInboxError
from ocr_inbox.inbox import scan
from ocr_inbox.inbox.stability import StabilityTracker
from ocr_inbox.inbox.watcher import InboxWatcher
from ocr_inbox.ledger import Ledger
from ocr_inbox.ocr.devices import plan_slots
from ocr_inbox.outbox import document
from ocr_inbox.outbox.pdf_job import PdfBuild, PdfRequest, pdf_path_for
from ocr_inbox.pool import messages as m
from ocr_inbox.pool.factory import paddlex_cache_dir, preflight, worker_config_factory
from ocr_inbox.pool.pool import WorkerLost, WorkerPool
from ocr_inbox.signals import SignalQueue

log = structlog.get_logger(__name__)

#: how long the loop sleeps at most when nothing happens
IDLE_TICK_S = 1.0
#: while files are settling they are re-examined this often
SETTLE_TICK_S = 0.25
#: settling files examined per loop pass (keeps the loop responsive after a big scan)
SETTLE_BATCH = 5000
#: how often quiet folders are looked for (more often is wasted work on big ledgers)
QUIET_CHECK_S = 1.0
#: how long a drain (SIGTERM, reload) waits for in-flight batches
DRAIN_S = 120.0


class Supervisor:
    def __init__(self, settings: config.Settings, reload: Callable[[], config.Settings] | None = None) -> None:
        self.s = settings
        self.reload_settings = reload
        self.inbox = settings.paths.inbox
        self.outbox = settings.paths.outbox
        self.state_dir = settings.paths.state_dir
        self.ledger: Ledger | None = None
        self.pool: WorkerPool | None = None
        self.watcher: InboxWatcher | None = None
        self.tracker = StabilityTracker()
        self.signals = SignalQueue()
        self.pdf: PdfBuild | None = None
        self.stopping = False
        self.paused_until = 0.0
        self.next_rescan = 0.0
        self.next_purge = 0.0
        self.next_status = 0.0
        self.next_quiet_check = 0.0
        self.reload_pending = False
        self.job_ids = itertools.count(1)
        self.batch_ids = itertools.count(1)
        #: worker results not yet in the ledger (kept while the state disk refuses writes)
        self.backlog: list[Any] = []
        self.pdf_result: Any = None
        self.pdf_retry: dict[str, float] = {}
        self.watchdog_every = notify.watchdog_interval()
        self.next_watchdog = 0.0
        self.last_status = ""

    # ---------------------------------------------------------------- startup

    def _check_paths(self) -> None:
        if not self.inbox.is_dir():
            raise BadArguments(f"the inbox {self.inbox} is not a directory")
        problem = scan.check_layout(self.inbox, ("outbox", self.outbox), ("state dir", self.state_dir))
        if problem:
            raise BadArguments(problem)
        for d in (self.outbox, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _new_pool(self) -> WorkerPool:
        o = self.s.ocr
        slots = plan_slots(o.devices, o.workers_per_device, o.threads_per_worker)
        return WorkerPool(slots, worker_config_factory(self.s, self.inbox), self.s.pool)

    def startup(self) -> None:
        self._check_paths()
        preflight(self.s)
        now = time.time()
        self.ledger = Ledger.open(self.state_dir)
        recovered = self.ledger.recover(now)
        swept = atomic.sweep_temp_files(self.outbox)
        log.info(
            "starting",
            inbox=str(self.inbox),
            outbox=str(self.outbox),
            state_dir=str(self.state_dir),
            profile=self.s.ocr.profile,
            devices=",".join(self.s.ocr.devices),
            recovered=recovered,
            temp_files_swept=swept,
        )
        self.pool = self._new_pool()
        self._boot_pool()
        if self.stopping:
            return
        self.watcher = InboxWatcher(self.inbox, self.s.watch)
        self.watcher.start()  # before the scan: nothing that arrives during it is missed
        self._full_scan()
        notify.ready()
        log.info("ready", workers=self.pool.size, watcher=self.watcher.kind)

    def _boot_pool(self) -> None:
        """Start workers and wait until every one has loaded its models (or a signal stops us)."""
        assert self.pool is not None
        notify.status(f"loading models on {self.pool.size} workers")
        notify.extend_timeout(self.s.pool.boot_timeout_s + 30)
        self.pool.start()
        while not self.pool.all_ready():
            self._handle_pool_events(self.pool.poll(IDLE_TICK_S, [self.signals.waitable]))
            for sig in self.signals.pop_all():
                if sig in (signal.SIGTERM, signal.SIGINT):
                    log.info("stop_requested", signal=signal.Signals(sig).name, phase="loading")
                    self.stopping = True
                    return
                self.reload_pending = True  # SIGHUP: applied once the workers are up
            notify.status(f"loading models: {self.pool.ready_count()}/{self.pool.size} workers ready")
            notify.extend_timeout(self.s.pool.boot_timeout_s + 30)

    # ---------------------------------------------------------------- scanning

    def _full_scan(self) -> None:
        """Reconcile the ledger with the inbox: new, changed, gone and refused files."""
        assert self.ledger is not None
        t0 = time.monotonic()
        now = time.time()
        if not self.inbox.is_dir():
            # unmounted or removed: keep everything as it is and look again soon
            log.error("inbox_missing", inbox=str(self.inbox), retry_in_s=self.s.pool.output_retry_s)
            self.next_rescan = time.monotonic() + self.s.pool.output_retry_s
            return
        if self.watcher is not None and not self.watcher.healthy:
            log.info("watch_restart", inbox=str(self.inbox))
            self.watcher.restart()
        known = {row.rel: row for row in self.ledger.known_paths()}
        seen: set[str] = set()
        new = refused = 0
        for item in scan.walk(self.inbox, self.s.watch.ignore_patterns()):
            seen.add(item.rel)
            if isinstance(item, scan.Refused):
                refused += self._refuse(item, now)
                continue
            row = known.get(item.rel)
            if row is not None and row.size == item.size and row.mtime_ns == item.mtime_ns and row.status != "gone":
                continue
            self.tracker.seen(item.rel, item.size, item.mtime_ns, time.monotonic())
            new += 1
        gone = 0
        for rel, row in known.items():
            if rel not in seen and row.status in ("pending", "running"):
                self.ledger.gone(rel, now)
                gone += 1
        self.next_rescan = time.monotonic() + self.s.watch.rescan_interval_s if self.s.watch.rescan_interval_s else float("inf")
        log.info("scan_done", files=len(seen), new_or_changed=new, refused=refused, gone=gone, seconds=round(time.monotonic() - t0, 2))

    def _refuse(self, item: scan.Refused, now: float) -> int:
        assert self.ledger is not None
        if self.ledger.refuse(item.rel, item.reason, item.detail, now):
            log.warning("file_refused", path=item.rel, reason=item.reason, detail=item.detail)
            return 1
        return 0

    def _handle_touched(self) -> None:
        """Paths the watcher saw change: track files until they settle; rescan new dirs."""
        assert self.watcher is not None and self.ledger is not None
        root = os.path.realpath(self.inbox)
        for rel in self.watcher.drain():
            path = os.path.join(root, rel)
            if os.path.isdir(path) and not os.path.islink(path):
                for item in scan.walk(self.inbox, self.s.watch.ignore_patterns(), subdir=rel):
                    self._take(item)
                continue
            self._track(rel)

    def _track(self, rel: str) -> None:
        """Look at one path the watcher reported."""
        assert self.ledger is not None
        item = scan.classify(os.path.realpath(self.inbox), rel, self.s.watch.ignore_patterns())
        if item is None:
            if not os.path.lexists(os.path.join(self.inbox, rel)):
                # a file or a whole folder moved away / deleted (the ledger knows names by their printable form)
                name = scan.printable_rel(rel)
                self.tracker.forget(rel)
                self.ledger.gone(name, time.time())
                self.ledger.gone_tree(name, time.time())
            return
        self._take(item)

    def _take(self, item: scan.Candidate | scan.Refused) -> None:
        """A file the scanner classified: refuse it, or follow it until it settles."""
        rel = item.rel
        if isinstance(item, scan.Refused):
            self.tracker.forget(rel)
            self._refuse(item, time.time())
            return
        self.tracker.seen(rel, item.size, item.mtime_ns, time.monotonic())

    def _settle(self) -> None:
        """Re-examine files being written; record the ones that stopped changing.

        Only files whose settle time has run out are looked at (a look sooner
        decides nothing), at most ``SETTLE_BATCH`` a pass so a start-up scan of
        100,000 new files does not stall dispatching, and the settled ones are
        recorded in one ledger transaction.
        """
        assert self.ledger is not None
        root = os.path.realpath(self.inbox)
        now_m = time.monotonic()
        settle_s = self.s.watch.settle_seconds
        for rel in self.tracker.due(now_m, settle_s)[:SETTLE_BATCH]:
            try:
                st = os.stat(os.path.join(root, rel))
            except OSError:
                self.tracker.forget(rel)
                self.ledger.gone(scan.printable_rel(rel), time.time())
                continue
            self.tracker.seen(rel, st.st_size, st.st_mtime_ns, now_m)
        ready: list[tuple[str, int, int]] = []
        for rel in self.tracker.settled(now_m, settle_s):
            self.tracker.forget(rel)
            item = scan.classify(root, rel, self.s.watch.ignore_patterns())
            if isinstance(item, scan.Candidate):
                ready.append((rel, item.size, item.mtime_ns))
            elif isinstance(item, scan.Refused):
                self._refuse(item, time.time())
        if ready:
            self.ledger.observe_many(ready, time.time())
            log.debug("files_settled", count=len(ready))

    # ---------------------------------------------------------------- OCR

    def _dispatch(self) -> None:
        assert self.pool is not None and self.ledger is not None
        if self.stopping or time.monotonic() < self.paused_until:
            return
        root = os.path.realpath(self.inbox)
        for slot in self.pool.idle_slots():
            rows = self.ledger.claim(self.s.pool.batch_size, time.time())
            if not rows:
                return
            jobs = tuple(
                m.Job(
                    next(self.job_ids),
                    r.rel,
                    os.path.join(root, r.rel),
                    str(document.json_path_for(self.outbox, r.rel)),
                    attempt=r.attempts + 1,
                )
                for r in rows
            )
            self.pool.submit(slot, m.Batch(next(self.batch_ids), jobs))

    def _handle_pool_events(self, events: list[Any]) -> None:
        """Record worker results; what the ledger can't take now is kept and retried."""
        self.backlog.extend(events)
        while self.backlog and self.ledger is not None:
            try:
                self._record(self.backlog[0])
            except sqlite3.OperationalError as exc:
                self._state_write_failed(exc)
                return
            self.backlog.pop(0)

    def _state_write_failed(self, exc: Exception) -> None:
        if time.monotonic() >= self.paused_until:
            log.error("ledger_write_failed", error=str(exc), state_dir=str(self.state_dir), retry_in_s=self.s.pool.output_retry_s)
        self.paused_until = time.monotonic() + self.s.pool.output_retry_s

    def _record(self, ev: Any) -> None:
        assert self.ledger is not None
        now = time.time()
        if isinstance(ev, m.Done):
            self.ledger.done(ev.job.rel, ev.size, ev.mtime_ns, ev.job.dest, ev.elapsed_ms, now)
            log.info("image_done", path=ev.job.rel, slot=ev.slot, pages=ev.pages, lines=ev.lines, ms=ev.elapsed_ms)
            if self.s.inbox.delete_processed:
                self._delete_source(ev.job)
        elif isinstance(ev, m.Failed):
            self._on_failed(ev, now)
        elif isinstance(ev, WorkerLost):
            self.ledger.release([j.rel for j in ev.unstarted], now)
            j = ev.in_flight
            if j is not None:
                final = j.attempt >= self.s.pool.max_attempts
                detail = f"the worker died on it ({ev.cause}); attempt {j.attempt} of {self.s.pool.max_attempts}"
                self.ledger.failed(j.rel, "worker_crashed", detail, now, retry=not final)
                if final:
                    log.error("image_quarantined", path=j.rel, reason="worker_crashed", cause=ev.cause)

    def _on_failed(self, ev: m.Failed, now: float) -> None:
        assert self.ledger is not None
        rel = ev.job.rel
        if ev.reason == "vanished":
            self.ledger.gone(rel, now)
        elif ev.reason in ("disk_full", "output_error"):
            # not the image's fault: put it back and pause until the outbox can take writes again
            self.ledger.release([rel], now)
            if time.monotonic() >= self.paused_until:
                log.error("output_paused", reason=ev.reason, detail=ev.detail, retry_in_s=self.s.pool.output_retry_s)
            self.paused_until = time.monotonic() + self.s.pool.output_retry_s
        elif ev.transient:
            self.ledger.release([rel], now)  # changed while read: it will settle and be observed again
            self._track(rel)
        else:
            self.ledger.failed(rel, ev.reason, ev.detail, now, retry=False)

    def _delete_source(self, job: m.Job) -> None:
        try:
            os.unlink(os.path.join(self.inbox, job.rel))
            log.info("source_deleted", path=job.rel)
        except OSError as exc:
            log.warning("source_delete_failed", path=job.rel, error=str(exc))

    # ---------------------------------------------------------------- PDFs

    def _pdfs(self) -> None:
        assert self.ledger is not None
        if self.pdf is not None:
            res = self.pdf_result = self.pdf_result or self.pdf.result()
            if res is None:
                return
            now = time.time()
            if res.ok:
                self.ledger.pdf_done(res.folder, res.pages, now)
                log.info("pdf_done", folder=res.folder, pages=res.pages, problems=res.problems)
            else:
                self.ledger.pdf_failed(res.folder, res.error, now)
                log.error("pdf_failed", folder=res.folder, error=res.error, retry=res.transient)
                if res.transient:
                    self.pdf_retry[res.folder] = time.monotonic() + self.s.pool.output_retry_s
            self.pdf = self.pdf_result = None
            self.next_quiet_check = 0.0  # the next quiet folder may be waiting already
            cache.purge_temp(paddlex_cache_dir(self.s), self.s.cache.purge_older_than_s)
        for folder, due in list(self.pdf_retry.items()):
            if time.monotonic() >= due:
                del self.pdf_retry[folder]
                self.ledger.pdf_rearm(folder, time.time())
        if not self.s.pdf.enabled or self.stopping or time.monotonic() < max(self.paused_until, self.next_quiet_check):
            return
        self.next_quiet_check = time.monotonic() + QUIET_CHECK_S
        quiet = self.ledger.quiet_folders(time.time(), self.s.pdf.quiet_seconds)
        if not quiet:
            return
        folder = quiet[0].folder
        out = pdf_path_for(self.outbox, self.inbox, folder)
        self.ledger.pdf_started(folder, time.time())
        log.info("pdf_start", folder=folder, out=str(out))
        self.pdf = PdfBuild(
            PdfRequest(
                folder=folder,
                image_dir=str(self.inbox / folder),
                json_dir=str(self.outbox / folder),
                out_pdf=str(out),
                chunk_pages=self.s.pdf.chunk_pages,
                first_prefixes=tuple(self.s.pdf.first_prefixes),
                max_image_pixels=self.s.pdf.max_image_pixels,
                inbox=str(self.inbox),
                log_level=self.s.log.level,
                log_format=logs.resolve_format(self.s.log.format, sys.stderr),
            )
        )

    # ---------------------------------------------------------------- signals & reload

    def _handle_signals(self) -> None:
        if self.reload_pending:
            self.reload_pending = False
            self._reload()
        for sig in self.signals.pop_all():
            if sig in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("stop_requested", signal=signal.Signals(sig).name)
                self.stopping = True
            elif sig == signal.SIGHUP:
                self._reload()

    def _reload(self) -> None:
        notify.reloading()
        log.info("reload_requested")
        try:
            new = self.reload_settings() if self.reload_settings else self.s
        except ConfigError as exc:
            log.error("reload_rejected", file=exc.file, key=exc.key, reason=exc.reason, note="keeping the running configuration")
            notify.ready()
            return
        changed = config.diff(self.s, new)
        for key, (old, val) in changed.items():
            log.info("config_changed", key=key, old=old, new=val)
        fixed = [k for k in changed if k.startswith("paths.")]
        if fixed:
            log.warning("reload_needs_restart", keys=",".join(fixed), note="paths change only on restart")
            new = new.model_copy(update={"paths": self.s.paths})
        old = self.s
        self.s = new
        logs.configure(new.log.level, new.log.format)
        if old.watch != new.watch and self.watcher is not None:
            self.watcher.stop()
            self.watcher = InboxWatcher(self.inbox, new.watch)
            self.watcher.start()
        if old.ocr != new.ocr or old.pool != new.pool:
            try:
                preflight(new)
            except OcrInboxError as exc:
                log.error("reload_rejected", reason=str(exc), note="keeping the running workers")
                self.s = new.model_copy(update={"ocr": old.ocr, "pool": old.pool})
            else:
                log.info("workers_restarting", reason="model or pool settings changed")
                self._drain_pool(DRAIN_S)
                self.pool = self._new_pool()
                self._boot_pool()
        if not changed:
            log.info("config_unchanged")
        notify.ready()

    # ---------------------------------------------------------------- the loop

    def _healthy(self) -> bool:
        # called from the loop itself, so a ping also proves the loop turns
        return self.pool is not None and self.pool.healthy()

    def _periodic(self) -> None:
        now_m = time.monotonic()
        if now_m >= self.next_rescan:
            self._full_scan()
        if now_m >= self.next_purge:
            n = cache.purge_temp(paddlex_cache_dir(self.s), self.s.cache.purge_older_than_s)
            if n:
                log.info("cache_purged", files=n)
            self.next_purge = now_m + self.s.cache.purge_interval_s
        if now_m >= self.next_status:
            self._status()
            self.next_status = now_m + 2.0
        if self.watchdog_every and now_m >= self.next_watchdog and self._healthy():
            notify.watchdog()
            self.next_watchdog = now_m + self.watchdog_every

    def _status(self) -> None:
        assert self.ledger is not None
        st = self.ledger.stats(time.time())
        paused = " (output paused)" if time.monotonic() < self.paused_until else ""
        text = (
            f"queued {st.queued}, running {st.running}, done {st.done}, failed {st.failed}, "
            f"{st.rate:.2f} img/s, folders waiting for PDF {st.folders_waiting}{paused}"
        )
        if text != self.last_status:
            notify.status(text)
            self.last_status = text

    def main_loop(self) -> None:
        assert self.pool is not None and self.watcher is not None
        while not self.stopping:
            timeout = SETTLE_TICK_S if len(self.tracker) else IDLE_TICK_S
            extra: list[Any] = [self.signals.waitable, self.watcher.waitable]
            if self.pdf is not None:
                extra += self.pdf.waitables
            self._handle_pool_events(self.pool.poll(timeout, extra))
            self._handle_signals()
            if self.stopping:
                break
            try:
                self._handle_touched()
                self._settle()
                self._dispatch()
                self._pdfs()
                self._periodic()
            except sqlite3.OperationalError as exc:  # disk full, I/O error: the transaction rolled back
                self._state_write_failed(exc)

    # ---------------------------------------------------------------- shutdown

    def _drain_pool(self, deadline_s: float) -> None:
        """Let in-flight batches finish (recording their results), then stop the workers."""
        if self.pool is None:
            return
        end = time.monotonic() + deadline_s
        while self.pool.busy() and time.monotonic() < end:
            self._handle_pool_events(self.pool.poll(0.5))
        unfinished = self.pool.in_flight_jobs()
        self.pool.stop()
        if unfinished and self.ledger is not None:
            self.ledger.release([j.rel for j in unfinished], time.time())
            log.info("returned_to_queue", images=len(unfinished))

    def shutdown(self) -> None:
        notify.stopping()
        log.info("stopping")
        if self.watcher is not None:
            self.watcher.stop()
        if self.pdf is not None:
            self.pdf.cancel()  # atomic output: the folder is rebuilt on the next start
            log.info("pdf_cancelled", folder=self.pdf.req.folder)
            self.pdf = None
        self._drain_pool(DRAIN_S)
        if self.ledger is not None:
            self.ledger.close()
        log.info("stopped")

    def run(self) -> int:
        with self.signals.installed():
            try:
                self.startup()
                if not self.stopping:
                    self.main_loop()
            finally:
                self.shutdown()
        return int(ExitCode.ok)


def run(settings: config.Settings, reload: Callable[[], config.Settings] | None = None) -> int:
    return Supervisor(settings, reload).run()

