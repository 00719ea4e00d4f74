"""The OCR worker: load the engine once, then OCR batches until told to stop.

Runs in a fresh interpreter (``spawn``), so it sets up logging and the
environment itself. Decoding the next image overlaps inference of the current
one. Every image is opened beneath the inbox and decoded by ``ocr.images``
(the limits live there). The worker writes nothing: it sends each result back
and dispatch, the one writer, records it. ``Started`` before and
``Done``/``Failed`` after every image double as the heartbeat: a worker that
stops sending is stuck.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import structlog

from ocr_inbox import logs
from ocr_inbox.errors import BadImage, EngineUnavailable
from ocr_inbox.executors import messages as m
from ocr_inbox.ocr import engine as engine_mod
from ocr_inbox.ocr import images
from ocr_inbox.ocr.results import Page

#: reasons that say the file moved under us, not that it is bad: dispatch looks again
_TRANSIENT = frozenset({"vanished", "changed_while_reading"})


@dataclass(frozen=True)
class WorkerConfig:
    slot: int
    engine: engine_mod.EngineSettings
    limits: images.Limits
    inbox: str  # resolved
    env: dict[str, str]
    log_level: str
    log_format: str


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _ocr(job: m.Job, loaded: images.LoadedImage, eng: engine_mod.Engine, cfg: WorkerConfig, info: dict[str, Any], t0: float) -> m.Done:
    pages = tuple(
        Page(pg.index, pg.width, pg.height, tuple(eng.recognise(pg.bgr)), pg.dpi) for pg in loaded.pages
    )
    # An image replaced while we read it must not get a result that describes the old bytes.
    try:
        st = os.stat(os.path.join(cfg.inbox, job.rel))
    except FileNotFoundError:
        raise BadImage("vanished", "the file disappeared while it was being OCR'd") from None
    if st.st_size != loaded.data_size or st.st_mtime_ns != loaded.mtime_ns:
        raise BadImage("changed_while_reading", "the file changed while it was being OCR'd")
    elapsed = int((time.monotonic() - t0) * 1000)
    return m.Done(cfg.slot, job, loaded.data_size, loaded.mtime_ns, loaded.sha256, info, pages, elapsed)


def _run_batch(
    batch: m.Batch, cfg: WorkerConfig, eng: engine_mod.Engine, info: dict[str, Any], conn: Connection, prefetch: ThreadPoolExecutor
) -> None:
    log = structlog.get_logger(__name__)

    def load(job: m.Job) -> images.LoadedImage:
        return images.load(cfg.inbox, job.rel, cfg.limits)

    jobs = list(batch.jobs)
    nxt: Future[images.LoadedImage] | None = prefetch.submit(load, jobs[0]) if jobs else None
    for i, job in enumerate(jobs):
        t0 = time.monotonic()
        conn.send(m.Started(cfg.slot, job.job_id))
        fut = nxt
        nxt = prefetch.submit(load, jobs[i + 1]) if i + 1 < len(jobs) else None
        try:
            if fut is None:
                raise RuntimeError("no decode was started for this image")
            conn.send(_ocr(job, fut.result(), eng, cfg, info, t0))
        except BadImage as exc:
            log.warning("image_failed", path=job.rel, reason=exc.reason, detail=exc.detail)
            conn.send(m.Failed(cfg.slot, job, exc.reason, exc.detail, transient=exc.reason in _TRANSIENT))
        except Exception as exc:  # an engine error on one image must not kill the worker
            log.exception("engine_error", path=job.rel)
            conn.send(m.Failed(cfg.slot, job, "engine_error", f"{type(exc).__name__}: {exc}"))
    conn.send(m.BatchDone(cfg.slot, batch.batch_id, _rss_bytes()))


def die_with_parent() -> None:
    """Ask Linux to kill us if the supervisor dies (even by SIGKILL): no orphans."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(conn: Connection, cfg: WorkerConfig) -> None:
    """Entry point of a worker process."""
    die_with_parent()
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        return  # the parent died before prctl took effect
    os.environ.update(cfg.env)
    # The supervisor owns shutdown: SIGINT from a terminal goes to the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.configure(cfg.log_level, cfg.log_format, worker=cfg.slot)
    log = structlog.get_logger(__name__)
    t0 = time.monotonic()
    try:
        eng = engine_mod.create(cfg.engine)
        info = eng.info()
    except EngineUnavailable as exc:
        conn.send(m.BootFailed(cfg.slot, str(exc), fatal=True))
        return
    except Exception as exc:
        log.exception("worker_boot_failed")
        conn.send(m.BootFailed(cfg.slot, f"{type(exc).__name__}: {exc}", fatal=False))
        return
    conn.send(m.Ready(cfg.slot, os.getpid(), info, round(time.monotonic() - t0, 2)))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as prefetch:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return  # the supervisor is gone
            if isinstance(msg, m.Stop):
                return
            try:
                _run_batch(msg, cfg, eng, info, conn, prefetch)
            except (BrokenPipeError, ConnectionResetError):
                return  # the supervisor is gone
