"""The Ray executor: the same OCR worker code, as Ray actors on a cluster of hosts.

Two halves, two processes:

- ``RayExecutor`` (the daemon's process) implements ``base.Executor`` from a mirror
  of the actors (booting / idle / busy and the batch each holds). It never imports
  Ray: a Ray driver ends its own process when the cluster's GCS stays unreachable,
  and the daemon must outlive its cluster.
- the *bridge* (a child process, ``bridge_main``) is the Ray driver: it connects to
  ``[executor] address`` with the token of ``token_file``, creates actors for every
  node (and for each node that joins), sends each batch's images as one actor call
  per image, and runs our own dispatcher loop over ``ray.wait`` (not Ray's
  ActorPool, which breaks on a dead actor) with a deadline per busy actor.

What dispatch sees is what the local pool gives it: ``Ready``, ``Done`` (the pages;
dispatch writes the JSON), ``Failed``, ``BatchDone`` and ``WorkerLost``.

Recycling, as the local pool does it (``pool.max_images_per_worker``,
``pool.max_worker_rss_mb``): after each batch the actor reports its resident memory
(one more call, queued behind the batch's images); an actor past either limit is
killed between two batches, holding no work, and a fresh one is placed on its node.

Who is blamed when an actor dies. An actor runs one call at a time, in the order it
got them, so the first unfinished image of its batch is the one it was working on:
that one is the suspect (``WorkerLost.in_flight``; the poison rule applies across
the cluster, because dispatch counts attempts per image, not per worker) and the rest
are ``unstarted``. An actor that died *between* two images, or while idle, is
noticed only at its next call: that image is then blamed once without cause (it is
retried; ``pool.max_attempts`` >= 2 keeps it from quarantine). When the whole
cluster is lost (the bridge exits), no image is blamed: every batch goes back to
the queue and the executor reconnects by itself, with a backoff.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
import logging
import math
import multiprocessing
import os
import pwd
import signal
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import structlog

from ocr_inbox.config import ExecutorSettings, PoolSettings, Settings
from ocr_inbox.executors import messages as m
from ocr_inbox.executors.base import WorkerView, recycle_reason
from ocr_inbox.executors.worker import WorkerConfig, check_unchanged, limit_memory, ocr_one, rss_bytes
from ocr_inbox.ocr import engine as engine_mod
from ocr_inbox.ocr import images
from ocr_inbox.support import logs
from ocr_inbox.support.errors import BadImage, EngineUnavailable
from ocr_inbox.support.signals import die_with_parent

log = structlog.get_logger(__name__)

_CTX = multiprocessing.get_context("spawn")
#: reconnect backoff after the cluster was lost or could not be reached: 1, 2, 4 ... s, at most 30
RECONNECT_BACKOFF_S = 1.0
RECONNECT_BACKOFF_MAX_S = 30.0
#: the bridge looks for nodes that joined or left this often
NODE_SCAN_S = 2.0
#: the bridge's ray.wait tick (it also reads the daemon's pipe between two waits)
WAIT_TICK_S = 0.05
#: a Ray driver whose GCS is silent this long exits (Ray's default: 60 s): the bridge, not the daemon
GCS_RECONNECT_TIMEOUT_S = 15
#: a bridge whose node scans went unanswered this long is given up: the cluster is lost (a Ray
#: driver whose GCS went away can block in a call for minutes instead of failing)
CLUSTER_SILENT_S = 15.0
#: a node whose actors failed to load this many times gets no more actors (until it rejoins)
MAX_BOOT_FAILURES = 3
#: Ray error records that carry a pickled exception: never read (``_Bridge.fetch``)
_PICKLED_ERRORS = frozenset({"TASK_EXECUTION_EXCEPTION", "TASK_CANCELLED"})


# -- bridge <-> daemon, besides messages.* ---------------------------------------------


@dataclass(frozen=True)
class Connected:
    address: str
    nodes: int


@dataclass(frozen=True)
class Beat:
    """The bridge heard from the cluster's GCS (a node scan answered)."""

    nodes: int


@dataclass(frozen=True)
class Unreachable:
    """The bridge could not connect; ``key`` is the setting to look at."""

    key: str
    error: str


@dataclass(frozen=True)
class ActorAdded:
    slot: int
    node: str


@dataclass(frozen=True)
class ActorGone:
    """An actor that held no work is gone (its node left, it could not boot)."""

    slot: int
    cause: str


@dataclass(frozen=True)
class ActorRetired:
    """An actor was replaced after its batch (recycling): ``reason`` is "max_images" or "max_rss"."""

    slot: int
    reason: str
    images: int
    rss_mb: int


@dataclass(frozen=True)
class Submit:
    slot: int
    batch: m.Batch


@dataclass(frozen=True)
class Placement:
    """Whether any OCR actor fits on the cluster's nodes: ``problem`` says why none does,
    naming the setting ("" = one does). Sent when it changes."""

    problem: str
    nodes: int


BridgeEvent = Connected | Beat | Unreachable | ActorAdded | ActorGone | ActorRetired | Placement | m.Event


@dataclass(frozen=True)
class BridgeConfig:
    address: str
    token_file: str
    workers_per_gpu: int
    cpus_per_worker: float
    gpu_resource: str
    transport: str
    #: each actor's worker configuration (its ``slot`` is replaced per actor)
    worker: WorkerConfig
    image_timeout_s: float
    max_actors: int | None
    log_level: str
    log_format: str
    #: recycling (``pool.max_images_per_worker``, ``pool.max_worker_rss_mb``; 0 = never)
    max_images_per_actor: int = 0
    max_actor_rss_mb: int = 0


def actors_for(resources: dict[str, float], cfg: BridgeConfig) -> int:
    """How many OCR actors a node with these total ``resources`` gets."""
    by_cpu = math.floor(resources.get("CPU", 0.0) / cfg.cpus_per_worker + 1e-9)
    if cfg.workers_per_gpu <= 0:
        return by_cpu
    by_gpu = math.floor(resources.get(cfg.gpu_resource, 0.0) * cfg.workers_per_gpu + 1e-9)
    return min(by_gpu, by_cpu)


def placement_problem(nodes: list[dict[str, float]], cfg: BridgeConfig) -> str:
    """Why no OCR actor fits on any of these nodes (their total resources), naming the
    setting to change; "" when one does. Waiting cannot fix it: only a node that has
    what the settings ask for, or other settings."""
    if not nodes or any(actors_for(r, cfg) > 0 for r in nodes):
        return ""
    n = f"{len(nodes)} node" + ("s" if len(nodes) != 1 else "")
    most_cpus = max(r.get("CPU", 0.0) for r in nodes)
    if cfg.workers_per_gpu > 0:
        most = max(r.get(cfg.gpu_resource, 0.0) for r in nodes)
        if most <= 0:
            return (f"executor.workers_per_gpu = {cfg.workers_per_gpu}: OCR actors need a share of the resource "
                    f"{cfg.gpu_resource!r} (executor.gpu_resource), which none of the {n} has; "
                    "for CPU-only nodes set executor.workers_per_gpu = 0")
        if most * cfg.workers_per_gpu < 1:
            return (f"executor.workers_per_gpu = {cfg.workers_per_gpu}: the nodes have at most {most:g} of "
                    f"{cfg.gpu_resource!r}, less than one actor's share ({gpu_share(cfg):g})")
    return (f"executor.cpus_per_worker = {cfg.cpus_per_worker:g}: each OCR actor needs that many CPUs, "
            f"and none of the {n} has as many (the most: {most_cpus:g})")


def gpu_share(cfg: BridgeConfig) -> float:
    """Each actor's share of one GPU (or of the stand-in resource); Ray keeps 4 decimals."""
    return math.floor(10_000 / cfg.workers_per_gpu) / 10_000


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


class OcrActor:
    """One OCR pipeline on a cluster node: the local worker's engine, image module and code.

    Every call returns plain data (``messages.to_plain``: JSON bytes, stored by Ray as raw
    bytes), never a pickled object, and never raises: the bridge unpickles nothing a node
    sends (``_Bridge.fetch``)."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.eng: engine_mod.Engine | None = None
        self.info: dict[str, Any] = {}

    def boot(self) -> bytes:
        try:
            res = self._boot()
        except BaseException as exc:  # noqa: BLE001 (anything: the bridge reads only plain data)
            res = m.BootFailed(self.cfg.slot, f"{type(exc).__name__}: {exc}", fatal=False)
        return m.to_plain(res)

    def _boot(self) -> m.Ready | m.BootFailed:
        cfg = self.cfg
        os.environ.update(cfg.env)
        logs.configure(cfg.log_level, cfg.log_format, worker=cfg.slot)
        t0 = time.monotonic()
        try:
            limit_memory(cfg.memory_mb)
        except (OSError, ValueError) as exc:
            return m.BootFailed(cfg.slot, f"pool.worker_memory_mb: cannot set RLIMIT_DATA: {exc}", fatal=True)
        try:
            self.eng = engine_mod.create(cfg.engine)
            self.info = self.eng.info()
        except EngineUnavailable as exc:
            return m.BootFailed(cfg.slot, str(exc), fatal=True)
        except Exception as exc:
            return m.BootFailed(cfg.slot, f"{type(exc).__name__}: {exc}", fatal=False)
        return m.Ready(cfg.slot, os.getpid(), self.info, round(time.monotonic() - t0, 2))

    def ocr(self, job: m.Job, file: images.ImageFile | None) -> bytes:
        assert self.eng is not None, "boot() first"
        try:
            res = ocr_one(job, self.cfg, self.eng, self.info, file)
        except Exception as exc:  # ocr_one reports its own failures; this is a bug's last word
            res = m.Failed(self.cfg.slot, job, "engine_error", f"{type(exc).__name__}: {exc}")
        return m.to_plain(res)

    def rss(self) -> bytes:
        return m.to_plain(rss_bytes())


# -- the bridge (the Ray driver, a child of the daemon) ----------------------------------


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

    def lose(self, a: _Actor, cause: str, reason: str = "worker_crashed") -> None:
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
                    transient = exc.reason in ("vanished", "changed_while_reading")
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
                self.lose(a, f"stuck: no result for {self.cfg.image_timeout_s:g} s, killed", reason="worker_stuck")
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


def token_file_problem(path: str, uid: int) -> tuple[str, str] | None:
    """Why the cluster's token file is not fit for the service user ``uid``, and the fix;
    None when it is. Whoever can read the token can join the cluster, and a cluster node
    is as trusted as the service user (docs/SCALE-OUT.md): the file must be the service
    user's own, readable by nobody else."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}", f"write the cluster's token into {path}"
    owner = _user_name(st.st_uid)
    fix = f"chown {_user_name(uid)} {path} && chmod 0400 {path}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file", f"write the cluster's token into {path}"
    if st.st_uid != uid:
        return f"{path} is owned by {owner}, not by {_user_name(uid)} (the service user)", fix
    if st.st_mode & 0o077:
        return f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: others may read the cluster's token", fix
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


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
    die_with_parent()
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


# -- the daemon's side -------------------------------------------------------------------


class ActorState(enum.StrEnum):
    booting = "booting"
    idle = "idle"
    busy = "busy"


@dataclass
class _Mirror:
    """What the daemon knows of one actor."""

    slot: int
    node: str
    added: float
    state: ActorState = ActorState.booting
    batch: m.Batch | None = None
    finished: set[int] = field(default_factory=set)
    pid: int | None = None
    images: int = 0


class RayExecutor:
    """OCR actors on a Ray cluster, driven through the bridge process."""

    boots_beside = False

    def __init__(self, cfg: BridgeConfig, pool: PoolSettings, settings: ExecutorSettings) -> None:
        self.cfg = cfg
        self.pool = pool
        self.settings = settings
        self.actors: dict[int, _Mirror] = {}
        self.proc: Any = None  # multiprocessing's SpawnProcess
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
        parent, child = _CTX.Pipe(duplex=True)
        self.proc = _CTX.Process(target=bridge_main, args=(child, self.cfg), name="ocr-inbox-ray", daemon=True)
        self.proc.start()
        child.close()
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
            assert self.conn is not None
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
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(timeout=5)
        if self.conn is not None:
            self.conn.close()
        self.proc, self.conn, self.connected = None, None, False

    @property
    def size(self) -> int:
        return len(self.actors)

    def ready_count(self) -> int:
        return sum(1 for a in self.actors.values() if a.state != ActorState.booting)

    def healthy(self) -> bool:
        """Some actor can take work or is loading, or the executor is reconnecting by itself.

        True while it reconnects: the daemon's loop still runs and still watches the inbox,
        so the watchdog is fed and systemd does not restart a daemon that would only find
        the same cluster missing (``status_note`` says why nothing is OCR'd).
        """
        if self.outage or self.unplaceable:
            return True
        now = time.monotonic()
        return any(a.state != ActorState.booting or now - a.added < self.pool.boot_timeout_s for a in self.actors.values())

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
        if not self.connected:
            return 0
        return sum(1 for a in self.actors.values() if a.state == ActorState.idle)

    def busy(self) -> bool:
        return any(a.state == ActorState.busy for a in self.actors.values())

    def in_flight(self) -> list[m.Job]:
        jobs: list[m.Job] = []
        for a in self.actors.values():
            if a.batch is not None:
                jobs += [j for j in a.batch.jobs if j.job_id not in a.finished]
        return jobs

    def submit(self, batch: m.Batch) -> None:
        a = next((a for a in self.actors.values() if a.state == ActorState.idle), None)
        if a is None or self.conn is None:
            raise RuntimeError("submit() without capacity: no actor is idle")
        a.state, a.batch, a.finished = ActorState.busy, batch, set()
        try:
            self.conn.send(Submit(a.slot, batch))
        except OSError:
            pass  # the bridge died: poll() returns the batch through WorkerLost

    # the loop's step -------------------------------------------------------------

    def poll(self, timeout: float, extra: Iterable[Any] = ()) -> list[m.Event]:
        waitables: list[Any] = list(extra)
        if self.conn is not None:
            waitables += [self.conn, self.proc.sentinel]
        if self.reconnect_at is not None:
            timeout = max(0.0, min(timeout, self.reconnect_at - time.monotonic()))
        wait(waitables, timeout)
        events = self._drain()
        if self.proc is not None and not self.proc.is_alive() and self.conn is not None and not self.conn.poll():
            events += self._cluster_lost(f"the Ray driver exited ({self.proc.exitcode})")
        elif self.connected and time.monotonic() - self.last_beat > CLUSTER_SILENT_S:
            events += self._cluster_lost(f"no answer from the cluster's GCS for {CLUSTER_SILENT_S:g} s")
        elif self.proc is not None and not self.connected and time.monotonic() - self.last_beat > self.settings.connect_timeout_s:
            self._unreachable(f"no answer within executor.connect_timeout_s = {self.settings.connect_timeout_s:g} s")
        if self.reconnect_at is not None and time.monotonic() >= self.reconnect_at and not self.stopping:
            self._spawn()
        return events

    def _drain(self) -> list[m.Event]:
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
            self.actors[ev.slot] = _Mirror(ev.slot, ev.node, time.monotonic())
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
                a.state, a.pid = ActorState.idle, ev.pid
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
                a.finished.add(ev.job.job_id)
                a.images += 1
        elif isinstance(ev, m.BatchDone):
            if a is not None:
                a.state, a.batch = ActorState.idle, None
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
                return [ev, m.WorkerExit(ev.slot, "stuck" if ev.reason == "worker_stuck" else "crashed")]
        return [ev]

    def _cluster_lost(self, cause: str) -> list[m.Event]:
        """The bridge is gone: no image is to blame; every batch goes back to the queue."""
        events: list[m.Event] = []
        images_back = 0
        for a in self.actors.values():
            if a.batch is not None:
                pending = tuple(j for j in a.batch.jobs if j.job_id not in a.finished)
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


def bridge_config(settings: Settings, inbox: Path, max_workers: int | None = None) -> BridgeConfig:
    """The bridge's configuration from the daemon's settings: each actor is configured like a
    local worker (``setup.worker_config_factory``) on "gpu:0" (the GPU share Ray gives it) or the CPU."""
    from ocr_inbox.executors.setup import worker_config_factory
    from ocr_inbox.ocr.devices import Device, WorkerSlot

    e = settings.executor
    on_gpu = e.workers_per_gpu > 0 and e.gpu_resource == "GPU"
    threads = settings.ocr.threads_per_worker or max(1, math.ceil(e.cpus_per_worker))
    slot = WorkerSlot(0, Device("gpu", 0) if on_gpu else Device("cpu"), threads)
    worker = worker_config_factory(settings, inbox)(slot)
    # Ray sets CUDA_VISIBLE_DEVICES for an actor with a GPU share; a CPU actor sees none
    worker = dataclasses.replace(worker, env={} if on_gpu else {"CUDA_VISIBLE_DEVICES": ""})
    if e.transport == "paths":
        worker = dataclasses.replace(worker, inbox=str(inbox.resolve()))
    return BridgeConfig(
        address=e.address,
        token_file=e.token_file,
        workers_per_gpu=e.workers_per_gpu,
        cpus_per_worker=e.cpus_per_worker,
        gpu_resource=e.gpu_resource,
        transport=e.transport,
        worker=worker,
        image_timeout_s=settings.pool.image_timeout_s,
        max_actors=max_workers,
        log_level=settings.log.level,
        log_format=worker.log_format,
        max_images_per_actor=settings.pool.max_images_per_worker,
        max_actor_rss_mb=settings.pool.max_worker_rss_mb,
    )
