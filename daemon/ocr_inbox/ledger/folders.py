"""Folders and their PDFs: activity, quietness, which images are a folder's pages, the PDF's
state. A folder's PDF holds its done images that still belong to it (docs/RELIABILITY.md)."""

from __future__ import annotations

import sqlite3

from ocr_inbox.ledger.db import LedgerDb
from ocr_inbox.ledger.schema import (
    _DONE,
    _FOLDER_COLUMNS,
    _GONE,
    _IMAGE_COLUMNS,
    _PDF_BUILDING,
    _PDF_DONE,
    _PDF_FAILED,
    _PDF_NEEDED,
    _PDF_NONE,
    _PENDING,
    _RUNNING,
    FolderRow,
    ImageRow,
    ImageStatus,
    PdfOutput,
    PdfState,
    _folder,
    _image,
)


def touch_folder(c: sqlite3.Connection, folder: str, now: float, *, rearm: bool) -> None:
    """Create the folder row or mark activity; ``rearm``: its PDF must be (re)built."""
    state = "needed" if rearm else "none"
    c.execute(
        "INSERT INTO folders (folder, first_seen, last_activity, pdf_state) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (folder) DO UPDATE SET last_activity = excluded.last_activity,"
        f"  pdf_state = CASE WHEN ? THEN {_PDF_NEEDED} ELSE pdf_state END",
        (folder, now, now, state, rearm),
    )


def pages_changed(c: sqlite3.Connection, folder: str, now: float, *, lost_a_page: bool) -> None:
    """An image left ``folder``. A folder's PDF holds its done images that still belong to
    it (in the inbox, or deleted by ``delete_processed``): a done one leaving changes
    that set, and the PDF is rebuilt once the folder is quiet. A folder left with no
    such image keeps its last PDF as it is (people's pages are never deleted for them;
    ``status`` says it holds images no longer in the inbox) until an image arrives."""
    left = c.execute(
        f"SELECT 1 FROM images WHERE folder = ? AND status = {_DONE} LIMIT 1", (folder,)
    ).fetchone()
    touch_folder(c, folder, now, rearm=lost_a_page and left is not None)
    if left is None:
        # nothing left that could become a page: no build is due, nor a failure to retry
        # (a build running now loses its pages and publishes nothing); the last PDF stays
        c.execute(
            f"UPDATE folders SET pdf_state = CASE WHEN pdf_pages IS NULL THEN {_PDF_NONE} ELSE {_PDF_DONE} END"
            f" WHERE folder = ? AND pdf_state IN ({_PDF_NEEDED}, {_PDF_BUILDING}, {_PDF_FAILED})"
            " AND NOT EXISTS (SELECT 1 FROM images i WHERE i.folder = folders.folder"
            f"  AND i.status IN ({_PENDING}, {_RUNNING}))",
            (folder,),
        )


class Folders(LedgerDb):
    """The folder rows and their PDF states."""

    def quiet_folders(self, now: float, quiet_seconds: float) -> list[FolderRow]:
        """Folders whose PDF is needed, quiet long enough, with nothing queued and a page done.

        "Quiet" counts from the last change seen in the inbox, not from the last
        image finished: OCR time does not delay the PDF.
        """
        rows = self._conn.execute(
            f"SELECT {_FOLDER_COLUMNS} FROM folders f WHERE pdf_state = {_PDF_NEEDED} AND last_activity <= ?"
            " AND NOT EXISTS (SELECT 1 FROM images i WHERE i.folder = f.folder"
            f"  AND i.status IN ({_PENDING}, {_RUNNING}))"
            f" AND EXISTS (SELECT 1 FROM images i WHERE i.folder = f.folder AND i.status = {_DONE})"
            " ORDER BY first_seen, folder",
            (now - quiet_seconds,),
        ).fetchall()
        return [_folder(r) for r in rows]

    def next_quiet_at(self, quiet_seconds: float) -> float | None:
        """When the next folder that ``quiet_folders`` waits for (all its images finished)
        becomes quiet, as wall time; None when no folder waits for that."""
        row = self._conn.execute(
            f"SELECT min(last_activity) FROM folders f WHERE pdf_state = {_PDF_NEEDED}"
            " AND NOT EXISTS (SELECT 1 FROM images i WHERE i.folder = f.folder"
            f"  AND i.status IN ({_PENDING}, {_RUNNING}))"
            f" AND EXISTS (SELECT 1 FROM images i WHERE i.folder = f.folder AND i.status = {_DONE})",
        ).fetchone()
        return None if row[0] is None else float(row[0]) + quiet_seconds

    def has_unfinished(self, folder: str) -> bool:
        """Some image of the folder is queued or with a worker."""
        row = self._conn.execute(
            f"SELECT 1 FROM images WHERE folder = ? AND status IN ({_PENDING}, {_RUNNING}) LIMIT 1", (folder,)
        ).fetchone()
        return row is not None

    def growing_folders(self) -> list[FolderRow]:
        """Folders whose PDF is needed with a page done and images still queued or running,
        oldest first (the order ``claim`` OCRs them in)."""
        rows = self._conn.execute(
            f"SELECT {_FOLDER_COLUMNS} FROM folders f WHERE pdf_state = {_PDF_NEEDED}"
            f" AND EXISTS (SELECT 1 FROM images i WHERE i.folder = f.folder AND i.status IN ({_PENDING}, {_RUNNING}))"
            f" AND EXISTS (SELECT 1 FROM images i WHERE i.folder = f.folder AND i.status = {_DONE})"
            " ORDER BY first_seen, folder",
        ).fetchall()
        return [_folder(r) for r in rows]

    def folder_images(self, folder: str) -> list[ImageRow]:
        """The folder's images that are or may become its PDF's new pages, in any status but
        gone (done images whose source was deleted are in the published PDF already)."""
        rows = self._conn.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE folder = ? AND status != {_GONE}"
            f" AND NOT (status = {_DONE} AND source_deleted = 1) ORDER BY natkey, rel",
            (folder,),
        ).fetchall()
        return [_image(r) for r in rows]

    def pages_of(self, folder: str) -> list[ImageRow]:
        """The folder's done images whose source is still in the inbox: its PDF's new pages."""
        return [r for r in self.folder_images(folder) if r.status == ImageStatus.done]

    def has_deleted_sources(self, folder: str) -> bool:
        """Some of the folder's pages live on only in its published PDF (``delete_processed``)."""
        row = self._conn.execute(
            f"SELECT 1 FROM images WHERE folder = ? AND status = {_DONE} AND source_deleted = 1 LIMIT 1",
            (folder,),
        ).fetchone()
        return row is not None

    def pdf_started(self, folder: str) -> None:
        with self._tx() as c:
            c.execute(
                f"UPDATE folders SET pdf_state = {_PDF_BUILDING}, pdf_error = NULL WHERE folder = ?", (folder,)
            )

    def pdf_done(self, folder: str, pages: int, now: float, written: tuple[int, int] | None = None) -> bool:
        """building -> done. False when a page arrived meanwhile: it stays needed. ``written``:
        the PDF's size and mtime_ns as published, what the scans compare it with."""
        size, mtime_ns = written or (None, None)
        with self._tx() as c:
            c.execute("UPDATE folders SET pdf_size = ?, pdf_mtime_ns = ? WHERE folder = ?", (size, mtime_ns, folder))
        return self._pdf_finished(folder, PdfState.done, "pdf_pages", pages, now)

    def published_pdfs(self) -> list[PdfOutput]:
        """The folders whose PDF is published (done), with the PDF as written."""
        rows = self._conn.execute(
            f"SELECT folder, pdf_pages, pdf_size, pdf_mtime_ns FROM folders WHERE pdf_state = {_PDF_DONE}"
        ).fetchall()
        return [PdfOutput(f, pages, None if size is None else (size, mtime)) for f, pages, size, mtime in rows]

    def pdf_rebuild(self, folder: str) -> bool:
        """done -> needed: an output its build writes (a searchable copy) is missing or changed."""
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE folders SET pdf_state = {_PDF_NEEDED} WHERE folder = ? AND pdf_state = {_PDF_DONE}",
                (folder,),
            )
            return cur.rowcount > 0

    def pdf_lost(self, folder: str) -> PdfState | None:
        """A published PDF is missing or not as written: built again once the folder is quiet
        (needed), or, when no image of the folder is done or on its way any more (a kept PDF whose pages
        all left), nothing is left to build it from (none). Returns the new state, None when
        the folder's PDF was not done (any more)."""
        with self._tx() as c:
            # pages to build it from: done images, or ones being OCR'd (again: a whole outbox removed)
            left = c.execute(
                f"SELECT 1 FROM images WHERE folder = ? AND status IN ({_DONE}, {_PENDING}, {_RUNNING}) LIMIT 1",
                (folder,),
            ).fetchone()
            state = PdfState.needed if left else PdfState.none
            cur = c.execute(
                # no PDF, no pages: status stops showing the ones that are gone
                "UPDATE folders SET pdf_state = ?, pdf_size = NULL, pdf_mtime_ns = NULL, pdf_pages = NULL"
                f" WHERE folder = ? AND pdf_state = {_PDF_DONE}",
                (state.value, folder),
            )
            return state if cur.rowcount else None

    def pdf_failed(self, folder: str, error: str, now: float) -> bool:
        """building -> failed (until the folder changes again); False when re-armed meanwhile."""
        return self._pdf_finished(folder, PdfState.failed, "pdf_error", error, now)

    def _pdf_finished(self, folder: str, state: PdfState, column: str, value: object, now: float) -> bool:
        with self._tx() as c:
            c.execute(f"UPDATE folders SET {column} = ?, pdf_at = ? WHERE folder = ?", (value, now, folder))
            cur = c.execute(
                f"UPDATE folders SET pdf_state = ? WHERE folder = ? AND pdf_state = {_PDF_BUILDING}", (state, folder)
            )
            return cur.rowcount > 0

    def pdf_reopen(self, folder: str) -> None:
        """building -> needed: a build given up before its end, to be started again."""
        with self._tx() as c:
            c.execute(
                f"UPDATE folders SET pdf_state = {_PDF_NEEDED} WHERE folder = ? AND pdf_state = {_PDF_BUILDING}",
                (folder,),
            )

    def pdf_rearm(self, folder: str) -> bool:
        """failed -> needed: try the PDF again (its failure was the disk's, not the folder's)."""
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE folders SET pdf_state = {_PDF_NEEDED} WHERE folder = ? AND pdf_state = {_PDF_FAILED}",
                (folder,),
            )
            return cur.rowcount > 0

    def folder(self, folder: str) -> FolderRow | None:
        row = self._conn.execute(
            f"SELECT {_FOLDER_COLUMNS} FROM folders WHERE folder = ?", (folder,)
        ).fetchone()
        return _folder(row) if row else None
