"""Build one folder's PDF in a child process, so OCR goes on while it runs.

The request names the pages (the ledger's done images, in page order, with the
size and mtime that were OCR'd); the child builds from exactly those, reports
a short summary (or the error) over a pipe and exits, returning all its memory.

A request that is not ``final`` opens a streaming build: more pages follow over
the same pipe (:class:`MorePages`, in page order) as they are OCR'd, and the
child adds each as it comes, so the work left when the last one arrives is that
page and the merge. Pages done before the pages ahead of them (another worker's
batch) come as ``ahead``: the child makes them ready while it waits
(``pdf.prepare``) and adds them in their turn. Nothing is published before the
final pages arrived, nor once a page it was asked for left the inbox or changed
during the build (a folder deleted mid-build): a PDF short of a page is never
published (``SourceChanged``: the folder is built again from what it holds).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ocr_inbox.ocr import images
from ocr_inbox.support import children, logs
from ocr_inbox.support.beneath import stat_beneath
from ocr_inbox.support.errors import BadImage, OutputError
from ocr_inbox.support.version import Change, SourceVersion

#: a cancelled build's time to exit on SIGTERM before SIGKILL
CANCEL_GRACE_S = 10.0


@dataclass(frozen=True)
class PdfPage:
    rel: str  # beneath the inbox
    size: int  # the version that was OCR'd
    mtime_ns: int
    ctime_ns: int | None = None
    ino: int | None = None

    @property
    def version(self) -> SourceVersion:
        return SourceVersion(self.size, self.mtime_ns, self.ctime_ns, self.ino)


@dataclass(frozen=True)
class PdfRequest:
    folder: str  # relative to the inbox; "" for the inbox itself
    inbox: str
    outbox: str
    out_pdf: str
    title: str
    pages: tuple[PdfPage, ...]
    #: the folder's earlier pages live on only in the published PDF (their sources were deleted)
    keep_previous: bool
    chunk_pages: int
    limits: images.Limits
    log_level: str
    log_format: str
    #: False: more pages follow (``PdfBuild.add``) until one with ``final`` set
    final: bool = True


@dataclass(frozen=True)
class MorePages:
    """The next pages of a streaming build, in page order; ``final``: the last of them."""

    pages: tuple[PdfPage, ...]
    final: bool
    #: done pages whose turn has not come (some page before them is not done): made ready meanwhile
    ahead: tuple[PdfPage, ...] = ()


@dataclass(frozen=True)
class PdfResult:
    folder: str
    ok: bool
    pages: int = 0
    problems: int = 0
    error: str = ""
    #: the failure was the output's (disk full, unwritable), not the folder's: try again later
    transient: bool = False
    #: an image changed since its OCR (rel): the PDF waits for its new JSON
    changed: str = ""
    #: a short stable code for the log: error, output, timeout (too_many_pages never starts a build)
    reason: str = "error"


@logs.crash_logged
def _main(conn: Connection, req: PdfRequest) -> None:
    _build(conn, req)
    # Published (or not) and reported: skip the interpreter's teardown, which took
    # 0.25 s on a busy machine while the caller waited for the exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _build(conn: Connection, req: PdfRequest) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.configure(req.log_level, req.log_format, pdf=req.folder or ".")
    sys.stdout = logs.LineLogger("pdf.stdout")  # a library's print: a record, not a raw line
    from ocr_inbox.outbox import names, pdf

    outbox = Path(req.outbox)

    def source(p: PdfPage) -> pdf.PageSource:
        return pdf.PageSource(p.rel, names.json_path_for(outbox, p.rel), p.size, p.mtime_ns, p.ctime_ns, p.ino)

    def stream() -> Iterator[pdf.PageSource | pdf.PreparedImage]:
        ready: dict[PdfPage, pdf.PreparedImage] = {}
        batch, final = req.pages, req.final
        ahead: tuple[PdfPage, ...] = ()
        while True:
            for p in batch:
                early = ready.pop(p, None)
                yield early if early is not None else source(p)
            if final:
                return
            for p in ahead:  # at most a chunk of them: memory stays at about two chunks
                if p not in ready and len(ready) < req.chunk_pages:
                    try:
                        made = pdf.prepare(Path(req.inbox), source(p), req.limits)
                    except Exception:  # noqa: BLE001 - done again in its turn, where an error counts
                        made = None
                    if made is not None:
                        ready[p] = made
            more: MorePages = conn.recv()  # EOFError: the parent cancelled (or died)
            batch, ahead, final = more.pages, more.ahead, more.final

    asked: list[PdfPage] = []

    def checked(items: Iterator[pdf.PageSource | pdf.PreparedImage]) -> Iterator[pdf.PageSource | pdf.PreparedImage]:
        """The pages, then the check that every one is still in the inbox as asked: a page
        deleted or moved away during the build (read before or not at all) would leave a
        PDF short of it, and nothing is published then (the raise ends the build first)."""
        for item in items:
            src = item.src if isinstance(item, pdf.PreparedImage) else item
            asked.append(PdfPage(src.rel, src.size or 0, src.mtime_ns or 0, src.ctime_ns, src.ino))
            yield item
        for p in asked:
            why = _left(req.inbox, p)
            if why:
                raise pdf.SourceChanged(p.rel, why)

    try:
        pages = checked(iter([source(p) for p in req.pages]) if req.final else stream())
        report = pdf.build_pdf(
            Path(req.inbox),
            pages,
            Path(req.out_pdf),
            title=req.title,
            limits=req.limits,
            chunk_pages=req.chunk_pages,
            keep_previous=req.keep_previous,
        )
        problems = len(report.image_only) + len(report.left_out)
        conn.send(PdfResult(req.folder, True, pages=report.pages, problems=problems))
    except EOFError:  # nobody is left to tell; nothing was published
        return
    except pdf.SourceChanged as exc:
        conn.send(PdfResult(req.folder, False, error=str(exc), transient=True, changed=exc.rel))
    except (OutputError, OSError) as exc:
        conn.send(PdfResult(req.folder, False, error=f"{type(exc).__name__}: {exc}", transient=True, reason="output"))
    except Exception as exc:  # reported to the daemon, which records it in the ledger
        conn.send(PdfResult(req.folder, False, error=f"{type(exc).__name__}: {exc}"))


def _left(inbox: str, page: PdfPage) -> str:
    """Why ``page`` is no longer in the inbox as the build was asked for it; "" if it is."""
    try:
        st = stat_beneath(inbox, page.rel)
    except BadImage as exc:
        return f"it left the inbox during the build ({exc.detail or exc.reason})"
    if SourceVersion.of(st).against(page.version) not in (Change.same, Change.fill):
        return "it changed during the build"
    return ""


class PdfBuild:
    """A running build: ``waitables`` for the loop, ``add()`` while it is open, ``result()`` once it is over."""

    def __init__(self, req: PdfRequest) -> None:
        self.req = req
        self._conn, child = children.pipe()
        self.process = children.Child("ocr-inbox-pdf", _main, (child, req), handed=(child,))
        #: when the last pages were sent: an open build waits for OCR, which is no build time
        self.started: float | None = time.monotonic() if req.final else None

    @property
    def open(self) -> bool:
        """Still taking pages (a streaming build whose final pages were not sent yet)."""
        return self.started is None

    def add(self, pages: tuple[PdfPage, ...], final: bool, ahead: tuple[PdfPage, ...] = ()) -> None:
        """Send an open build its next pages (and pages to make ready before their turn);
        a child that ended early (an error) tells ``result()``."""
        if final:
            self.started = time.monotonic()
        try:
            # (a child slower than OCR fills the pipe, and this then waits for it: the
            # run would wait for its PDF at the end anyway)
            self._conn.send(MorePages(pages, final, ahead))
        except OSError:  # BrokenPipeError: it ended already, its result is in the pipe
            pass

    def elapsed_s(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    @property
    def waitables(self) -> list[Any]:
        return [self._conn, self.process.sentinel]

    def result(self) -> PdfResult | None:
        """The outcome when the child has finished, else None."""
        if self._conn.poll():
            try:
                res: PdfResult = self._conn.recv()
            except (EOFError, OSError):
                res = PdfResult(self.req.folder, False, error="the PDF process ended without a result")
            self.process.join(timeout=5)
            return res
        if not self.process.is_alive():
            self.process.join(timeout=0)
            return PdfResult(self.req.folder, False, error=f"the PDF process died (exit {self.process.exitcode})")
        return None

    def cancel(self) -> None:
        """Stop the build; its output is atomic, so nothing half-written remains visible."""
        self.process.stop(CANCEL_GRACE_S, folder=self.req.folder or ".")
        self._conn.close()
