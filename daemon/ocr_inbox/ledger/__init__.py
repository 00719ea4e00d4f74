"""The ledger: every accepted image and every folder's PDF state (``store``), and
what ``status`` reads from it (``reports``)."""

from ocr_inbox.ledger.store import (
    DB_NAME,
    LOCK_NAME,
    FolderRow,
    ImageRow,
    ImageStatus,
    Indexable,
    Known,
    Ledger,
    Observation,
    PdfOutput,
    PdfState,
    in_use,
)
from ocr_inbox.outbox.order import natural_key

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "FolderRow",
    "ImageRow",
    "ImageStatus",
    "Indexable",
    "Known",
    "Ledger",
    "Observation",
    "PdfOutput",
    "PdfState",
    "in_use",
    "natural_key",
]
