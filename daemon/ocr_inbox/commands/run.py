"""``ocr-inbox run``: the daemon's lifecycle, signals and timers; the work is in the pipeline.

The stages, their wiring, the drain and the pool swap on reload are the
``Pipeline``'s (core/pipeline.py); this drives it. Three phases, like
uvicorn's server: start (ledger, metrics server, crash recovery, workers
loaded, watcher and first scan, READY), the loop (``Pipeline.step``: wait,
record results; signals; the stages; then timers) and stop (STOPPING, the
pipeline stopped and its workers drained, exit 0).
Everything the loop runs is built whole before it starts.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from multiprocessing import resource_tracker

import structlog

from ocr_inbox import config
from ocr_inbox.core.pipeline import Pipeline, check_paths
from ocr_inbox.executors.base import Executor
from ocr_inbox.executors.setup import preflight
from ocr_inbox.ledger import Ledger, reports
from ocr_inbox.service import live, metrics, notify
from ocr_inbox.support import cache, logs, statedir
from ocr_inbox.support.errors import ConfigError, ExitCode, OcrInboxError
from ocr_inbox.support.signals import SignalQueue

log = structlog.get_logger(__name__)

#: how long the loop sleeps at most when nothing happens
IDLE_TICK_S = 1.0
#: while files are settling they are re-examined this often
SETTLE_TICK_S = 0.25
#: how long a drain (the stop, a reload's old pool) waits for the batches in flight
DRAIN_S = 120.0
#: STATUS= is refreshed this often (only sent when it changed)
STATUS_EVERY_S = 2.0
#: the ledger's upkeep (forget long-gone images, checkpoint and cut the WAL) this often
MAINTAIN_EVERY_S = 3600.0


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
                p = self._assemble(ledger)
                try:
                    if self._boot(p):
                        p.intake.start()
                        notify.ready()
                        log.info("ready", workers=p.executor.size, watcher=p.intake.watcher_kind)
                        self._loop(p)
                finally:
                    self._stop(p)
        return int(ExitCode.ok)

    def _check_paths(self) -> None:
        check_paths(self.inbox, self.outbox, self.s.paths.state_dir)
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.s.paths.state_dir.mkdir(mode=statedir.DIR_MODE, parents=True, exist_ok=True)

    def _assemble(self, ledger: Ledger) -> Pipeline:
        p = Pipeline(self.s, ledger, self.inbox, self.outbox, recorder=self.metrics)
        recovered, swept = p.recover(self.s.paths.state_dir)
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
        p.create_workers()
        return p

    def _boot(self, p: Pipeline) -> bool:
        """Start the workers and wait until every one has loaded its models; False if told to stop."""
        ex = p.executor
        notify.status(f"loading models on {ex.size} workers")
        notify.extend_timeout(self.s.pool.boot_timeout_s + 30)
        ex.start()
        while ex.ready_count() < ex.size:
            p.wait(IDLE_TICK_S, [self.signals.waitable])
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

    def _loop(self, p: Pipeline) -> None:
        def go_on() -> bool:
            self._handle_signals(p)
            return not self.stopping

        while not self.stopping:
            timeout = SETTLE_TICK_S if p.intake.settling else IDLE_TICK_S
            due = p.due_in()
            if due is not None:  # a folder turns quiet before the tick: its PDF starts then
                timeout = min(timeout, due)
            try:
                p.step(timeout, [self.signals.waitable], go_on)
                if self.stopping:
                    break
                self._timers(p)
            except sqlite3.OperationalError as exc:  # disk full, I/O error: the transaction rolled back
                p.dispatch.state_write_failed(exc)

    def _timers(self, p: Pipeline) -> None:
        now_m = time.monotonic()
        if now_m >= self.next_purge:
            n = cache.purge_temp(cache.paddlex_cache_dir(self.s.paths.resolved_cache_dir()), self.s.cache.purge_older_than_s)
            if n:
                log.info("cache_purged", files=n)
            self.next_purge = now_m + self.s.cache.purge_interval_s
        if now_m >= self.next_maintain:
            self._maintain(p.ledger)
            self.next_maintain = now_m + MAINTAIN_EVERY_S
        if now_m >= self.next_status:
            self._status(p)
            self.next_status = now_m + STATUS_EVERY_S
        self._watchdog(p.executor)

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

    def _status(self, p: Pipeline) -> None:
        t = reports.stats(p.ledger, time.time())
        why = p.dispatch.pause_reason
        paused = f" ({why})" if why else ""
        note = p.executor.status_note()  # e.g. a Ray cluster that is unreachable
        paused += f"; {note}" if note else ""
        text = (
            f"queued {t.queued}, running {t.running}, done {t.done}, failed {t.failed}, "
            f"{t.rate:.2f} img/s, folders waiting for PDF {t.folders_waiting}{paused}"
        )
        if text != self.last_status:
            notify.status(text)
            self.last_status = text
        self.inbox_report = p.intake.report()
        self._live(p.executor, why or "")
        if self.metrics_address:
            d = p.dispatch
            self.metrics.ledger(metrics.LedgerState(
                t, tuple(reports.failed_by_reason(p.ledger)), reports.size_bytes(p.ledger), d.paused, d.storm
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

    def _handle_signals(self, p: Pipeline) -> None:
        if self.reload_pending:
            self.reload_pending = False
            self._reload(p)
        for sig in self.signals.pop_all():
            if sig in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("stop_requested", signal=signal.Signals(sig).name)
                self.stopping = True
            elif sig == signal.SIGHUP:
                self._reload(p)

    def _reload(self, p: Pipeline) -> None:
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
        logs.configure(new.log.level, new.log.format)
        self.s = p.reload(new, [self.signals.waitable], self._tend, DRAIN_S, stopping=self.stopping)
        self.last_status = ""  # a reload's own STATUS= line is replaced by the loop's next summary
        if not changed:
            log.info("config_unchanged")
        notify.ready()

    def _tend(self, executor: Executor) -> bool:
        """While a reload waits (new workers loading, old ones finishing): note the signals, feed
        the watchdog for the pool that works; False once a stop was asked."""
        self._note_signals("reloading")
        self._watchdog(executor)
        return not self.stopping

    def _note_signals(self, phase: str) -> None:
        """Signals while a reload is under way: a stop is noted, another SIGHUP applied after it."""
        for sig in self.signals.pop_all():
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("stop_requested", signal=signal.Signals(sig).name, phase=phase)
                self.stopping = True
            else:
                self.reload_pending = True

    # ---------------------------------------------------------------- stop

    def _stop(self, p: Pipeline) -> None:
        notify.stopping()
        log.info("stopping")
        p.stop(DRAIN_S)
        if p.has_workers:
            self._live(p.executor, "")  # no workers left
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
