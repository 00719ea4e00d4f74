"""A test engine plug-in (``ocr.engine_plugin = "fake_engine:create"``).

Fast and deterministic, for scheduling and fault tests: every image yields one
line naming its size. An image whose top-left pixel has the BGR value
(N, N, N) with N in 1..4 misbehaves (see ``tests/imagemaker.py``): 1 kills the
worker with SIGKILL (like the OOM killer), 2 crashes it with SIGSEGV, 3 calls
``os._exit(3)``, 4 raises inside the engine.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np

from ocr_inbox.ocr.results import Line


class FakeEngine:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        if os.environ.get("FAKE_ENGINE_BOOT_FAIL"):
            raise RuntimeError("fake boot failure")

    def info(self) -> dict[str, Any]:
        return {"profile": "fake", "engine": "fake", "models": {}, "paddlex_version": "-", "device": self.settings.reported_device}

    def recognise(self, bgr: np.ndarray) -> list[Line]:
        h, w = bgr.shape[:2]
        marker = int(bgr[0, 0, 0])
        # The fault triggers are encoded in the top-left pixel by the tests' image maker.
        if marker == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if marker == 2:
            os.kill(os.getpid(), signal.SIGSEGV)
        if marker == 3:
            os._exit(3)
        if marker == 4:
            raise RuntimeError("boom")
        # FAKE_ENGINE_DELAY_S: the seconds an image "costs", so a test can interrupt a run midway
        time.sleep(float(os.environ.get("FAKE_ENGINE_DELAY_S", "0")))
        text = f"fake {w}x{h}"
        return [Line(text=text, score=1.0, poly=((0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h))))]


def create(settings: Any) -> FakeEngine:
    return FakeEngine(settings)


def create_broken(settings: Any) -> FakeEngine:
    """``engine_plugin = "fake_engine:create_broken"``: every worker fails while loading
    (a reload to it must keep the running workers)."""
    raise RuntimeError("fake boot failure (create_broken)")


def create_gated(settings: Any) -> FakeEngine:
    """``engine_plugin = "fake_engine:create_gated"``: loading lasts until the file named by
    ``$FAKE_ENGINE_GATE`` exists, so a test holds a (re)boot open as long as it needs."""
    gate = os.environ.get("FAKE_ENGINE_GATE", "")
    while gate and not os.path.exists(gate):
        time.sleep(0.05)  # checking for the test's gate file, not a timing assumption
    return FakeEngine(settings)
