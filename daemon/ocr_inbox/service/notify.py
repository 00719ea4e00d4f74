"""sd_notify(3) for ``Type=notify``: readiness, status line, watchdog, reload, stop.

A no-op without ``$NOTIFY_SOCKET`` (a terminal, a test, another init system).
Sending never raises: losing a status line must not stop the daemon; a missed
``WATCHDOG=1`` is for systemd to judge.

Built on the ``sdnotify`` package, which maps an ``@`` address to the abstract
namespace itself; addresses it cannot handle (``vsock:``, systemd >= 254) are
refused here, where they would otherwise fail silently inside it.

Use the module functions (``notify.ready()``: one notifier per process, made on
first use) or a ``Notifier`` of your own (tests).
"""

from __future__ import annotations

import functools
import os
import time

import sdnotify
import structlog

log = structlog.get_logger(__name__)


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """One connection to systemd's notification socket (or none), from ``$NOTIFY_SOCKET``."""

    def __init__(self) -> None:
        self._addr = os.environ.get("NOTIFY_SOCKET", "")
        self._sd: sdnotify.SystemdNotifier | None = None
        if not self._addr:
            return
        if self._addr[0] not in "/@":
            log.warning("notify_unsupported_socket", address=self._addr)
            self._addr = ""
            return
        self._connect()

    def _connect(self) -> None:
        try:
            # sdnotify reads $NOTIFY_SOCKET itself; debug=True lets us see why it fails
            self._sd = sdnotify.SystemdNotifier(debug=True)
        except OSError as exc:
            self._sd = None
            log.warning("notify_unavailable", address=self._addr, reason=exc.strerror or str(exc))

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; returns whether it was sent."""
        if not self._addr:
            return False
        message = "\n".join(assignments)
        for attempt in (1, 2):
            if self._sd is None:
                self._connect()
            if self._sd is None:
                return False
            try:
                self._sd.notify(message)
                return True
            except OSError as exc:
                # systemd re-executed (daemon-reexec): the connected socket is stale,
                # reconnect once; sd_notify(3) itself connects on every call.
                self._sd = None
                if attempt == 2:
                    log.debug("notify_failed", reason=exc.strerror or str(exc))
        return False

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete."""
        return self.send("READY=1", *([_status(status)] if status is not None else []))

    def status(self, text: str) -> bool:
        """The one-line STATUS= shown by ``systemctl status``."""
        return self.send(_status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload began; follow with ``ready()`` when done (``Type=notify-reload`` style)."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more to finish starting or stopping (slow model loads, drains)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """How often to send ``WATCHDOG=1`` (half of ``WatchdogSec=``), or None if not asked."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if pid and pid != str(os.getpid()):
            return None  # meant for another process (our parent, say)
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 2_000_000 if value > 0 else None


def _status(text: str) -> str:
    # a newline would start a new assignment: file names must not forge READY=1
    return "STATUS=" + " ".join(text.splitlines())


# -- the process's notifier, made on first use (importing has no side effects) --


@functools.cache
def default() -> Notifier:
    return Notifier()


def ready(status: str | None = None) -> bool:
    return default().ready(status)


def status(text: str) -> bool:
    return default().status(text)


def watchdog() -> bool:
    return default().watchdog()


def reloading() -> bool:
    return default().reloading()


def stopping() -> bool:
    return default().stopping()


def extend_timeout(seconds: float) -> bool:
    return default().extend_timeout(seconds)


def watchdog_interval() -> float | None:
    return default().watchdog_interval()
