"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocr_inbox.service.notify import Notifier


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(10.0)  # only reached when nothing was sent
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_messages(systemd: socket.socket) -> None:
    n = Notifier()
    assert n.enabled
    assert n.ready(status="3 queued")
    assert received(systemd) == {"READY": "1", "STATUS": "3 queued"}
    n.status("processing a/1.jpg")
    assert received(systemd) == {"STATUS": "processing a/1.jpg"}
    n.watchdog()
    assert received(systemd) == {"WATCHDOG": "1"}
    n.stopping()
    assert received(systemd) == {"STOPPING": "1"}
    n.extend_timeout(90.5)
    assert received(systemd) == {"EXTEND_TIMEOUT_USEC": "90500000"}


def test_reloading_carries_the_monotonic_clock(systemd: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = received(systemd)
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after


def test_status_cannot_forge_other_assignments(systemd: socket.socket) -> None:
    Notifier().status("evil.jpg\nREADY=1\rSTOPPING=1")
    msg = received(systemd)
    assert list(msg) == ["STATUS"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ocr-inbox-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10.0)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert Notifier().ready()
        assert received(sock) == {"READY": "1"}
    finally:
        sock.close()


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert not n.ready()
    assert not n.status("x")
    assert not n.extend_timeout(1)


def test_unsupported_address_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not Notifier().ready()


def test_missing_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    n = Notifier()
    assert not n.ready()
    assert not n.watchdog()


def test_reconnects_when_systemd_comes_back(tmp_path: Path, systemd: socket.socket) -> None:
    n = Notifier()
    assert n.status("one")
    received(systemd)
    # systemd re-executes: a new socket at the same path
    path = tmp_path / "notify"
    systemd.close()
    path.unlink()
    again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    again.bind(str(path))
    again.settimeout(10.0)
    try:
        assert n.status("two")
        assert received(again) == {"STATUS": "two"}
    finally:
        again.close()


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert Notifier().watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    assert Notifier().watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier().watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert Notifier().watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert Notifier().watchdog_interval() is None


def test_module_functions_share_one_notifier(systemd: socket.socket) -> None:
    from ocr_inbox.service import notify

    notify.default.cache_clear()
    try:
        assert notify.ready("up")
        assert received(systemd) == {"READY": "1", "STATUS": "up"}
        notify.status("s")
        notify.watchdog()
        notify.reloading()
        notify.extend_timeout(1)
        notify.stopping()
        got = [next(iter(received(systemd))) for _ in range(5)]
        assert got == ["STATUS", "WATCHDOG", "RELOADING", "EXTEND_TIMEOUT_USEC", "STOPPING"]
        assert notify.watchdog_interval() is None
        assert notify.default() is notify.default()
    finally:
        notify.default.cache_clear()
