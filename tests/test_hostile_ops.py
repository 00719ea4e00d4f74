"""An inbox shared by people you don't fully trust, seen from the operator's side: names
that are markup or terminal escapes, reloads that must not trip the watchdog nor lose
the running workers, PDF builds that never end, output modes. Real daemon, test engine."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import Daemon, cli_env, json_files, toml_config
from imagemaker import plain

pytestmark = [pytest.mark.slow]


def config(**sections: dict[str, object]) -> str:
    """A fast test configuration on the test engine plug-in, in TOML."""
    base: dict[str, dict[str, object]] = {
        "watch": {"settle_seconds": 0.3, "rescan_interval_s": 2},
        "pdf": {"quiet_seconds": 0.5},
        "pool": {"output_retry_s": 1.0},
        "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 2},
    }
    return toml_config(base, sections)


def _done(d: Daemon, n: int) -> bool:
    t = d.status()["totals"]
    return bool(t["done"] == n and t["queued"] == 0 and t["running"] == 0)


def _count(d: Daemon, event: str) -> int:
    return len(d.events(event))


HOSTILE = ("[/]", "[bold]x", "red\x1b[31mname")


def test_hostile_folder_names_are_shown_escaped(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, config())
    for folder in HOSTILE:
        plain(d.inbox / folder / "p1.png")
    d.start()
    d.ready()
    d.until(lambda: _done(d, len(HOSTILE)) and len(d.events("pdf_done")) == len(HOSTILE), "all done, PDFs built")
    res = subprocess.run(
        [sys.executable, "-m", "ocr_inbox", "status", "--state-dir", str(d.state), "--config", str(d.config_path)],
        capture_output=True, env=cli_env(COLUMNS="200"), timeout=60,
    )
    out = res.stdout.decode()
    assert res.returncode == 0, res.stderr.decode()
    assert b"\x1b" not in res.stdout and b"\x1b" not in res.stderr
    for shown in ("[/]", "[bold]x", "red\\x1b[31mname"):
        assert shown in out, out
    assert "\x1b" not in d.log()  # the daemon's own log lines carry the name escaped too
    assert d.stop() == 0


def _wait_watchdogs(d: Daemon, start: int, n: int) -> int:
    i = start
    for _ in range(n):
        i = d.wait_notify(lambda m: "WATCHDOG=1" in m.split("\n"), start=i) + 1
    return i


def test_reload_keeps_the_old_workers_and_the_watchdog_until_the_new_ones_are_ready(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.setenv("FAKE_ENGINE_DELAY_S", "0.2")
    monkeypatch.setenv("FAKE_ENGINE_GATE", str(gate))
    d = Daemon(tmp_path, models_dir, config(pool={"batch_size": 2, "output_retry_s": 1.0}), watchdog_usec=1_000_000)
    n = 60
    for i in range(n):
        plain(d.inbox / "book" / f"p{i:02}.png")
    d.start()
    d.ready()
    d.until(lambda: _count(d, "image_done") >= 4, "the queue being worked")
    # the new pool loads until the test opens the gate (lets go of its lock): as long as a slow model load
    held = open(gate, "rb")  # noqa: SIM115 (released below, mid-test)
    fcntl.flock(held, fcntl.LOCK_EX)
    d.config_path.write_text(config(pool={"batch_size": 3}, ocr={"engine_plugin": "fake_engine:create_gated"}))
    d.signal(signal.SIGHUP)
    reloading = d.wait_notify(lambda m: "RELOADING=1" in m.split("\n"))
    d.until(lambda: d.events("workers_restarting"), "the new pool started")
    done_then = _count(d, "image_done")
    after = _wait_watchdogs(d, reloading, 3)  # systemd hears from the loop while the new pool loads
    d.until(lambda: _count(d, "image_done") >= done_then + 4, "the old pool working during the reload")
    assert d.wait_notify(lambda m: "EXTEND_TIMEOUT_USEC=" in m, start=reloading) >= reloading
    assert not any("READY=1" in m.split("\n") for m in d.messages[reloading:after])
    held.close()  # the gate opens: the new workers finish loading
    ready = d.wait_notify(lambda m: "READY=1" in m.split("\n"), start=reloading)
    assert d.events("workers_switched") and not d.events("reload_rejected")
    d.until(lambda: _done(d, n), "every image done")
    assert len(json_files(d.outbox)) == n
    assert d.status()["totals"]["failed"] == 0
    _wait_watchdogs(d, ready, 1)  # and the loop keeps feeding it on the new pool
    assert d.stop() == 0


def test_reload_to_workers_that_cannot_boot_keeps_the_old_ones(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, config(), watchdog_usec=1_000_000)
    plain(d.inbox / "a" / "before.png")
    d.start()
    d.ready()
    d.until(lambda: _done(d, 1), "the first image")
    spawned = _count(d, "worker_spawned")
    d.config_path.write_text(config(ocr={"engine_plugin": "fake_engine:create_broken"}))
    d.signal(signal.SIGHUP)
    reloading = d.wait_notify(lambda m: "RELOADING=1" in m.split("\n"))
    d.wait_notify(lambda m: "READY=1" in m.split("\n"), start=reloading)
    (rejected,) = d.events("reload_rejected")
    assert "could not start" in rejected["reason"], rejected
    assert _count(d, "worker_spawned") > spawned  # the new pool was really tried
    plain(d.inbox / "a" / "after.png")
    d.until(lambda: _done(d, 2), "an image dropped after the rejected reload done by the old workers")
    assert json_files(d.outbox)["a/after.png"]["engine"]["engine"] == "fake"
    assert d.proc is not None and d.proc.poll() is None
    assert d.stop() == 0


def _held_pdf_build(tmp_path: Path, models_dir: Path, folder: str, pages: int, **pdf: object) -> Daemon:
    """A daemon whose next PDF build, of ``folder``, never ends: the folder's pages are OCR'd
    with PDFs off, one JSON is replaced by a FIFO nobody writes, then PDFs are turned on
    (SIGHUP, with the ``[pdf]`` settings given)."""
    d = Daemon(tmp_path, models_dir, config(pdf={"enabled": False}))
    for i in range(pages):
        plain(d.inbox / folder / f"p{i}.png")
    d.start()
    d.ready()
    d.until(lambda: _done(d, pages), "the pages OCR'd")
    stuck = d.outbox / folder / "p1.png.json"
    stuck.unlink()
    os.mkfifo(stuck)
    d.config_path.write_text(config(pdf={"enabled": True, "quiet_seconds": 0.5, **pdf}))
    d.signal(signal.SIGHUP)
    return d


def test_a_pdf_build_past_its_time_is_cancelled_and_not_retried(tmp_path: Path, models_dir: Path) -> None:
    d = _held_pdf_build(tmp_path, models_dir, "slow", 3, build_timeout_s=1.0)
    d.until(lambda: d.events("pdf_failed"), "the build cancelled")
    (failed,) = d.events("pdf_failed")
    assert failed["folder"] == "slow" and failed["reason"] == "timeout" and failed["retry"] == "false"
    # another folder's PDF comes and goes: the timed-out folder is not started again meanwhile
    plain(d.inbox / "other" / "p0.png")
    d.until(lambda: d.events("pdf_done"), "the other folder's PDF")
    assert [e["folder"] for e in d.events("pdf_start")] == ["slow", "other"]
    (slow,) = [f for f in d.status()["folders"] if f["folder"] == "slow"]
    assert slow["pdf_state"] == "failed" and "build_timeout_s" in slow["pdf_error"]
    assert not (d.outbox / "slow" / "slow.pdf").exists()
    assert d.stop() == 0


def test_outputs_are_group_readable_under_the_units_umask(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, config())
    plain(d.inbox / "book" / "p1.png")
    old = os.umask(0o027)  # the unit's UMask=; the daemon inherits it
    try:
        d.start()
    finally:
        os.umask(old)
    d.ready()
    d.until(lambda: d.events("pdf_done"), "the PDF")
    assert (d.outbox / "book" / "p1.png.json").stat().st_mode & 0o777 == 0o640
    assert (d.outbox / "book" / "book.pdf").stat().st_mode & 0o777 == 0o640
    assert d.stop() == 0


def test_nothing_outlives_a_killed_daemon_not_even_a_pdf_build(tmp_path: Path, models_dir: Path) -> None:
    import psutil

    d = _held_pdf_build(tmp_path, models_dir, "held", 2)
    d.until(lambda: d.events("pdf_start"), "the build started")
    assert d.proc is not None
    children = psutil.Process(d.proc.pid).children(recursive=True)
    assert len(children) >= 3  # the workers and the PDF child
    d.kill9()
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert [" ".join(p.cmdline()) for p in alive] == []  # PR_SET_PDEATHSIG: workers and the PDF child die with the daemon
    assert not (d.outbox / "held" / "held.pdf").exists()
