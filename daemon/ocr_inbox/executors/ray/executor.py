"""Runs in the daemon's process: ``RayExecutor``, the ``base.Executor`` for a Ray cluster.

It starts the bridge (``bridge.bridge_main``, a child process: the Ray driver), keeps a
mirror of the actors from what the bridge reports (booting / idle / busy, the batch each
holds), hands batches to idle ones and turns the bridge's reports into what dispatch
knows from the local pool. It never imports Ray; when the bridge exits (the cluster is
lost), every batch goes back to the queue and it starts a new bridge, with a backoff.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import structlog

from ocr_inbox.config import ExecutorSettings, PoolSettings
from ocr_inbox.executors import messages as m
from ocr_inbox.executors.base import WorkerView
from ocr_inbox.executors.ray.bridge import bridge_main
from ocr_inbox.executors.ray.plan import gpu_share, token_file_problem
from ocr_inbox.executors.ray.wire import (
    ActorAdded,
    ActorGone,
    ActorRetired,
    Beat,
    BridgeConfig,
    BridgeEvent,
    Connected,
    Placement,
    Submit,
    Unreachable,
)
from ocr_inbox.executors.slots import Slot, Slots, SlotState
from ocr_inbox.support import children
from ocr_inbox.support.errors import EngineUnavailable
from ocr_inbox.support.reasons import Reason

log = structlog.get_logger(__name__)

#: reconnect backoff after the cluster was lost or could not be reached: 1, 2, 4 ... s, at most 30
RECONNECT_BACKOFF_S = 1.0
RECONNECT_BACKOFF_MAX_S = 30.0
#: a bridge whose node scans went unanswered this long is given up: the cluster is lost (a Ray
#: driver whose GCS went away can block in a call for minutes instead of failing)
CLUSTER_SILENT_S = 15.0
#: a bridge still running when it is given up: its time to exit on SIGTERM (Ray's driver
#: handler, then ``ray.shutdown``) before SIGKILL
BRIDGE_TERM_GRACE_S = 1.0


@dataclass(kw_only=True)
class _Mirror(Slot):
    """What the daemon knows of one actor (``pid``: of its Ray worker process, once it is ready)."""

    node: str


class RayExecutor:
    """OCR actors on a Ray cluster, driven through the bridge process."""

    boots_beside = False

    def __init__(self, cfg: BridgeConfig, pool: PoolSettings, settings: ExecutorSettings) -> None:
        self.cfg = cfg
        self.pool = pool
        self.settings = settings
        self.actors: Slots[_Mirror] = Slots()
        self.proc: children.Child | None = None  # the bridge
        self.conn: Connection | None = None
        self.connected = False
        self.outage = ""  # why the cluster is unusable now ("" = it is usable)
        self.outage_since = 0.0  # monotonic, while there is an outage
        self.failures = 0
        self.reconnect_at: float | None = None
        self.stopping = False
        self.last_beat = 0.0
        self.booted = False  # start() done: later boot failures drop an actor instead of stopping the daemon
        self.unplaceable = ""  # why no actor fits on the cluster's nodes ("" = one does)
        self.unplaceable_since = 0.0  # monotonic, while one does not

    # lifecycle -----------------------------------------------------------------

    def _spawn(self) -> None:
        parent, child = children.pipe()
        self.proc = children.Child("ocr-inbox-ray", bridge_main, (child, self.cfg), handed=(child,))
        self.conn = parent
        self.connected = False
        self.reconnect_at = None
        self.last_beat = time.monotonic()

    def start(self) -> None:
        """Connect (within ``executor.connect_timeout_s``); an unreachable cluster or a refused
        token at start is an error naming the setting."""
        if self.cfg.token_file and (problem := token_file_problem(self.cfg.token_file, os.geteuid())):
            raise EngineUnavailable(f"executor.token_file: {problem[0]} (fix: {problem[1]})")
        self._spawn()
        end = time.monotonic() + self.settings.connect_timeout_s
        while not self.connected:
            assert self.conn is not None and self.proc is not None
            left = end - time.monotonic()
            if left <= 0 or not wait([self.conn, self.proc.sentinel], left):
                self._close_bridge()
                raise EngineUnavailable(
                    f"executor.address: no answer from the Ray cluster at {self.cfg.address} within "
                    f"executor.connect_timeout_s = {self.settings.connect_timeout_s:g} s"
                )
            try:
                ev = self.conn.recv()
            except (EOFError, OSError):
                code = self.proc.exitcode if self.proc is not None else None
                self._close_bridge()
                raise EngineUnavailable(f"executor.address: the Ray driver for {self.cfg.address} exited at start ({code})") from None
            if isinstance(ev, Unreachable):
                self._close_bridge()
                raise EngineUnavailable(f"{ev.key}: {ev.error}")
            self._handle(ev)

    def _close_bridge(self) -> None:
        if self.proc is not None:
            self.proc.stop(BRIDGE_TERM_GRACE_S)
        if self.conn is not None:
            self.conn.close()
        self.proc, self.conn, self.connected = None, None, False

    @property
    def size(self) -> int:
        return len(self.actors)

    def ready_count(self) -> int:
        return self.actors.ready_count()

    def healthy(self) -> bool:
        """Some actor can take work or is loading, or the executor is reconnecting by itself.

        True while it reconnects: the daemon's loop still runs and still watches the inbox,
        so the watchdog is fed and systemd does not restart a daemon that would only find
        the same cluster missing (``status_note`` says why nothing is OCR'd).
        """
        if self.outage or self.unplaceable:
            return True
        return self.actors.usable(time.monotonic(), self.pool.boot_timeout_s)

    def unavailable_for(self) -> float:
        if self.outage:
            return time.monotonic() - self.outage_since
        if self.unplaceable and not self.actors:
            return time.monotonic() - self.unplaceable_since
        return 0.0

    def unavailable_why(self) -> str:
        if self.outage:
            return f"executor.address: {self.status_note()}"
        return f"no OCR actor can be placed on the Ray cluster: {self.unplaceable}" if self.unplaceable else ""

    def status_note(self) -> str:
        if self.outage:
            return f"ray cluster unreachable, retrying: {self.outage}"
        if self.unplaceable:
            return f"ray: no OCR actor can be placed: {self.unplaceable}"
        nodes = len({a.node for a in self.actors.values()})
        return f"ray: {self.ready_count()} actors ready on {nodes} nodes"

    def workers_view(self) -> list[WorkerView]:
        c = self.cfg
        if c.workers_per_gpu > 0:
            device = f"{c.gpu_resource} x {gpu_share(c):g}"
        else:
            device = f"cpu x {c.cpus_per_worker:g}"
        return [WorkerView(a.slot, a.node, device, str(a.state), a.pid, a.images) for _, a in sorted(self.actors.items())]

    def capacity(self) -> int:
        return self.actors.capacity() if self.connected else 0

    def busy(self) -> bool:
        return self.actors.busy()

    def in_flight(self) -> list[m.Job]:
        return self.actors.in_flight()

    def submit(self, batch: m.Batch) -> None:
        a = self.actors.idle()
        if a is None or self.conn is None:
            raise RuntimeError("submit() without capacity: no actor is idle")
        a.take(batch)
        try:
            self.conn.send(Submit(a.slot, batch))
        except OSError:
            pass  # the bridge died: poll() returns the batch through WorkerLost

    # the loop's step -------------------------------------------------------------

    def poll(self, timeout: float, extra: Iterable[Any] = ()) -> list[m.Event]:
        waitables: list[Any] = list(extra)
        if self.conn is not None and self.proc is not None:
            waitables += [self.conn, self.proc.sentinel]
        if self.reconnect_at is not None:
            timeout = max(0.0, min(timeout, self.reconnect_at - time.monotonic()))
        wait(waitables, timeout)
        events = self._read_messages()
        if self.proc is not None and not self.proc.is_alive() and self.conn is not None and not self.conn.poll():
            events += self._cluster_lost(f"the Ray driver exited ({self.proc.exitcode})")
        elif self.connected and time.monotonic() - self.last_beat > CLUSTER_SILENT_S:
            events += self._cluster_lost(f"no answer from the cluster's GCS for {CLUSTER_SILENT_S:g} s")
        elif self.proc is not None and not self.connected and time.monotonic() - self.last_beat > self.settings.connect_timeout_s:
            self._unreachable(f"no answer within executor.connect_timeout_s = {self.settings.connect_timeout_s:g} s")
        if self.reconnect_at is not None and time.monotonic() >= self.reconnect_at and not self.stopping:
            self._spawn()
        return events

    def _read_messages(self) -> list[m.Event]:
        out: list[m.Event] = []
        if self.conn is None:
            return out
        try:
            while self.conn is not None and self.conn.poll():
                out += self._handle(self.conn.recv())
        except (EOFError, OSError):
            pass
        return out

    def _handle(self, ev: BridgeEvent) -> list[m.Event]:
        if isinstance(ev, Beat):
            self.last_beat = time.monotonic()
            return []
        if isinstance(ev, Connected):
            self.connected, self.last_beat = True, time.monotonic()
            if self.outage:
                log.info("ray_cluster_back", address=ev.address, nodes=ev.nodes, down_for=self.outage)
            else:
                log.info("ray_cluster_connected", address=ev.address, nodes=ev.nodes)
            self.outage, self.failures = "", 0
            return []
        if isinstance(ev, Unreachable):
            self._unreachable(f"{ev.key}: {ev.error}")
            return []
        if isinstance(ev, Placement):
            if ev.problem:
                log.warning("ray_no_actor_placeable", nodes=ev.nodes, reason=ev.problem,
                            note="nothing is OCR'd until a node fits or the settings change")
                self.unplaceable_since = time.monotonic()
            elif self.unplaceable:
                log.info("ray_actors_placeable", nodes=ev.nodes)
            self.unplaceable = ev.problem
            return []
        if isinstance(ev, ActorAdded):
            self.actors[ev.slot] = _Mirror(slot=ev.slot, started=time.monotonic(), node=ev.node)
            log.info("ray_actor_added", slot=ev.slot, node=ev.node)
            return []
        if isinstance(ev, ActorGone):
            self.actors.pop(ev.slot, None)
            log.warning("ray_actor_gone", slot=ev.slot, cause=ev.cause)
            return [m.WorkerExit(ev.slot, "actor_gone")]
        if isinstance(ev, ActorRetired):
            self.actors.pop(ev.slot, None)
            log.info("worker_recycle", slot=ev.slot, reason=ev.reason, images=ev.images, rss_mb=ev.rss_mb)
            return [m.WorkerExit(ev.slot, f"recycled_{ev.reason}")]
        a = self.actors.get(ev.slot)
        if isinstance(ev, m.Ready):
            if a is not None:
                a.state, a.pid = SlotState.idle, ev.pid
                self.booted = self.booted or self.ready_count() == self.size
                log.info("worker_ready", slot=ev.slot, node=a.node, pid=ev.pid, load_s=ev.load_s, **ev.info)
        elif isinstance(ev, m.BootFailed):
            self.actors.pop(ev.slot, None)
            if not self.booted and ev.fatal:
                raise EngineUnavailable(f"a Ray actor could not load the engine: {ev.error}")
            log.error("worker_boot_failed", slot=ev.slot, error=ev.error, node=a.node if a else None)
            return [ev, m.WorkerExit(ev.slot, "boot_failed")]
        elif isinstance(ev, m.Done | m.Failed):
            if a is not None:
                a.answered(ev.job)
        elif isinstance(ev, m.BatchDone):
            if a is not None:
                a.batch_done()
        elif isinstance(ev, m.WorkerLost):
            self.actors.pop(ev.slot, None)
            log.error(
                "worker_lost",
                slot=ev.slot,
                node=a.node if a else None,
                cause=ev.cause,
                image=ev.in_flight.rel if ev.in_flight else None,
                unstarted=len(ev.unstarted),
            )
            if a is not None:  # (None: an actor already reported gone, whose batch came back)
                return [ev, m.WorkerExit(ev.slot, "stuck" if ev.reason == Reason.worker_stuck else "crashed")]
        return [ev]

    def _cluster_lost(self, cause: str) -> list[m.Event]:
        """The bridge is gone: no image is to blame; every batch goes back to the queue."""
        events: list[m.Event] = []
        images_back = 0
        for a in self.actors.values():
            if a.batch is not None:
                pending = tuple(a.pending())
                events.append(m.WorkerLost(a.slot, f"ray cluster lost: {cause}", None, pending))
                images_back += len(pending)
            events.append(m.WorkerExit(a.slot, "cluster_lost"))
        self.actors.clear()
        self._close_bridge()
        if any(isinstance(e, m.WorkerLost) for e in events):
            log.warning("returned_to_queue", images=images_back, reason="ray cluster lost")
        self._unreachable(cause)
        return events

    def _unreachable(self, why: str) -> None:
        self.unplaceable = ""  # the next bridge reports placement afresh
        self.actors.clear()
        self._close_bridge()
        self.failures += 1
        delay = min(RECONNECT_BACKOFF_MAX_S, RECONNECT_BACKOFF_S * 2.0 ** (self.failures - 1))
        if not self.outage:
            log.error("ray_cluster_unreachable", address=self.cfg.address, error=why, note="dispatch paused; reconnecting")
            self.outage_since = time.monotonic()
        self.outage = why
        self.reconnect_at = time.monotonic() + delay

    def stop(self, deadline_s: float = 10.0) -> None:
        self.stopping = True
        self.reconnect_at = None
        if self.conn is not None:
            try:
                self.conn.send(m.Stop())
            except OSError:
                pass
        if self.proc is not None:
            self.proc.join(timeout=deadline_s)
        self._close_bridge()
        self.actors.clear()
