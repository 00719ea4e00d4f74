"""The one way the daemon starts and stops its child processes (``support/children.py``):
a child that will not stop is still ended, and no child outlives its parent."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest
from structlog.testing import capture_logs

from ocr_inbox.support import children

PR_SET_CHILD_SUBREAPER = 36


def _deaf(conn: Connection) -> None:
    """A child that ignores SIGTERM, says so, then waits for ever."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send("deaf")
    conn.recv()


def _ready_then_wait(conn: Connection) -> None:
    """Says its pid, then waits until told anything or its parent's end of the pipe closes."""
    conn.send(os.getpid())
    try:
        conn.recv()
    except EOFError:
        pass


def _parent_of_one() -> None:
    """Run as a script: starts one child, prints its pid once it runs, then waits to be killed."""
    mine, theirs = children.pipe()
    children.Child("grandchild", _ready_then_wait, (theirs,), handed=(theirs,))
    print(mine.recv(), flush=True)
    sys.stdin.read()


def test_a_child_that_ignores_sigterm_is_killed_and_the_stop_is_one_record() -> None:
    mine, theirs = children.pipe()
    child = children.Child("deaf", _deaf, (theirs,), handed=(theirs,))
    assert mine.recv() == "deaf"  # its SIGTERM handler is in place
    with capture_logs() as records:
        child.stop(grace_s=0.2, kill_wait_s=30, folder="x")
    assert not child.is_alive()
    assert child.exitcode == -signal.SIGKILL
    stops = [r for r in records if r["event"] == "child_stopped"]
    assert stops == [{"event": "child_stopped", "log_level": "warning", "child": "deaf", "pid": child.pid,
                      "how": "killed", "grace_s": 0.2, "folder": "x"}]


def test_a_child_that_exits_on_sigterm_is_not_killed() -> None:
    mine, theirs = children.pipe()
    child = children.Child("polite", _ready_then_wait, (theirs,), handed=(theirs,))
    assert mine.recv() == child.pid
    with capture_logs() as records:
        child.stop(grace_s=30)
    assert child.exitcode == -signal.SIGTERM
    assert [r["how"] for r in records if r["event"] == "child_stopped"] == ["terminated"]


def test_stopping_a_child_that_already_exited_says_nothing() -> None:
    mine, theirs = children.pipe()
    child = children.Child("gone", _ready_then_wait, (theirs,), handed=(theirs,))
    assert mine.recv() == child.pid
    mine.close()  # its recv() sees EOF: it ends by itself
    child.join()
    with capture_logs() as records:
        child.stop(grace_s=30)
    assert child.exitcode == 0  # no signal was sent
    assert records == []


@pytest.fixture
def subreaper() -> Iterator[None]:
    """This process as the child subreaper: an orphan of ours is handed to us, so we can reap it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
    try:
        yield None
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def test_a_child_whose_parent_is_killed_gets_sigkill(subreaper: None) -> None:
    parent = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())  # running its own code: past the PDEATHSIG request
    parent.kill()
    parent.wait()
    # the orphan comes to us (the subreaper); PDEATHSIG is the only SIGKILL it can get
    pid, status = os.waitpid(grandchild, 0)
    assert pid == grandchild
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


if __name__ == "__main__":
    _parent_of_one()
