"""Build one folder's PDF in a child process, so OCR goes on while it runs.

The supervisor starts at most one build at a time; the child reports a short
summary (or the error) over a pipe and exits, returning all its memory.
"""

from __future__ import annotations

import multiprocessing
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ocr_inbox import atomic, logs
from ocr_inbox.errors import OutputError
from ocr_inbox.inbox.scan import NAME_MAX

_CTX = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class PdfRequest:
    folder: str  # relative to the inbox; "" for the inbox itself
    image_dir: str
    json_dir: str
    out_pdf: str
    chunk_pages: int
    first_prefixes: tuple[str, ...]
    max_image_pixels: int
    inbox: str
    log_level: str
    log_format: str


@dataclass(frozen=True)
class PdfResult:
    folder: str
    ok: bool
    pages: int = 0
    problems: int = 0
    error: str = ""
    #: the failure was the output's (disk full, unwritable), not the folder's: try again later
    transient: bool = False


def pdf_path_for(outbox: Path, inbox: Path, folder: str) -> Path:
    """``OUTBOX/<dir>/<folder name>.pdf``; the inbox's own images give ``OUTBOX/<inbox name>.pdf``.

    A folder name too long for ``.pdf`` to fit in NAME_MAX keeps a prefix and gains
    a hash of the whole name (``<prefix>-<hash>.pdf``), so the PDF can always be written.
    """
    name = folder.rsplit("/", 1)[-1] if folder else inbox.resolve().name
    return outbox / folder / f"{atomic.fit_name(name, NAME_MAX - len('.pdf'))}.pdf"


def _main(conn: Connection, req: PdfRequest) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.configure(req.log_level, req.log_format, pdf=req.folder or ".")
    from ocr_inbox.outbox import pdf

    try:
        report = pdf.build_folder_pdf(
            Path(req.image_dir),
            Path(req.json_dir),
            Path(req.out_pdf),
            chunk_pages=req.chunk_pages,
            first_prefixes=req.first_prefixes,
            max_pixels=req.max_image_pixels,
            root=Path(req.inbox),
        )
        problems = len(report.image_only) + len(report.left_out)
        conn.send(PdfResult(req.folder, True, pages=report.pages, problems=problems))
    except (OutputError, OSError) as exc:
        conn.send(PdfResult(req.folder, False, error=f"{type(exc).__name__}: {exc}", transient=True))
    except Exception as exc:  # reported to the supervisor, which records it in the ledger
        conn.send(PdfResult(req.folder, False, error=f"{type(exc).__name__}: {exc}"))


class PdfBuild:
    """A running build: ``waitables`` for the loop, ``result()`` once it is over."""

    def __init__(self, req: PdfRequest) -> None:
        self.req = req
        self._conn, child = _CTX.Pipe(duplex=False)
        self.process: Any = _CTX.Process(target=_main, args=(child, req), name="ocr-inbox-pdf", daemon=True)
        self.process.start()
        child.close()

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
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=5)
        self._conn.close()
