"""InboxWatcher with real files: every wait is on the wake fd, with a generous timeout."""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from pathlib import Path

import pytest
from deeptree import nested, remove_tree
from structlog.testing import capture_logs
from watchdog.observers.polling import PollingObserver

from ocr_inbox.config import WatchSettings
from ocr_inbox.inbox import watcher as watcher_mod
from ocr_inbox.inbox.watcher import InboxWatcher

TIMEOUT_S = 30.0  # only reached when something is broken


def settings(observer: str, **kw: object) -> WatchSettings:
    return WatchSettings.model_validate({"observer": observer, "poll_interval_s": 0.1, **kw})


def wait_for(w: InboxWatcher, pred: Callable[[set[str]], bool], seen: set[str] | None = None) -> set[str]:
    """Take the touched paths on every wake-up until ``pred(all taken)`` holds; fail after TIMEOUT_S."""
    seen = set() if seen is None else seen
    deadline = time.monotonic() + TIMEOUT_S
    while not pred(seen):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"watcher never reported what was expected; got {sorted(seen)}")
        if wait([w.waitable], timeout=left):
            seen |= w.take_touched()
    return seen


@pytest.fixture(params=["native", "polling"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    p = tmp_path / "inbox"
    p.mkdir()
    return p


@pytest.fixture
def watched(inbox: Path, mode: str) -> Iterator[InboxWatcher]:
    w = InboxWatcher(inbox, settings(mode))
    w.start()
    yield w
    w.close()


def test_kind(watched: InboxWatcher, mode: str) -> None:
    assert watched.kind == ("inotify" if mode == "native" else "polling")
    assert watched.healthy


def test_create_modify_delete(watched: InboxWatcher, inbox: Path) -> None:
    (inbox / "a").mkdir()
    (inbox / "a" / "1.jpg").write_bytes(b"x")
    wait_for(watched, lambda s: {"a", "a/1.jpg"} <= s)  # the new directory too

    with (inbox / "a" / "1.jpg").open("ab") as fh:
        fh.write(b"more")
    wait_for(watched, lambda s: "a/1.jpg" in s)

    (inbox / "a" / "1.jpg").unlink()
    wait_for(watched, lambda s: "a/1.jpg" in s)


def test_rename_reports_both_names(watched: InboxWatcher, inbox: Path) -> None:
    (inbox / "scan.jpg.part").write_bytes(b"x")
    (inbox / "scan.jpg.part").rename(inbox / "scan.jpg")
    seen = wait_for(watched, lambda s: "scan.jpg" in s)
    assert not any(p.endswith(".part") for p in seen)  # ignored names are not reported


def test_directory_moved_in(watched: InboxWatcher, inbox: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "book"
    outside.mkdir(parents=True)
    for i in range(3):
        (outside / f"{i}.jpg").write_bytes(b"x")
    outside.rename(inbox / "book")
    seen = wait_for(watched, lambda s: "book" in s)
    assert all(p.startswith("book") for p in seen)


def test_directory_moved_out_and_renamed(watched: InboxWatcher, inbox: Path, tmp_path: Path) -> None:
    (inbox / "d").mkdir()
    (inbox / "d" / "1.jpg").write_bytes(b"x")
    wait_for(watched, lambda s: "d/1.jpg" in s)
    (inbox / "d").rename(inbox / "e")
    wait_for(watched, lambda s: {"d", "e"} <= s)
    (inbox / "e").rename(tmp_path / "gone")
    wait_for(watched, lambda s: "e" in s)


def test_reading_files_does_not_wake(inbox: Path) -> None:
    w = InboxWatcher(inbox, settings("native"))
    w.start()
    try:
        (inbox / "a.jpg").write_bytes(b"x")
        (inbox / "sync.jpg").write_bytes(b"x")  # inotify keeps order: a.jpg's events came before
        wait_for(w, lambda s: "sync.jpg" in s)
        (inbox / "a.jpg").read_bytes()  # what a worker does
        os.listdir(inbox)
        (inbox / "marker.jpg").write_bytes(b"x")
        seen = wait_for(w, lambda s: "marker.jpg" in s)
        assert "a.jpg" not in seen
    finally:
        w.close()


def test_inbox_removed_and_back(watched: InboxWatcher, inbox: Path) -> None:
    (inbox / "a.jpg").write_bytes(b"x")
    wait_for(watched, lambda s: "a.jpg" in s)
    shutil.rmtree(inbox)
    deadline = time.monotonic() + TIMEOUT_S
    while watched.healthy:  # a wake-up comes with the loss
        assert wait([watched.waitable], timeout=max(0.0, deadline - time.monotonic())), "no wake-up"
        watched.take_touched()
    inbox.mkdir()
    assert watched.restart()
    assert watched.healthy
    (inbox / "b.jpg").write_bytes(b"x")
    wait_for(watched, lambda s: "b.jpg" in s)


def test_restart_without_inbox_logs_instead_of_raising(inbox: Path) -> None:
    w = InboxWatcher(inbox, settings("polling"))
    w.start()
    inbox.rmdir()
    with capture_logs() as logs:
        ok = w.restart()
    w.close()
    assert not ok
    assert [e["event"] for e in logs] == ["watch_restart_failed"]


class _NoWatchesObserver(PollingObserver):
    """Stands in for inotify with fs.inotify.max_user_watches exhausted."""

    def start(self) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


def test_auto_falls_back_to_polling(inbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher_mod, "NativeObserver", lambda **_: _NoWatchesObserver())
    w = InboxWatcher(inbox, settings("auto"))
    with capture_logs() as logs:
        w.start()
    try:
        assert w.kind == "polling"
        [fallback] = [e for e in logs if e["event"] == "watch_fallback_polling"]
        assert fallback["errno"] == errno.ENOSPC
        assert "limit" in fallback["reason"]
        (inbox / "x.jpg").write_bytes(b"x")
        wait_for(w, lambda s: "x.jpg" in s)
    finally:
        w.close()


def test_native_forced_does_not_fall_back(inbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher_mod, "NativeObserver", lambda **_: _NoWatchesObserver())
    w = InboxWatcher(inbox, settings("native"))
    with pytest.raises(OSError):
        w.start()
    w.close()


def test_auto_uses_inotify_when_it_works(inbox: Path) -> None:
    w = InboxWatcher(inbox)
    w.start()
    try:
        assert w.kind == "inotify"
    finally:
        w.close()


def test_relative_paths(inbox: Path) -> None:
    w = InboxWatcher(inbox, settings("auto", ignore=["*.tmp"], replace_default_ignore=True))
    root = os.path.realpath(inbox)
    assert w.relative(os.path.join(root, "a", "b.jpg")) == "a/b.jpg"
    assert w.relative(root) is None
    assert w.relative(os.path.dirname(root)) is None
    assert w.relative(os.path.join(root, "x.tmp", "x.jpg")) is None
    assert w.relative(os.path.join(root, ".Trash", "x.jpg")) == ".Trash/x.jpg"  # defaults replaced
    w.close()






@pytest.mark.parametrize("observer", ["native", "polling"])
def test_a_deep_tree_neither_stops_the_watcher_nor_hides_the_rest(inbox: Path, observer: str) -> None:
    moved_from = inbox.parent / "moved"
    nested(inbox / "deep", 1200)
    w = InboxWatcher(inbox, settings(observer, max_depth=8))
    try:
        w.start()  # RecursionError in watchdog's walks before
        assert w.kind == ("inotify" if observer == "native" else "polling")
        (inbox / "a").mkdir()
        (inbox / "a" / "p.png").write_bytes(b"x")
        nested(moved_from, 1200)  # a deep tree moved in while watching
        os.rename(moved_from, inbox / "moved")
        (inbox / "b.png").write_bytes(b"x")
        seen = wait_for(w, lambda s: {"a/p.png", "moved", "b.png"} <= s)
        assert w.healthy
        assert max(rel.count("/") for rel in seen) <= 8  # nothing reported below max_depth + 1 levels
    finally:
        w.close()
        for top in (inbox / "deep", inbox / "moved", moved_from):
            if top.exists():
                remove_tree(top)


def test_polling_reports_a_folder_link_once_and_never_follows_it(inbox: Path) -> None:
    (inbox / "x").mkdir()
    w = InboxWatcher(inbox, settings("polling"))
    w.start()
    try:
        os.symlink("..", inbox / "x" / "l")
        (inbox / "x" / "p.png").write_bytes(b"x")
        seen = wait_for(w, lambda s: {"x/l", "x/p.png"} <= s)
        (inbox / "x" / "q.png").write_bytes(b"x")
        seen = wait_for(w, lambda s: "x/q.png" in s, seen)
        assert not any(rel.startswith("x/l/") for rel in seen), sorted(seen)
    finally:
        w.close()
