"""The outbox heals, in process (intake on a real ledger in a temp dir, fake results): the
scan compares each output the ledger recorded as written with a ``stat`` and makes again
what is missing, truncated or changed; ``[outbox] mode`` keeps or removes the outputs of
images that left; a file the daemon did not write is never touched. The real daemon and
real OCR: test_outbox_heals.py."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagemaker import plain
from structlog.testing import capture_logs

from ocr_inbox.config import WatchSettings
from ocr_inbox.inbox.intake import Intake
from ocr_inbox.ledger import ImageStatus, Ledger, PdfState, reports
from ocr_inbox.ocr.results import Page
from ocr_inbox.outbox import document, names

SETTINGS = WatchSettings(settle_seconds=0, rescan_interval_s=0)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.inbox = tmp / "inbox"
        self.outbox = tmp / "outbox"
        self.state = tmp / "state"
        self.inbox.mkdir()
        self.ledger = Ledger.open(self.state)

    def intake(self, mode: str = "archive") -> Intake:
        return Intake(self.inbox, self.outbox, self.ledger, SETTINGS, watch=False, mode=mode)

    def scan(self, intake: Intake) -> None:
        intake.full_scan()
        for _ in range(100):
            if not intake.settling:
                return
            intake.step()
        raise AssertionError("still settling")

    def status(self, rel: str) -> ImageStatus:
        row = self.ledger.get(rel)
        assert row is not None, rel
        return row.status

    def json(self, rel: str) -> Path:
        return names.json_path_for(self.outbox, rel)

    def finish_all(self) -> None:
        """Every queued image OCR'd: its JSON written and recorded as written, as dispatch does."""
        for row in self.ledger.claim(1000, 2.0):
            dest = self.json(row.rel)
            doc = document.Document(document.SourceInfo(row.rel, row.size, row.mtime_ns, "ab" * 32),
                                    {"engine": "fake"}, (Page(0, 64, 48),), 5)
            document.write(dest, doc)
            assert self.ledger.done(row.rel, row.size, row.mtime_ns, str(dest), 5, 3.0,
                                    written=names.written(dest))

    def publish_pdf(self, folder: str) -> Path:
        """The folder's PDF built and published, as folder_pdfs records it."""
        out = names.pdf_path_for(self.outbox, self.inbox, folder)
        out.write_bytes(b"%PDF-1.7 a published PDF")
        self.ledger.pdf_started(folder)
        assert self.ledger.pdf_done(folder, 2, 4.0, written=names.written(out))
        return out

    def folder(self, folder: str) -> reports.FolderSummary:
        (row,) = [f for f in reports.folders(self.ledger) if f.folder == folder]
        return row


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.ledger.close()


def _done_folder(rig: Rig, mode: str = "archive") -> Intake:
    for name in ("p1.png", "p2.png"):
        plain(rig.inbox / "a" / name)
    intake = rig.intake(mode)
    rig.scan(intake)
    rig.finish_all()
    rig.publish_pdf("a")
    rig.scan(intake)  # as written: nothing to do
    assert rig.status("a/p1.png") == rig.status("a/p2.png") == ImageStatus.done
    assert rig.folder("a").pdf_state == PdfState.done
    return intake


def _repaired(logs: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(e["what"], e.get("path", e.get("folder")), e["reason"]) for e in logs if e["event"] == "output_repaired"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.unlink(), "missing"),
        (lambda p: os.truncate(p, 10), "truncated"),
        (lambda p: os.utime(p, ns=(0, 10**18)), "changed"),  # same size, another mtime
    ],
    ids=["deleted", "truncated", "touched"],
)
def test_a_json_not_as_written_is_ocrd_again(rig: Rig, damage, reason: str) -> None:
    intake = _done_folder(rig)
    damage(rig.json("a/p1.png"))
    with capture_logs() as logs:
        rig.scan(intake)
    assert _repaired(logs) == [("json", "a/p1.png", reason)]
    assert rig.status("a/p1.png") == ImageStatus.pending  # OCR'd again: dispatch writes it anew
    assert rig.status("a/p2.png") == ImageStatus.done
    # the folder's PDF still holds the page: no rebuild for a JSON written again
    assert rig.folder("a").pdf_state == PdfState.done
    rig.finish_all()
    assert document.read(rig.json("a/p1.png")).source.path == "a/p1.png"
    with capture_logs() as logs:
        rig.scan(intake)
    assert _repaired(logs) == [] and rig.status("a/p1.png") == ImageStatus.done


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(lambda p: p.unlink(), "missing"), (lambda p: os.truncate(p, 5), "truncated")],
    ids=["deleted", "truncated"],
)
def test_a_folder_pdf_not_as_written_is_built_again_and_status_stops_calling_it_done(
    rig: Rig, damage, reason: str
) -> None:
    intake = _done_folder(rig)
    damage(names.pdf_path_for(rig.outbox, rig.inbox, "a"))
    with capture_logs() as logs:
        rig.scan(intake)
    assert _repaired(logs) == [("pdf", "a", reason)]
    a = rig.folder("a")
    assert (a.pdf_state, a.pdf_pages) == (PdfState.needed, None)  # not "done, 2 pages" any more
    assert [f.folder for f in rig.ledger.quiet_folders(10.0**10, 0)] == ["a"]  # due once quiet


def test_a_kept_pdf_deleted_by_hand_is_forgotten_not_rearmed(rig: Rig) -> None:
    """A folder whose images all left keeps its last PDF; deleted by a person, there is nothing
    to build it from: status no longer shows it, and no build is due."""
    intake = _done_folder(rig)
    for name in ("p1.png", "p2.png"):
        (rig.inbox / "a" / name).unlink()
    rig.scan(intake)
    assert rig.folder("a").pdf_kept
    names.pdf_path_for(rig.outbox, rig.inbox, "a").unlink()
    with capture_logs() as logs:
        rig.scan(intake)
    assert [e["event"] for e in logs if e["event"].startswith(("pdf_lost", "output_"))] == ["pdf_lost"]
    a = rig.folder("a")
    assert (a.pdf_state, a.pdf_pages, a.pdf_kept) == (PdfState.none, None, False)
    assert rig.ledger.quiet_folders(10.0**10, 0) == []


def test_a_searchable_copy_missing_rearms_its_folders_pdf(rig: Rig) -> None:
    """A PDF source's searchable copy is written by its folder's build: one deleted makes the
    folder's PDF due again (the JSON is as written: no OCR)."""
    intake = _done_folder(rig)
    plain(rig.inbox / "a" / "doc.pdf")  # (any bytes: the scan takes the name)
    rig.scan(intake)
    rig.finish_all()
    row = rig.ledger.get("a/doc.pdf")
    assert row is not None
    copy = names.searchable_copy_path(rig.json("a/doc.pdf"))
    copy.write_bytes(b"%PDF-1.7 the copy")
    rig.ledger.pdf_started("a")
    rig.ledger.pdf_done("a", 3, 5.0, written=names.written(names.pdf_path_for(rig.outbox, rig.inbox, "a")))
    rig.ledger.copy_written("a/doc.pdf", row.size, row.mtime_ns, names.written(copy))
    rig.scan(intake)
    assert rig.folder("a").pdf_state == PdfState.done
    copy.unlink()
    with capture_logs() as logs:
        rig.scan(intake)
    assert _repaired(logs) == [("searchable_copy", "a/doc.pdf", "missing")]
    assert rig.folder("a").pdf_state == PdfState.needed
    assert rig.status("a/doc.pdf") == ImageStatus.done


def test_outputs_of_a_ledger_from_before_are_checked_for_presence(rig: Rig, tmp_path: Path) -> None:
    """A ledger migrated from schema 3 knows no sizes: a JSON that is there is left as it is,
    one that is missing is made again."""
    intake = _done_folder(rig)
    conn = sqlite3.connect(rig.state / "ledger.sqlite3")
    conn.execute("UPDATE images SET json_size = NULL, json_mtime_ns = NULL")
    conn.commit()
    conn.close()
    os.truncate(rig.json("a/p2.png"), 3)  # not known to be damaged
    rig.json("a/p1.png").unlink()
    rig.scan(intake)
    assert (rig.status("a/p1.png"), rig.status("a/p2.png")) == (ImageStatus.pending, ImageStatus.done)


def test_the_migration_to_version_5_keeps_the_rows(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "s") as led:
        led.observe("a/x.png", 1, 2, 1.0)
    conn = sqlite3.connect(tmp_path / "s" / "ledger.sqlite3")
    for col in ("json_size", "json_mtime_ns", "copy_size", "copy_mtime_ns"):
        conn.execute(f"ALTER TABLE images DROP COLUMN {col}")
    for col in ("pdf_size", "pdf_mtime_ns"):
        conn.execute(f"ALTER TABLE folders DROP COLUMN {col}")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    with Ledger.open(tmp_path / "s") as led:
        (k,) = list(led.known_paths())
        assert (k.rel, k.size, k.mtime_ns, k.json_stat) == ("a/x.png", 1, 2, None)
    conn = sqlite3.connect(tmp_path / "s" / "ledger.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5


# -- the outputs of images that left ----------------------------------------------------------


def _leave(rig: Rig, intake: Intake, mode: str) -> tuple[Path, Path, Path]:
    """p1 moved out of the inbox, a person's note in the outbox, p2's JSON edited by hand."""
    mine = rig.outbox / "a" / "notes.txt"
    mine.write_text("a person's file")
    mine_json = rig.outbox / "a" / "p9.png.json"  # named like ours, not written by the daemon
    mine_json.write_text("{}")
    (rig.inbox / "a" / "p1.png").rename(rig.inbox.parent / "p1.png")
    (rig.inbox / "a" / "p2.png").unlink()
    with open(rig.json("a/p2.png"), "a") as fh:
        fh.write("\n")  # edited since written
    rig.scan(intake)
    assert rig.status("a/p1.png") == rig.status("a/p2.png") == ImageStatus.gone
    # status counts no image that left as the folder's
    assert (rig.folder("a").done, reports.stats(rig.ledger, 9.0).done) == (0, 0)
    return mine, mine_json, rig.json("a/p2.png")


def test_archive_keeps_the_json_of_an_image_that_left(rig: Rig) -> None:
    intake = _done_folder(rig)
    mine, mine_json, edited = _leave(rig, intake, "archive")
    assert rig.json("a/p1.png").exists() and edited.exists()
    assert mine.read_text() == "a person's file" and mine_json.read_text() == "{}"


def test_mirror_removes_the_json_of_an_image_that_left_but_no_file_it_did_not_write(rig: Rig) -> None:
    intake = _done_folder(rig, "mirror")
    with capture_logs() as logs:
        mine, mine_json, edited = _leave(rig, intake, "mirror")
    assert not rig.json("a/p1.png").exists()
    assert edited.exists()  # changed since written: not the daemon's to remove
    assert mine.read_text() == "a person's file" and mine_json.read_text() == "{}"
    removed = [(e["what"], e["path"]) for e in logs if e["event"] == "output_removed"]
    kept = [(e["what"], e["path"]) for e in logs if e["event"] == "output_kept"]
    assert (removed, kept) == ([("json", "a/p1.png")], [("json", "a/p2.png")])
    # the folder's PDF is kept (it holds pages that are nowhere else now)
    assert names.pdf_path_for(rig.outbox, rig.inbox, "a").exists()
    with capture_logs() as logs:
        rig.scan(intake)  # said once
    assert not [e for e in logs if e["event"].startswith("output_")]


def test_mirror_keeps_the_json_of_a_source_delete_processed_removed(rig: Rig) -> None:
    intake = _done_folder(rig, "mirror")
    row = rig.ledger.get("a/p1.png")
    assert row is not None
    (rig.inbox / "a" / "p1.png").unlink()
    assert rig.ledger.source_deleted("a/p1.png", row.size, row.mtime_ns, 5.0)
    rig.scan(intake)
    assert rig.status("a/p1.png") == ImageStatus.done
    assert rig.json("a/p1.png").exists()


def test_switching_to_mirror_removes_what_archive_kept(rig: Rig) -> None:
    intake = _done_folder(rig)
    (rig.inbox / "a" / "p1.png").unlink()
    rig.scan(intake)
    assert rig.json("a/p1.png").exists()
    intake.mode = "mirror"  # a reload
    rig.scan(intake)
    assert not rig.json("a/p1.png").exists()
    assert rig.json("a/p2.png").exists()


def test_something_not_a_file_in_place_of_an_output_is_left_alone(rig: Rig) -> None:
    """A FIFO, a link or a folder where the daemon's JSON or PDF was: a person's, not touched."""
    intake = _done_folder(rig)
    rig.json("a/p1.png").unlink()
    os.mkfifo(rig.json("a/p1.png"))
    rig.json("a/p2.png").unlink()
    rig.json("a/p2.png").symlink_to(rig.inbox / "a" / "p2.png")
    pdf = names.pdf_path_for(rig.outbox, rig.inbox, "a")
    pdf.unlink()
    pdf.mkdir()
    with capture_logs() as logs:
        rig.scan(intake)
    assert _repaired(logs) == []
    assert rig.status("a/p1.png") == rig.status("a/p2.png") == ImageStatus.done
    assert rig.folder("a").pdf_state == PdfState.done


def test_status_never_shows_a_pdf_that_is_gone_as_done(rig: Rig) -> None:
    """Before the next scan (or with the daemon stopped) status looks for the file itself."""
    from ocr_inbox.commands.status import _folder

    _done_folder(rig)
    shown = _folder(rig.folder("a"), rig.inbox, rig.outbox, None, 0.0)
    assert (shown["pdf_state"], shown["pdf_missing"]) == ("done", False)
    names.pdf_path_for(rig.outbox, rig.inbox, "a").unlink()
    assert _folder(rig.folder("a"), rig.inbox, rig.outbox, None, 0.0)["pdf_missing"] is True
