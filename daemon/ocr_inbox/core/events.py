"""What one stage tells the others: the pipeline routes these, and hands them to its driver.

The stages do not call each other. Dispatch and the folder-PDF stage return events;
``Pipeline`` passes each to the stage that needs it (a file that moved goes back to
intake, a finished image wakes its folder's PDF, a published PDF or a done image lets
``delete_processed`` delete its sources) and returns them all to the command that
drives it (``ocr-inbox ocr`` counts them for its progress bar).
"""

from __future__ import annotations

from dataclasses import dataclass

from ocr_inbox.outbox.pdf_job import PdfPage


@dataclass(frozen=True)
class ImageDone:
    """An image's JSON was written and recorded, for this version of the file."""

    rel: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ImageFailed:
    """An image was quarantined for good with ``reason`` (not a retry: those stay queued)."""

    rel: str
    reason: str


@dataclass(frozen=True)
class ImageMoved:
    """A file changed or vanished under a worker or a PDF build: intake looks at it again."""

    rel: str


@dataclass(frozen=True)
class PdfPublished:
    """A folder's PDF was published; ``pages`` are the sources it holds (new in this build)."""

    folder: str
    pages: tuple[PdfPage, ...]


Event = ImageDone | ImageFailed | ImageMoved | PdfPublished
