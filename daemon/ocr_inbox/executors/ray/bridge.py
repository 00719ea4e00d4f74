"""Runs in the bridge process, a child of the daemon: the Ray driver.

It connects to the cluster (``[executor] address``, the token of ``token_file``), places
OCR actors (``actor.OcrActor``) on every node that can hold them, sends each batch's
images as one actor call per image and reads the answers as plain data, never unpickling
what a node returns. It tells the daemon everything over one pipe (``wire``, ``messages``).
A Ray driver ends its own process when the cluster's GCS stays away: that is why this is
a process of its own, and the daemon (``executor.RayExecutor``) outlives it.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import structlog

from ocr_inbox.executors import messages as m
from ocr_inbox.executors.base import recycle_reason
from ocr_inbox.executors.ray.actor import OcrActor
from ocr_inbox.executors.ray.plan import actors_for, gpu_share, placement_problem, token_file_problem
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
from ocr_inbox.executors.worker import check_unchanged
from ocr_inbox.ocr import images
from ocr_inbox.support import logs
from ocr_inbox.support.errors import BadImage
from ocr_inbox.support.reasons import Reason

log = structlog.get_logger(__name__)

#: the bridge looks for nodes that joined or left this often
NODE_SCAN_S = 2.0
#: the bridge's ray.wait tick (it also reads the daemon's pipe between two waits)
WAIT_TICK_S = 0.05
#: a Ray driver whose GCS is silent this long exits (Ray's default: 60 s): the bridge, not the daemon
GCS_RECONNECT_TIMEOUT_S = 15
#: a node whose actors failed to load this many times gets no more actors (until it rejoins)
MAX_BOOT_FAILURES = 3
#: Ray error records that carry a pickled exception: never read (``_Bridge.fetch``)
_PICKLED_ERRORS = frozenset({"TASK_EXECUTION_EXCEPTION", "TASK_CANCELLED"})


def actor_options(node_id: str, cfg: BridgeConfig) -> dict[str, Any]:
    """Placement of one actor: pinned to its node, one share of a GPU (or of the stand-in
    resource) and ``cpus_per_worker`` CPUs; never restarted and no task retried by Ray
    (dispatch does the retries, bounded by ``pool.max_attempts``)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    opts: dict[str, Any] = {
        "num_cpus": cfg.cpus_per_worker,
        "max_restarts": 0,
        "max_task_retries": 0,
        "max_concurrency": 1,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
    }
    if cfg.workers_per_gpu > 0:
        share = gpu_share(cfg)
        if cfg.gpu_resource == "GPU":
            opts["num_gpus"] = share
        else:
            opts["resources"] = {cfg.gpu_resource: share}
    return opts


@dataclass
class _Actor:
    slot: int
    node_id: str
    node: str  # "address/node id", as the daemon shows it
    handle: Any
    boot_ref: Any | None
    ready: bool = False
    batch: m.Batch | None = None
    #: the calls of its batch not answered yet, in the order the actor runs them
    calls: collections.deque[tuple[m.Job, Any]] = field(default_factory=collections.deque)
    #: its resident memory, asked for behind the batch's last image
    rss_ref: Any | None = None
    deadline: float = 0.0
    images: int = 0  # images it finished


class _Bridge:
    def __init__(self, conn: Connection, cfg: BridgeConfig) -> None:
        import ray

        self.ray: Any = ray  # partly typed; the calls here are checked by the tests
        self.conn = conn
        self.cfg = cfg
        self.actors: dict[int, _Actor] = {}
        self.slots = itertools.count(1)
        self.remote_cls: Any = self.ray.remote(OcrActor)
        self.next_scan = 0.0
        #: boot failures per node: a node whose actors keep failing to load gets no more
        self.boot_failures: dict[str, int] = {}
        #: what the daemon was last told about placement (None: nothing yet; sent after Connected)
        self.placement: str | None = None
        self.announced = False

    def send(self, ev: BridgeEvent) -> None:
        self.conn.send(ev)

    def fetch(self, ref: Any, slot: int, job: m.Job | None = None) -> m.Plain | int:
        """What an actor call returned, as a message for ``slot`` and ``job`` (the bridge's own).

        Read without ``ray.get``'s deserialization, which unpickles whatever the producing
        node stored: only an object Ray stored as raw bytes is read (``OcrActor`` returns
        nothing else), then parsed as plain data. A Ray error about the call (its actor or
        node died, it could not be placed) is raised as ``ray.get`` raises it, except the
        kinds Ray keeps pickled (an exception the actor raised, a cancellation, a failed
        creation), which raise ``NotPlain`` unread.
        """
        from ray.core.generated import common_pb2

        pb: Any = common_pb2
        ray = self.ray
        core = ray._private.worker.global_worker.core_worker
        [obj] = core.get_objects([ref], -1)
        data, metadata = obj[0], obj[1]
        kind = bytes(metadata).split(b",")[0] if metadata else b""
        if kind == b"RAW":
            return m.from_plain(data.to_pybytes() if data is not None else b"", slot, job)
        try:
            error = pb.ErrorType.Name(int(kind))
        except ValueError:
            raise m.NotPlain(f"the actor returned a {kind[:20].decode(errors='replace') or 'untyped'} object, not plain data") from None
        if error in _PICKLED_ERRORS:
            raise m.NotPlain(f"the call failed with {error} (not read: Ray keeps it pickled)")
        if error == "ACTOR_DIED" and data is not None and len(data):
            # Ray's record: msgpack around protobuf (no pickle for an error's metadata type)
            ctx = ray._private.worker.global_worker.get_serialization_context()
            try:
                info = ctx._deserialize_error_info(data, bytes(metadata).split(b","))
            except Exception as exc:
                raise m.NotPlain(f"the actor died, with an unreadable record: {type(exc).__name__}") from None
            if info.actor_died_error.HasField("creation_task_failure_context"):
                raise m.NotPlain(f"the actor died while being created: {info.error_message.splitlines()[0] if info.error_message else ''}")
        ray.get(ref)  # raises the error, read from Ray's own (protobuf) record
        raise m.NotPlain(f"the call ended with {error}, but Ray returned no error")

    # nodes and actors ------------------------------------------------------

    def scan_nodes(self) -> int:
        """Actors for every alive node up to its plan; actors of nodes that left are lost."""
        self.next_scan = time.monotonic() + NODE_SCAN_S
        nodes = {n["NodeID"]: n for n in self.ray.nodes() if n.get("Alive")}
        for a in list(self.actors.values()):
            if a.node_id not in nodes:
                self.lose(a, "its Ray node left the cluster")
        for node_id, node in nodes.items():
            if self.boot_failures.get(node_id, 0) >= MAX_BOOT_FAILURES:
                continue
            have = sum(1 for a in self.actors.values() if a.node_id == node_id)
            want = actors_for(node.get("Resources", {}), self.cfg)
            for _ in range(max(0, want - have)):
                if self.cfg.max_actors is not None and len(self.actors) >= self.cfg.max_actors:
                    break
                self.add_actor(node_id, f"{node.get('NodeManagerAddress', '?')}/{node_id[:8]}")
        self.send(Beat(len(nodes)))
        if self.announced:
            self.report_placement(nodes)
        return len(nodes)

    def report_placement(self, nodes: dict[str, Any]) -> None:
        problem = placement_problem([n.get("Resources", {}) for n in nodes.values()], self.cfg)
        if problem != self.placement:
            self.placement = problem
            self.send(Placement(problem, len(nodes)))

    def add_actor(self, node_id: str, node: str) -> None:
        slot = next(self.slots)
        wcfg = dataclasses.replace(self.cfg.worker, slot=slot)
        handle: Any = self.remote_cls.options(**actor_options(node_id, self.cfg)).remote(wcfg)
        self.actors[slot] = _Actor(slot, node_id, node, handle, handle.boot.remote())
        self.send(ActorAdded(slot, node))

    def lose(self, a: _Actor, cause: str, reason: str = Reason.worker_crashed) -> None:
        """``a`` is dead (or killed now): its unfinished images go back to dispatch."""
        del self.actors[a.slot]
        try:
            self.ray.kill(a.handle, no_restart=True)
        except Exception:  # already gone with its node
            pass
        if a.batch is None:
            self.send(ActorGone(a.slot, cause))
            return
        pending = [job for job, _ref in a.calls]
        suspect = pending[0] if pending else None
        self.send(m.WorkerLost(a.slot, cause, suspect, tuple(pending[1:]), reason=reason))

    # work ----------------------------------------------------------------------

    def submit(self, slot: int, batch: m.Batch) -> None:
        a = self.actors.get(slot)
        if a is None:  # it left between the daemon's choice and now: nobody's fault
            self.send(m.WorkerLost(slot, "the actor left before its batch arrived", None, batch.jobs))
            return
        a.batch, a.deadline = batch, time.monotonic() + self.cfg.image_timeout_s
        for job in batch.jobs:
            file = None
            if self.cfg.transport == "bytes":
                try:
                    file = images.read(self.cfg.worker.inbox, job.rel, self.cfg.worker.limits)
                except BadImage as exc:
                    transient = exc.reason in (Reason.vanished, Reason.changed_while_reading)
                    self.send(m.Failed(slot, job, exc.reason, exc.detail, transient=transient))
                    continue
            a.calls.append((job, a.handle.ocr.remote(job, file)))
        if a.calls:
            a.rss_ref = a.handle.rss.remote()  # runs after the batch's images: the actor runs calls in order
        self.maybe_batch_done(a)

    def maybe_batch_done(self, a: _Actor, rss: int = 0) -> None:
        """Once every image of its batch is answered (and its memory, when asked for):
        ``BatchDone``, and the actor is replaced if recycling says so."""
        if a.batch is None or a.calls or a.rss_ref is not None:
            return
        batch_id, a.batch = a.batch.batch_id, None
        reason = recycle_reason(a.images, rss, self.cfg.max_images_per_actor, self.cfg.max_actor_rss_mb)
        if reason is not None:
            self.retire(a, reason, rss)  # before BatchDone: the daemon must not hand it more work
        self.send(m.BatchDone(a.slot, batch_id, rss))

    def retire(self, a: _Actor, reason: str, rss: int) -> None:
        """Replace an actor that holds no work: killed, and a fresh one placed on its node."""
        del self.actors[a.slot]
        try:
            self.ray.kill(a.handle, no_restart=True)
        except Exception:  # already gone with its node: the next scan tells
            pass
        self.send(ActorRetired(a.slot, reason, a.images, rss >> 20))
        self.add_actor(a.node_id, a.node)

    def result(self, a: _Actor, job: m.Job, res: m.Done | m.Failed) -> None:
        if isinstance(res, m.Done) and self.cfg.transport == "bytes":
            try:  # the actor OCR'd the bytes we read: did the source change since?
                check_unchanged(self.cfg.worker.inbox, job.rel, res.size, res.mtime_ns)
            except BadImage as exc:
                res = m.Failed(a.slot, job, exc.reason, exc.detail, transient=True)
        self.send(res)

    def step(self) -> None:
        refs: dict[Any, _Actor] = {}
        for a in self.actors.values():
            if a.boot_ref is not None:
                refs[a.boot_ref] = a
            if a.calls:
                refs[a.calls[0][1]] = a
            elif a.rss_ref is not None:
                refs[a.rss_ref] = a
        if refs:
            self.ray.wait(list(refs), num_returns=1, timeout=WAIT_TICK_S)
            done, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)
        else:
            done = []
            self.conn.poll(WAIT_TICK_S)
        for ref in done:
            a = refs[ref]
            if a.slot not in self.actors:
                continue
            job = a.calls[0][0] if a.calls and ref is a.calls[0][1] else None
            try:
                res = self.fetch(ref, a.slot, job)
            except self.ray.exceptions.RayError as exc:
                self.lose(a, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            except m.NotPlain as exc:
                log.error("ray_actor_not_plain", slot=a.slot, node=a.node, error=str(exc))
                self.lose(a, f"it returned what is not an answer to its call: {exc}")
                continue
            if ref is a.boot_ref:
                a.boot_ref = None
                if not isinstance(res, m.Ready | m.BootFailed):
                    self.lose(a, "its boot call returned something else")
                    continue
                if isinstance(res, m.BootFailed):
                    self.boot_failures[a.node_id] = self.boot_failures.get(a.node_id, 0) + 1
                    del self.actors[a.slot]
                    self.ray.kill(a.handle, no_restart=True)
                a.ready = isinstance(res, m.Ready)
                self.send(res)
                continue
            if ref is a.rss_ref:
                a.rss_ref = None
                if not isinstance(res, int):
                    self.lose(a, "its memory call returned something else")
                    continue
                self.maybe_batch_done(a, res)
                continue
            job, _ = a.calls.popleft()
            a.deadline = time.monotonic() + self.cfg.image_timeout_s
            a.images += 1
            assert isinstance(res, m.Done | m.Failed)  # from_plain answers an image call with one of these
            self.result(a, job, res)
            self.maybe_batch_done(a)
        now = time.monotonic()
        for a in list(self.actors.values()):
            if (a.calls or a.rss_ref is not None) and now > a.deadline:
                self.lose(a, f"stuck: no result for {self.cfg.image_timeout_s:g} s, killed", reason=Reason.worker_stuck)
        if now >= self.next_scan:
            self.scan_nodes()

    def loop(self) -> None:
        while True:
            while self.conn.poll():
                msg = self.conn.recv()
                if isinstance(msg, m.Stop):
                    return
                if isinstance(msg, Submit):
                    self.submit(msg.slot, msg.batch)
            self.step()


def _connect_env(cfg: BridgeConfig) -> None:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"
    if cfg.token_file:
        os.environ["RAY_AUTH_TOKEN_PATH"] = cfg.token_file
        os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(GCS_RECONNECT_TIMEOUT_S))


def _probe(address: str) -> None:
    """Ask the GCS for the cluster's id: a refused token fails here at once (``AuthenticationError``),
    where ``ray.init`` retries for ~20 s and then reports a bare ConnectionError."""
    import ray._raylet

    raylet: Any = ray._raylet  # Ray's own client: private, hence the fallback
    if hasattr(raylet, "GcsClient"):
        raylet.GcsClient(address=address).cluster_id


@logs.crash_logged
def bridge_main(conn: Connection, cfg: BridgeConfig) -> None:
    """Entry point of the bridge process: connect, then serve the daemon until Stop or the cluster is lost."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.configure(cfg.log_level, cfg.log_format, worker="ray")
    _connect_env(cfg)
    if cfg.token_file and (problem := token_file_problem(cfg.token_file, os.geteuid())):
        conn.send(Unreachable("executor.token_file", f"{problem[0]} (fix: {problem[1]})"))
        return
    import ray

    logs.adopt("ray")  # `import ray` gave its logger a raw stderr handler of its own
    try:
        _probe(cfg.address)
        ray.init(
            address=cfg.address,
            namespace="ocr-inbox",
            log_to_driver=False,
            logging_level=logging.WARNING,
            include_dashboard=False,
        )
    except ray.exceptions.AuthenticationError as exc:
        conn.send(Unreachable("executor.token_file", f"the Ray cluster at {cfg.address} refused the token: {exc.message}"))
        return
    except Exception as exc:
        conn.send(Unreachable("executor.address", f"cannot connect to the Ray cluster at {cfg.address}: {type(exc).__name__}: {exc}"))
        return
    try:
        bridge = _Bridge(conn, cfg)
        nodes = bridge.scan_nodes()
        conn.send(Connected(cfg.address, nodes))
        bridge.announced = True  # placement is reported from the next scan on, after Connected
        bridge.next_scan = 0.0
        bridge.loop()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone
    finally:
        ray.shutdown()
