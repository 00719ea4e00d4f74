"""The folder-PDF stage against a real ledger and a real PDF child: the PDF is built from the
ledger's done rows (the versions OCR'd), and an image changed since its OCR stops the build;
a one-shot run's build takes each page as it is done, in page order; the daemon's starts as
soon as a folder's last image finishes."""

from __future__ import annotations

import os
import time
from multiprocessing.connection import wait
from pathlib import Path

import pymupdf
from imagemaker import plain
from structlog.testing import capture_logs

from ocr_inbox import config
from ocr_inbox.core.events import Event, ImageMoved
from ocr_inbox.core.folder_pdfs import FolderPdfs
from ocr_inbox.inbox.cleanup import delete_source
from ocr_inbox.ledger import Ledger, PdfState
from ocr_inbox.ocr.results import Line, Page
from ocr_inbox.outbox import document, names


def _ocr_done(ledger: Ledger, inbox: Path, outbox: Path, rel: str) -> None:
    """What dispatch records for a finished image: its JSON, then the ledger row."""
    st = (inbox / rel).stat()
    ledger.observe(rel, st.st_size, st.st_mtime_ns, time.time())
    assert [r.rel for r in ledger.claim(1, time.time())] == [rel]
    w, h = 64, 48
    line = Line(f"text of {rel}", 0.99, ((0, 0), (w, 0), (w, h), (0, h)))
    doc = document.Document(document.SourceInfo(rel, st.st_size, st.st_mtime_ns, "-"), {}, (Page(0, w, h, (line,)),), 1)
    document.write(names.json_path_for(outbox, rel), doc)
    assert ledger.done(rel, st.st_size, st.st_mtime_ns, "", 1, time.time())


def _build(pdfs: FolderPdfs) -> list[Event]:
    events = pdfs.step(may_start=True, quiet_seconds=0.0)
    assert pdfs.busy
    wait(pdfs.waitables)
    events += pdfs.step(may_start=False)
    assert not pdfs.busy
    return events


def _setup(tmp_path: Path) -> tuple[Ledger, FolderPdfs, Path, Path]:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for name in ("a.png", "b.png", "c.png"):
        plain(inbox / "book" / name)
    ledger = Ledger.open(tmp_path / "state")
    for name in ("a.png", "b.png"):  # c.png is in the folder but was never OCR'd
        _ocr_done(ledger, inbox, outbox, f"book/{name}")
    settings = config.Settings()
    return ledger, FolderPdfs(ledger, settings, inbox, outbox), inbox, outbox


def test_pages_are_the_done_rows_in_page_order(tmp_path: Path) -> None:
    ledger, pdfs, _, outbox = _setup(tmp_path)
    _build(pdfs)
    with pymupdf.open(outbox / "book" / "book.pdf") as doc:
        assert [t for _, t, _ in doc.get_toc()] == ["a.png", "b.png"]
        assert "text of book/b.png" in doc[1].get_text()
    folder = ledger.folder("book")
    assert folder is not None and folder.pdf_state == PdfState.done and folder.pdf_pages == 2
    ledger.close()


def test_an_image_changed_since_its_ocr_stops_the_build(tmp_path: Path) -> None:
    ledger, pdfs, inbox, outbox = _setup(tmp_path)
    plain(inbox / "book" / "b.png", size=(80, 60))  # rewritten after its OCR
    events = _build(pdfs)
    assert not (outbox / "book" / "book.pdf").exists()  # no PDF with an old text layer
    assert [e.rel for e in events if isinstance(e, ImageMoved)] == ["book/b.png"]  # intake is asked to look at it again
    folder = ledger.folder("book")
    assert folder is not None and folder.pdf_state == PdfState.failed
    ledger.close()


def test_delete_source_only_removes_the_version_that_was_ocrd(tmp_path: Path) -> None:
    root = tmp_path / "in"
    page = plain(root / "f" / "p.png")
    st = page.stat()
    assert delete_source(str(root), "f/p.png", st.st_size + 1, st.st_mtime_ns) == "the file changed since it was OCR'd"
    assert page.exists()
    outside = plain(tmp_path / "elsewhere" / "p.png")
    (root / "link").symlink_to(tmp_path / "elsewhere")
    ost = outside.stat()
    assert delete_source(str(root), "link/p.png", ost.st_size, ost.st_mtime_ns) is not None
    assert outside.exists()  # a link into the path never redirects the delete
    assert delete_source(str(os.path.realpath(root)), "f/p.png", st.st_size, st.st_mtime_ns) is None
    assert not page.exists()


def test_a_folder_over_max_pages_gets_no_pdf_and_a_clear_reason(tmp_path: Path) -> None:
    ledger, pdfs, _, outbox = _setup(tmp_path)  # two done pages
    pdfs.settings = config.Settings.model_validate({"pdf": {"max_pages": 1}})
    pdfs.step(may_start=True, quiet_seconds=0.0)
    assert not pdfs.busy  # no build started
    assert not (outbox / "book" / "book.pdf").exists()
    folder = ledger.folder("book")
    assert folder is not None and folder.pdf_state == PdfState.failed
    assert folder.pdf_error == "too_many_pages: 2 pages, more than [pdf] max_pages = 1"
    pdfs.step(may_start=True, quiet_seconds=0.0)  # not retried until the folder changes
    assert not pdfs.busy
    ledger.close()


def test_max_pages_zero_is_no_limit(tmp_path: Path) -> None:
    ledger, pdfs, _, outbox = _setup(tmp_path)
    pdfs.settings = config.Settings.model_validate({"pdf": {"max_pages": 0}})
    _build(pdfs)
    assert (outbox / "book" / "book.pdf").exists()
    ledger.close()


# --- one-shot runs: a folder's build overlaps its OCR ------------------------------------------


def _queued(ledger: Ledger, inbox: Path, names: list[str]) -> None:
    """The folder's images observed and handed to workers, none finished yet."""
    for name in names:
        st = plain(inbox / "book" / name).stat()
        ledger.observe(f"book/{name}", st.st_size, st.st_mtime_ns, time.time())
    assert len(ledger.claim(len(names), time.time())) == len(names)


def _finish(ledger: Ledger, pdfs: FolderPdfs, inbox: Path, outbox: Path, name: str) -> None:
    """What dispatch does when a worker's result comes: the JSON, the ledger row, the wake-up."""
    rel = f"book/{name}"
    st = (inbox / rel).stat()
    w, h = 64, 48
    line = Line(f"text of {rel} version {st.st_mtime_ns}", 0.99, ((0, 0), (w, 0), (w, h), (0, h)))
    doc = document.Document(document.SourceInfo(rel, st.st_size, st.st_mtime_ns, "-"), {}, (Page(0, w, h, (line,)),), 1)
    document.write(names.json_path_for(outbox, rel), doc)
    assert ledger.done(rel, st.st_size, st.st_mtime_ns, "", 1, time.time())
    pdfs.wake(rel)
    pdfs.step(may_start=True, quiet_seconds=0.0)


def _sent(logs: list[dict]) -> list[tuple[int, int, bool]]:
    """(pages in turn, pages ahead, final) of each message to the open build."""
    return [(e["pages"], e["ahead"], e["final"]) for e in logs if e["event"] == "pdf_pages_added"]


def _wait_done(pdfs: FolderPdfs) -> None:
    while pdfs.busy:
        wait(pdfs.waitables)
        pdfs.step(may_start=False)


def _streaming(tmp_path: Path) -> tuple[Ledger, FolderPdfs, Path, Path]:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    ledger = Ledger.open(tmp_path / "state")
    return ledger, FolderPdfs(ledger, config.Settings(), inbox, outbox, stream=True), inbox, outbox


def test_a_stream_gets_each_page_in_turn_and_publishes_once_the_folder_is_complete(tmp_path: Path) -> None:
    ledger, pdfs, inbox, outbox = _streaming(tmp_path)
    _queued(ledger, inbox, ["p1.png", "p2.png", "p3.png", "p4.png", "p5.png"])
    out = outbox / "book" / "book.pdf"
    with capture_logs() as logs:
        _finish(ledger, pdfs, inbox, outbox, "p1.png")
        assert pdfs.busy and pdfs.build is not None and pdfs.build.open  # opened with p1
        _finish(ledger, pdfs, inbox, outbox, "p3.png")  # p2 is not done: p3 waits (made ready meanwhile)
        _finish(ledger, pdfs, inbox, outbox, "p2.png")  # p2, then p3
        _finish(ledger, pdfs, inbox, outbox, "p5.png")
        assert not out.exists()  # nothing is published before the folder is complete
        folder = ledger.folder("book")
        assert folder is not None and folder.pdf_state == PdfState.building
        _finish(ledger, pdfs, inbox, outbox, "p4.png")  # the last: p4, p5 and the end
        _wait_done(pdfs)
    assert _sent(logs) == [(0, 1, False), (2, 0, False), (0, 1, False), (2, 0, True)]
    with pymupdf.open(out) as doc:
        assert [t for _, t, _ in doc.get_toc()] == ["p1.png", "p2.png", "p3.png", "p4.png", "p5.png"]
        assert [f"text of book/p{i}.png" in doc[i - 1].get_text() for i in range(1, 6)] == [True] * 5
    folder = ledger.folder("book")
    assert folder is not None and folder.pdf_state == PdfState.done and folder.pdf_pages == 5
    ledger.close()


def test_a_failed_image_is_no_page_of_the_stream(tmp_path: Path) -> None:
    ledger, pdfs, inbox, outbox = _streaming(tmp_path)
    _queued(ledger, inbox, ["p1.png", "p2.png", "p3.png"])
    _finish(ledger, pdfs, inbox, outbox, "p1.png")
    assert ledger.failed("book/p2.png", "corrupt", "", time.time(), retry=False)
    pdfs.wake("book/p2.png")
    pdfs.step(may_start=True, quiet_seconds=0.0)
    _finish(ledger, pdfs, inbox, outbox, "p3.png")
    _wait_done(pdfs)
    with pymupdf.open(outbox / "book" / "book.pdf") as doc:
        assert [t for _, t, _ in doc.get_toc()] == ["p1.png", "p3.png"]
    ledger.close()


def test_a_page_ocrd_again_after_it_went_to_the_stream_starts_the_build_over(tmp_path: Path) -> None:
    ledger, pdfs, inbox, outbox = _streaming(tmp_path)
    _queued(ledger, inbox, ["p1.png", "p2.png"])
    _finish(ledger, pdfs, inbox, outbox, "p1.png")
    assert pdfs.busy
    st = plain(inbox / "book" / "p1.png", marker=100).stat()  # a new version of p1
    os.utime(inbox / "book" / "p1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    st = (inbox / "book" / "p1.png").stat()
    ledger.observe("book/p1.png", st.st_size, st.st_mtime_ns, time.time())  # queued again
    with capture_logs() as logs:
        pdfs.wake("book/p1.png")
        pdfs.step(may_start=True, quiet_seconds=0.0)
    assert [e["event"] for e in logs if e["event"].startswith("pdf_")] == ["pdf_restarted", "pdf_cancelled"]
    assert not pdfs.busy
    assert [r.rel for r in ledger.claim(1, time.time())] == ["book/p1.png"]
    _finish(ledger, pdfs, inbox, outbox, "p2.png")
    _finish(ledger, pdfs, inbox, outbox, "p1.png")
    _wait_done(pdfs)
    with pymupdf.open(outbox / "book" / "book.pdf") as doc:
        assert [t for _, t, _ in doc.get_toc()] == ["p1.png", "p2.png"]
        assert f"version {st.st_mtime_ns}" in doc[0].get_text()  # the text of the version OCR'd last
    ledger.close()


# --- the daemon: no tick between a folder's last image and its build ---------------------------


def test_a_folder_whose_last_image_finishes_is_built_on_the_next_step(tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    ledger = Ledger.open(tmp_path / "state")
    pdfs = FolderPdfs(ledger, config.Settings(), inbox, outbox)
    _queued(ledger, inbox, ["p1.png", "p2.png"])
    _finish(ledger, pdfs, inbox, outbox, "p1.png")  # the once-a-second look happens here
    assert not pdfs.busy  # p2 is not done
    _finish(ledger, pdfs, inbox, outbox, "p2.png")  # within the second: only the wake-up looks
    assert pdfs.busy
    _wait_done(pdfs)
    assert (outbox / "book" / "book.pdf").exists()
    ledger.close()


def test_a_complete_folder_not_quiet_yet_says_when_it_will_be(tmp_path: Path) -> None:
    ledger, pdfs, _, _ = _setup(tmp_path)  # observed just now, its done pages ready
    pdfs.step(may_start=True, quiet_seconds=30.0)
    assert not pdfs.busy
    due = pdfs.due_in()
    assert due is not None and 25.0 < due <= 30.0  # the daemon's loop wakes then, not a tick later
    ledger.close()
