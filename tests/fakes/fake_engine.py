"""A test engine plug-in (``ocr.engine_plugin = "fake_engine:create"``).

Fast and deterministic, for scheduling and fault tests: every image yields one
line naming its size. An image whose top-left pixel has the BGR value
(N, N, N) with N in 1..4 misbehaves (see ``tests/imagemaker.py``): 1 kills the
worker with SIGKILL (like the OOM killer), 2 crashes it with SIGSEGV, 3 calls
``os._exit(3)``, 4 raises inside the engine, 5 hangs (a stuck worker),
6 crashes the *decoder* with SIGSEGV (in the worker's decode thread, before the
engine sees it), 7 SIGKILLs the worker only while the file named by
``FAKE_ENGINE_CRASH_FLAG`` exists (a fault of the machine the test can end).
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from typing import Any

import numpy as np

from ocr_inbox.ocr import images
from ocr_inbox.ocr.results import Line

_upright_bgr = images.upright_bgr


def _crashing_decoder(frame: images.Frame) -> np.ndarray:
    """``images.upright_bgr`` that segfaults on marker 6, as a hostile file in a C decoder would."""
    if frame.image.mode == "RGB" and frame.image.getpixel((0, 0)) == (6, 6, 6):
        # to this thread, as a real fault is: the process dies before this thread does anything else
        signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
    return _upright_bgr(frame)


class FakeEngine:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        if os.environ.get("FAKE_ENGINE_BOOT_FAIL"):
            raise RuntimeError("fake boot failure")
        if os.environ.get("FAKE_ENGINE_BOOT_NOISE"):
            # what C libraries do (ONNX Runtime's logger): straight to the file descriptors,
            # past Python's streams; and a print, and a library warning
            os.write(2, b"\x1b[1;33m[W:onnxruntime:Default, fake.cc:1] raw from C\x1b[0m\n")
            os.write(1, b"raw stdout from C, no newline at the end")
            print("a print from Python")
            import warnings

            warnings.warn("a library warning", RuntimeWarning, stacklevel=1)

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
        if marker == 5:
            hang_forever()
        if marker == 7 and os.path.exists(os.environ.get("FAKE_ENGINE_CRASH_FLAG", "/nonexistent")):
            os.kill(os.getpid(), signal.SIGKILL)
        # FAKE_ENGINE_DELAY_S: the seconds an image "costs", so a test can interrupt a run midway
        time.sleep(float(os.environ.get("FAKE_ENGINE_DELAY_S", "0")))
        text = f"fake {w}x{h}"
        return [Line(text=text, score=1.0, poly=((0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h))))]


def hang_forever() -> None:
    """A stuck engine: the stack dump before the kill must name this frame. Waits for
    signals only (a stack-dump request is answered, and the wait goes on) until killed."""
    while True:
        signal.pause()


def create(settings: Any) -> FakeEngine:
    images.upright_bgr = _crashing_decoder  # only in the worker process that loads this plug-in
    return FakeEngine(settings)


def create_broken(settings: Any) -> FakeEngine:
    """``engine_plugin = "fake_engine:create_broken"``: every worker fails while loading
    (a reload to it must keep the running workers)."""
    raise RuntimeError("fake boot failure (create_broken)")


def create_gated(settings: Any) -> FakeEngine:
    """``engine_plugin = "fake_engine:create_gated"``: loading lasts while the test holds an
    exclusive lock on the file named by ``$FAKE_ENGINE_GATE``, so it holds a (re)boot open
    as long as it needs: a shared lock waits for the test's to go (no polling)."""
    gate = os.environ.get("FAKE_ENGINE_GATE", "")
    if gate:
        with open(gate, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
    return FakeEngine(settings)
