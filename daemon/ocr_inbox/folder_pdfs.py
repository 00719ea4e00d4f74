"""Quiet folders -> searchable PDFs: the last stage of the flow.

A folder is due when nothing changed in it for ``pdf.quiet_seconds`` and all
its images are finished (``Ledger.quiet_folders``). Its PDF is built from
exactly the images the ledger holds as done, the versions that were OCR'd,
in page order, by a child process (one build at a time), while OCR goes on.
An image that changed since its OCR stops the build: the folder waits for
the new JSON. With ``[inbox] delete_processed`` the sources go only after the
PDF that holds them is published.

Limits (``[pdf]``): a folder with more than ``max_pages`` pages gets no PDF,
and a build running longer than ``build_timeout_s`` is cancelled; both mark
the folder's PDF failed with the reason, not to be retried until the folder
changes (a retry would only hit the same limit again).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from ocr_inbox import logs
from ocr_inbox.config import Settings
from ocr_inbox.executors.setup import limits_from
from ocr_inbox.inbox.cleanup import delete_source
from ocr_inbox.ledger import ImageStatus, Ledger
from ocr_inbox.metrics import Recorder
from ocr_inbox.outbox import names, order
from ocr_inbox.outbox.pdf_job import PdfBuild, PdfPage, PdfRequest, PdfResult

log = structlog.get_logger(__name__)

#: how often quiet folders are looked for (more often is wasted work on big ledgers)
QUIET_CHECK_S = 1.0


class FolderPdfs:
    def __init__(
        self, ledger: Ledger, settings: Settings, inbox: Path, outbox: Path, recorder: Recorder = Recorder()
    ) -> None:
        self.ledger = ledger
        #: the metrics: builds, their time and pages (the base records nothing)
        self.recorder = recorder
        self.settings = settings
        self.inbox = inbox
        self.outbox = outbox
        self.build: PdfBuild | None = None
        self._result: PdfResult | None = None
        self._retry: dict[str, float] = {}
        self._next_check = 0.0
        #: images that changed under a build: intake should look at them again
        self.moved: list[str] = []
        #: PDFs published since start
        self.published = 0

    @property
    def waitables(self) -> list[Any]:
        return self.build.waitables if self.build is not None else []

    @property
    def busy(self) -> bool:
        return self.build is not None

    def step(self, *, may_start: bool, quiet_seconds: float | None = None) -> None:
        """Collect a finished build (or cancel one past its time); start the next due folder when ``may_start``."""
        self._collect()
        self._enforce_timeout()
        now_m = time.monotonic()
        for folder, due in list(self._retry.items()):
            if now_m >= due:
                del self._retry[folder]
                self.ledger.pdf_rearm(folder)
        if self.build is not None or not may_start or not self.settings.pdf.enabled or now_m < self._next_check:
            return
        self._next_check = now_m + QUIET_CHECK_S
        quiet_s = self.settings.pdf.quiet_seconds if quiet_seconds is None else quiet_seconds
        quiet = self.ledger.quiet_folders(time.time(), quiet_s)
        if quiet:
            self._start(quiet[0].folder)

    def cancel(self) -> None:
        if self.build is not None:
            self.build.cancel()  # atomic output: the folder is rebuilt on the next start
            log.info("pdf_cancelled", folder=self.build.req.folder)
            self.build = None

    def _enforce_timeout(self) -> None:
        """Cancel a build still running past ``build_timeout_s``; its result is a failure, not retried.
        (One that finished meanwhile was collected first: its PDF is published, it counts as done.)"""
        limit = self.settings.pdf.build_timeout_s
        if self.build is None or self._result is not None or not limit or self.build.elapsed_s() <= limit:
            return
        self.build.cancel()
        error = f"timeout: the build ran longer than [pdf] build_timeout_s = {limit:g} s"
        self._result = PdfResult(self.build.req.folder, False, error=error, reason="timeout")
        self._collect()

    def _start(self, folder: str) -> None:
        rows = {r.rel.rsplit("/", 1)[-1]: r for r in self.ledger.pages_of(folder)}
        keep_previous = self.ledger.has_deleted_sources(folder)
        out = names.pdf_path_for(self.outbox, self.inbox, folder)
        if not rows and not keep_previous:  # nothing to build: say so instead of asking again each second
            self.ledger.pdf_started(folder)
            self.ledger.pdf_failed(folder, "no page to put in it", time.time())
            self.recorder.pdf_failed("no_pages")
            return
        ordered = order.page_order(rows, self.settings.pdf.first_prefixes)
        title = folder.rsplit("/", 1)[-1] if folder else Path(os.path.realpath(self.inbox)).name
        self.ledger.pdf_started(folder)
        if self._too_many_pages(folder, len(ordered), keep_previous):
            return
        log.info("pdf_start", folder=folder, out=str(out), pages=len(ordered))
        s = self.settings
        self.build = PdfBuild(
            PdfRequest(
                folder=folder,
                inbox=os.path.realpath(self.inbox),
                outbox=str(self.outbox),
                out_pdf=str(out),
                title=title,
                pages=tuple(PdfPage(rows[n].rel, rows[n].size, rows[n].mtime_ns) for n in ordered),
                keep_previous=keep_previous,
                chunk_pages=s.pdf.chunk_pages,
                limits=limits_from(s),
                log_level=s.log.level,
                log_format=logs.resolve_format(s.log.format, sys.stderr),
            )
        )

    def _too_many_pages(self, folder: str, new_pages: int, keep_previous: bool) -> bool:
        """Over ``max_pages``: the folder's PDF is failed with the reason (its JSONs stay)."""
        limit = self.settings.pdf.max_pages
        previous = 0
        if keep_previous:  # pages whose sources were deleted live on in the published PDF
            row = self.ledger.folder(folder)
            previous = (row.pdf_pages or 0) if row is not None else 0
        pages = previous + new_pages
        if not limit or pages <= limit:
            return False
        error = f"too_many_pages: {pages} pages, more than [pdf] max_pages = {limit}"
        self.ledger.pdf_failed(folder, error, time.time())
        self.recorder.pdf_failed("too_many_pages")
        log.error("pdf_failed", folder=folder, reason="too_many_pages", pages=pages, max_pages=limit, retry=False)
        return True

    def _collect(self) -> None:
        if self.build is None:
            return
        # kept until the ledger took it (a state-disk error raises out of here and we come back)
        res = self._result = self._result or self.build.result()
        if res is None:
            return
        now = time.time()
        if res.ok:
            self.ledger.pdf_done(res.folder, res.pages, now)
            self.published += 1
            self.recorder.pdf_done(self.build.elapsed_s(), res.pages)
            log.info("pdf_done", folder=res.folder, pages=res.pages, problems=res.problems)
            if self.settings.inbox.delete_processed:
                self._delete_sources(self.build.req)
        else:
            self.ledger.pdf_failed(res.folder, res.error, now)
            if res.changed:
                log.info("pdf_waits_for_ocr", folder=res.folder, changed=res.changed)
                self.moved.append(res.changed)
            else:
                log.error("pdf_failed", folder=res.folder, reason=res.reason, error=res.error, retry=res.transient)
                self.recorder.pdf_failed(res.reason)
            if res.transient:
                self._retry[res.folder] = time.monotonic() + self.settings.pool.output_retry_s
        self.build = self._result = None
        self._next_check = 0.0  # the next quiet folder may be waiting already

    def _delete_sources(self, req: PdfRequest) -> None:
        """Delete the sources the published PDF holds, each only if still the version OCR'd."""
        for page in req.pages:
            row = self.ledger.get(page.rel)
            if row is None or row.status != ImageStatus.done or (row.size, row.mtime_ns) != (page.size, page.mtime_ns):
                continue  # a newer version arrived meanwhile: keep it
            why = delete_source(req.inbox, page.rel, page.size, page.mtime_ns)
            if why is None:
                self.ledger.source_deleted(page.rel, page.size, page.mtime_ns, time.time())
                log.info("source_deleted", path=page.rel)
            else:
                log.warning("source_kept", path=page.rel, reason=why)
