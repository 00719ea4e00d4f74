"""Images: the state machine of every accepted file (pending, running, done, failed, gone),
the work list ``claim`` hands out, and the transitions the inbox and the workers cause.

Every transition is one short transaction, so a ``kill -9`` at any moment leaves either
the old or the new state, never half of one. The search index lives in the same database
and is written in the transitions' own transactions: an image's text is there exactly
while it is done (its file in the inbox, or deleted by ``delete_processed``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import structlog

from ocr_inbox.ledger import index
from ocr_inbox.ledger.db import LedgerDb
from ocr_inbox.ledger.folders import pages_changed, touch_folder
from ocr_inbox.ledger.schema import (
    _DONE,
    _FAILED,
    _GONE,
    _IMAGE_COLUMNS,
    _KNOWN_COLUMNS,
    _LEAVES,
    _PDF_BUILDING,
    _PDF_NEEDED,
    _PENDING,
    _PENDING_FOLDERS,
    _RUNNING,
    NO_STAT,
    ImageRow,
    ImageStatus,
    Known,
    Observation,
    _image,
    _known,
)
from ocr_inbox.ocr.results import Page
from ocr_inbox.outbox.order import natural_key
from ocr_inbox.support.paths import folder_of
from ocr_inbox.support.version import Change, SourceVersion

log = structlog.get_logger(__name__)

#: an output's (size, mtime_ns) as published; None: not known
Written = tuple[int, int] | None


class Images(LedgerDb):
    """The image rows and their transitions."""

    def __init__(self, conn: sqlite3.Connection, path: Path, lock_fd: int | None) -> None:
        super().__init__(conn, path, lock_fd)
        # The folders with pending images, oldest first: claim()'s work list, a
        # cache of what _PENDING_FOLDERS returns. claim() drops folders it
        # empties; every write that can make an image pending in a folder not
        # listed resets it to None (recomputed on the next claim).
        self._queue: list[str] | None = None
        self._queued: set[str] = set()

    def _requeued(self, folder: str | None = None) -> None:
        """An image became pending (in ``folder``; None: anywhere): keep claim()'s cache right."""
        if folder is None or folder not in self._queued:
            self._queue = None

    def observe(
        self, rel: str, size: int, mtime_ns: int, now: float, *, ctime_ns: int | None = None, ino: int | None = None
    ) -> Observation:
        """Record a settled image file seen in the inbox; queue it when new or changed."""
        self._requeued(folder_of(rel))
        with self._tx() as c:
            return self._observe(c, rel, SourceVersion(size, mtime_ns, ctime_ns, ino), now)

    def observe_many(self, files: Iterable[tuple[str, SourceVersion]], now: float) -> list[Observation]:
        """``observe`` for many ``(rel, version)`` in one transaction.

        A start-up scan of a full inbox settles tens of thousands of files at
        once; one transaction each cost ~50 us, together ~15 us a file.
        """
        out: list[Observation] = []
        with self._tx() as c:
            for rel, version in files:
                self._requeued(folder_of(rel))
                out.append(self._observe(c, rel, version, now))
        return out

    def _observe(self, c: sqlite3.Connection, rel: str, v: SourceVersion, now: float) -> Observation:
        """The version rule (``SourceVersion.against``) applied to a row.

        Size or mtime differ: a new version, queued. Only ctime or inode differ: a done
        image is ``suspect`` and stays done until its content hash decides (``confirmed``);
        a pending one just records them (its OCR reads the file as it is now); one with a
        worker, or quarantined, is queued again (the worker may hold the old bytes; a file
        that failed may have been replaced by a good one with the mtime put back).
        """
        folder = folder_of(rel)
        row = c.execute(
            "SELECT size, mtime_ns, ctime_ns, ino, status FROM images WHERE rel = ?", (rel,)
        ).fetchone()
        if row is None:
            touch_folder(c, folder, now, rearm=True)
            c.execute(
                "INSERT INTO images (rel, folder, natkey, size, mtime_ns, ctime_ns, ino, status, first_seen, updated)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, {_PENDING}, ?, ?)",
                (rel, folder, natural_key(rel.rsplit("/", 1)[-1]), v.size, v.mtime_ns, v.ctime_ns, v.ino, now, now),
            )
            return Observation.new
        *old, status = row
        change = v.against(SourceVersion(*old))
        if status != ImageStatus.gone:
            if change is Change.same:
                return Observation.unchanged
            if change is Change.fill or (change is Change.suspect and status == ImageStatus.pending):
                _record_rest(c, rel, v)
                return Observation.unchanged
            if change is Change.suspect and status == ImageStatus.done:
                return Observation.suspect
        what = Observation.returned if status == ImageStatus.gone else Observation.changed
        self._queue_version(c, rel, v, now)
        return what

    def _queue_version(self, c: sqlite3.Connection, rel: str, v: SourceVersion, now: float) -> None:
        """``rel`` is a new version ``v``: pending with fresh attempts.

        A running worker's result for the old version is refused by done() (status no
        longer 'running'). The old version's text leaves the index now, not when the new
        one is done.
        """
        folder = folder_of(rel)
        self._requeued(folder)
        index.drop(c, [rel])
        c.execute(
            f"UPDATE images SET size = ?, mtime_ns = ?, ctime_ns = ?, ino = ?, status = {_PENDING}, attempts = 0,"
            " source_deleted = 0, error_reason = NULL, error_detail = NULL, done_at = NULL, updated = ? WHERE rel = ?",
            (v.size, v.mtime_ns, v.ctime_ns, v.ino, now, rel),
        )
        touch_folder(c, folder, now, rearm=True)

    def confirmed(self, rel: str, v: SourceVersion, same_content: bool, now: float) -> Observation:
        """The content hash of a ``suspect`` file is known: the same as its JSON's records the
        new ctime/inode and costs no OCR (``unchanged``); another queues it (``changed``).
        Nothing happens (``unchanged``) if the row is no longer that done version."""
        with self._tx() as c:
            row = c.execute(
                f"SELECT 1 FROM images WHERE rel = ? AND status = {_DONE} AND size = ? AND mtime_ns = ?",
                (rel, v.size, v.mtime_ns),
            ).fetchone()
            if row is None:
                return Observation.unchanged
            if same_content:
                _record_rest(c, rel, v)
                return Observation.unchanged
            self._queue_version(c, rel, v, now)
            return Observation.changed

    def fill_versions(self, files: Iterable[tuple[str, SourceVersion]]) -> int:
        """Rows from before ctime/inode were kept (schema < 4) whose size and mtime are those
        of ``files``: record the rest of the version, no OCR. Returns rows filled."""
        with self._tx() as c:
            return c.executemany(
                "UPDATE images SET ctime_ns = ?, ino = ? WHERE rel = ? AND (ctime_ns IS NULL OR ino IS NULL)"
                " AND size = ? AND mtime_ns = ?",
                [(v.ctime_ns, v.ino, rel, v.size, v.mtime_ns) for rel, v in files],
            ).rowcount

    def refuse(self, rel: str, reason: str, detail: str, now: float) -> bool:
        """Quarantine a path that is not processed (symlink out of the inbox, fifo ...).

        Recorded as failed, never retried; if it later becomes a good file,
        ``observe`` sees a different size and queues it. Returns False when the
        same refusal was already recorded (rescans call this again and again).
        """
        folder = folder_of(rel)
        with self._tx() as c:
            row = c.execute("SELECT status, error_reason FROM images WHERE rel = ?", (rel,)).fetchone()
            if row is not None and tuple(row) == (ImageStatus.failed, reason):
                return False
            was_done = row is not None and row[0] == ImageStatus.done
            touch_folder(c, folder, now, rearm=was_done)
            if was_done:
                index.drop(c, [rel])
            c.execute(
                "INSERT INTO images (rel, folder, natkey, size, mtime_ns, status, error_reason, error_detail,"
                f"  first_seen, updated) VALUES (?, ?, ?, ?, ?, {_FAILED}, ?, ?, ?, ?)"
                " ON CONFLICT (rel) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
                f"  status = {_FAILED}, error_reason = excluded.error_reason,"
                "  error_detail = excluded.error_detail, done_at = NULL, updated = excluded.updated",
                (rel, folder, natural_key(rel.rsplit("/", 1)[-1]), NO_STAT, NO_STAT, reason, detail, now, now),
            )
            return True

    def gone(self, rel: str, now: float) -> bool:
        """The file left the inbox: not a failure, just gone (and its text leaves the search index).

        A done image goes too: a file that is not there is not searchable, and if
        it comes back unchanged, ``observe`` sees it return and its JSON is adopted
        again. Only a source deleted by ``delete_processed`` stays done: its page
        lives on in the folder's PDF. A done image that leaves changes what its
        folder's PDF holds: the PDF is rebuilt once the folder is quiet
        (``_pages_changed``). Returns whether anything changed.
        """
        with self._tx() as c:
            was = c.execute(f"SELECT status FROM images WHERE rel = ? AND {_LEAVES}", (rel,)).fetchone()
            if was is None:
                return False
            c.execute(f"UPDATE images SET status = {_GONE}, updated = ? WHERE rel = ?", (now, rel))
            index.drop(c, [rel])
            pages_changed(c, folder_of(rel), now, lost_a_page=was[0] == ImageStatus.done)
            return True

    def gone_tree(self, rel_dir: str, now: float) -> int:
        """``gone`` for every image under the directory ``rel_dir`` (moved out or deleted whole)."""
        prefix = rel_dir.rstrip("/") + "/"
        under = "substr(rel, 1, ?) = ?"
        with self._tx() as c:
            leaving = c.execute(
                f"SELECT rel, folder, status FROM images WHERE {under} AND {_LEAVES}", (len(prefix), prefix)
            ).fetchall()
            n = c.execute(
                f"UPDATE images SET status = {_GONE}, updated = ? WHERE {under} AND {_LEAVES}",
                (now, len(prefix), prefix),
            ).rowcount
            index.drop(c, [rel for rel, _, _ in leaving])
            lost = {f for _, f, status in leaving if status == ImageStatus.done}
            for folder in {f for _, f, _ in leaving}:
                pages_changed(c, folder, now, lost_a_page=folder in lost)
        return n

    def claim(self, limit: int, now: float) -> list[ImageRow]:
        """Up to ``limit`` pending images, oldest folder first, natural name order; now running."""
        if limit <= 0:
            return []
        claimed: list[ImageRow] = []
        try:
            with self._tx() as c:
                if self._queue is None:
                    self._queue = [f for (f,) in c.execute(_PENDING_FOLDERS)]
                    self._queued = set(self._queue)
                while self._queue and len(claimed) < limit:
                    folder = self._queue[0]
                    want = limit - len(claimed)
                    rows = c.execute(
                        f"SELECT {_IMAGE_COLUMNS} FROM images WHERE status = {_PENDING} AND folder = ?"
                        " ORDER BY natkey, rel LIMIT ?",
                        (folder, want),
                    ).fetchall()
                    claimed.extend(_image(r) for r in rows)
                    if len(rows) < want:  # nothing left in that folder
                        self._queue.pop(0)
                        self._queued.discard(folder)
                c.executemany(
                    f"UPDATE images SET status = {_RUNNING}, updated = ? WHERE rel = ?",
                    [(now, r.rel) for r in claimed],
                )
        except BaseException:
            self._queue = None
            raise
        return [replace(r, status=ImageStatus.running, updated=now, queued_at=r.updated) for r in claimed]

    def done(
        self, rel: str, size: int, mtime_ns: int, output: str, elapsed_ms: int, now: float,
        pages: Sequence[Page] = (), written: Written = None,
    ) -> bool:
        """running -> done, if the file OCR'd (``size``, ``mtime_ns``) is the one recorded;
        its ``pages`` go into the search index in the same transaction, and ``written``
        (the JSON's size and mtime_ns as published) is what the scans compare it with.

        Otherwise the result is for an older version of the file: the image stays
        (or goes back to) pending to be done again. Returns whether it was taken.
        """
        js, jm = written or (None, None)
        with self._tx() as c:
            # the searchable copy was the older version's: the folder's next build writes it
            cur = c.execute(
                f"UPDATE images SET status = {_DONE}, output = ?, elapsed_ms = ?, done_at = ?, updated = ?,"
                " error_reason = NULL, error_detail = NULL, json_size = ?, json_mtime_ns = ?,"
                " copy_size = NULL, copy_mtime_ns = NULL"
                f" WHERE rel = ? AND status = {_RUNNING} AND size = ? AND mtime_ns = ?",
                (output, elapsed_ms, now, now, js, jm, rel, size, mtime_ns),
            )
            if cur.rowcount:
                index.replace(c, rel, pages)
                return True
            self._requeued(folder_of(rel))
            c.execute(
                f"UPDATE images SET status = {_PENDING}, updated = ? WHERE rel = ? AND status = {_RUNNING}",
                (now, rel),
            )
            return False

    def running_version(self, rel: str, size: int, mtime_ns: int) -> bool:
        """True when ``rel`` is with a worker and recorded with this size and mtime:
        a result for it may be written (``done`` would take it)."""
        row = self._conn.execute(
            f"SELECT 1 FROM images WHERE rel = ? AND status = {_RUNNING} AND size = ? AND mtime_ns = ?",
            (rel, size, mtime_ns),
        ).fetchone()
        return row is not None

    def adopt(
        self, rel: str, size: int, mtime_ns: int, output: str, now: float, pages: Sequence[Page] = (),
        written: Written = None,
    ) -> bool:
        """pending -> done without OCR: the outbox already holds a JSON for exactly this version
        (a lost or new ledger, a tree OCR'd before), whose ``pages`` are indexed and whose
        size and mtime_ns as found (``written``) the scans compare it with from now on.
        Returns whether it was taken."""
        js, jm = written or (None, None)
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE images SET status = {_DONE}, output = ?, done_at = ?, updated = ?,"
                " json_size = ?, json_mtime_ns = ?"
                f" WHERE rel = ? AND status = {_PENDING} AND size = ? AND mtime_ns = ?",
                (output, now, now, js, jm, rel, size, mtime_ns),
            )
            if cur.rowcount == 0:
                return False
            index.replace(c, rel, pages)
            return True

    def failed(self, rel: str, reason: str, detail: str, now: float, *, retry: bool) -> bool:
        """A running image failed: count the attempt; ``retry`` queues it again, else quarantine."""
        if retry:
            self._requeued(folder_of(rel))
        with self._tx() as c:
            cur = c.execute(
                "UPDATE images SET attempts = attempts + 1, status = ?, error_reason = ?,"
                f" error_detail = ?, updated = ? WHERE rel = ? AND status = {_RUNNING}",
                ((ImageStatus.pending if retry else ImageStatus.failed).value, reason, detail, now, rel),
            )
            return cur.rowcount > 0

    def requeue_failed(self, now: float, reasons: Iterable[str] = (), paths: Iterable[str] = ()) -> int:
        """failed -> pending with fresh attempts: all, or those failed for one of ``reasons``
        and (when given) at or beneath one of ``paths`` (inbox-relative files or folders).

        Refused paths (no size recorded) are left alone: the scanner refuses them again.
        The paths go through a temporary table, so a request may name any number of them
        (one ``OR`` term each would pass SQLite's expression depth limit near 1,000).
        """
        self._requeued()
        wanted = sorted(set(reasons))
        where = [f" AND error_reason IN ({', '.join('?' * len(wanted))})"] if wanted else []
        places = {p.strip("/") for p in paths}
        if "" in places or "." in places:
            places = set()  # the whole inbox
        if places:
            where.append(
                " AND EXISTS (SELECT 1 FROM temp.retry_places r"
                " WHERE r.place = images.rel OR substr(images.rel, 1, length(r.place) + 1) = r.place || '/')"
            )
        with self._tx() as c:
            if places:
                c.execute("CREATE TEMP TABLE IF NOT EXISTS retry_places (place TEXT PRIMARY KEY)")
                c.execute("DELETE FROM temp.retry_places")
                c.executemany("INSERT INTO temp.retry_places (place) VALUES (?)", [(p,) for p in places])
            n = c.execute(
                f"UPDATE images SET status = {_PENDING}, attempts = 0, updated = ?"
                f" WHERE status = {_FAILED} AND size != ?{''.join(where)}",
                (now, NO_STAT, *wanted),
            ).rowcount
            if places:
                c.execute("DELETE FROM temp.retry_places")
            return n

    def prune_gone(self, before: float, keep_at_most: int) -> int:
        """Forget images gone from the inbox since before ``before``, and the oldest beyond
        ``keep_at_most`` gone ones; then folders left with no image. Returns images forgotten.

        A gone row only serves a file that comes back: within the retention it is queued
        as "returned"; after it, as new, and a JSON of that exact version in the outbox is
        adopted all the same (intake). Folders keep no state worth a row without images.
        """
        with self._tx() as c:
            n = c.execute(f"DELETE FROM images WHERE status = {_GONE} AND updated < ?", (before,)).rowcount
            n += c.execute(
                f"DELETE FROM images WHERE rel IN (SELECT rel FROM images WHERE status = {_GONE}"
                " ORDER BY updated DESC LIMIT -1 OFFSET ?)",
                (keep_at_most,),
            ).rowcount
            if n:
                c.execute(
                    f"DELETE FROM folders WHERE pdf_state != {_PDF_BUILDING}"
                    " AND NOT EXISTS (SELECT 1 FROM images i WHERE i.folder = folders.folder)"
                )
        return n

    def forgive(self, rels: Iterable[str], now: float) -> int:
        """Queued images' attempts back to 0: the crashes counted were not theirs (a crash storm)."""
        with self._tx() as c:
            cur = c.executemany(
                f"UPDATE images SET attempts = 0, updated = ? WHERE rel = ? AND status = {_PENDING}",
                [(now, rel) for rel in rels],
            )
            return cur.rowcount

    def release(self, rels: Iterable[str], now: float) -> int:
        """running -> pending without counting an attempt (never started, or shutdown)."""
        self._requeued()
        with self._tx() as c:
            cur = c.executemany(
                f"UPDATE images SET status = {_PENDING}, updated = ? WHERE rel = ? AND status = {_RUNNING}",
                [(now, rel) for rel in rels],
            )
            return cur.rowcount

    def recover(self, now: float) -> int:
        """At start-up: work cut off by a crash goes back to the queue; returns images requeued."""
        self._requeued()
        with self._tx() as c:
            images = c.execute(
                f"UPDATE images SET status = {_PENDING}, updated = ? WHERE status = {_RUNNING}", (now,)
            ).rowcount
            folders = c.execute(
                f"UPDATE folders SET pdf_state = {_PDF_NEEDED} WHERE pdf_state = {_PDF_BUILDING}"
            ).rowcount
        if images or folders:
            log.info("ledger_recovered", images=images, pdfs=folders)
        return images

    def pending_count(self, at_most: int) -> int:
        """How many images are queued, counting no further than ``at_most`` (cheap on a long queue)."""
        row = self._conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM images WHERE status = {_PENDING} LIMIT ?)", (at_most,)
        ).fetchone()
        return int(row[0])

    def unfinished(self) -> int:
        """Images queued or with a worker."""
        row = self._conn.execute(
            f"SELECT count(*) FROM images WHERE status IN ({_PENDING}, {_RUNNING})"
        ).fetchone()
        return int(row[0])

    def get(self, rel: str) -> ImageRow | None:
        row = self._conn.execute(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE rel = ?", (rel,)).fetchone()
        return _image(row) if row else None

    def known_paths(self, chunk: int = 1000) -> Iterator[Known]:
        """Every recorded image, in ``rel`` order, for the start-up reconciliation.

        Read in chunks by key, so the caller may write to the ledger while iterating.
        """
        after = None
        while True:
            if after is None:
                rows = self._conn.execute(
                    f"SELECT {_KNOWN_COLUMNS} FROM images ORDER BY rel LIMIT ?", (chunk,)
                ).fetchall()
            else:
                rows = self._conn.execute(
                    f"SELECT {_KNOWN_COLUMNS} FROM images WHERE rel > ? ORDER BY rel LIMIT ?",
                    (after, chunk),
                ).fetchall()
            if not rows:
                return
            yield from map(_known, rows)
            after = rows[-1][0]

    def source_deleted(self, rel: str, size: int, mtime_ns: int, now: float) -> bool:
        """The done source of this version was deleted from the inbox on purpose."""
        with self._tx() as c:
            return (
                c.execute(
                    "UPDATE images SET source_deleted = 1, updated = ?"
                    f" WHERE rel = ? AND status = {_DONE} AND size = ? AND mtime_ns = ?",
                    (now, rel, size, mtime_ns),
                ).rowcount
                > 0
            )

    # -- the outputs as written (the scans heal what is missing or changed) ----------

    def output_lost(self, rel: str, now: float) -> bool:
        """done -> pending: its JSON is missing or not as written, so it is OCR'd again (its
        text leaves the index until then). Its folder's PDF is not re-armed: the PDF does
        not change with a JSON written again. Returns whether it was taken (still done)."""
        self._requeued(folder_of(rel))
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE images SET status = {_PENDING}, attempts = 0, done_at = NULL, updated = ?,"
                " json_size = NULL, json_mtime_ns = NULL"
                f" WHERE rel = ? AND status = {_DONE} AND source_deleted = 0",
                (now, rel),
            )
            if cur.rowcount:
                index.drop(c, [rel])
            return cur.rowcount > 0

    def copy_written(self, rel: str, size: int, mtime_ns: int, written: Written) -> None:
        """A PDF source's searchable copy was published by its folder's build, for this version
        (``written``: the copy's size and mtime_ns; None: none was written)."""
        cs, cm = written or (None, None)
        with self._tx() as c:
            c.execute(
                "UPDATE images SET copy_size = ?, copy_mtime_ns = ?"
                f" WHERE rel = ? AND status = {_DONE} AND size = ? AND mtime_ns = ?",
                (cs, cm, rel, size, mtime_ns),
            )

    def left_outputs(self) -> list[Known]:
        """Gone images whose outputs are still recorded as written (``[outbox] mode = "mirror"``
        removes them)."""
        rows = self._conn.execute(
            f"SELECT {_KNOWN_COLUMNS} FROM images WHERE status = {_GONE}"
            " AND (json_size IS NOT NULL OR copy_size IS NOT NULL)"
        ).fetchall()
        return [_known(r) for r in rows]

    def outputs_removed(self, rel: str) -> None:
        """A gone image's outputs were removed (or left alone as not ours): forget them."""
        with self._tx() as c:
            c.execute(
                "UPDATE images SET json_size = NULL, json_mtime_ns = NULL, copy_size = NULL,"
                f" copy_mtime_ns = NULL WHERE rel = ? AND status = {_GONE}",
                (rel,),
            )


def _record_rest(c: sqlite3.Connection, rel: str, v: SourceVersion) -> None:
    """Record a version's ctime and inode (its size and mtime are the row's already)."""
    c.execute("UPDATE images SET ctime_ns = ?, ino = ? WHERE rel = ?", (v.ctime_ns, v.ino, rel))
