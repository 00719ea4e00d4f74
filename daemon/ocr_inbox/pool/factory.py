"""Build each worker's configuration from the settings (shared by `ocr` and `run`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ocr_inbox import logs
from ocr_inbox.config import Settings
from ocr_inbox.ocr import images
from ocr_inbox.ocr.devices import WorkerSlot
from ocr_inbox.ocr.engine import EngineSettings
from ocr_inbox.pool.worker import WorkerConfig


def limits_from(settings: Settings) -> images.Limits:
    o = settings.ocr
    return images.Limits(max_pixels=o.max_image_pixels, max_file_bytes=o.max_file_mb << 20, max_pages=o.max_pages)


def paddlex_cache_dir(settings: Settings) -> Path:
    return settings.paths.resolved_cache_dir() / "paddlex"


def preflight(settings: Settings) -> None:
    """Fail before spawning anything when the profile or its model files are missing."""
    from ocr_inbox.errors import EngineUnavailable
    from ocr_inbox.ocr import models, profiles

    from ocr_inbox.ocr.devices import plan_slots

    o = settings.ocr
    for slot in plan_slots(o.devices, o.workers_per_device, o.threads_per_worker):
        try:
            slot.child_env()
        except ValueError as exc:
            raise EngineUnavailable(f"ocr.devices: {exc}") from None
    if settings.ocr.engine_plugin:
        return
    prof = profiles.get(settings.ocr.profile)
    mdir = settings.paths.resolved_models_dir()
    missing = models.missing_files(mdir, prof)
    if missing:
        raise EngineUnavailable(
            f"model files for profile {prof.name!r} are missing, e.g. {missing[0]}; "
            f"run `ocr-inbox models install --profile {prof.name} --models-dir {mdir}`"
        )


def worker_config_factory(settings: Settings, inbox: Path) -> Callable[[WorkerSlot], WorkerConfig]:
    import sys

    log_format = logs.resolve_format(settings.log.format, sys.stderr)
    if log_format == "console":
        log_format = "logfmt" if not sys.stderr.isatty() else "console"

    def make(slot: WorkerSlot) -> WorkerConfig:
        o = settings.ocr
        eng = EngineSettings(
            profile=o.profile,
            models_dir=settings.paths.resolved_models_dir().resolve(),
            cache_dir=paddlex_cache_dir(settings).resolve(),
            device=slot.local_device,
            reported_device=str(slot.device),
            threads=slot.threads,
            rec_batch_size=o.rec_batch_size,
            word_boxes=o.word_boxes,
            min_score=o.min_score,
            plugin=o.engine_plugin,
        )
        return WorkerConfig(
            slot=slot.slot,
            engine=eng,
            limits=limits_from(settings),
            inbox=os.path.realpath(inbox),
            env=slot.child_env(),
            log_level=settings.log.level,
            log_format=log_format,
        )

    return make
