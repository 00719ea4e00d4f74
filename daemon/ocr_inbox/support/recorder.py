"""The port through which the stages report what they do (``service/metrics.py`` counts it).

The stages depend on this small base class, not on Prometheus: ``ocr-inbox ocr``
uses it as it is (it records nothing), the daemon passes ``Metrics``.
"""

from __future__ import annotations


class Recorder:
    """What the stages report as it happens. This base records nothing."""

    def image_done(self, ocr_seconds: float) -> None:
        """An image OCR'd and recorded done (its JSON written); ``ocr_seconds``: the worker's time on it."""

    def image_failed(self, reason: str) -> None:
        """An image failed for good (quarantined by dispatch, or refused by intake)."""

    def image_adopted(self) -> None:
        """An image recorded done from a JSON already in the outbox, without OCR."""

    def queue_wait(self, seconds: float) -> None:
        """An image handed to a worker ``seconds`` after it was queued in the ledger."""

    def worker_exit(self, reason: str) -> None:
        """A worker ended without being stopped (``messages.WORKER_EXIT_REASONS``); it is replaced."""

    def worker_rss(self, slot: int, rss_bytes: int) -> None:
        """A worker's resident memory, reported after each batch."""

    def paused(self, reason: str) -> None:
        """Dispatch stopped handing out work (``PAUSE_REASONS``)."""

    def pdf_done(self, seconds: float, pages: int) -> None:
        """A folder's PDF was published after a build of ``seconds``."""

    def pdf_failed(self, reason: str) -> None:
        """A folder's PDF failed (``PDF_FAILURE_REASONS``)."""
