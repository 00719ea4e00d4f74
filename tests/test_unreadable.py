"""Paths the service user may not read yet: the backoff, what is said about them, and the
watcher's side (no bogus watch, a watch once readable), bound by file modes."""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest
from daemon_harness import OTHER_UID, cli_env, service_user_prefix

from ocr_inbox.inbox.unreadable import FIRST_RETRY_S, Blocked, Problem, _problem

P = Problem("missing", "fix")


def test_backoff_doubles_up_to_the_cap() -> None:
    b = Blocked(cap_s=5.0)
    assert b.add("a", "folder", P, now=100.0, wall=0.0)
    assert not b.add("a", "folder", P, now=101.0, wall=0.0)  # known: not new, not reported again
    assert b.due(100.0 + FIRST_RETRY_S - 0.01) == [] and b.due(100.0 + FIRST_RETRY_S) == ["a"]
    looks, now = [], 100.0 + FIRST_RETRY_S
    for _ in range(5):
        b.tried("a", now)
        nxt = b.get("a").next_try  # type: ignore[union-attr]
        looks.append(nxt - now)
        now = nxt
    assert looks == [2.0, 4.0, 5.0, 5.0, 5.0]


def test_cap_zero_looks_only_on_events() -> None:
    b = Blocked(cap_s=0.0)
    b.add("a", "file", P, now=0.0, wall=0.0)
    assert b.due(1e9) == []
    b.tried("a", 5.0)
    assert b.due(1e9) == []


def test_what_a_change_above_may_open() -> None:
    b = Blocked(cap_s=1.0)
    for rel in ("x", "x/y/p.png", "xy", "z/q.png"):
        b.add(rel, "file", P, 0.0, 0.0)
    assert sorted(b.at_or_under("x")) == ["x", "x/y/p.png"]
    assert sorted(b.at_or_under("")) == ["x", "x/y/p.png", "xy", "z/q.png"]
    b.forget_under("x")
    assert sorted(b.at_or_under("")) == ["xy", "z/q.png"]
    assert len(b.unreported(10.0, 5.0)) == 2 and b.unreported(1.0, 5.0) == []


def test_the_problem_names_mode_owner_and_the_fix(tmp_path: Path) -> None:
    d = tmp_path / "in" / "scan"
    d.mkdir(parents=True)
    d.chmod(0o700)
    mine = _problem(str(tmp_path / "in"), str(d), "rx", "svc", "svc")
    assert mine.fix.startswith(f"chmod u+rx {d};")  # its own folder, closed to itself
    if os.geteuid() != 0:
        return
    os.chown(d, OTHER_UID, OTHER_UID)
    own_group = grp.getgrgid(OTHER_UID).gr_name
    p = _problem(str(tmp_path / "in"), str(d), "rx", "ocr-inbox", "ocr-inbox")
    assert "ocr-inbox may not list and enter (r-x) the folder scan (drwx------ " in p.missing
    assert p.fix.startswith(f"chgrp ocr-inbox {d} && chmod g+rx {d}")
    assert p.fix.endswith("check with: ocr-inbox doctor --user ocr-inbox")
    same = _problem(str(tmp_path / "in"), str(d), "rx", "svc", own_group)
    assert same.fix.startswith(f"chmod g+rx {d}")  # already the service group: only the mode


_WATCH = r"""
import json, os, sys, time, warnings
from multiprocessing.connection import wait
from ocr_inbox.config import WatchSettings
from ocr_inbox.inbox.watcher import InboxWatcher, _watched_inodes
warnings.simplefilter("error")  # a RuntimeWarning from watchdog fails here
inbox = sys.argv[1]
if "--missed" in sys.argv:  # as on NFS: inotify tells nothing of the change; intake's backoff calls watch_again
    from watchdog.observers.inotify import InotifyWatchGroup
    from ocr_inbox.inbox import watcher as watcher_mod
    watcher_mod._BoundedWatchGroup.on_event = InotifyWatchGroup.on_event
w = InboxWatcher(inbox, WatchSettings(observer="native"))
w.start()
print("RESULT", json.dumps({"ready": True}), flush=True)
sys.stdin.readline()   # the test moves "late" in and opens "early" up
seen, attrib = set(), set()
end = time.monotonic() + 60
while "early/new.png" not in seen and time.monotonic() < end:
    if wait([w.waitable], timeout=1):
        seen |= w.take_touched()
        got = w.take_attrib()
        attrib |= got
        if "--missed" in sys.argv and "early" in got:
            w.watch_again("early")
        if "early" in got and not os.path.exists(os.path.join(inbox, "early", "new.png")):
            open(os.path.join(inbox, "early", "new.png"), "wb").close()  # after its watch came
watched = _watched_inodes() or set()
print("RESULT", json.dumps({
    "seen": sorted(seen), "attrib": sorted(attrib), "kind": w.kind, "healthy": w.healthy,
    "early_watched": os.stat(os.path.join(inbox, "early")).st_ino in watched,
    "late_watched": os.stat(os.path.join(inbox, "late")).st_ino in watched,
}), flush=True)
w.close()
"""


def _result(stream: IO[str]) -> dict[str, Any]:
    """The next ``RESULT {json}`` line of the script (its log records come between)."""
    for line in stream:
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    return {}


@pytest.mark.parametrize("how", ["event", "missed"])
def test_watcher_passes_over_closed_folders_and_watches_one_once_open(tmp_path: Path, how: str) -> None:
    """Two closed folders (one there at start, one moved in): no warning, no bogus watch; the
    one opened up gets its watch from its attribute event (or, where the event does not add
    it, from ``watch_again``, which intake calls when its backoff finds the folder open),
    and a file made in it is seen."""
    prefix = service_user_prefix()
    if isinstance(prefix, str) or os.geteuid() != 0:
        pytest.skip(prefix if isinstance(prefix, str) else "making another user's folders needs root")
    inbox = tmp_path / "inbox"
    for d in (inbox / "early", tmp_path / "stage" / "late"):
        d.mkdir(parents=True)
        os.chown(d, OTHER_UID, OTHER_UID)
        d.chmod(0o700)
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", _WATCH, str(inbox), *(["--missed"] if how == "missed" else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert _result(proc.stdout) == {"ready": True}
        os.rename(tmp_path / "stage" / "late", inbox / "late")
        (inbox / "early").chmod(0o777)  # open (and writable: the script makes a file in it)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = _result(proc.stdout)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    assert "Warning" not in err and "wd=-1" not in err, err
    assert out.get("kind") == "inotify" and out["healthy"], (out, err)
    assert "early" in out["attrib"] and "early/new.png" in out["seen"]
    assert out["early_watched"] and not out["late_watched"]


def test_intake_counts_other_files_by_type_and_forgets_them_when_they_go(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    from ocr_inbox.config import WatchSettings
    from ocr_inbox.inbox.intake import Intake
    from ocr_inbox.ledger import Ledger

    inbox = tmp_path / "inbox"
    (inbox / "a" / "b").mkdir(parents=True)
    (inbox / "a" / "b" / "notes.txt").write_text("x")
    (inbox / "a" / "letter.docx").write_text("x")
    (inbox / "scan.pdf").write_text("x")  # a PDF is taken (a source like an image)
    (inbox / "sheet.ods").write_text("x")
    (inbox / "README").write_text("x")
    with Ledger.open(tmp_path / "state") as ledger, capture_logs() as logs:
        intake = Intake(inbox, tmp_path / "outbox", ledger, WatchSettings(), watch=False)
        intake.full_scan()
        intake.full_scan()  # seen again: said once
        said = sorted(e["path"] for e in logs if e["event"] == "file_skipped")
        assert said == ["README", "a/b/notes.txt", "a/letter.docx", "sheet.ods"]
        got = intake.report()["skipped"]
        assert got["count"] == 4 and got["by_type"] == {"(none)": 1, ".docx": 1, ".ods": 1, ".txt": 1}  # type: ignore[index]
        for p in (inbox / "a" / "b" / "notes.txt", inbox / "a" / "letter.docx"):
            p.unlink()
        (inbox / "a" / "b").rmdir()
        intake.track("a/b")  # the folder's deletion, then one file's
        intake.track("a/letter.docx")
        got = intake.report()["skipped"]
        assert got["count"] == 2 and got["by_type"] == {"(none)": 1, ".ods": 1}  # type: ignore[index]
        assert intake.skipped.keys() == {"README", "sheet.ods"}
