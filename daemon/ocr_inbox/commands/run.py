"""``ocr-inbox run``: the daemon's lifecycle, signals and timers; the work is in the stages.

    intake (inbox/intake.py)   the file system -> ledger observations
    dispatch (dispatch.py)     ledger queue -> executor -> JSON + ledger
    folder PDFs (folder_pdfs.py) quiet folders -> PDF builds

Three phases, like uvicorn's server: start (ledger, metrics server, crash
recovery, workers loaded, watcher and first scan, READY), the loop (one pass:
wait, record results, signals, the stages, timers) and stop (STOPPING, drain,
exit 0).
Everything the loop runs is built whole before it starts (``_Stages``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker

import structlog

from ocr_inbox import config, executors
from ocr_inbox.core.dispatch import Dispatch, prepare_requests
from ocr_inbox.core.folder_pdfs import FolderPdfs
from ocr_inbox.executors.base import Executor
from ocr_inbox.executors.setup import preflight
from ocr_inbox.inbox.cleanup import delete_source
from ocr_inbox.inbox.intake import Intake
from ocr_inbox.ledger import Ledger, reports
from ocr_inbox.service import live, metrics, notify, runs
from ocr_inbox.support import atomic, cache, logs, paths, statedir
from ocr_inbox.support.errors import (
    BadArguments,
    ConfigError,
    EngineUnavailable,
    ExitCode,
    OcrInboxError,
    WorkerBootError,
)
from ocr_inbox.support.signals import SignalQueue

log = structlog.get_logger(__name__)

#: how long the loop sleeps at most when nothing happens
IDLE_TICK_S = 1.0
#: while files are settling they are re-examined this often
SETTLE_TICK_S = 0.25
#: how long a drain (SIGTERM, reload) waits for in-flight batches
DRAIN_S = 120.0
#: STATUS= is refreshed this often (only sent when it changed)
STATUS_EVERY_S = 2.0
#: the ledger's upkeep (forget long-gone images, checkpoint and cut the WAL) this often
MAINTAIN_EVERY_S = 3600.0


@dataclass
class _Stages:
    ledger: Ledger
    intake: Intake
    dispatch: Dispatch
    pdfs: FolderPdfs

    @property
    def executor(self) -> Executor:
        return self.dispatch.executor


class Daemon:
    def __init__(self, settings: config.Settings, reload: Callable[[], config.Settings] | None = None) -> None:
        self.s = settings
        self.reload_settings = reload
        self.inbox = settings.paths.inbox
        self.outbox = settings.paths.outbox
        self.signals = SignalQueue()
        self.stopping = False
        self.reload_pending = False
        self.watchdog_every = notify.watchdog_interval()
        self.next_watchdog = self.next_status = self.next_purge = self.next_maintain = 0.0
        self.last_status = ""
        self.last_live: object = None
        #: what intake did not take (``Intake.report``), for status
        self.inbox_report: dict[str, object] = {}
        #: recorded always, served only with [metrics] listen (``serving``)
        self.metrics = metrics.Metrics()
        self.metrics_address = ""

    # ---------------------------------------------------------------- start

    def run(self) -> int:
        try:
            return self._run()
        finally:
            end_children()

    def _run(self) -> int:
        with self.signals.installed():
            self._check_paths()
            preflight(self.s)
            with contextlib.ExitStack() as stack:
                ledger = stack.enter_context(Ledger.open(self.s.paths.state_dir))
                # after the ledger: a second daemon on this state dir fails on its lock, not on the port
                self.metrics_address = stack.enter_context(metrics.serving(self.s.metrics.listen, self.metrics))
                st = self._assemble(ledger)
                try:
                    if self._boot(st):
                        st.intake.start()
                        notify.ready()
                        log.info("ready", workers=st.executor.size, watcher=st.intake.watcher_kind)
                        self._loop(st)
                finally:
                    self._stop(st)
        return int(ExitCode.ok)

    def _check_paths(self) -> None:
        if not self.inbox.is_dir():
            raise BadArguments(f"the inbox {self.inbox} is not a directory")
        problem = paths.check_layout(self.inbox, ("outbox", self.outbox), ("state dir", self.s.paths.state_dir))
        if problem:
            raise BadArguments(problem)
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.s.paths.state_dir.mkdir(mode=statedir.DIR_MODE, parents=True, exist_ok=True)

    def _assemble(self, ledger: Ledger) -> _Stages:
        recovered = ledger.recover(time.time())
        runs.record(self.s.paths.state_dir, self.inbox, self.outbox)  # for `ocr-inbox search`
        prepare_requests(self.s.paths.state_dir)  # `ocr-inbox retry`'s channel, ours alone
        swept = atomic.sweep_temp_files(self.outbox)
        log.info(
            "starting",
            inbox=str(self.inbox),
            outbox=str(self.outbox),
            state_dir=str(self.s.paths.state_dir),
            profile=self.s.ocr.profile,
            devices=",".join(self.s.ocr.devices),
            recovered=recovered,
            temp_files_swept=swept,
        )
        intake = Intake(self.inbox, self.outbox, ledger, self.s.watch, watch=True, recorder=self.metrics,
                        mode=self.s.outbox.mode)
        pdfs = FolderPdfs(ledger, self.s, self.inbox, self.outbox, recorder=self.metrics)
        dispatch = Dispatch(
            ledger,
            executors.create(self.s, self.inbox),
            self.outbox,
            self.s.pool,
            on_moved=intake.track,
            on_done=lambda rel, size, mtime_ns: self._done(ledger, rel, size, mtime_ns),
            on_result=lambda rel, ok: pdfs.wake(rel),  # its folder may be complete: no tick to wait for
            recorder=self.metrics,
        )
        return _Stages(ledger, intake, dispatch, pdfs)

    def _boot(self, st: _Stages) -> bool:
        """Start the workers and wait until every one has loaded its models; False if told to stop."""
        ex = st.executor
        notify.status(f"loading models on {ex.size} workers")
        notify.extend_timeout(self.s.pool.boot_timeout_s + 30)
        ex.start()
        while ex.ready_count() < ex.size:
            st.dispatch.record(ex.poll(IDLE_TICK_S, [self.signals.waitable]))
            for sig in self.signals.pop_all():
                if sig in (signal.SIGTERM, signal.SIGINT):
                    log.info("stop_requested", signal=signal.Signals(sig).name, phase="loading")
                    self.stopping = True
                    return False
                self.reload_pending = True  # SIGHUP: applied once the workers are up
            notify.status(f"loading models: {ex.ready_count()}/{ex.size} workers ready")
            self._live(ex, "")
            notify.extend_timeout(self.s.pool.boot_timeout_s + 30)
        return True

    # ---------------------------------------------------------------- the loop

    def _loop(self, st: _Stages) -> None:
        while not self.stopping:
            timeout = SETTLE_TICK_S if st.intake.settling else IDLE_TICK_S
            due = st.pdfs.due_in() if not st.dispatch.paused else None
            if due is not None:  # a folder turns quiet before the tick: its PDF starts then
                timeout = min(timeout, due)
            waitables = [self.signals.waitable, *st.intake.waitables, *st.pdfs.waitables]
            st.dispatch.record(st.executor.poll(timeout, waitables))
            self._handle_signals(st)
            if self.stopping:
                break
            try:
                st.intake.step()
                st.dispatch.take_requests()  # `ocr-inbox retry` while we hold the ledger
                st.dispatch.fill()
                st.pdfs.step(may_start=not st.dispatch.paused)
                while st.pdfs.moved:
                    st.intake.track(st.pdfs.moved.pop())
                self._timers(st)
            except sqlite3.OperationalError as exc:  # disk full, I/O error: the transaction rolled back
                st.dispatch.state_write_failed(exc)

    def _done(self, ledger: Ledger, rel: str, size: int, mtime_ns: int) -> None:
        """Without PDFs, ``delete_processed`` deletes a source once its JSON is recorded."""
        if not (self.s.inbox.delete_processed and not self.s.pdf.enabled):
            return
        why = delete_source(str(self.inbox.resolve()), rel, size, mtime_ns)
        if why is None:
            ledger.source_deleted(rel, size, mtime_ns, time.time())
            log.info("source_deleted", path=rel)
        else:
            log.warning("source_kept", path=rel, reason=why)

    def _timers(self, st: _Stages) -> None:
        now_m = time.monotonic()
        if now_m >= self.next_purge:
            n = cache.purge_temp(cache.paddlex_cache_dir(self.s.paths.resolved_cache_dir()), self.s.cache.purge_older_than_s)
            if n:
                log.info("cache_purged", files=n)
            self.next_purge = now_m + self.s.cache.purge_interval_s
        if now_m >= self.next_maintain:
            self._maintain(st.ledger)
            self.next_maintain = now_m + MAINTAIN_EVERY_S
        if now_m >= self.next_status:
            self._status(st)
            self.next_status = now_m + STATUS_EVERY_S
        self._watchdog(st.executor)

    def _maintain(self, ledger: Ledger) -> None:
        """Forget images gone longer than [ledger] allows; move the WAL into the database."""
        keep = self.s.ledger
        n = ledger.prune_gone(time.time() - keep.gone_retention_days * 86400, keep.max_gone_images)
        if n:
            log.info("ledger_pruned", gone_images=n, retention_days=keep.gone_retention_days)
        if not ledger.checkpoint():
            log.info("ledger_checkpoint_deferred", note="a reader holds an old snapshot; tried again later")

    def _watchdog(self, executor: Executor) -> None:
        # pinged from a loop that records results, and only while some worker can work: a ping proves both
        now_m = time.monotonic()
        if self.watchdog_every and now_m >= self.next_watchdog and executor.healthy():
            notify.watchdog()
            self.next_watchdog = now_m + self.watchdog_every

    def _status(self, st: _Stages) -> None:
        t = reports.stats(st.ledger, time.time())
        why = st.dispatch.pause_reason
        paused = f" ({why})" if why else ""
        note = st.executor.status_note()  # e.g. a Ray cluster that is unreachable
        paused += f"; {note}" if note else ""
        text = (
            f"queued {t.queued}, running {t.running}, done {t.done}, failed {t.failed}, "
            f"{t.rate:.2f} img/s, folders waiting for PDF {t.folders_waiting}{paused}"
        )
        if text != self.last_status:
            notify.status(text)
            self.last_status = text
        self.inbox_report = st.intake.report()
        self._live(st.executor, why or "")
        if self.metrics_address:
            d = st.dispatch
            self.metrics.ledger(metrics.LedgerState(
                t, tuple(reports.failed_by_reason(st.ledger)), reports.size_bytes(st.ledger), d.paused, d.storm
            ))

    def _live(self, executor: Executor, paused: str) -> None:
        """``status``'s view of the workers (per node), rewritten only when it changed."""
        view = (executor.workers_view(), executor.status_note(), paused, self.inbox_report, self.s.pdf.quiet_seconds)
        self.metrics.workers(view[0])
        if view == self.last_live:
            return
        try:
            live.write(self.s.paths.state_dir, self.s.executor.kind, *view)
        except (OSError, OcrInboxError) as exc:  # a full state disk, or a file in live.json's way: status shows less, the work goes on
            log.warning("live_view_not_written", error=str(exc))
            return
        self.last_live = view

    # ---------------------------------------------------------------- signals & reload

    def _handle_signals(self, st: _Stages) -> None:
        if self.reload_pending:
            self.reload_pending = False
            self._reload(st)
        for sig in self.signals.pop_all():
            if sig in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("stop_requested", signal=signal.Signals(sig).name)
                self.stopping = True
            elif sig == signal.SIGHUP:
                self._reload(st)

    def _reload(self, st: _Stages) -> None:
        notify.reloading()
        log.info("reload_requested")
        try:
            new = self.reload_settings() if self.reload_settings else self.s
        except ConfigError as exc:
            log.error("reload_rejected", file=exc.file, key=exc.key, reason=exc.reason, note="keeping the running configuration")
            notify.ready()
            return
        changed = config.diff(self.s, new)
        for key, (was, now) in changed.items():
            log.info("config_changed", key=key, old=was, new=now)
        # the metrics' address too: under systemd, opening the network needs the unit's drop-in,
        # which takes effect on restart only (docs/OPERATIONS.md)
        fixed = [k for k in changed if k.startswith("paths.") or k == "metrics.listen"]
        if fixed:
            log.warning("reload_needs_restart", keys=",".join(fixed), note="paths and metrics.listen change only on restart")
            new = new.model_copy(update={"paths": self.s.paths, "metrics": self.s.metrics})
        old, self.s = self.s, new
        logs.configure(new.log.level, new.log.format)
        if old.watch != new.watch:
            st.intake.apply(new.watch)
        if old.ocr != new.ocr or old.pool != new.pool or old.executor != new.executor:
            try:
                preflight(new)
            except OcrInboxError as exc:
                rejected: str | None = str(exc)
            else:
                rejected = self._replace_workers(st, old)
            if rejected is not None:
                log.error("reload_rejected", reason=rejected, note="keeping the running workers")
                self.s = new.model_copy(update={"ocr": old.ocr, "pool": old.pool, "executor": old.executor})
        st.dispatch.settings = self.s.pool
        st.pdfs.settings = self.s
        st.intake.mode = self.s.outbox.mode
        if not changed:
            log.info("config_unchanged")
        notify.ready()

    def _replace_workers(self, st: _Stages, previous: config.Settings) -> str | None:
        """Boot a pool for ``self.s`` beside the running one, which keeps working; switch
        once every new worker is ready, then let the old pool finish its batches.

        Returns why the new pool was given up (it could not boot in time, or at all);
        the running pool is then untouched. Two pools at once hold the models twice
        for a while (docs/OPERATIONS.md). An executor that cannot have a second pool
        beside it (Ray) is replaced in place instead (``_replace_in_place``).
        """
        old = st.executor
        if not old.boots_beside:
            return self._replace_in_place(st, previous)
        log.info("workers_restarting", reason="model or pool settings changed")
        new = executors.create(self.s, self.inbox)
        failure = self._boot_beside(st, new)
        if failure is not None:
            new.stop()
            return failure
        st.dispatch.executor, st.dispatch.settings = new, self.s.pool  # from here on only the new pool gets work
        log.info("workers_switched", workers=new.size, old_busy=old.busy())
        self._retire(st, old, beside=True)
        return None

    def _replace_in_place(self, st: _Stages, previous: config.Settings) -> str | None:
        """The running workers finish their batches and stop, then the new ones boot and take
        work as each is ready. If they cannot boot, workers with the ``previous`` settings
        are started again (and if those fail too, the daemon exits: systemd restarts it)."""
        log.info("workers_restarting", reason="model, pool or executor settings changed", mode="in_place")
        self._retire(st, st.executor, beside=False)
        new = executors.create(self.s, self.inbox)
        st.dispatch.executor, st.dispatch.settings = new, self.s.pool  # it takes work as its workers get ready
        failure = self._boot_beside(st, new)
        if failure is None:
            log.info("workers_switched", workers=new.size, old_busy=False)
            return None
        self._retire(st, new, beside=False)
        if self.stopping:
            return failure
        back = executors.create(previous, self.inbox)
        st.dispatch.executor, st.dispatch.settings = back, previous.pool
        log.warning("workers_restoring", reason=failure, workers=back.size)
        again = self._boot_beside(st, back)
        if again is not None:
            raise WorkerBootError(f"the workers with the running settings did not start again either: {again}")
        return failure

    def _retire(self, st: _Stages, old: Executor, *, beside: bool) -> None:
        """Let ``old`` finish its batches (at most DRAIN_S), then stop it; what it did not
        finish goes back to the queue. ``beside``: the new pool (``st.executor``) works meanwhile."""
        end = time.monotonic() + DRAIN_S
        while old.busy() and time.monotonic() < end:
            if beside:
                self._work_beside(st)
                st.dispatch.record(old.poll(0))
            else:
                st.dispatch.record(old.poll(SETTLE_TICK_S, [self.signals.waitable]))
                self._note_signals("reloading")
                self._watchdog(old)
        unfinished = old.in_flight()
        old.stop()
        if unfinished:
            st.ledger.release([j.rel for j in unfinished], time.time())
            log.info("returned_to_queue", images=len(unfinished))

    def _boot_beside(self, st: _Stages, new: Executor) -> str | None:
        """Start ``new`` and wait for all its workers while the running pool goes on working;
        None once they are ready, else why not. Only ``new``'s own failures are caught here."""
        limit = self.s.pool.boot_timeout_s
        end = time.monotonic() + limit
        notify.status(f"reloading: loading models on {new.size} new workers, the running ones go on")
        self.last_status = ""  # the loop's next summary replaces this line
        try:
            new.start()
            # (Ray adds actors after it connects, as it finds nodes: none yet is not ready)
            while new.size == 0 or new.ready_count() < new.size:
                if self.stopping:
                    return "a stop was requested while the new workers loaded"
                if time.monotonic() > end:
                    return f"timeout: the new workers were not ready within pool.boot_timeout_s = {limit:g} s"
                notify.extend_timeout(limit + 30)
                self._work_beside(st)
                if new is not st.executor:  # (in place, new is the working one: its events are recorded)
                    # Ready / BootFailed: the executor counts them itself; dispatch counts exits (metrics)
                    st.dispatch.record(new.poll(0))
        except (EngineUnavailable, WorkerBootError) as exc:
            return str(exc)
        return None

    def _work_beside(self, st: _Stages) -> None:
        """One pass of the working pool (``st.executor``) while another one boots or finishes
        its last batches: record, hand out work, note signals, feed the watchdog."""
        st.dispatch.record(st.executor.poll(SETTLE_TICK_S, [self.signals.waitable]))
        self._note_signals("reloading")
        try:
            st.dispatch.fill()
        except sqlite3.OperationalError as exc:  # disk full: the transaction rolled back
            st.dispatch.state_write_failed(exc)
        self._watchdog(st.executor)

    def _note_signals(self, phase: str) -> None:
        """Signals while a reload is under way: a stop is noted, another SIGHUP applied after it."""
        for sig in self.signals.pop_all():
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("stop_requested", signal=signal.Signals(sig).name, phase=phase)
                self.stopping = True
            else:
                self.reload_pending = True

    # ---------------------------------------------------------------- stop

    def _stop(self, st: _Stages) -> None:
        notify.stopping()
        log.info("stopping")
        st.intake.stop()
        st.pdfs.cancel()
        st.dispatch.drain(DRAIN_S)
        self._live(st.executor, "")  # no workers left
        log.info("stopped")


#: how long the exit waits for multiprocessing's resource tracker (it ends as soon as its pipe closes)
TRACKER_EXIT_S = 5.0


def end_children() -> None:
    """Leave no process behind: under systemd (KillMode=mixed) whatever outlives the main
    process is SIGKILLed, and the journal says so, as if the stop had been unclean.

    Every stage stopped and joined its own children already (workers, the PDF child, the Ray
    bridge); any still running is a bug, ended here. Then multiprocessing's resource tracker:
    ``spawn`` starts it with the first child, it ignores SIGTERM and ends only once its pipe is
    closed, which without this would be when the main process exits. multiprocessing has no
    public call to end it: its own ``_stop`` (what its tests use) closes the pipe and reaps it,
    run in a thread so that a holder of the pipe we do not know of cannot hold up the exit.
    """
    for child in multiprocessing.active_children():
        log.warning("child_left_running", pid=child.pid, name=child.name)
        child.kill()
        child.join(5)
    stop = getattr(getattr(resource_tracker, "_resource_tracker", None), "_stop", None)
    if stop is None:
        return
    t = threading.Thread(target=stop, name="resource-tracker-stop", daemon=True)
    t.start()
    t.join(TRACKER_EXIT_S)
    if t.is_alive():
        log.warning("resource_tracker_still_running", waited_s=TRACKER_EXIT_S)


def run(settings: config.Settings, reload: Callable[[], config.Settings] | None = None) -> int:
    return Daemon(settings, reload).run()
