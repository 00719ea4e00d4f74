"""Quiet folders -> searchable PDFs: the last stage of the flow.

A folder is due when nothing changed in it for ``pdf.quiet_seconds`` and all
its images are finished (``Ledger.quiet_folders``). Its PDF is built from
exactly the images the ledger holds as done, the versions that were OCR'd,
in page order, by a child process (one build at a time), while OCR goes on.
An image that changed since its OCR stops the build: the folder waits for
the new JSON; one that left the inbox during the build stops it too (nothing
is published), and the folder is built again without it (``Ledger.gone``
re-arms a folder whose done image left). ``step`` returns what the others need
to know (``core/events.py``): a PDF published (with ``[inbox] delete_processed``
its sources go then, not before), an image changed since its OCR.

A folder whose last image finishes is looked at on the next step (``wake``),
and the journal says when its PDF is due (``pdf_due``: ``quiet_seconds`` after
the last change seen in the folder; ``status`` shows "PDF in N s"),
and the daemon's loop wakes when the next one turns quiet (``due_in``): no
tick between the last image and the build. Otherwise quiet folders are looked
for once a second (the query reads every folder's row).

One-shot runs stream (``stream=True``): their tree is fixed, so the leading
done pages of the folder being OCR'd go to the builder while the rest are
still OCR'd, in page order, each once every image before it is done; the
final pages follow when nothing in the folder is queued or running. The build
then overlaps OCR, and all that is left at the end is the last page and the
merge. Should a page already sent be OCR'd again meanwhile, the build starts
over. The daemon does not stream: a new file may still arrive before a page.

Limits (``[pdf]``): a folder with more than ``max_pages`` pages gets no PDF,
and a build running longer than ``build_timeout_s`` is cancelled; both mark
the folder's PDF failed with the reason, not to be retried until the folder
changes (a retry would only hit the same limit again).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from ocr_inbox.config import Settings
from ocr_inbox.core.events import Event, ImageMoved, PdfPublished
from ocr_inbox.executors.setup import limits_from
from ocr_inbox.ledger import ImageRow, ImageStatus, Ledger, reports
from ocr_inbox.outbox import names, order
from ocr_inbox.outbox.pdf_job import PdfBuild, PdfPage, PdfRequest, PdfResult
from ocr_inbox.support import logs
from ocr_inbox.support.paths import folder_of
from ocr_inbox.support.recorder import Recorder

log = structlog.get_logger(__name__)

#: how often quiet folders are looked for (more often is wasted work on big ledgers)
QUIET_CHECK_S = 1.0


_UNFINISHED = (ImageStatus.pending, ImageStatus.running)


def _page(row: ImageRow) -> PdfPage:
    return PdfPage(row.rel, row.size, row.mtime_ns, row.ctime_ns, row.ino)


class FolderPdfs:
    def __init__(
        self,
        ledger: Ledger,
        settings: Settings,
        inbox: Path,
        outbox: Path,
        recorder: Recorder = Recorder(),
        *,
        stream: bool = False,
    ) -> None:
        self.ledger = ledger
        #: the metrics: builds, their time and pages (the base records nothing)
        self.recorder = recorder
        self.settings = settings
        self.inbox = inbox
        self.outbox = outbox
        self.stream = stream
        self.build: PdfBuild | None = None
        self._result: PdfResult | None = None
        self._retry: dict[str, float] = {}
        self._next_check = 0.0
        #: wall time at which the next folder whose images are all finished turns quiet
        self._due_at: float | None = None
        #: folders with an image finished since the last look
        self._touched: set[str] = set()
        #: folders with an image finished whose PDF's due time may have to be said
        self._finished: set[str] = set()
        #: folder -> the due time said for it (said again only when it moves)
        self._said_due: dict[str, float] = {}
        #: the pages the running build has been given, in order
        self._sent: tuple[PdfPage, ...] = ()
        #: pages it was given to make ready before their turn
        self._ahead: dict[PdfPage, None] = {}
        #: what the next ``step`` returns (a build can end in ``cancel``'s timeout check too)
        self._events: list[Event] = []
        #: PDFs published since start
        self.published = 0

    @property
    def waitables(self) -> list[Any]:
        return self.build.waitables if self.build is not None else []

    @property
    def busy(self) -> bool:
        return self.build is not None

    def wake(self, rel: str) -> None:
        """An image finished: its folder may be complete now (or have its next pages)."""
        self._touched.add(folder_of(rel))
        self._finished.add(folder_of(rel))

    def look_now(self) -> None:
        """Look for due folders on the next step, whatever the time."""
        self._next_check = 0.0

    def due_in(self) -> float | None:
        """Seconds until the next folder with all its images finished turns quiet; None: none waits."""
        if self._due_at is None or self.build is not None:
            return None
        return max(0.0, self._due_at - time.time())

    def step(self, *, may_start: bool, quiet_seconds: float | None = None) -> list[Event]:
        """Collect a finished build (or cancel one past its time); give an open build its next
        pages; start the next due folder when ``may_start``. Returns the builds' events."""
        self._pass(may_start, quiet_seconds)
        events, self._events = self._events, []
        return events

    def _pass(self, may_start: bool, quiet_seconds: float | None) -> None:
        self._collect()
        self._enforce_timeout()
        self._say_due(self.settings.pdf.quiet_seconds if quiet_seconds is None else quiet_seconds)
        now_m = time.monotonic()
        for folder, due in list(self._retry.items()):
            if now_m >= due:
                del self._retry[folder]
                self.ledger.pdf_rearm(folder)
        if self.build is not None:
            if self.build.open and self.build.req.folder in self._touched:
                self._touched.clear()  # (the others are looked at once this build is over)
                self._feed(self.build)
            return
        if not may_start or not self.settings.pdf.enabled or not self._look_now(now_m):
            return
        self._next_check = now_m + QUIET_CHECK_S
        self._touched.clear()
        quiet_s = self.settings.pdf.quiet_seconds if quiet_seconds is None else quiet_seconds
        quiet = self.ledger.quiet_folders(time.time(), quiet_s)
        self._due_at = None if quiet else self.ledger.next_quiet_at(quiet_s)
        if quiet:
            self._start(quiet[0].folder, self._pages(quiet[0].folder), final=True)
            return
        if self.stream:
            for f in self.ledger.growing_folders():
                if self._start_stream(f.folder):
                    return

    def _say_due(self, quiet_s: float) -> None:
        """Folders whose last image just finished: say when their PDF starts ("Where is my PDF?").
        (One-shot runs build at once: nothing to say.)"""
        folders, self._finished = self._finished, set()
        if self.stream or not self.settings.pdf.enabled:
            return
        now = time.time()
        for folder in sorted(folders):
            due = reports.pdf_due_at(self.ledger, folder, quiet_s)
            if due is None or self._said_due.get(folder) == due:
                continue
            self._said_due[folder] = due
            log.info(
                "pdf_due", folder=folder or ".", in_s=max(0, round(due - now)), quiet_seconds=quiet_s,
                at=datetime.fromtimestamp(due).astimezone().isoformat(timespec="seconds"),
            )

    def _look_now(self, now_m: float) -> bool:
        """Time for the query of quiet folders: its second came, a folder turned quiet, or one
        had its last image finished (a stream: any image)."""
        if now_m >= self._next_check or (self._due_at is not None and time.time() >= self._due_at):
            return True
        if self.stream:
            return bool(self._touched)
        # the others are looked at when their last image finishes
        self._touched = {f for f in self._touched if not self.ledger.has_unfinished(f)}
        return bool(self._touched)

    def cancel(self) -> None:
        if self.build is not None:
            self.build.cancel()  # atomic output: the folder is rebuilt on the next start
            log.info("pdf_cancelled", folder=self.build.req.folder)
            self.build = None
            self._sent, self._ahead = (), {}

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

    def _in_page_order(self, rows: list[ImageRow]) -> list[ImageRow]:
        by_name = {r.rel.rsplit("/", 1)[-1]: r for r in rows}
        return [by_name[n] for n in order.page_order(by_name, self.settings.pdf.first_prefixes)]

    def _pages(self, folder: str) -> tuple[PdfPage, ...]:
        """The folder's PDF pages: its done images, in page order."""
        return tuple(map(_page, self._in_page_order(self.ledger.pages_of(folder))))

    def _start_stream(self, folder: str) -> bool:
        """Open a streaming build of the folder's leading done pages; False when there are none yet
        (or it may grow past ``max_pages``: it is then built, or refused, once complete)."""
        rows = self._in_page_order(self.ledger.folder_images(folder))
        leading = tuple(_page(r) for r in _leading_done(rows))
        limit = self.settings.pdf.max_pages
        if not leading or (limit and len([r for r in rows if r.status != ImageStatus.failed]) > limit):
            return False
        self._start(folder, leading, final=False)
        return True

    def _feed(self, build: PdfBuild) -> None:
        """Send an open build the pages done since; all the rest and the end once nothing in
        its folder is queued or running. A page sent that is no longer a page as it was
        (OCR'd again) makes the build start over. Done pages whose turn has not come
        go as ``ahead`` (a chunk at most), to be made ready meanwhile."""
        folder = build.req.folder
        rows = self._in_page_order(self.ledger.folder_images(folder))
        complete = not any(r.status in _UNFINISHED for r in rows)
        done = rows if complete else _leading_done(rows)
        pages = tuple(_page(r) for r in done if r.status == ImageStatus.done)
        beyond = [] if complete else [_page(r) for r in rows[len(done) :] if r.status == ImageStatus.done]
        if pages[: len(self._sent)] != self._sent:
            log.info("pdf_restarted", folder=folder, reason="a page was OCR'd again since it went to the build")
            self.cancel()
            self.ledger.pdf_reopen(folder)
            self.look_now()
            return
        new = pages[len(self._sent) :]
        for page in new:
            self._ahead.pop(page, None)
        room = max(0, self.settings.pdf.chunk_pages - len(self._ahead))
        ahead = tuple(p for p in beyond if p not in self._ahead)[:room]
        if not new and not ahead and not complete:
            return
        if complete and self._too_many_pages(folder, len(pages), build.req.keep_previous):
            self.cancel()
            return
        log.debug("pdf_pages_added", folder=folder, pages=len(new), ahead=len(ahead), final=complete)
        build.add(new, complete, ahead)
        self._sent += new
        self._ahead.update(dict.fromkeys(ahead))

    def _start(self, folder: str, pages: tuple[PdfPage, ...], *, final: bool) -> None:
        keep_previous = self.ledger.has_deleted_sources(folder)
        out = names.pdf_path_for(self.outbox, self.inbox, folder)
        if not pages and not keep_previous:  # nothing to build: say so instead of asking again each second
            self.ledger.pdf_started(folder)
            self.ledger.pdf_failed(folder, "no page to put in it", time.time())
            self.recorder.pdf_failed("no_pages")
            return
        title = folder.rsplit("/", 1)[-1] if folder else Path(os.path.realpath(self.inbox)).name
        self._said_due.pop(folder, None)
        self.ledger.pdf_started(folder)
        if final and self._too_many_pages(folder, len(pages), keep_previous):
            return
        log.info("pdf_start", folder=folder, out=str(out), pages=len(pages), final=final)
        s = self.settings
        self.build = PdfBuild(
            PdfRequest(
                folder=folder,
                inbox=os.path.realpath(self.inbox),
                outbox=str(self.outbox),
                out_pdf=str(out),
                title=title,
                pages=pages,
                keep_previous=keep_previous,
                chunk_pages=s.pdf.chunk_pages,
                limits=limits_from(s),
                log_level=s.log.level,
                log_format=logs.resolve_format(s.log.format, sys.stderr),
                final=final,
            )
        )
        self._sent = pages

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
            out = Path(self.build.req.out_pdf)
            self.ledger.pdf_done(res.folder, res.pages, now, written=names.written(out))
            self._record_copies(out, self._sent)
            self.published += 1
            self.recorder.pdf_done(self.build.elapsed_s(), res.pages)
            log.info("pdf_done", folder=res.folder, pages=res.pages, problems=res.problems)
            self._events.append(PdfPublished(res.folder, self.build.req.pages))
        else:
            self.ledger.pdf_failed(res.folder, res.error, now)
            if res.changed:
                log.info("pdf_waits_for_ocr", folder=res.folder, changed=res.changed, detail=res.error)
                self._events.append(ImageMoved(res.changed))
            else:
                log.error("pdf_failed", folder=res.folder, reason=res.reason, error=res.error, retry=res.transient)
                self.recorder.pdf_failed(res.reason)
            if res.transient:
                self._retry[res.folder] = time.monotonic() + self.settings.pool.output_retry_s
        self.build = self._result = None
        self._sent, self._ahead = (), {}
        self._next_check = 0.0  # the next quiet folder may be waiting already

    def _record_copies(self, out: Path, pages: tuple[PdfPage, ...]) -> None:
        """The searchable copies the build published beside the JSONs of its PDF sources, as
        written (the scans compare them; one missing or changed re-arms the folder's PDF)."""
        for page in pages:
            if not page.rel.lower().endswith(".pdf"):
                continue
            copy = names.searchable_copy_path(names.json_path_for(self.outbox, page.rel))
            if copy != out:  # (a copy named as its folder's PDF is not written: the PDF wins)
                self.ledger.copy_written(page.rel, page.size, page.mtime_ns, names.written(copy))


def _leading_done(rows: list[ImageRow]) -> list[ImageRow]:
    """The done rows before the first one that is not done: nothing can come before them any more.
    (A failed image stops it too: a crash storm may queue it again.)"""
    out = []
    for r in rows:
        if r.status != ImageStatus.done:
            break
        out.append(r)
    return out
