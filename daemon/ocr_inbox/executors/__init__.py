"""Where OCR runs: the ``Executor`` protocol (``base.py``) and what every executor knows of
its workers (``slots.py``), the local process pool (``local.py``, workers in ``worker.py``),
Ray actors on a cluster (``ray/``: one module per process, the same worker code), what
travels to and from workers (``messages.py``) and how workers are configured (``setup.py``)."""

from __future__ import annotations

from pathlib import Path

from ocr_inbox.config import Settings
from ocr_inbox.executors.base import Executor


def create(settings: Settings, inbox: Path, max_workers: int | None = None) -> Executor:
    """The configured executor; ``max_workers`` caps it (a one-shot run of 3 images needs 3)."""
    if settings.executor.kind == "ray":
        from ocr_inbox.executors.ray.executor import RayExecutor
        from ocr_inbox.executors.ray.plan import bridge_config

        return RayExecutor(bridge_config(settings, inbox, max_workers), settings.pool, settings.executor)
    from ocr_inbox.executors.local import LocalExecutor
    from ocr_inbox.executors.setup import slots_for, worker_config_factory

    slots = slots_for(settings)
    if max_workers is not None:
        slots = slots[: max(1, min(len(slots), max_workers))]
    return LocalExecutor(slots, worker_config_factory(settings, inbox), settings.pool)
