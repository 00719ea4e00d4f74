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


def _orphans() -> list[int]:
    """Processes handed to this one (its children other than those it started and reaped)."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                if entry.isdigit() and int(fh.read().rsplit(") ", 1)[1].split()[1]) == me:
                    out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return out


@pytest.fixture
def subreaper() -> Iterator[None]:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for pid in _orphans():  # a failed run's leftovers: end and reap them
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def test_sigterm_leaves_no_process_of_the_service_behind(tmp_path: Path, subreaper: None) -> None:
    d = Daemon(tmp_path, tmp_path / "models", FAKE).start(new_session=True)
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
    left = {pid: running.get(pid, "?") for pid in _orphans()}
    assert left == {}, "these outlived the main process: systemd would SIGKILL them"
    assert session_processes(sid) == {}
    assert not d.events("child_left_running")  # each stage had joined its own children
    # and every line the daemon and its children wrote is one record
    assert all(re.match(r"timestamp=\S+ level=\w+ event=\w+( |$)", line) for line in d.log().splitlines()), d.log()
