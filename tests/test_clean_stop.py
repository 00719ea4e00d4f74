"""A clean stop leaves nothing behind for systemd to kill.

Under systemd (KillMode=mixed) SIGTERM goes to the main process; whatever is left
in the unit's cgroup once it has exited gets SIGKILL, and the journal says
``Killing process … with signal SIGKILL``. The test starts the real daemon as the
leader of its own session (what the cgroup is to systemd), with the test as its
child subreaper: a process that outlives the daemon's main process is handed to
the test when the main process exits, however briefly it outlived it. So "nothing
was handed over" means every worker, the PDF child and multiprocessing's
resource tracker had exited, and been reaped, before the main process did.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, session_processes, toml_config
from imagemaker import plain

FAKE = toml_config(
    {
        "watch": {"settle_seconds": 0.3},
        "pdf": {"quiet_seconds": 0.5},
        "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 2},
    },
    {},
)
PR_SET_CHILD_SUBREAPER = 36


def _orphans(sid: int | None = None) -> list[int]:
    """Processes handed to this one (its children other than those it started), of session
    ``sid`` (None: any), zombies included: they outlived their parent too."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(") ", 1)[1].split()  # (state, ppid, pgrp, session, ...)
            if int(fields[1]) == me and (sid is None or int(fields[3]) == sid):
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return out


@pytest.fixture
def subreaper() -> Iterator[list[int]]:
    """This process as the child subreaper; the test lists the sessions it started in the list."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
    sessions: list[int] = []
    try:
        yield sessions
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for pid in [p for sid in sessions for p in _orphans(sid)]:  # a failed run's leftovers: end and reap them
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def test_sigterm_leaves_no_process_of_the_service_behind(
    tmp_path: Path, subreaper: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the workers' engine writes raw text on fds 1 and 2 as it boots, prints and warns
    monkeypatch.setenv("FAKE_ENGINE_BOOT_NOISE", "1")
    d = Daemon(tmp_path, tmp_path / "models", FAKE).start(new_session=True)
    subreaper.append(d.proc.pid)
    d.ready()
    for i in range(3):
        plain(d.inbox / "box" / f"p{i}.png", marker=100 + i)
    d.until(lambda: d.events("pdf_done"), "the folder's PDF")  # workers worked, a PDF child ran
    sid = d.proc.pid
    running = session_processes(sid)
    # what the stop must end: the main process, its workers and the resource tracker
    assert len(running) >= 4, running
    assert any("resource_tracker" in cmd for cmd in running.values()), running
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert d.events("stopped")
    left = {pid: running.get(pid, "?") for pid in _orphans(sid)}
    assert left == {}, "these outlived the main process: systemd would SIGKILL them"
    assert session_processes(sid) == {}
    assert not d.events("child_left_running")  # each stage had joined its own children
    # and every line the daemon and its children wrote is one record, the libraries' too
    log = d.log()
    assert all(re.match(r"timestamp=\S+ level=\w+ event=\w+( |$)", line) for line in log.splitlines()), log
    assert "\x1b" not in log
    workers = len(d.events("worker_ready"))
    raw = [e["message"] for e in d.events("worker_output")]
    assert raw.count('"[W:onnxruntime:Default, fake.cc:1] raw from C"') == workers, log
    assert raw.count('"raw stdout from C, no newline at the end"') == workers, log  # flushed at exit
    assert len(d.events("library_output")) == len(d.events("python_warning")) == workers, log
