"""The worker process: load the OCR engine once, then OCR batches until told to stop.

Runs in a fresh interpreter (``spawn``), so it sets up logging and the
environment itself. Decoding the next image overlaps inference of the current
one. Each image's JSON is written atomically here; the supervisor is told
``Started`` before and ``Done``/``Failed`` after every image, which doubles as
the heartbeat: a worker that stops sending is stuck.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import resource
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import structlog

from ocr_inbox import logs
from ocr_inbox.errors import BadImage, EngineUnavailable
from ocr_inbox.ocr import engine as engine_mod
from ocr_inbox.ocr import images
from ocr_inbox.outbox import document
from ocr_inbox.pool import messages as m


@dataclass(frozen=True)
class WorkerConfig:
    slot: int
    engine: engine_mod.EngineSettings
    limits: images.Limits
    inbox: str
    env: dict[str, str]
    log_level: str
    log_format: str


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _load(job: m.Job, cfg: WorkerConfig) -> images.LoadedImage:
    # The scanner checked this; check again at open time (the tree may have changed).
    if not _inside(cfg.inbox, job.src):
        raise BadImage("outside_inbox", "the path resolves outside the inbox")
    return images.load(job.src, cfg.limits, root=cfg.inbox)


def _process(job: m.Job, loaded: images.LoadedImage, eng: engine_mod.Engine, info: dict, t0: float) -> m.Done:
    pages = []
    for pg in loaded.pages:
        lines = eng.recognise(pg.bgr)
        pages.append(document.Page(pg.index, pg.width, pg.height, tuple(lines), pg.dpi))
    # An image replaced while we read it must not get a JSON that describes the old bytes.
    try:
        st = os.stat(job.src)
    except FileNotFoundError:
        raise BadImage("vanished", "the file disappeared while it was being OCR'd") from None
    if st.st_size != loaded.data_size or st.st_mtime_ns != loaded.mtime_ns:
        raise BadImage("changed_while_reading", "the file changed while it was being OCR'd")
    elapsed = int((time.monotonic() - t0) * 1000)
    src = document.SourceInfo(job.rel, loaded.data_size, loaded.mtime_ns, loaded.sha256)
    doc = document.Document(source=src, engine=info, pages=tuple(pages), elapsed_ms=elapsed)
    document.write(Path(job.dest), doc)
    return m.Done(
        slot=-1,
        job=job,
        pages=len(pages),
        lines=sum(len(p.lines) for p in pages),
        chars=sum(len(ln.text) for p in pages for ln in p.lines),
        size=loaded.data_size,
        mtime_ns=loaded.mtime_ns,
        elapsed_ms=elapsed,
    )


_TRANSIENT = {"vanished", "changed_while_reading"}


def _run_batch(
    batch: m.Batch, cfg: WorkerConfig, eng: engine_mod.Engine, info: dict, conn: Connection, prefetch: ThreadPoolExecutor
) -> None:
    log = structlog.get_logger(__name__)
    jobs = list(batch.jobs)
    pending: Future[images.LoadedImage] | None = prefetch.submit(_load, jobs[0], cfg) if jobs else None
    for i, job in enumerate(jobs):
        t0 = time.monotonic()
        conn.send(m.Started(cfg.slot, job.job_id))
        assert pending is not None
        fut, pending = pending, (prefetch.submit(_load, jobs[i + 1], cfg) if i + 1 < len(jobs) else None)
        try:
            done = _process(job, fut.result(), eng, info, t0)
            conn.send(m.Done(**{**done.__dict__, "slot": cfg.slot}))
        except BadImage as exc:
            log.warning("image_failed", path=job.rel, reason=exc.reason, detail=exc.detail)
            conn.send(m.Failed(cfg.slot, job, exc.reason, exc.detail, transient=exc.reason in _TRANSIENT))
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # the name, not the outbox, is the problem
                conn.send(m.Failed(cfg.slot, job, "name_too_long", str(exc)))
                continue
            # Writing the JSON failed (disk full, outbox unwritable): not the image's fault.
            reason = "disk_full" if exc.errno == errno.ENOSPC else "output_error"
            log.error("json_write_failed", path=job.rel, reason=reason, error=str(exc))
            conn.send(m.Failed(cfg.slot, job, reason, str(exc), transient=True))
        except Exception as exc:  # an engine error on one image must not kill the worker
            log.exception("engine_error", path=job.rel)
            conn.send(m.Failed(cfg.slot, job, "engine_error", f"{type(exc).__name__}: {exc}"))
    conn.send(m.BatchDone(cfg.slot, batch.batch_id, _rss_bytes()))


def _die_with_parent() -> None:
    """Ask Linux to kill us if the supervisor dies (even by SIGKILL): no orphans."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(conn: Connection, cfg: WorkerConfig) -> None:
    """Entry point of a worker process."""
    _die_with_parent()
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
