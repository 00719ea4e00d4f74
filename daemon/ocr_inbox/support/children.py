"""The daemon's child processes (OCR workers, the PDF build, the Ray bridge): started and
stopped one way.

Started with multiprocessing's ``spawn`` context: a fresh interpreter that inherits no
threads, locks or loaded models from the daemon (it sets up logging itself). The first
thing each child does is ask Linux for ``PR_SET_PDEATHSIG``, so a daemon that dies,
even by SIGKILL, leaves no orphan behind. Stopped with a bound: SIGTERM, a wait, then
SIGKILL and a wait, and one log record saying how it ended.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

import structlog

log = structlog.get_logger(__name__)

_CTX = multiprocessing.get_context("spawn")
PR_SET_PDEATHSIG = 1


def pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """A pipe whose second end is handed to a child (``spawn(handed=...)``)."""
    return _CTX.Pipe(duplex=duplex)


def die_with_parent() -> None:
    """Ask Linux to kill this process if the one that spawned it dies (even by SIGKILL).

    A parent that died before the request took effect (while this child was still
    importing) is noticed here: nothing of ours is left to finish, so exit at once.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(0)


def _enter(target: Callable[..., object], args: tuple[Any, ...]) -> None:
    """A child's first frame: PDEATHSIG before anything else, then its own entry point."""
    die_with_parent()
    target(*args)


class Child:
    """One spawned process: its ``sentinel`` for ``multiprocessing.connection.wait``, and ``stop``."""

    def __init__(self, name: str, target: Callable[..., object], args: tuple[Any, ...], handed: Iterable[Connection] = ()) -> None:
        """Start ``target(*args)`` in a child named ``name``. ``handed``: pipe ends among
        ``args`` that belong to the child; the parent closes its copies once it started, so
        the other end sees EOF when the child exits."""
        self.name = name
        self.process = _CTX.Process(target=_enter, args=(target, args), name=name, daemon=True)
        self.process.start()
        for end in handed:
            end.close()

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None, "started in __init__"
        return pid

    @property
    def sentinel(self) -> int:
        return self.process.sentinel

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self.process.join(timeout)

    def send_signal(self, sig: int) -> None:
        """``sig`` to the child, unless it is gone already."""
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace_s: float, kill_wait_s: float = 5.0, **context: Any) -> None:
        """End the child if it still runs: SIGTERM, up to ``grace_s`` for it to exit, then
        SIGKILL and up to ``kill_wait_s`` for the kernel to reap it. Bounded whatever the
        child does (ignores SIGTERM, hangs in its handler). One record when a signal was
        needed (``context``: fields for it); none for a child that had already exited."""
        if not self.process.is_alive():
            self.process.join(timeout=0)
            return
        how, level = "terminated", "info"
        self.process.terminate()
        self.process.join(timeout=grace_s)
        if self.process.is_alive():
            how, level = "killed", "warning"
            self.process.kill()
            self.process.join(timeout=kill_wait_s)
            if self.process.is_alive():  # in the kernel (uninterruptible I/O): reaped when it returns
                how, level = "still_running", "error"
        getattr(log, level)("child_stopped", child=self.name, pid=self.pid, how=how, grace_s=grace_s, **context)
