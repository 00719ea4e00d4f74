"""The OCR worker: load the engine once, then OCR batches until told to stop.

Runs in a fresh interpreter (``spawn``), so it sets up logging and the
environment itself. Every image is opened beneath the inbox and decoded by
``ocr.images`` (the limits live there). The worker writes nothing: it sends each
result back and dispatch, the one writer, records it.

Memory stays bounded whatever the file: pages are decoded and OCR'd one at a
time (page i is dropped before page i+1 is decoded), and the decode thread
prepares only the *first* page of the next image while the current one is
inferred. ``[pool] worker_memory_mb`` sets RLIMIT_DATA, so an image that still
blows up fails alone (``too_much_memory``) instead of the machine's OOM killer
choosing a victim.

What the supervisor sees: ``Started`` when the main thread takes an image,
``Decoding``/``Decoded`` around the decode thread's work on the next one (so a
crash there is blamed on the right image), ``Progress`` after every page (a
long multi-page file is not "stuck"), then ``Done``/``Failed``. A worker that
stops sending is stuck: ``faulthandler`` dumps every thread's stack on
:data:`STACK_DUMP_SIGNAL`, which the supervisor sends before it kills it (and on
a fatal signal), into a pipe the supervisor reads and logs as one
``worker_stacks`` record, so the journal says where it hung or crashed.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import structlog

from ocr_inbox.executors import messages as m
from ocr_inbox.ocr import engine as engine_mod
from ocr_inbox.ocr import images
from ocr_inbox.ocr.results import Page
from ocr_inbox.support import logs
from ocr_inbox.support.beneath import stat_beneath
from ocr_inbox.support.errors import BadImage, EngineUnavailable
from ocr_inbox.support.reasons import Reason
from ocr_inbox.support.version import Change, SourceVersion

#: reasons that say the file moved under us, not that it is bad: dispatch looks again
_TRANSIENT = frozenset({Reason.vanished, Reason.changed_while_reading})
#: the supervisor sends this to a stuck worker before SIGKILL: every thread's stack goes to stderr
STACK_DUMP_SIGNAL = signal.SIGUSR1

Send = Callable[[m.WorkerMessage], None]


@dataclass(frozen=True)
class WorkerConfig:
    slot: int
    engine: engine_mod.EngineSettings
    limits: images.Limits
    inbox: str  # resolved
    env: dict[str, str]
    log_level: str
    log_format: str
    #: RLIMIT_DATA in MiB (0 = none)
    memory_mb: int = 0


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def limit_memory(mb: int) -> None:
    """Cap this process's private writable memory (RLIMIT_DATA) at ``mb`` MiB; 0: leave it.

    Not RLIMIT_AS: ONNX Runtime, Paddle and CUDA reserve large address ranges
    they never touch. Past the cap malloc fails, so numpy and PIL raise MemoryError.
    """
    if mb <= 0:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = mb << 20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


class _Prepared:
    """An image read and its first page decoded; the rest is decoded on demand, one page at a time."""

    def __init__(
        self, file: images.ImageFile, first: images.PageImage | images.TextPage | None,
        rest: Iterator[images.PageImage | images.TextPage],
    ) -> None:
        self.file = file
        self.first = first
        self.rest = rest

    def pages(self) -> Iterator[images.PageImage | images.TextPage]:
        """Each page once; the caller must drop a page before asking for the next."""
        page, self.first = self.first, None
        while page is not None:
            yield page
            page = None  # dropped here too, before the next page decodes
            page = next(self.rest, None)


def _prepare(job: m.Job, cfg: WorkerConfig, announce: Send | None) -> _Prepared:
    """Read ``job``'s file and decode its first page (the decode thread); ``announce``: tell the
    supervisor, because the main thread is OCR-ing another image meanwhile."""
    if announce is not None:
        announce(m.Decoding(cfg.slot, job.job_id))
    try:
        file = images.read(cfg.inbox, job.rel, cfg.limits)
        rest = images.pages(file.data, cfg.limits)
        return _Prepared(file, next(rest, None), rest)
    finally:
        if announce is not None:
            announce(m.Decoded(cfg.slot, job.job_id))


def check_unchanged(
    inbox: str, rel: str, size: int, mtime_ns: int, *, ctime_ns: int | None = None, ino: int | None = None
) -> None:
    """An image replaced while we read it must not get a result that describes the old bytes
    (the ctime and inode, when given, catch a rewrite that put its size and mtime back)."""
    try:
        st = stat_beneath(inbox, rel)
    except BadImage as exc:
        if exc.reason == Reason.vanished:
            raise BadImage(Reason.vanished, "the file disappeared while it was being OCR'd") from None
        raise
    if SourceVersion.of(st).against(SourceVersion(size, mtime_ns, ctime_ns, ino)) not in (Change.same, Change.fill):
        raise BadImage(Reason.changed_while_reading, "the file changed while it was being OCR'd")


def _ocr(
    job: m.Job,
    prep: _Prepared,
    eng: engine_mod.Engine,
    cfg: WorkerConfig,
    info: dict[str, Any],
    t0: float,
    send: Send,
    check_source: bool = True,
) -> m.Done:
    out: list[Page] = []
    for page in prep.pages():
        if isinstance(page, images.TextPage):  # a PDF page with text of its own: kept as it is
            out.append(Page(page.index, page.width, page.height, page.lines, page.dpi, source="pdf_text"))
            send(m.Progress(cfg.slot, job.job_id, len(out), page.count))
            continue
        lines = eng.recognise(page.bgr)
        # an engine that turned the page to read it says by how much (ocr/orientation.py)
        rotation = getattr(lines, "rotation", 0)
        out.append(Page(page.index, page.width, page.height, tuple(lines), page.dpi, rotation))
        send(m.Progress(cfg.slot, job.job_id, len(out), page.count))
        del page  # before the next page is decoded
    if check_source:
        v = prep.file.version
        check_unchanged(cfg.inbox, job.rel, v.size, v.mtime_ns, ctime_ns=v.ctime_ns, ino=v.ino)
    elapsed = int((time.monotonic() - t0) * 1000)
    return m.Done(cfg.slot, job, prep.file.size, prep.file.mtime_ns, prep.file.sha256, info, tuple(out), elapsed)


def _run_batch(
    batch: m.Batch, cfg: WorkerConfig, eng: engine_mod.Engine, info: dict[str, Any], send: Send, decoder: ThreadPoolExecutor
) -> None:
    jobs = batch.jobs
    nxt: Future[_Prepared] | None = None
    for i, job in enumerate(jobs):
        t0 = time.monotonic()
        send(m.Started(cfg.slot, job.job_id))
        # this image's decode: prepared beside the previous one, or now (the main thread waits)
        fut = nxt if nxt is not None else decoder.submit(_prepare, job, cfg, None)
        nxt = None

        def work(i: int = i, job: m.Job = job, fut: Future[_Prepared] = fut, t0: float = t0) -> m.Done:
            nonlocal nxt
            prep = fut.result()
            # The next image decodes while this one is inferred, unless either is a retry after
            # a worker died: a retry runs with nothing beside it, so its crash is its own.
            if i + 1 < len(jobs) and job.attempt == 1 and jobs[i + 1].attempt == 1:
                nxt = decoder.submit(_prepare, jobs[i + 1], cfg, send)
            return _ocr(job, prep, eng, cfg, info, t0, send)

        del fut
        send(outcome(job, cfg, work))
        del work  # the image's decoded pages go with it, before the next one is waited for
    send(m.BatchDone(cfg.slot, batch.batch_id, rss_bytes()))


def outcome(job: m.Job, cfg: WorkerConfig, work: Callable[[], m.Done]) -> m.Done | m.Failed:
    """``work()``'s result, or the image's failure: what a worker sends for one image,
    wherever it runs (the local pool and the Ray actors share this)."""
    log = structlog.get_logger(__name__)
    try:
        return work()
    except BadImage as exc:
        if exc.reason == Reason.vanished:
            # the file left under the worker, no failure: intake marks it gone (or finds it moved)
            log.info("image_moved", path=job.rel, reason=exc.reason, detail=exc.detail)
        else:
            log.warning("image_failed", path=job.rel, reason=exc.reason, detail=exc.detail)
        return m.Failed(cfg.slot, job, exc.reason, exc.detail, transient=exc.reason in _TRANSIENT)
    except MemoryError:
        # past RLIMIT_DATA: this image alone fails; what it allocated is freed with the frames
        detail = f"decoding or OCR needed more than the worker's {cfg.memory_mb} MiB (pool.worker_memory_mb)"
        log.error("image_failed", path=job.rel, reason="too_much_memory", detail=detail)
        return m.Failed(cfg.slot, job, Reason.too_much_memory, detail)
    except Exception as exc:  # an engine error on one image must not kill the worker
        log.exception("engine_error", path=job.rel)
        return m.Failed(cfg.slot, job, Reason.engine_error, f"{type(exc).__name__}: {exc}")


def ocr_one(
    job: m.Job, cfg: WorkerConfig, eng: engine_mod.Engine, info: dict[str, Any], file: images.ImageFile | None = None
) -> m.Done | m.Failed:
    """One image, start to end, with nothing decoded beside it (a Ray actor's call).

    ``file``: the image as the daemon read it (Ray's "bytes" transport); the daemon then
    checks that the source did not change. None: read it beneath ``cfg.inbox`` here ("paths").
    """
    t0 = time.monotonic()

    def work() -> m.Done:
        f = file if file is not None else images.read(cfg.inbox, job.rel, cfg.limits)
        rest = images.pages(f.data, cfg.limits)
        prep = _Prepared(f, next(rest, None), rest)
        return _ocr(job, prep, eng, cfg, info, t0, _discard, check_source=file is None)

    return outcome(job, cfg, work)


def _discard(msg: m.WorkerMessage) -> None:
    """A ``Send`` for a worker whose results travel as return values (Ray)."""


def boot(cfg: WorkerConfig) -> tuple[engine_mod.Engine, m.Ready] | m.BootFailed:
    """Load the engine under the memory cap (``pool.worker_memory_mb``): the engine and the
    worker's ``Ready``, or why not (``fatal``: a configuration error, which starting the worker
    again cannot fix). How every worker boots, a local process or a Ray actor."""
    t0 = time.monotonic()
    try:
        limit_memory(cfg.memory_mb)
    except (OSError, ValueError) as exc:
        return m.BootFailed(cfg.slot, f"pool.worker_memory_mb: cannot set RLIMIT_DATA: {exc}", fatal=True)
    try:
        eng = engine_mod.create(cfg.engine)
        info = eng.info()
    except EngineUnavailable as exc:
        return m.BootFailed(cfg.slot, str(exc), fatal=True)
    except Exception as exc:
        structlog.get_logger(__name__).exception("worker_boot_failed")
        return m.BootFailed(cfg.slot, f"{type(exc).__name__}: {exc}", fatal=False)
    return eng, m.Ready(cfg.slot, os.getpid(), info, round(time.monotonic() - t0, 2))


def _sender(conn: Connection) -> Send:
    """``conn.send`` for two threads (the main one and the decode thread)."""
    lock = threading.Lock()

    def send(msg: m.WorkerMessage) -> None:
        with lock:
            conn.send(msg)

    return send


@logs.crash_logged
def main(conn: Connection, cfg: WorkerConfig, stacks: Connection | None = None, output: Connection | None = None) -> None:
    """Entry point of a worker process; ``stacks``: where faulthandler writes (the supervisor
    logs what arrives as one record), else stderr; ``output``: where file descriptors 1 and 2
    go (what C libraries write there: the supervisor logs each line), else they stay."""
    log_stream = sys.stderr
    if output is not None:
        # Our records go on to the real stderr (the journal) through a copy of it; whatever
        # else writes to fd 1 or 2 (ONNX Runtime's and Paddle's C++ loggers, a print) reaches
        # the supervisor, which logs it line by line.
        log_stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        output.close()
    # First, so even a worker stuck loading models shows where: a fatal signal or
    # STACK_DUMP_SIGNAL writes every thread's Python stack there (from a signal handler:
    # raw text, so to a pipe the supervisor reads rather than to the journal).
    fd = stacks.fileno() if stacks is not None else sys.stderr.fileno()
    faulthandler.enable(file=fd, all_threads=True)
    faulthandler.register(STACK_DUMP_SIGNAL, file=fd, all_threads=True, chain=False)
    os.environ.update(cfg.env)
    # The supervisor owns shutdown: SIGINT from a terminal goes to the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.configure(cfg.log_level, cfg.log_format, stream=log_stream, worker=cfg.slot)
    # what Python code prints is an info record from here (C code's writes go to the supervisor)
    sys.stdout = logs.LineLogger("worker.stdout")
    booted = boot(cfg)
    if isinstance(booted, m.BootFailed):
        conn.send(booted)
        return
    eng, ready = booted
    info = ready.info
    conn.send(ready)
    send = _sender(conn)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as decoder:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return  # the supervisor is gone
            if isinstance(msg, m.Stop):
                break
            try:
                _run_batch(msg, cfg, eng, info, send, decoder)
            except (BrokenPipeError, ConnectionResetError):
                return  # the supervisor is gone
    # Told to stop between batches: every result is sent, nothing is left to save. Skip the
    # interpreter's teardown (PaddleX, ONNX Runtime): it held a one-shot run's exit 0.2 s.
    sys.stdout.flush()
    sys.stderr.flush()
    log_stream.flush()
    os._exit(0)
