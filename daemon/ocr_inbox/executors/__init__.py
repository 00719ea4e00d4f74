"""Where OCR runs: the ``Executor`` protocol (``base.py``), the local process pool
(``local.py``, workers in ``worker.py``), what travels to and from workers
(``messages.py``) and how workers are configured (``setup.py``)."""

from __future__ import annotations

from pathlib import Path

from ocr_inbox.config import Settings
from ocr_inbox.executors.base import Executor


def create(settings: Settings, inbox: Path, max_workers: int | None = None) -> Executor:
    """The configured executor; ``max_workers`` caps it (a one-shot run of 3 images needs 3)."""
    from ocr_inbox.executors.local import LocalExecutor
    from ocr_inbox.executors.setup import slots_for, worker_config_factory

    slots = slots_for(settings)
    if max_workers is not None:
        slots = slots[: max(1, min(len(slots), max_workers))]
    return LocalExecutor(slots, worker_config_factory(settings, inbox), settings.pool)
