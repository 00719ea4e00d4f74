"""What the ledger stores: its tables and migrations, the image and PDF states, and the rows
the other ledger modules return. Every SQL status literal is made here from the enums."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from ocr_inbox.ledger import index
from ocr_inbox.support.version import SourceVersion

DB_NAME = "ledger.sqlite3"
LOCK_NAME = "ocr-inbox.lock"
#: 4: a source's ctime and inode; 5: the outputs as written (``OUTPUTS_MIGRATION``)
SCHEMA_VERSION = 5
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
_PDF_NONE, _PDF_DONE = _sql(PdfState.none), _sql(PdfState.done)

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

#: Every output the daemon wrote, as written (size, mtime_ns): an image's JSON and (a PDF
#: source's) searchable copy, a folder's PDF. NULL: not written, or written before this
#: version (checked for presence only). The scans compare these with a ``stat`` (intake).
OUTPUTS_MIGRATION = """
ALTER TABLE images ADD COLUMN json_size INTEGER;
ALTER TABLE images ADD COLUMN json_mtime_ns INTEGER;
ALTER TABLE images ADD COLUMN copy_size INTEGER;
ALTER TABLE images ADD COLUMN copy_mtime_ns INTEGER;
ALTER TABLE folders ADD COLUMN pdf_size INTEGER;
ALTER TABLE folders ADD COLUMN pdf_mtime_ns INTEGER;
"""

#: user_version -> statements that bring the schema from that version to the next
_MIGRATIONS: dict[int, str] = {
    0: _SCHEMA,
    # [inbox] delete_processed: the source was deleted after its folder's PDF took it in
    1: "ALTER TABLE images ADD COLUMN source_deleted INTEGER NOT NULL DEFAULT 0;",
    # the search index (ledger/index.py), written with the transitions (images.py)
    2: index.MIGRATION,
    # the rest of a source's version (support/version.py): what a writer cannot set. NULL in
    # rows of older ledgers: the first look at the file fills them in, with no OCR
    3: "ALTER TABLE images ADD COLUMN ctime_ns INTEGER; ALTER TABLE images ADD COLUMN ino INTEGER;",
    # the outputs as written, so a scan can tell by stat that one is missing or changed
    4: OUTPUTS_MIGRATION,
}

_IMAGE_COLUMNS = (
    "rel, folder, size, mtime_ns, status, attempts, error_reason, error_detail, "
    "output, first_seen, updated, done_at, elapsed_ms, ctime_ns, ino"
)
_KNOWN_COLUMNS = (
    "rel, size, mtime_ns, status, source_deleted, ctime_ns, ino,"
    " json_size, json_mtime_ns, copy_size, copy_mtime_ns"
)
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
    #: a done image whose size and mtime are as recorded but ctime or inode are not: kept
    #: done until its content hash says whether it changed (``Ledger.confirmed``)
    suspect = "suspect"
    returned = "returned"  # was gone, is back: queued again
    unchanged = "unchanged"  # nothing to do

    @property
    def queued(self) -> bool:
        return self not in (Observation.unchanged, Observation.suspect)


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
    #: the rest of the version (None in rows of a ledger older than schema 4, until looked at)
    ctime_ns: int | None = None
    ino: int | None = None
    #: set by ``claim``: when the image was queued (a pending row's ``updated``: every
    #: change into pending sets it), for the metrics' queue wait
    queued_at: float = 0.0

    @property
    def version(self) -> SourceVersion:
        return SourceVersion(self.size, self.mtime_ns, self.ctime_ns, self.ino)


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
    ctime_ns: int | None = None
    ino: int | None = None
    #: its JSON's (size, mtime_ns) as written (None: not recorded)
    json_stat: tuple[int, int] | None = None
    #: a PDF source's searchable copy as the folder's PDF build wrote it
    copy_stat: tuple[int, int] | None = None

    @property
    def version(self) -> SourceVersion:
        return SourceVersion(self.size, self.mtime_ns, self.ctime_ns, self.ino)

    @property
    def leaves(self) -> bool:
        """Whether this image becomes gone if the scan does not find its file (``leaves``)."""
        return leaves(self.status, self.source_deleted)


def _known(row: tuple[Any, ...]) -> Known:
    """A row of ``_KNOWN_COLUMNS``."""
    rel, size, mtime_ns, status, deleted, ctime_ns, ino, js, jm, cs, cm = row
    return Known(
        rel, size, mtime_ns, ImageStatus(status), bool(deleted), ctime_ns, ino,
        None if js is None else (js, jm), None if cs is None else (cs, cm),
    )


class PdfOutput(NamedTuple):
    """A folder's published PDF as written: for the scans' check (``Folders.published_pdfs``)."""

    folder: str
    pages: int | None
    #: (size, mtime_ns) as published; None: published before the ledger recorded it
    written: tuple[int, int] | None


def _image(row: tuple[Any, ...]) -> ImageRow:
    r = ImageRow(*row)
    return replace(r, status=ImageStatus(r.status))


def _folder(row: tuple[Any, ...]) -> FolderRow:
    r = FolderRow(*row)
    return replace(r, pdf_state=PdfState(r.pdf_state))
