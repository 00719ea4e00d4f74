"""Intake on a real ledger in a temp dir, in process: the rescan reconciling new, changed
and gone files, and the one rule of what leaves the inbox (``ledger.store.leaves``),
the same for a file deleted while the daemon was down (the start-up scan) and while
it was watched (the watcher's event, ``track``)."""

from __future__ import annotations

import itertools
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagemaker import plain

from ocr_inbox.config import WatchSettings
from ocr_inbox.inbox.intake import Intake
from ocr_inbox.ledger import ImageStatus, Known, Ledger, reports
from ocr_inbox.ledger.store import CAN_GO, leaves
from ocr_inbox.ocr.results import Page
from ocr_inbox.outbox import document, names

#: settle at the first look again; no periodic rescan (each test scans when it means to)
SETTINGS = WatchSettings(settle_seconds=0, rescan_interval_s=0)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.inbox = tmp / "inbox"
        self.outbox = tmp / "outbox"
        self.inbox.mkdir()
        self.ledger = Ledger.open(tmp / "state")

    def intake(self, watch: bool = False) -> Intake:
        return Intake(self.inbox, self.outbox, self.ledger, SETTINGS, watch=watch)

    def settle(self, intake: Intake) -> None:
        """Step until nothing is settling (what ``ocr-inbox ocr`` does before dispatching)."""
        for _ in range(100):
            if not intake.settling:
                return
            intake.step()
        raise AssertionError(f"still settling: {intake.tracker.tracked()}")

    def scan(self, intake: Intake) -> None:
        intake.full_scan()
        self.settle(intake)

    def status(self, rel: str) -> ImageStatus:
        row = self.ledger.get(rel)
        assert row is not None, rel
        return row.status

    def quarantine(self, rel: str) -> None:
        """``rel`` (queued) is handed to a worker and fails for good, as dispatch records it."""
        self._claim(rel)
        assert self.ledger.failed(rel, "truncated", "image file is truncated", 3.0, retry=False)

    def finish(self, rel: str) -> None:
        """``rel`` (queued) is OCR'd and done: its JSON written and recorded, as dispatch does."""
        row = self.ledger.get(rel)
        assert row is not None
        self._claim(rel)
        dest = names.json_path_for(self.outbox, rel)
        doc = document.Document(document.SourceInfo(rel, row.size, row.mtime_ns, "ab" * 32),
                                {"engine": "fake"}, (Page(0, 64, 48),), 5)
        document.write(dest, doc)
        assert self.ledger.done(rel, row.size, row.mtime_ns, str(dest), 5, 3.0, written=names.written(dest))

    def _claim(self, rel: str) -> None:
        """Hand ``rel`` alone to a worker (the rest of the queue stays queued)."""
        others = [r.rel for r in self.ledger.claim(100, 2.0) if r.rel != rel]
        assert self.status(rel) == ImageStatus.running
        self.ledger.release(others, 2.0)

    def failures(self) -> list[str]:
        return [f.rel for f in reports.failures(self.ledger)]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.ledger.close()


# -- the rescan: new, changed, gone -----------------------------------------------------


def test_the_scan_queues_new_files_and_requeues_changed_ones(rig: Rig) -> None:
    plain(rig.inbox / "box/a.png")
    plain(rig.inbox / "box/b.png")
    intake = rig.intake()
    intake.start()
    rig.settle(intake)
    assert rig.status("box/a.png") == rig.status("box/b.png") == ImageStatus.pending
    rig.finish("box/a.png")

    plain(rig.inbox / "box/a.png", size=(80, 60))  # a new version of a done image
    rig.scan(intake)
    assert rig.status("box/a.png") == ImageStatus.pending
    row = rig.ledger.get("box/a.png")
    assert row is not None and row.size == (rig.inbox / "box/a.png").stat().st_size


def test_an_unchanged_done_file_stays_done_across_scans(rig: Rig) -> None:
    plain(rig.inbox / "a.png")
    intake = rig.intake()
    intake.start()
    rig.settle(intake)
    rig.finish("a.png")
    rig.scan(intake)
    assert rig.status("a.png") == ImageStatus.done


def test_a_queued_file_whose_json_is_in_the_outbox_is_adopted(rig: Rig) -> None:
    st = plain(rig.inbox / "a.png").stat()
    doc = document.Document(document.SourceInfo("a.png", st.st_size, st.st_mtime_ns, "ab" * 32),
                            {"engine": "fake"}, (Page(0, 64, 48),), 5)
    document.write(names.json_path_for(rig.outbox, "a.png"), doc)
    intake = rig.intake()
    intake.start()
    rig.settle(intake)
    assert rig.status("a.png") == ImageStatus.done


def test_files_deleted_while_down_are_gone_after_the_start_up_scan(rig: Rig) -> None:
    for rel in ("queued.png", "done.png", "kept.png"):
        plain(rig.inbox / rel)
    first = rig.intake()
    first.start()
    rig.settle(first)
    rig.finish("done.png")
    (rig.inbox / "queued.png").unlink()
    (rig.inbox / "done.png").unlink()

    rig.scan(rig.intake())  # the next start
    assert rig.status("queued.png") == rig.status("done.png") == ImageStatus.gone
    assert rig.status("kept.png") == ImageStatus.pending


def test_a_done_file_that_delete_processed_removed_stays_done(rig: Rig) -> None:
    st = plain(rig.inbox / "a.png").stat()
    intake = rig.intake()
    intake.start()
    rig.settle(intake)
    rig.finish("a.png")
    (rig.inbox / "a.png").unlink()
    assert rig.ledger.source_deleted("a.png", st.st_size, st.st_mtime_ns, 4.0)
    rig.scan(rig.intake())
    assert rig.status("a.png") == ImageStatus.done  # its page lives on in the folder's PDF


# -- the drifted rule: a quarantined file that was deleted --------------------------------


def test_a_quarantined_file_deleted_while_down_is_gone_not_a_failure(rig: Rig) -> None:
    plain(rig.inbox / "box/bad.png")
    first = rig.intake()
    first.start()
    rig.settle(first)
    rig.quarantine("box/bad.png")
    assert rig.failures() == ["box/bad.png"]

    (rig.inbox / "box/bad.png").unlink()
    rig.scan(rig.intake())  # the start-up scan after the daemon was down
    assert rig.status("box/bad.png") == ImageStatus.gone
    assert rig.failures() == []


def test_a_quarantined_file_deleted_while_watched_is_gone_not_a_failure(rig: Rig) -> None:
    plain(rig.inbox / "bad.png")
    intake = rig.intake()
    intake.start()
    rig.settle(intake)
    rig.quarantine("bad.png")
    (rig.inbox / "bad.png").unlink()
    intake.track("bad.png")  # what the watcher's delete event leads to
    assert rig.status("bad.png") == ImageStatus.gone
    assert rig.failures() == []


def test_a_quarantined_file_deleted_under_the_real_watcher_is_gone(rig: Rig) -> None:
    plain(rig.inbox / "box/bad.png")
    intake = rig.intake(watch=True)
    intake.start()
    try:
        rig.settle(intake)
        rig.quarantine("box/bad.png")
        (rig.inbox / "box/bad.png").unlink()
        # the daemon's loop: wait for the watcher's wake-up, then step (a deadline, no sleep)
        end = time.monotonic() + 60
        while rig.status("box/bad.png") != ImageStatus.gone:
            assert time.monotonic() < end, "the watcher never reported the delete"
            select.select(intake.waitables, [], [], 1.0)
            intake.step()
        assert rig.failures() == []
    finally:
        intake.stop()


def test_a_refused_path_that_was_removed_while_down_is_gone(rig: Rig) -> None:
    os.mkfifo(rig.inbox / "pipe.png")
    first = rig.intake()
    first.start()
    rig.settle(first)
    assert rig.failures() == ["pipe.png"]  # refused: not a regular file
    (rig.inbox / "pipe.png").unlink()
    rig.scan(rig.intake())
    assert rig.status("pipe.png") == ImageStatus.gone and rig.failures() == []


def test_the_rule_in_python_and_in_sql_agree_for_every_status(rig: Rig) -> None:
    """``Known.leaves`` (the rescan) and ``Ledger.gone`` (the watcher) take the same rows."""
    assert ImageStatus.failed in CAN_GO and ImageStatus.gone not in CAN_GO
    now = 10.0
    for i, (status, deleted) in enumerate(itertools.product(ImageStatus, (False, True))):
        rel = f"r{i}.png"
        rig.ledger.observe(rel, 10, 1, 1.0)
        rig.ledger.connection.execute(
            "UPDATE images SET status = ?, source_deleted = ? WHERE rel = ?", (status.value, int(deleted), rel)
        )
        expected = leaves(status, deleted)
        assert Known(rel, 10, 1, status, deleted).leaves is expected
        assert rig.ledger.gone(rel, now) is expected, (status, deleted)
