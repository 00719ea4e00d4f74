"""The ledger's store: every accepted image and every folder's PDF state, in SQLite.

The state machine (``ImageStatus``, ``PdfState``) and its transitions; the
read-only reports that ``status`` shows are in ``reports.py``. One writer
(the supervisor's thread) owns the database; every transition is one short
transaction, so a ``kill -9`` at any moment leaves either the old or the new
state, never half of one. The search index (``search/index.py``) lives in the
same database and is written in the transitions' own transactions: an image's
text is there exactly while it is done (its file in the inbox, or deleted by
``delete_processed``).

Durability: WAL with ``synchronous=NORMAL``. A committed transaction is in the
WAL file before ``commit()`` returns, so a killed *process* loses nothing (the
OS still holds the pages). Only a power loss or kernel crash can lose the last
few transactions; the database stays consistent and the worst outcome is an
image done again or a file re-found by the start-up scan. ``FULL`` would fsync
every commit (one per finished image) for no gain worth that cost.

Times are float unix seconds passed in by the caller, so tests own the clock.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import structlog

from ocr_inbox.ledger import index
from ocr_inbox.ocr.results import Page
from ocr_inbox.outbox.order import natural_key
from ocr_inbox.support import statedir
from ocr_inbox.support.errors import StateError
from ocr_inbox.support.paths import folder_of

log = structlog.get_logger(__name__)

DB_NAME = "ledger.sqlite3"
LOCK_NAME = "ocr-inbox.lock"
SCHEMA_VERSION = 3
#: a second writer waits this long before the open fails with "locked"
BUSY_TIMEOUT_MS = 1000
#: the lock is tried this many times, ``LOCK_PAUSE_S`` apart, before "another daemon":
#: ``status`` holds a shared lock for an instant while it asks whether one runs
LOCK_TRIES = 20
LOCK_PAUSE_S = 0.05
#: the WAL file is cut back to this size after each checkpoint that resets it (bytes)
WAL_SIZE_LIMIT = 16 << 20
#: pages written before a commit checkpoints (SQLite's default, stated)
WAL_AUTOCHECKPOINT_PAGES = 1000
#: size and mtime stored for a refused path (never equal to a real file's)
NO_STAT = -1


class ImageStatus(enum.StrEnum):
    """Where an image is: queued, with a worker, finished, quarantined, or no longer in the inbox."""

    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"
    gone = "gone"


class PdfState(enum.StrEnum):
    """A folder's PDF: nothing to build, due once quiet, being built, published, or failed."""

    none = "none"
    needed = "needed"
    building = "building"
    done = "done"
    failed = "failed"


def _sql(*values: enum.StrEnum) -> str:
    """Enum values as SQL literals: ``'a', 'b'`` (the values are fixed lowercase names)."""
    return ", ".join(f"'{v.value}'" for v in values)


#: The statuses as the SQL below spells them, from the enums: none is written by hand. (The
#: schema's CHECKs are migration text, frozen as it was first written.)
_PENDING, _RUNNING, _DONE = _sql(ImageStatus.pending), _sql(ImageStatus.running), _sql(ImageStatus.done)
_FAILED, _GONE = _sql(ImageStatus.failed), _sql(ImageStatus.gone)
_PDF_NEEDED, _PDF_BUILDING, _PDF_FAILED = _sql(PdfState.needed), _sql(PdfState.building), _sql(PdfState.failed)

_SCHEMA = """
CREATE TABLE folders (
    folder        TEXT PRIMARY KEY,
    first_seen    REAL NOT NULL,
    last_activity REAL NOT NULL,
    pdf_state     TEXT NOT NULL DEFAULT 'none'
                  CHECK (pdf_state IN ('none', 'needed', 'building', 'done', 'failed')),
    pdf_pages     INTEGER,
    pdf_at        REAL,
    pdf_error     TEXT
);
CREATE TABLE images (
    rel          TEXT PRIMARY KEY,
    folder       TEXT NOT NULL REFERENCES folders (folder),
    -- natural-order key of the file name, so claim() can ORDER BY it in SQL
    natkey       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    status       TEXT NOT NULL
                 CHECK (status IN ('pending', 'running', 'done', 'failed', 'gone')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    error_reason TEXT,
    error_detail TEXT,
    output       TEXT,
    first_seen   REAL NOT NULL,
    updated      REAL NOT NULL,
    done_at      REAL,
    elapsed_ms   INTEGER
);
CREATE INDEX images_by_status ON images (status, folder, natkey);
CREATE INDEX images_by_folder ON images (folder, status);
CREATE INDEX images_by_done_at ON images (done_at) WHERE done_at IS NOT NULL;
"""

#: user_version -> statements that bring the schema from that version to the next
_MIGRATIONS: dict[int, str] = {
    0: _SCHEMA,
    # [inbox] delete_processed: the source was deleted after its folder's PDF took it in
    1: "ALTER TABLE images ADD COLUMN source_deleted INTEGER NOT NULL DEFAULT 0;",
    # the search index (search/index.py), written with the transitions below
    2: index.MIGRATION,
}

_IMAGE_COLUMNS = (
    "rel, folder, size, mtime_ns, status, attempts, error_reason, error_detail, "
    "output, first_seen, updated, done_at, elapsed_ms"
)
_KNOWN_COLUMNS = "rel, size, mtime_ns, status, source_deleted"
_FOLDER_COLUMNS = "folder, first_seen, last_activity, pdf_state, pdf_pages, pdf_at, pdf_error"

#: Folders with pending images, oldest first. A loose index scan: one seek in
#: images_by_status per such folder, so the cost follows the queue, not the
#: history (a ledger keeps every folder ever seen; probing each of them on every
#: claim grew with the months).
_PENDING_FOLDERS = f"""
WITH RECURSIVE pf (folder) AS (
    SELECT (SELECT min(folder) FROM images WHERE status = {_PENDING})
    UNION ALL
    SELECT (SELECT min(folder) FROM images WHERE status = {_PENDING} AND folder > pf.folder)
    FROM pf WHERE pf.folder IS NOT NULL
)
SELECT f.folder FROM pf JOIN folders f ON f.folder = pf.folder ORDER BY f.first_seen, f.folder
"""


#: The one rule of what leaves the inbox: the statuses an image becomes gone from when its
#: file is no longer there, whoever notices (the watcher's event, a rescan, the start-up
#: scan). Every status but gone itself: a quarantined (failed) file that was deleted is
#: gone, not a failure left for ever in ``status``. The one exception is a flag, not a
#: status: a done image whose source ``delete_processed`` deleted stays done (its page
#: lives on in the folder's PDF). ``leaves`` is this rule in Python, ``_LEAVES`` in SQL.
CAN_GO: frozenset[ImageStatus] = frozenset(s for s in ImageStatus if s is not ImageStatus.gone)


def leaves(status: ImageStatus, source_deleted: bool) -> bool:
    """Whether an image in ``status`` becomes gone when its file is not in the inbox."""
    return status in CAN_GO and not (status is ImageStatus.done and source_deleted)


#: ``leaves`` as a condition on a row of ``images`` (what ``gone`` and ``gone_tree`` take)
_LEAVES = (
    f"(status IN ({_sql(*(s for s in ImageStatus if s in CAN_GO))})"
    f" AND NOT (status = {_DONE} AND source_deleted != 0))"
)


class Observation(enum.Enum):
    """What ``Ledger.observe`` did with a file."""

    new = "new"  # first seen: queued
    changed = "changed"  # size or mtime differ from the record: queued again
    returned = "returned"  # was gone, is back: queued again
    unchanged = "unchanged"  # nothing to do

    @property
    def queued(self) -> bool:
        return self is not Observation.unchanged


@dataclass(frozen=True)
class ImageRow:
    rel: str
    folder: str
    size: int
    mtime_ns: int
    status: ImageStatus
    attempts: int
    error_reason: str | None
    error_detail: str | None
    output: str | None
    first_seen: float
    updated: float
    done_at: float | None
    elapsed_ms: int | None
    #: set by ``claim``: when the image was queued (a pending row's ``updated``: every
    #: change into pending sets it), for the metrics' queue wait
    queued_at: float = 0.0


@dataclass(frozen=True)
class FolderRow:
    folder: str
    first_seen: float
    last_activity: float
    pdf_state: PdfState
    pdf_pages: int | None
    pdf_at: float | None
    pdf_error: str | None


class Indexable(NamedTuple):
    rel: str
    size: int
    mtime_ns: int
    #: deleted by ``delete_processed``: its page lives on in the folder's PDF
    source_deleted: bool


class Known(NamedTuple):
    rel: str
    size: int
    mtime_ns: int
    status: ImageStatus
    #: deleted by ``delete_processed`` (stays done when the scan misses it)
    source_deleted: bool = False

    @property
    def leaves(self) -> bool:
        """Whether this image becomes gone if the scan does not find its file (``leaves``)."""
        return leaves(self.status, self.source_deleted)


def _image(row: tuple[Any, ...]) -> ImageRow:
    r = ImageRow(*row)
    return replace(r, status=ImageStatus(r.status))


def _folder(row: tuple[Any, ...]) -> FolderRow:
    r = FolderRow(*row)
    return replace(r, pdf_state=PdfState(r.pdf_state))


class Ledger:
    """State transitions of images and folders. Use ``Ledger.open``.

    Not thread-safe: use it from the thread that opened it (sqlite3 checks).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, lock_fd: int | None) -> None:
        self._conn = conn
        self.path = path
        self._lock_fd = lock_fd
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

    # -- opening and closing -------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path, *, readonly: bool = False, verify: bool = True) -> Ledger:
        """Open (creating if needed) the ledger in ``state_dir`` for the one daemon.

        Takes an exclusive lock on ``state_dir/ocr-inbox.lock`` first, so a second
        daemon on the same state dir fails here. ``readonly`` (for ``ocr-inbox
        status`` beside a running daemon) takes no lock and creates nothing;
        without ``verify`` it skips the integrity check, which reads every page
        (seconds for ``ocr-inbox search`` on a ledger with a large index).
        Raises StateError naming the file and the fix; never resets anything.
        """
        path = state_dir / DB_NAME
        if readonly:
            if not _check_files(state_dir):
                raise StateError(f"no ledger at {path}: has the daemon run with this state_dir?")
            conn = _connect(path, path.resolve().as_uri() + "?mode=ro")
            try:
                _check(conn, path, quick_check=verify)
            except BaseException:
                conn.close()
                raise
            return cls(conn, path, None)

        lock_fd = _lock_state_dir(state_dir)
        try:
            _check_files(state_dir)
            conn = _connect(path, str(path))
            try:
                _prepare(conn, path)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        log.debug("ledger_opened", path=str(path))
        if not index.complete(conn):
            log.warning("search_index_incomplete", ledger=str(path),
                        fix="images done before this version are not searchable yet: "
                        "stop the daemon and run `ocr-inbox index rebuild`")
        return cls(conn, path, lock_fd)

    @classmethod
    def open_readonly(cls, state_dir: Path, *, verify: bool = True) -> Ledger:
        """``open(state_dir, readonly=True)``: for ``ocr-inbox status`` and ``search`` beside the daemon."""
        return cls.open(state_dir, readonly=True, verify=verify)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE: take the write lock up front, so a transaction never fails half-way
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- folders -------------------------------------------------------------

    @staticmethod
    def _touch_folder(c: sqlite3.Connection, folder: str, now: float, *, rearm: bool) -> None:
        """Create the folder row or mark activity; ``rearm``: its PDF must be (re)built."""
        state = "needed" if rearm else "none"
        c.execute(
            "INSERT INTO folders (folder, first_seen, last_activity, pdf_state) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (folder) DO UPDATE SET last_activity = excluded.last_activity,"
            f"  pdf_state = CASE WHEN ? THEN {_PDF_NEEDED} ELSE pdf_state END",
            (folder, now, now, state, rearm),
        )

    # -- images: what the inbox shows ----------------------------------------

    def observe(self, rel: str, size: int, mtime_ns: int, now: float) -> Observation:
        """Record a settled image file seen in the inbox; queue it when new or changed."""
        self._requeued(folder_of(rel))
        with self._tx() as c:
            return self._observe(c, rel, size, mtime_ns, now)

    def observe_many(self, files: Iterable[tuple[str, int, int]], now: float) -> list[Observation]:
        """``observe`` for many ``(rel, size, mtime_ns)`` in one transaction.

        A start-up scan of a full inbox settles tens of thousands of files at
        once; one transaction each cost ~50 us, together ~15 us a file.
        """
        out: list[Observation] = []
        with self._tx() as c:
            for rel, size, mtime_ns in files:
                self._requeued(folder_of(rel))
                out.append(self._observe(c, rel, size, mtime_ns, now))
        return out

    def _observe(self, c: sqlite3.Connection, rel: str, size: int, mtime_ns: int, now: float) -> Observation:
        folder = folder_of(rel)
        row = c.execute("SELECT size, mtime_ns, status FROM images WHERE rel = ?", (rel,)).fetchone()
        if row is None:
            self._touch_folder(c, folder, now, rearm=True)
            c.execute(
                "INSERT INTO images (rel, folder, natkey, size, mtime_ns, status, first_seen, updated)"
                f" VALUES (?, ?, ?, ?, ?, {_PENDING}, ?, ?)",
                (rel, folder, natural_key(rel.rsplit("/", 1)[-1]), size, mtime_ns, now, now),
            )
            return Observation.new
        old_size, old_mtime, status = row
        if (old_size, old_mtime) == (size, mtime_ns) and status != "gone":
            return Observation.unchanged
        what = Observation.returned if status == "gone" else Observation.changed
        # A new version deserves fresh attempts; a running worker's result for
        # the old version is refused by done() (status no longer 'running').
        # The old version's text leaves the index now, not when the new one is done.
        index.drop(c, [rel])
        c.execute(
            f"UPDATE images SET size = ?, mtime_ns = ?, status = {_PENDING}, attempts = 0, source_deleted = 0,"
            " error_reason = NULL, error_detail = NULL, done_at = NULL, updated = ? WHERE rel = ?",
            (size, mtime_ns, now, rel),
        )
        self._touch_folder(c, folder, now, rearm=True)
        return what

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
            self._touch_folder(c, folder, now, rearm=was_done)
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
            self._pages_changed(c, folder_of(rel), now, lost_a_page=was[0] == ImageStatus.done)
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
                self._pages_changed(c, folder, now, lost_a_page=folder in lost)
        return n

    @staticmethod
    def _pages_changed(c: sqlite3.Connection, folder: str, now: float, *, lost_a_page: bool) -> None:
        """An image left ``folder``. A folder's PDF holds its done images that still belong to
        it (in the inbox, or deleted by ``delete_processed``): a done one leaving changes
        that set, and the PDF is rebuilt once the folder is quiet. A folder left with no
        such image keeps its last PDF as it is (people's pages are never deleted for them;
        ``status`` says it holds images no longer in the inbox) until an image arrives."""
        left = c.execute(
            f"SELECT 1 FROM images WHERE folder = ? AND status = {_DONE} LIMIT 1", (folder,)
        ).fetchone()
        Ledger._touch_folder(c, folder, now, rearm=lost_a_page and left is not None)
        if left is None:
            # nothing left that could become a page: no build is due, nor a failure to retry
            # (a build running now loses its pages and publishes nothing); the last PDF stays
            c.execute(
                f"UPDATE folders SET pdf_state = CASE WHEN pdf_pages IS NULL THEN 'none' ELSE 'done' END"
                f" WHERE folder = ? AND pdf_state IN ({_PDF_NEEDED}, {_PDF_BUILDING}, {_PDF_FAILED})"
                " AND NOT EXISTS (SELECT 1 FROM images i WHERE i.folder = folders.folder"
                f"  AND i.status IN ({_PENDING}, {_RUNNING}))",
                (folder,),
            )

    # -- images: the work ----------------------------------------------------

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
        pages: Sequence[Page] = (),
    ) -> bool:
        """running -> done, if the file OCR'd (``size``, ``mtime_ns``) is the one recorded;
        its ``pages`` go into the search index in the same transaction.

        Otherwise the result is for an older version of the file: the image stays
        (or goes back to) pending to be done again. Returns whether it was taken.
        """
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE images SET status = {_DONE}, output = ?, elapsed_ms = ?, done_at = ?, updated = ?,"
                " error_reason = NULL, error_detail = NULL"
                f" WHERE rel = ? AND status = {_RUNNING} AND size = ? AND mtime_ns = ?",
                (output, elapsed_ms, now, now, rel, size, mtime_ns),
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
        self, rel: str, size: int, mtime_ns: int, output: str, now: float, pages: Sequence[Page] = ()
    ) -> bool:
        """pending -> done without OCR: the outbox already holds a JSON for exactly this version
        (a lost or new ledger, a tree OCR'd before), whose ``pages`` are indexed. Returns whether
        it was taken."""
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE images SET status = {_DONE}, output = ?, done_at = ?, updated = ?"
                f" WHERE rel = ? AND status = {_PENDING} AND size = ? AND mtime_ns = ?",
                (output, now, now, rel, size, mtime_ns),
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

    def checkpoint(self) -> bool:
        """Move the WAL into the database and cut it to nothing, if no reader's snapshot is
        in the way (then it waits for the next call). Returns whether it completed."""
        try:
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.OperationalError:
            return False
        return not busy

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
            for rel, size, mtime_ns, status, deleted in rows:
                yield Known(rel, size, mtime_ns, ImageStatus(status), bool(deleted))
            after = rows[-1][0]

    # -- folder PDFs ---------------------------------------------------------

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

    def pdf_started(self, folder: str) -> None:
        with self._tx() as c:
            c.execute(
                f"UPDATE folders SET pdf_state = {_PDF_BUILDING}, pdf_error = NULL WHERE folder = ?", (folder,)
            )

    def pdf_done(self, folder: str, pages: int, now: float) -> bool:
        """building -> done. False when a page arrived meanwhile: it stays needed."""
        return self._pdf_finished(folder, PdfState.done, "pdf_pages", pages, now)

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

    # -- the search index ------------------------------------------------------

    def indexable(self) -> list[Indexable]:
        """Done images whose text belongs in the search index (a rebuild checks their files)."""
        rows = self._conn.execute(
            f"SELECT rel, size, mtime_ns, source_deleted FROM images WHERE status = {_DONE} ORDER BY rel"
        ).fetchall()
        return [Indexable(rel, size, mtime_ns, bool(deleted)) for rel, size, mtime_ns, deleted in rows]

    def rebuild_index(self, docs: Iterable[tuple[str, Sequence[Page]]], now: float, chunk: int = 200) -> int:
        """A new search index of ``docs`` (rel, pages), swapped in by one transaction; returns images indexed.

        It is filled beside the live one, committed every ``chunk`` images: cut off half-way,
        the live index is untouched (the next rebuild discards the part filled). The caller
        holds the state dir (``open``, not read-only), so no transition runs meanwhile.
        """
        with self._tx() as c:
            index.start_rebuild(c)
        n = 0
        try:
            batch: list[tuple[str, Sequence[Page]]] = []
            for item in docs:
                batch.append(item)
                if len(batch) >= chunk:
                    n += self._index_next(batch)
                    batch = []
            n += self._index_next(batch)
            with self._tx() as c:
                index.swap_in(c, now)
        except BaseException:
            with contextlib.suppress(sqlite3.Error), self._tx() as c:
                index.discard_rebuild(c)
            raise
        return n

    def _index_next(self, batch: list[tuple[str, Sequence[Page]]]) -> int:
        with self._tx() as c:
            for rel, pages in batch:
                index.put(c, rel, pages, index.NEXT)
        return len(batch)

    @property
    def connection(self) -> sqlite3.Connection:
        """For the read-only queries of ``reports.py``."""
        return self._conn

    def folder(self, folder: str) -> FolderRow | None:
        row = self._conn.execute(
            f"SELECT {_FOLDER_COLUMNS} FROM folders WHERE folder = ?", (folder,)
        ).fetchone()
        return _folder(row) if row else None

def in_use(state_dir: Path) -> bool:
    """Whether a daemon (or ``ocr-inbox ocr``) holds the state dir's lock: the one ledger writer.

    The lock is opened like every file of the state dir (``statedir``): a link or a
    FIFO there is refused (StateError), never followed or waited on.
    """
    try:
        with statedir.directory(state_dir) as d:
            fd = statedir.open_file(d, LOCK_NAME, os.O_RDONLY, state_dir)
    except FileNotFoundError:
        return False
    except StateError:
        if not state_dir.exists():
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _lock_state_dir(state_dir: Path) -> int:
    """Exclusive flock on the lock file: one daemon per state dir. Returns the held fd.

    The state dir is made ``0700`` and the lock ``0600``: only the owner (and root's
    commands, which act as the owner) can take even a shared lock on it, so no reader
    can hold it while a restarting daemon wants it. ``in_use`` (status) takes a shared
    lock for an instant; the few tries below outlast that.
    """
    lock = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(mode=statedir.DIR_MODE, parents=True, exist_ok=True)
        with statedir.directory(state_dir) as d:
            fd = statedir.open_file(d, LOCK_NAME, os.O_RDWR | os.O_CREAT, state_dir)
    except OSError as exc:
        raise StateError(
            f"cannot use the state directory {state_dir}: {exc.strerror or exc}; "
            "make it writable by the daemon's user or set paths.state_dir"
        ) from None
    with contextlib.suppress(OSError):
        os.fchmod(fd, statedir.FILE_MODE)  # an older install's lock was group-readable
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES) and attempt + 1 < LOCK_TRIES:
                time.sleep(LOCK_PAUSE_S)
                continue
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 32, 0).decode().strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                pid = f" (pid {holder})" if holder else ""
                raise StateError(
                    f"{lock} is locked: another ocr-inbox daemon{pid} uses the state directory "
                    f"{state_dir}; stop it, or give this one its own paths.state_dir"
                ) from None
            raise StateError(f"cannot lock {lock}: {exc.strerror or exc}") from None
    # Who holds it, for the message above; purely informative.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _check_files(state_dir: Path) -> bool:
    """The ledger and its -wal/-shm are regular files of the state dir's owner (SQLite opens
    them by name, following links: refuse one first). Returns whether the ledger exists."""
    if not state_dir.is_dir():
        return False
    for suffix in ("-wal", "-shm"):
        statedir.check_file(state_dir, DB_NAME + suffix)
    return statedir.check_file(state_dir, DB_NAME)


def _connect(path: Path, target: str) -> sqlite3.Connection:
    try:
        # autocommit mode: transactions are explicit (see Ledger._tx)
        conn = sqlite3.connect(
            target, uri=target.startswith("file:"), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.Error as exc:
        raise _state_error(path, exc) from None
    return conn


def _state_error(path: Path, exc: sqlite3.Error) -> StateError:
    msg = str(exc)
    if "no such module: fts5" in msg:
        return StateError(
            f"the SQLite library of this Python ({sqlite3.sqlite_version}) lacks FTS5, which the search index "
            f"in {path} needs; nothing was changed. Use a Python whose sqlite3 has it (python.org, Debian, "
            "Ubuntu and conda builds do)"
        )
    if "locked" in msg or "busy" in msg:
        return StateError(
            f"the ledger {path} is locked by another process ({msg}); "
            "stop the other ocr-inbox daemon or sqlite3 session using it"
        )
    if isinstance(exc, sqlite3.OperationalError) and ("unable to open" in msg or "readonly" in msg):
        return StateError(
            f"cannot write the ledger {path} ({msg}); "
            "make the state directory writable by the daemon's user or set paths.state_dir"
        )
    return StateError(
        f"the ledger {path} is damaged ({msg}); nothing was changed. Stop the daemon, move the file "
        f"aside (mv {path} {path}.broken, and its -wal/-shm files) and start again: "
        "a new ledger is built from a full scan of the inbox"
    )


def _check(conn: sqlite3.Connection, path: Path, *, quick_check: bool = True) -> None:
    try:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()] if quick_check else ["ok"]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise _state_error(path, exc) from None
    if problems != ["ok"]:
        raise _state_error(path, sqlite3.DatabaseError("quick_check: " + "; ".join(problems[:3])))
    if version > SCHEMA_VERSION:
        raise StateError(
            f"the ledger {path} has schema version {version}, newer than this ocr-inbox "
            f"understands ({SCHEMA_VERSION}); upgrade ocr-inbox or use another paths.state_dir"
        )


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Pragmas, integrity check, schema creation/migration, in that order."""
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(
                f"the ledger {path} cannot use WAL mode (got {mode}); "
                "put paths.state_dir on a local file system"
            )
        conn.execute("PRAGMA synchronous = NORMAL")
        # A reader's long transaction makes the WAL grow (no checkpoint can pass it);
        # once it ends, the next checkpoint resets the WAL and this cuts the file back.
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise _state_error(path, exc) from None
    _check(conn, path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            while version < SCHEMA_VERSION:
                for stmt in _statements(_MIGRATIONS[version]):
                    conn.execute(stmt)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise _state_error(path, exc) from None


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT first; split so a migration is one transaction.
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
