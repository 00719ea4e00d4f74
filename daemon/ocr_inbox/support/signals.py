"""Signal handling in gunicorn's current form: handlers only queue, the loop acts.

Handlers never log or touch state (logging in a handler can deadlock); they put
the signal number on a queue and write one byte to a socket the main loop waits
on, so ``multiprocessing.connection.wait`` wakes at once. (Children ask for a signal of
their own when the daemon dies: ``support/children.py``.)
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator
from queue import Empty, SimpleQueue
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SignalQueue:
    def __init__(self) -> None:
        self.queue: SimpleQueue[int] = SimpleQueue()
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    @property
    def waitable(self) -> socket.socket:
        return self._r

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self.queue.put_nowait(signum)
        with contextlib.suppress(OSError):
            self._w.send(b"\0")

    def pop_all(self) -> list[int]:
        with contextlib.suppress(OSError):
            while self._r.recv(4096):
                pass
        out = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except Empty:
                return out

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalQueue]:
        old = {s: signal.signal(s, self._handler) for s in HANDLED}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self._r.close()
            self._w.close()

