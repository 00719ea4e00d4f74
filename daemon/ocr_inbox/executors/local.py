"""The local executor: a pool of worker processes, supervised the way gunicorn's arbiter does it.

One owner (the daemon's loop, or the one-shot run) calls ``poll()``; it returns worker messages
and ``WorkerLost`` events, kills workers that stop making progress (after a
stack dump, so the log says where they hung), respawns lost ones in the same
slot (with a backoff while a slot keeps crashing), and recycles workers after N
images or past a memory limit. A worker that cannot boot (missing models, bad
device) halts the pool with ``WorkerBootError`` instead of being restarted forever.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import structlog

from ocr_inbox.config import PoolSettings
from ocr_inbox.executors import messages as m
from ocr_inbox.executors.base import WorkerView, recycle_reason
from ocr_inbox.executors.slots import Slot, Slots, SlotState
from ocr_inbox.executors.worker import STACK_DUMP_SIGNAL, WorkerConfig
from ocr_inbox.executors.worker import main as worker_main
from ocr_inbox.ocr.devices import WorkerSlot
from ocr_inbox.support import children, logs
from ocr_inbox.support.errors import EngineUnavailable, WorkerBootError
from ocr_inbox.support.reasons import Reason

log = structlog.get_logger(__name__)

#: consecutive boot failures of one slot before the pool gives up
MAX_BOOT_FAILURES = 3
#: a stuck worker gets STACK_DUMP_SIGNAL, then this long to write its stacks before SIGKILL
STACK_DUMP_GRACE_S = 1.0
#: the most of a worker's stack dump that is logged (its start: the hung or crashing thread comes first)
STACKS_MAX_BYTES = 32 << 10
#: a worker's raw output without a newline this long is logged as it is
OUTPUT_LINE_MAX_BYTES = 16 << 10
#: respawn backoff while a slot keeps crashing with no image done between: the first crash
#: respawns at once (one poison image must not slow the pool), then 1, 2, 4 ... s, at most 30
RESPAWN_BACKOFF_S = 1.0
RESPAWN_BACKOFF_MAX_S = 30.0
#: a worker still running past the stop deadline: its time to exit on SIGTERM before SIGKILL
TERM_GRACE_S = 2.0


def respawn_delay(crashes: int) -> float:
    """Seconds before a slot's worker is respawned after ``crashes`` crashes in a row."""
    if crashes <= 1:
        return 0.0
    return min(RESPAWN_BACKOFF_MAX_S, RESPAWN_BACKOFF_S * 2.0 ** (crashes - 2))


@dataclass(kw_only=True)
class _Worker(Slot):
    plan: WorkerSlot  # its device and threads
    process: children.Child
    conn: Connection
    last_beat: float = 0.0
    current: int | None = None
    #: the job the decode thread is preparing beside ``current``
    decoding: int | None = None
    #: when STACK_DUMP_SIGNAL was sent (stuck); SIGKILL follows after STACK_DUMP_GRACE_S
    dump_sent: float | None = None
    killed: str = ""  # why the pool killed it ("" = it died by itself)
    recycled: str = ""  # why it was told to exit after its batch (max_images, max_rss)
    info: dict[str, Any] = field(default_factory=dict)
    #: faulthandler's output (stack dumps), read here and logged as one record
    stacks: Connection | None = None
    dump: bytearray = field(default_factory=bytearray)
    #: what the worker's fds 1 and 2 receive (C libraries' own loggers), logged line by line
    output: Connection | None = None
    out_buf: bytearray = field(default_factory=bytearray)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (perhaps out of memory)" if -code == signal.SIGKILL else ""
        return f"killed by {sig}{hint}"
    return f"exited with status {code}"


class LocalExecutor:
    """Worker processes on this machine, one per ``WorkerSlot`` (device and threads)."""

    boots_beside = True

    def __init__(
        self,
        slots: list[WorkerSlot],
        make_config: Callable[[WorkerSlot], WorkerConfig],
        settings: PoolSettings,
    ) -> None:
        self.slots = slots
        self.make_config = make_config
        self.settings = settings
        self.workers: Slots[_Worker] = Slots()
        self.boot_failures: dict[int, int] = {}
        #: crashes per slot since its last image done (the respawn backoff)
        self.crashes: dict[int, int] = {}
        #: slots waiting out their backoff: slot -> monotonic time to respawn
        self.respawn_at: dict[int, float] = {}
        self.stopping = False

    # lifecycle -------------------------------------------------------------

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: WorkerSlot) -> None:
        parent, child = children.pipe()
        stacks, stacks_w = children.pipe(duplex=False)
        output, output_w = children.pipe(duplex=False)
        args = (child, self.make_config(slot), stacks_w, output_w)
        proc = children.Child(f"ocr-inbox-worker-{slot.slot}", worker_main, args, handed=(child, stacks_w, output_w))
        for end in (stacks, output):
            os.set_blocking(end.fileno(), False)  # read what is there, never wait for more
        now = time.monotonic()
        self.workers[slot.slot] = _Worker(
            slot=slot.slot, started=now, pid=proc.pid, plan=slot, process=proc, conn=parent,
            last_beat=now, stacks=stacks, output=output,
        )
        log.info("worker_spawned", slot=slot.slot, pid=proc.pid, device=str(slot.device), threads=slot.threads)

    @property
    def size(self) -> int:
        return len(self.slots)

    def ready_count(self) -> int:
        return self.workers.ready_count()

    def healthy(self) -> bool:
        """Some worker can take work, or one is still within its time to load models."""
        return bool(self.respawn_at) or self.workers.usable(time.monotonic(), self.settings.boot_timeout_s)

    def capacity(self) -> int:
        return self.workers.capacity()

    def status_note(self) -> str:
        return ""

    def unavailable_for(self) -> float:
        return 0.0  # its workers are respawned: never without a way to run

    def unavailable_why(self) -> str:
        return ""

    def workers_view(self) -> list[WorkerView]:
        host = socket.gethostname()
        views = [
            WorkerView(slot, host, str(w.plan.device), str(w.state), w.pid, w.images)
            for slot, w in sorted(self.workers.items())
        ]
        by_slot = {s.slot: s for s in self.slots}
        views += [WorkerView(n, host, str(by_slot[n].device), "respawning", None, 0) for n in sorted(self.respawn_at) if n in by_slot]
        return views

    def busy(self) -> bool:
        return self.workers.busy()

    def in_flight(self) -> list[m.Job]:
        return self.workers.in_flight()

    def submit(self, batch: m.Batch) -> None:
        w = self.workers.idle()
        if w is None:
            raise RuntimeError("submit() without capacity: no worker is idle")
        w.conn.send(batch)
        w.take(batch)
        w.current, w.decoding = None, None
        w.last_beat = time.monotonic()

    # the loop's step -------------------------------------------------------

    def poll(self, timeout: float, extra: Iterable[Any] = ()) -> list[m.Event]:
        """Wait up to ``timeout`` for worker traffic (or any ``extra`` waitable)."""
        waitables: list[Any] = [w.conn for w in self.workers.values()]
        waitables += [w.process.sentinel for w in self.workers.values()]
        waitables += [p for w in self.workers.values() for p in (w.stacks, w.output) if p is not None]
        if self.respawn_at:
            timeout = max(0.0, min(timeout, min(self.respawn_at.values()) - time.monotonic()))
        wait([*waitables, *extra], timeout)
        events: list[m.Event] = []
        for slot, w in list(self.workers.items()):
            events += self._read_messages(w)
            self._read_stacks(w)
            self._log_output(w)
            if not w.process.is_alive():
                events += self._reap(slot, w)
        self._respawn_due()
        self._kill_stuck()
        return events

    def _read_messages(self, w: _Worker) -> list[m.Event]:
        out: list[m.Event] = []
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                out += self._handle(w, msg)
        except (EOFError, OSError):
            pass
        return out

    @staticmethod
    def _read(end: Connection | None, into: bytearray) -> None:
        """Append what a non-blocking pipe holds now."""
        if end is None:
            return
        try:
            while chunk := os.read(end.fileno(), 65536):
                into += chunk
        except (BlockingIOError, OSError):  # nothing more now (or closed)
            pass

    def _read_stacks(self, w: _Worker) -> None:
        """Take what faulthandler wrote so far (a dump is a few KiB; the pipe holds 64)."""
        self._read(w.stacks, w.dump)

    def _log_output(self, w: _Worker, final: bool = False) -> None:
        """Each complete line the worker's fds 1 and 2 received as one ``worker_output``
        record (``final``: the rest too): raw text from C code is not ours to trust, so it
        gets the attention of a warning."""
        self._read(w.output, w.out_buf)
        *lines, rest = w.out_buf.split(b"\n")
        if rest and (final or len(rest) > OUTPUT_LINE_MAX_BYTES):  # (a line that never ends: in parts)
            lines, rest = [*lines, rest], bytearray()
        w.out_buf[:] = rest
        for line in lines:
            text = line.decode(errors="replace").strip()
            if text:
                log.warning("worker_output", slot=w.slot, pid=w.pid, message=logs.strip_ansi(text))

    def _log_stacks(self, w: _Worker) -> None:
        """faulthandler's dump (a stuck worker's, or a crashed one's) as one record."""
        self._read_stacks(w)
        if w.dump:
            text = w.dump[:STACKS_MAX_BYTES].decode(errors="replace").strip()
            log.error("worker_stacks", slot=w.slot, pid=w.pid, stacks=text)
            w.dump.clear()

    def _handle(self, w: _Worker, msg: m.WorkerMessage) -> list[m.Event]:
        w.last_beat = time.monotonic()
        if w.dump_sent is not None and not w.killed:
            # it spoke after all: slow, not stuck (its stacks go to the log)
            log.warning("worker_not_stuck", slot=w.slot, pid=w.pid)
            self._log_stacks(w)
            w.dump_sent = None
        if isinstance(msg, m.Ready):
            w.state, w.info = SlotState.idle, msg.info
            self.boot_failures[w.slot] = 0
            log.info("worker_ready", slot=msg.slot, pid=msg.pid, load_s=msg.load_s, **msg.info)
        elif isinstance(msg, m.Started):
            w.current = msg.job_id
            if w.decoding == msg.job_id:
                w.decoding = None  # its decode, if still running, is now the current work
        elif isinstance(msg, m.Decoding):
            w.decoding = msg.job_id
        elif isinstance(msg, m.Decoded):
            if w.decoding == msg.job_id:
                w.decoding = None
        elif isinstance(msg, m.Done | m.Failed):
            w.answered(msg.job)
            w.current = None
            if isinstance(msg, m.Done):
                self.crashes[w.slot] = 0  # the slot works: no backoff for its next crash
        elif isinstance(msg, m.BatchDone):
            w.batch_done()
            w.current = None
            self._maybe_recycle(w, msg.rss_bytes)
        elif isinstance(msg, m.BootFailed):
            if msg.fatal:  # missing models, no such device: respawning cannot help
                raise EngineUnavailable(msg.error)
            log.error("worker_boot_failed", slot=msg.slot, error=msg.error)
        return [msg]

    def _maybe_recycle(self, w: _Worker, rss: int) -> None:
        s = self.settings
        reason = recycle_reason(w.images, rss, s.max_images_per_worker, s.max_worker_rss_mb)
        if reason and not self.stopping:
            log.info("worker_recycle", slot=w.slot, reason=reason, images=w.images, rss_mb=rss >> 20)
            w.state, w.recycled = SlotState.retiring, reason
            try:
                w.conn.send(m.Stop())
            except OSError:
                pass

    def _reap(self, slot: int, w: _Worker) -> list[m.Event]:
        w.process.join(timeout=0)
        cause = describe_exit(w.process.exitcode)
        self._log_stacks(w)  # the dump before the kill of a stuck worker, or a crash's
        self._log_output(w, final=True)
        self._close(w)
        del self.workers[slot]
        if w.killed:
            cause = f"{w.killed}; {cause}"
        events: list[m.Event] = []
        crashed = False
        exit_reason = "stuck" if w.killed else "crashed"
        if w.state == SlotState.retiring and w.batch is None:
            log.info("worker_retired", slot=slot, pid=w.pid)
            exit_reason = f"recycled_{w.recycled}"
        elif w.state == SlotState.booting:
            exit_reason = "boot_failed"
            n = self.boot_failures.get(slot, 0) + 1
            self.boot_failures[slot] = n
            log.error("worker_died_booting", slot=slot, pid=w.pid, cause=cause, failures=n)
            if n >= MAX_BOOT_FAILURES:
                raise WorkerBootError(f"worker {slot} could not start {n} times in a row ({cause})")
        elif w.batch is not None:
            crashed = True
            pending = w.pending()
            suspect = next((j for j in pending if j.job_id == w.current), None)
            beside = next((j for j in pending if j.job_id == w.decoding and j is not suspect), None)
            unstarted = tuple(j for j in pending if j is not suspect and j is not beside)
            reason = Reason.worker_stuck if w.killed else Reason.worker_crashed
            log.error(
                "worker_lost",
                slot=slot,
                pid=w.pid,
                cause=cause,
                image=suspect.rel if suspect else None,
                decoding=beside.rel if beside else None,
                unstarted=len(unstarted),
            )
            events.append(m.WorkerLost(slot, cause, suspect, unstarted, decoding=beside, reason=reason))
        elif not self.stopping:
            crashed = True
            log.warning("worker_exited", slot=slot, pid=w.pid, cause=cause)
        if self.stopping:
            return events
        events.append(m.WorkerExit(slot, exit_reason))
        if crashed:
            self._respawn_later(w.plan)
        else:
            self._spawn(w.plan)
        return events

    @staticmethod
    def _close(w: _Worker) -> None:
        w.conn.close()
        for end in (w.stacks, w.output):
            if end is not None:
                end.close()
        w.stacks = w.output = None

    def _respawn_later(self, slot: WorkerSlot) -> None:
        n = self.crashes.get(slot.slot, 0) + 1
        self.crashes[slot.slot] = n
        delay = respawn_delay(n)
        if delay <= 0:
            self._spawn(slot)
            return
        log.warning("worker_respawn_delayed", slot=slot.slot, crashes=n, delay_s=delay)
        self.respawn_at[slot.slot] = time.monotonic() + delay

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            at = self.respawn_at.get(slot.slot)
            if at is not None and at <= now and not self.stopping:
                del self.respawn_at[slot.slot]
                self._spawn(slot)

    def _kill_stuck(self) -> None:
        """A worker silent past its limit: dump its stacks (faulthandler, to the journal), then kill it."""
        now = time.monotonic()
        for slot, w in self.workers.items():
            if w.state not in (SlotState.booting, SlotState.busy) or w.killed or not w.process.is_alive():
                continue
            if w.dump_sent is not None:
                if now - w.dump_sent >= STACK_DUMP_GRACE_S:
                    w.killed = f"stuck: silent for {round(now - w.last_beat)} s, killed"
                    self._kill(w)
                continue
            limit = self.settings.boot_timeout_s if w.state == SlotState.booting else self.settings.image_timeout_s
            if now - w.last_beat > limit:
                job = next((j for j in (w.batch.jobs if w.batch else ()) if j.job_id == w.current), None)
                log.error(
                    "worker_stuck",
                    slot=slot,
                    pid=w.pid,
                    state=w.state,
                    silent_s=round(now - w.last_beat),
                    image=job.rel if job else None,
                    note="its thread stacks follow (worker_stacks), then it is killed",
                )
                w.dump_sent = now
                self._kill(w, STACK_DUMP_SIGNAL)

    def _kill(self, w: _Worker, sig: int = signal.SIGKILL) -> None:
        w.process.send_signal(sig)

    def stop(self, deadline_s: float = 10.0) -> None:
        """Ask every worker to exit after its current image; kill the ones that don't."""
        self.stopping = True
        self.respawn_at.clear()
        for w in self.workers.values():
            try:
                w.conn.send(m.Stop())
            except OSError:
                pass
        end = time.monotonic() + deadline_s
        for w in self.workers.values():
            w.process.join(timeout=max(0.0, end - time.monotonic()))
        for w in self.workers.values():
            w.process.stop(TERM_GRACE_S, kill_wait_s=2.0, slot=w.slot)
            self._log_stacks(w)
            self._log_output(w, final=True)
            self._close(w)
        self.workers.clear()
