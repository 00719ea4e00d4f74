"""The folder-PDF stage against a real ledger and a real PDF child: the PDF is built from the
ledger's done rows (the versions OCR'd), and an image changed since its OCR stops the build."""

from __future__ import annotations

import os
import time
from multiprocessing.connection import wait
from pathlib import Path

import pymupdf

from imagemaker import plain
from ocr_inbox import config
from ocr_inbox.folder_pdfs import FolderPdfs
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


def _build(pdfs: FolderPdfs) -> None:
    pdfs.step(may_start=True, quiet_seconds=0.0)
    assert pdfs.busy
    wait(pdfs.waitables)
    pdfs.step(may_start=False)
    assert not pdfs.busy


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
    _build(pdfs)
    assert not (outbox / "book" / "book.pdf").exists()  # no PDF with an old text layer
    assert pdfs.moved == ["book/b.png"]  # intake is asked to look at it again
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
