"""From settings to workers: each worker's configuration, and the checks before any starts.

Shared by every executor (the local pool today, a cluster next) and by both
commands, so a worker is configured the same way wherever it runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from ocr_inbox.config import Settings
from ocr_inbox.executors.worker import WorkerConfig
from ocr_inbox.ocr import images, models, profiles
from ocr_inbox.ocr.devices import WorkerSlot, plan_slots
from ocr_inbox.ocr.engine import EngineSettings
from ocr_inbox.support import logs
from ocr_inbox.support.cache import paddlex_cache_dir
from ocr_inbox.support.errors import EngineUnavailable


def limits_from(settings: Settings) -> images.Limits:
    """The per-file limits of the one image module: OCR and PDFs read files under the same ones."""
    o = settings.ocr
    return images.Limits(
        max_pixels=o.max_image_pixels,
        max_file_bytes=o.max_file_mb << 20,
        max_pages=o.max_pages,
        max_total_pixels=o.max_total_pixels,
        pdf_ocr_pages_with_text=settings.pdf.ocr_pages_with_text,
    )


def slots_for(settings: Settings) -> list[WorkerSlot]:
    o = settings.ocr
    return plan_slots(o.devices, o.workers_per_device, o.threads_per_worker)


def preflight(settings: Settings) -> None:
    """Fail before spawning anything when a device, the profile or its model files are missing.

    With ``[executor] kind = "ray"`` the models live on the cluster's hosts: an actor
    that cannot load them fails its boot with the reason (``worker_boot_failed``)."""
    if settings.executor.kind == "ray":
        profiles.get(settings.ocr.profile)  # refine_profile: checked by the configuration
        return
    for slot in slots_for(settings):
        try:
            slot.child_env()
        except ValueError as exc:
            raise EngineUnavailable(f"ocr.devices: {exc}") from None
    if settings.ocr.engine_plugin:
        return
    models_dir = settings.paths.resolved_models_dir()
    for name, roles in settings.ocr.models_needed():
        models.require(models_dir, profiles.get(name), roles)


def worker_config_factory(settings: Settings, inbox: Path) -> Callable[[WorkerSlot], WorkerConfig]:
    log_format = logs.resolve_format(settings.log.format, sys.stderr)
    if log_format == "console":
        log_format = "logfmt" if not sys.stderr.isatty() else "console"
    root = os.path.realpath(inbox)

    def make(slot: WorkerSlot) -> WorkerConfig:
        o = settings.ocr
        eng = EngineSettings(
            profile=o.profile,
            models_dir=settings.paths.resolved_models_dir().resolve(),
            cache_dir=paddlex_cache_dir(settings.paths.resolved_cache_dir()).resolve(),
            device=slot.local_device,
            reported_device=str(slot.device),
            threads=slot.threads,
            rec_batch_size=o.rec_batch_size,
            word_boxes=o.word_boxes,
            min_score=o.min_score,
            plugin=o.engine_plugin,
            refine_profile=o.refine_in_use() or "",
            refine_below=o.refine_below,
            lexicon=tuple(o.lexicon),
            orientation=o.orientation,
            textline_orientation=o.textline_orientation,
        )
        return WorkerConfig(
            slot=slot.slot,
            engine=eng,
            limits=limits_from(settings),
            inbox=root,
            env=slot.child_env(),
            log_level=settings.log.level,
            log_format=log_format,
            # CPU workers only: what the CUDA driver maps privately is unmeasured here, and a
            # ceiling it hits would stop GPU workers from booting (docs/SECURITY.md: cgroup limits)
            memory_mb=settings.pool.worker_memory_mb if slot.device.kind == "cpu" else 0,
        )

    return make
