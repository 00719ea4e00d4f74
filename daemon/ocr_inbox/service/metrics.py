"""Prometheus metrics: what the daemon did (counters, histograms) and where it stands (gauges).

The stages report through a ``Recorder`` (dispatch: images done and failed, OCR
time, queue wait, pauses, worker exits and memory; intake: refusals and adopted
JSON; folder PDFs: builds). The base class records nothing (``ocr-inbox ocr``);
``Metrics`` counts into its own ``CollectorRegistry`` (never the global one), and
the daemon serves that registry (prometheus_client's WSGI app, ``serving``) when
``[metrics] listen`` is set, from a bounded server: at most ``MAX_CONNECTIONS``
connections at once (one thread each; more are closed at once) and
``CONNECTION_TIMEOUT_S`` for a silent one, so idle connections cannot pile up
threads and descriptors in the daemon.

Two kinds of numbers, for two uses (docs/OPERATIONS.md, "Metrics"):

- counters count what *this process* did since it started: they reset on a
  restart (``rate()`` and ``increase()`` handle that) and are what alerts use;
- ``ocr_inbox_ledger_*`` gauges are the ledger's totals, taken on the daemon's
  status tick (2 s): they survive restarts and include images adopted from an
  existing outbox, retried or changed on disk.

The HTTP server's thread only reads: counters are thread-safe, and the gauges
come from snapshots the main loop replaces whole (the ledger's SQLite connection
and the executor belong to the main thread).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from ocr_inbox.config import parse_listen
from ocr_inbox.executors.base import WorkerView
from ocr_inbox.executors.messages import WORKER_EXIT_REASONS
from ocr_inbox.ledger.reports import Stats
from ocr_inbox.support import reasons
from ocr_inbox.support.errors import BadArguments
from ocr_inbox.support.recorder import Recorder

log = structlog.get_logger(__name__)

#: why dispatch stops handing out work (``Dispatch.pause`` and the crash breaker)
PAUSE_REASONS = ("disk_full", "output_error", "ledger_write_failed", "crash_storm")
#: why a folder's PDF failed (``PdfResult.reason``, and the limits checked before a build)
PDF_FAILURE_REASONS = ("error", "output", "timeout", "too_many_pages", "no_pages")
#: an image's OCR: a small page on a GPU (~50 ms) up to the default image_timeout_s (600 s)
OCR_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: from queued to a worker: nothing (an idle pool) to a day's backlog
QUEUE_BUCKETS = (0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
#: one folder's PDF: a page or two up to the default build_timeout_s (3600 s)
PDF_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class LedgerState:
    """The ledger and dispatch at one status tick."""

    stats: Stats
    failed_by_reason: tuple[tuple[str, int], ...]
    size_bytes: int
    paused_output: bool
    paused_crash_storm: bool


class Metrics(Recorder):
    """Every metric of the daemon, in one registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.done = Counter(
            "ocr_inbox_images_done", "Images OCR'd and recorded done (JSON written) by this process", registry=r
        )
        self.failed = Counter(
            "ocr_inbox_images_failed", "Images failed for good (quarantined or refused) by this process, by reason",
            ["reason"], registry=r,
        )
        self.adopted = Counter(
            "ocr_inbox_images_adopted", "Images recorded done from a JSON already in the outbox (no OCR)", registry=r
        )
        self.ocr_seconds = Histogram(
            "ocr_inbox_ocr_duration_seconds", "A worker's time on one image (decode and OCR, all its pages)",
            buckets=OCR_BUCKETS, registry=r,
        )
        self.queue_seconds = Histogram(
            "ocr_inbox_queue_wait_seconds", "From an image queued in the ledger to its batch handed to a worker",
            buckets=QUEUE_BUCKETS, registry=r,
        )
        self.restarts = Counter(
            "ocr_inbox_worker_restarts", "Workers that ended without being stopped and were replaced, by cause",
            ["cause"], registry=r,
        )
        self.pauses = Counter(
            "ocr_inbox_dispatch_pauses", "Times dispatch stopped handing out work, by reason", ["reason"], registry=r
        )
        self.pdf_seconds = Histogram(
            "ocr_inbox_pdf_build_duration_seconds", "Builds of a folder's PDF that were published: their duration",
            buckets=PDF_BUCKETS, registry=r,
        )
        self.pdf_pages = Counter("ocr_inbox_pdf_pages", "Pages in the folder PDFs published", registry=r)
        self.pdf_failures = Counter(
            "ocr_inbox_pdf_failures", "Folder PDFs that failed, by reason", ["reason"], registry=r
        )
        # known labels start at 0, so rate() sees their first increase after a restart
        for reason in reasons.ADVICE:
            self.failed.labels(reason)
        for cause in WORKER_EXIT_REASONS:
            self.restarts.labels(cause)
        for why in PAUSE_REASONS:
            self.pauses.labels(why)
        for why in PDF_FAILURE_REASONS:
            self.pdf_failures.labels(why)
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc. of the daemon itself
        self._state = _StateCollector()
        r.register(self._state)
        self._rss: dict[int, int] = {}

    # -- the stages' hooks (main thread) ------------------------------------------------

    def image_done(self, ocr_seconds: float) -> None:
        self.done.inc()
        self.ocr_seconds.observe(ocr_seconds)

    def image_failed(self, reason: str) -> None:
        self.failed.labels(reason).inc()

    def image_adopted(self) -> None:
        self.adopted.inc()

    def queue_wait(self, seconds: float) -> None:
        self.queue_seconds.observe(max(0.0, seconds))

    def worker_exit(self, reason: str) -> None:
        self.restarts.labels(reason).inc()

    def worker_rss(self, slot: int, rss_bytes: int) -> None:
        if rss_bytes > 0:  # 0: not measured (a Ray batch whose images all failed to be read)
            self._rss[slot] = rss_bytes

    def paused(self, reason: str) -> None:
        self.pauses.labels(reason).inc()

    def pdf_done(self, seconds: float, pages: int) -> None:
        self.pdf_seconds.observe(seconds)
        self.pdf_pages.inc(pages)

    def pdf_failed(self, reason: str) -> None:
        self.pdf_failures.labels(reason).inc()

    # -- the daemon's snapshots (main thread) ---------------------------------------------

    def workers(self, views: Sequence[WorkerView]) -> None:
        """The executor's workers now; a slot's memory is shown while it has a worker."""
        slots = {v.slot for v in views if v.pid is not None}
        self._rss = {s: b for s, b in self._rss.items() if s in slots}
        by_slot = {v.slot: v for v in views}
        self._state.workers = tuple(views)
        self._state.rss = tuple((by_slot[s], b) for s, b in sorted(self._rss.items()))

    def ledger(self, state: LedgerState) -> None:
        self._state.ledger = state


class _StateCollector:
    """The gauges, from the snapshots the main loop last set (each replaced whole)."""

    def __init__(self) -> None:
        self.workers: tuple[WorkerView, ...] = ()
        self.rss: tuple[tuple[WorkerView, int], ...] = ()
        self.ledger: LedgerState | None = None

    def collect(self) -> Iterable[Metric]:
        workers, rss, ledger = self.workers, self.rss, self.ledger
        by_state = GaugeMetricFamily(
            "ocr_inbox_workers", "OCR workers (processes or Ray actors) by node, device and state",
            labels=["node", "device", "state"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        for w in workers:
            key = (w.node, w.device, w.state)
            counts[key] = counts.get(key, 0) + 1
        for key, n in sorted(counts.items()):
            by_state.add_metric(key, n)
        yield by_state
        mem = GaugeMetricFamily(
            "ocr_inbox_worker_resident_memory_bytes", "A local worker's resident memory after its last batch",
            labels=["slot", "device"],
        )
        for w, b in rss:
            mem.add_metric([str(w.slot), w.device], b)
        yield mem
        if ledger is None:
            return
        st = ledger.stats
        yield GaugeMetricFamily("ocr_inbox_queue_images", "Images queued in the ledger, waiting for a worker", st.queued)
        images = GaugeMetricFamily("ocr_inbox_ledger_images", "Images in the ledger by status", labels=["status"])
        for status, n in (("pending", st.queued), ("running", st.running), ("done", st.done),
                          ("failed", st.failed), ("gone", st.gone)):
            images.add_metric([status], n)
        yield images
        failed = GaugeMetricFamily(
            "ocr_inbox_ledger_failed_images", "Failed images in the ledger by reason (until retried or changed)",
            labels=["reason"],
        )
        for reason, n in ledger.failed_by_reason:
            failed.add_metric([reason], n)
        yield failed
        yield GaugeMetricFamily(
            "ocr_inbox_folders_waiting_for_pdf", "Folders whose PDF is due or being built", st.folders_waiting
        )
        yield GaugeMetricFamily("ocr_inbox_ledger_size_bytes", "The ledger's database file and its WAL", ledger.size_bytes)
        paused = GaugeMetricFamily(
            "ocr_inbox_dispatch_paused", "1 while dispatch hands out no work: output (a disk refused a write) "
            "or crash_storm (workers crash on different images)", labels=["cause"],
        )
        paused.add_metric(["output"], float(ledger.paused_output))
        paused.add_metric(["crash_storm"], float(ledger.paused_crash_storm))
        yield paused


#: connections served at once (a scrape uses one); more are closed as they are accepted
MAX_CONNECTIONS = 8
#: a connection that sends nothing (or stalls mid-request) this long is closed
CONNECTION_TIMEOUT_S = 10.0


class _Handler(WSGIRequestHandler):
    """One request per connection (HTTP/1.0), a timeout on every read and write, no access log."""

    def setup(self) -> None:
        self.request.settimeout(CONNECTION_TIMEOUT_S)  # read per connection: tests shorten it
        super().setup()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass


class _BoundedServer(ThreadingWSGIServer):
    """prometheus_client's thread-per-connection server with a cap on the threads."""

    def __init__(self, *args: object, **kw: object) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kw)  # type: ignore[arg-type]

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: the client sees the connection closed
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread was started to release it
            raise

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that timed out or went away is not an error; anything else is logged (once,
        structured) instead of socketserver's traceback on stderr."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            log.warning("metrics_request_failed", client=str(client_address), error=f"{type(exc).__name__}: {exc}")

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _server(host: str, port: int, metrics: Metrics) -> _BoundedServer:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    family, addr = info[0], str(info[4][0])

    class Server(_BoundedServer):
        address_family = family  # IPv4 or IPv6, as the address resolves

    server = make_server(addr, port, make_wsgi_app(metrics.registry), Server, handler_class=_Handler)
    assert isinstance(server, _BoundedServer)
    return server


@contextlib.contextmanager
def serving(listen: str, metrics: Metrics) -> Iterator[str]:
    """Serve ``metrics`` at ``http://listen/metrics`` (a thread) until the block ends;
    yields the address bound ("" when ``listen`` is empty: metrics off)."""
    if not listen:
        yield ""
        return
    host, port = parse_listen(listen)
    try:
        server = _server(host, port, metrics)
    except OSError as exc:  # in use, an address not on this host, a name that does not resolve
        raise BadArguments(
            f"metrics.listen: cannot listen on {listen}: {exc.strerror or exc}"
            " (another process holds the port? pick another one, or leave metrics.listen empty)"
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    bound_host, bound_port = server.socket.getsockname()[:2]  # port 0: the one the kernel chose
    address = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
    log.info("metrics_serving", address=address, url=f"http://{address}/metrics")
    try:
        yield address
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
