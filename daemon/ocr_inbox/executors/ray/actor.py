"""Runs in a Ray worker process on a cluster node: ``OcrActor``, one OCR pipeline.

The bridge creates it (``ray.remote(OcrActor)``; Ray finds this class on the node by its
module path, so every node installs the same ocr-inbox). It boots and OCRs with the local
worker's own code (``worker.boot``, ``worker.ocr_one``) and image module, so the results
are the same as the local pool's.
"""

from __future__ import annotations

import os
from typing import Any

from ocr_inbox.executors import messages as m
from ocr_inbox.executors.worker import WorkerConfig, boot, ocr_one, rss_bytes
from ocr_inbox.ocr import engine as engine_mod
from ocr_inbox.ocr import images
from ocr_inbox.support import logs
from ocr_inbox.support.reasons import Reason


class OcrActor:
    """One OCR pipeline on a cluster node: the local worker's engine, image module and code.

    Every call returns plain data (``messages.to_plain``: JSON bytes, stored by Ray as raw
    bytes), never a pickled object, and never raises: the bridge unpickles nothing a node
    sends (``bridge._Bridge.fetch``)."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.eng: engine_mod.Engine | None = None
        self.info: dict[str, Any] = {}

    def boot(self) -> bytes:
        try:
            res = self._boot()
        except BaseException as exc:  # noqa: BLE001 (anything: the bridge reads only plain data)
            res = m.BootFailed(self.cfg.slot, f"{type(exc).__name__}: {exc}", fatal=False)
        return m.to_plain(res)

    def _boot(self) -> m.Ready | m.BootFailed:
        cfg = self.cfg
        os.environ.update(cfg.env)
        logs.configure(cfg.log_level, cfg.log_format, worker=cfg.slot)
        booted = boot(cfg)
        if isinstance(booted, m.BootFailed):
            return booted
        self.eng, ready = booted
        self.info = ready.info
        return ready

    def ocr(self, job: m.Job, file: images.ImageFile | None) -> bytes:
        assert self.eng is not None, "boot() first"
        try:
            res = ocr_one(job, self.cfg, self.eng, self.info, file)
        except Exception as exc:  # ocr_one reports its own failures; this is a bug's last word
            res = m.Failed(self.cfg.slot, job, Reason.engine_error, f"{type(exc).__name__}: {exc}")
        return m.to_plain(res)

    def rss(self) -> bytes:
        return m.to_plain(rss_bytes())
