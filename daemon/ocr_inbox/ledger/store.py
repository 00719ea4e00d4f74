"""The ledger: every accepted image and every folder's PDF state, in SQLite, one file a job:

- ``db.py``: the connection (lock, pragmas, migrations, transactions);
- ``schema.py``: tables, states and rows;
- ``images.py``: the image state machine and the work list;
- ``folders.py``: folders and their PDF states;
- ``index.py`` / ``reindex.py``: the search index, kept in the transitions' own transactions;
- ``reports.py``: the read-only queries ``status`` shows.

``Ledger`` is all of them on one connection. One writer (the supervisor's thread)
owns it; times are float unix seconds passed in by the caller, so tests own the clock.
"""

from __future__ import annotations

from ocr_inbox.ledger.db import in_use
from ocr_inbox.ledger.folders import Folders
from ocr_inbox.ledger.images import Images
from ocr_inbox.ledger.reindex import Reindex
from ocr_inbox.ledger.schema import (
    CAN_GO,
    DB_NAME,
    LOCK_NAME,
    NO_STAT,
    SCHEMA_VERSION,
    FolderRow,
    ImageRow,
    ImageStatus,
    Indexable,
    Known,
    Observation,
    PdfOutput,
    PdfState,
    leaves,
)

__all__ = [
    "CAN_GO", "DB_NAME", "LOCK_NAME", "NO_STAT", "SCHEMA_VERSION", "FolderRow", "ImageRow", "ImageStatus",
    "Indexable", "Known", "Ledger", "Observation", "PdfOutput", "PdfState", "in_use", "leaves",
]


class Ledger(Images, Folders, Reindex):
    """State transitions of images and folders. Use ``Ledger.open``.

    Not thread-safe: use it from the thread that opened it (sqlite3 checks).
    """
