"""The outbox heals, against the real daemon and ``ocr-inbox ocr`` (real PaddleX inference,
real corpus pages): a JSON deleted or truncated is OCR'd again, a folder PDF deleted or
truncated is built again, whether the daemon was running (the periodic rescan) or stopped
(the start-up scan); ``ocr`` reruns do the same for a removed or damaged OUT. Outputs of
pages that left: archive keeps them, mirror removes them, and a file a person put into
the outbox survives both. Contents are checked: each JSON's text against the corpus
ground truth, each PDF page's text layer (PyMuPDF) against its page's."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pymupdf
import pytest
from conftest import CORPUS, char_f1, ground_truth, run_cli
from daemon_harness import Daemon, toml_config
from test_pdf_input import BORN_DIGITAL_TEXT, born_digital_pdf

from ocr_inbox.outbox import document

pytestmark = [pytest.mark.slow, pytest.mark.corpus]

#: the folder's pages (their natural order is the PDF's), and the least character F1 each reads with
PAGES = {"cnocr/multi-line_en_black.png": 0.9, "tesseract_test/phototest.tif": 0.95}
NAMES = [Path(p).name for p in PAGES]


def config(rescan_s: float, **sections: dict[str, object]) -> str:
    base: dict[str, dict[str, object]] = {
        "watch": {"settle_seconds": 0.3, "rescan_interval_s": rescan_s},
        "pdf": {"quiet_seconds": 0.5},
        "ocr": {"workers_per_device": 1},
    }
    return toml_config(base, sections)


def _copy_pages(inbox: Path, folder: str = "book") -> None:
    (inbox / folder).mkdir(parents=True, exist_ok=True)
    for rel in PAGES:
        shutil.copy2(CORPUS / rel, inbox / folder / Path(rel).name)


def _check_json(outbox: Path, name: str, folder: str = "book") -> None:
    """The page's JSON is whole, for its file, and reads as the corpus' ground truth."""
    (rel,) = [r for r in PAGES if Path(r).name == name]
    doc = document.read(outbox / folder / f"{name}.json")
    assert doc.source.path == f"{folder}/{name}"
    assert char_f1(ground_truth(rel), doc.text) >= PAGES[rel], (name, doc.text)


def _check_pdf(pdf: Path) -> None:
    """One page per image, in page order, each page's text layer reading as its ground truth."""
    with pymupdf.open(pdf) as doc:
        titles = [t for _, t, _ in doc.get_toc()]
        texts = [page.get_text() for page in doc]
    assert titles == NAMES
    for rel, text in zip(PAGES, texts, strict=True):
        assert char_f1(ground_truth(rel), text) >= PAGES[rel], (rel, text)


def _count(d: Daemon, event: str, **fields: str) -> int:
    return len([e for e in d.events(event) if all(e.get(k) == v for k, v in fields.items())])


def _book(d: Daemon) -> dict[str, object]:
    (row,) = [f for f in d.status()["folders"] if f["folder"] == "book"]
    return dict(row)


def _first_build(d: Daemon) -> Path:
    _copy_pages(d.inbox)
    pdf = d.outbox / "book" / "book.pdf"
    d.until(lambda: _count(d, "pdf_done", folder="book") == 1, "the book's PDF")
    for name in NAMES:
        _check_json(d.outbox, name)
    _check_pdf(pdf)
    return pdf


def test_the_running_daemon_heals_jsons_and_pdfs_on_its_rescan(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, config(rescan_s=1.0)).start()
    d.ready()
    pdf = _first_build(d)
    first, second = (d.outbox / "book" / f"{n}.json" for n in NAMES)

    first.unlink()
    d.until(lambda: _count(d, "image_done", path=f"book/{NAMES[0]}") == 2, "the deleted JSON OCR'd again")
    assert _count(d, "output_repaired", what="json", path=f"book/{NAMES[0]}", reason="missing") == 1
    _check_json(d.outbox, NAMES[0])

    with open(second, "r+b") as fh:
        fh.truncate(second.stat().st_size // 2)
    d.until(lambda: _count(d, "image_done", path=f"book/{NAMES[1]}") == 2, "the truncated JSON OCR'd again")
    assert _count(d, "output_repaired", what="json", path=f"book/{NAMES[1]}", reason="truncated") == 1
    _check_json(d.outbox, NAMES[1])
    assert _count(d, "pdf_done", folder="book") == 1  # a JSON written again does not change the PDF

    pdf.unlink()
    d.until(lambda: _count(d, "pdf_done", folder="book") == 2, "the deleted PDF built again")
    assert _count(d, "output_repaired", what="pdf", folder="book", reason="missing") == 1
    _check_pdf(pdf)

    with open(pdf, "r+b") as fh:
        fh.truncate(1000)
    d.until(lambda: _count(d, "pdf_done", folder="book") == 3, "the truncated PDF built again")
    assert _count(d, "output_repaired", what="pdf", folder="book", reason="truncated") == 1
    _check_pdf(pdf)
    book = _book(d)
    assert (book["done"], book["pdf_state"], book["pdf_pages"]) == (2, "done", 2)
    assert d.status()["failures"] == []
    assert d.stop() == 0


def test_the_start_up_scan_heals_what_was_damaged_while_the_daemon_was_stopped(
    tmp_path: Path, models_dir: Path
) -> None:
    d = Daemon(tmp_path, models_dir, config(rescan_s=0.0)).start()  # only the start-up scan
    d.ready()
    pdf = _first_build(d)
    assert d.stop() == 0
    first, second = (d.outbox / "book" / f"{n}.json" for n in NAMES)
    first.unlink()
    with open(second, "r+b") as fh:
        fh.truncate(second.stat().st_size - 1)
    with open(pdf, "r+b") as fh:
        fh.truncate(1000)

    d.start()
    d.ready()
    d.until(lambda: _count(d, "pdf_done", folder="book") == 2, "the PDF built again")
    repaired = {(e["what"], e.get("path", e.get("folder")), e["reason"]) for e in d.events("output_repaired")}
    assert repaired == {("json", f"book/{NAMES[0]}", "missing"), ("json", f"book/{NAMES[1]}", "truncated"),
                        ("pdf", "book", "truncated")}
    for name in NAMES:
        assert _count(d, "image_done", path=f"book/{name}") == 2
        _check_json(d.outbox, name)
    _check_pdf(pdf)
    assert d.stop() == 0

    pdf.unlink()
    d.start()
    d.ready()
    d.until(lambda: _count(d, "pdf_done", folder="book") == 3, "the deleted PDF built again")
    _check_pdf(pdf)
    assert all(_count(d, "image_done", path=f"book/{n}") == 2 for n in NAMES)  # no OCR for a PDF
    assert (_book(d)["pdf_state"], _book(d)["pdf_pages"]) == ("done", 2)
    assert d.stop() == 0


def test_an_ocr_rerun_writes_again_a_removed_or_damaged_outbox(tmp_path: Path, models_dir: Path) -> None:
    inbox, outbox, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    _copy_pages(inbox)
    pdf = outbox / "book" / "book.pdf"

    def ocr() -> dict[str, object]:
        res = run_cli("ocr", inbox, outbox, "--pdf", "--no-progress", state_dir=state, models=models_dir)
        assert res.returncode == 0, res.stderr
        (finished,) = [ln for ln in res.stderr.splitlines() if "event=run_finished" in ln]
        return dict(kv.split("=", 1) for kv in finished.split() if "=" in kv)

    assert ocr()["done"] == "2"
    _check_pdf(pdf)
    shutil.rmtree(outbox)
    run = ocr()
    assert (run["done"], run["skipped"], run["pdfs"]) == ("2", "0", "1")
    for name in NAMES:
        _check_json(outbox, name)
    _check_pdf(pdf)

    first = outbox / "book" / f"{NAMES[0]}.json"
    with open(first, "r+b") as fh:
        fh.truncate(10)
    pdf.unlink()
    run = ocr()
    assert (run["done"], run["skipped"], run["pdfs"]) == ("1", "1", "1")
    _check_json(outbox, NAMES[0])
    _check_pdf(pdf)
    run = ocr()  # all as written: nothing to do
    assert (run["done"], run["skipped"], run["pdfs"]) == ("0", "2", "0")


def test_a_searchable_copy_deleted_is_written_again_by_its_folders_pdf(tmp_path: Path, models_dir: Path) -> None:
    """A PDF source's searchable copy is written by its folder's build: deleted, the next run
    rebuilds that PDF (no OCR), which writes the copy again."""
    inbox, outbox, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    (inbox / "mail").mkdir(parents=True)
    (inbox / "mail" / "report.pdf").write_bytes(born_digital_pdf())
    copy = outbox / "mail" / "report.pdf"

    def ocr() -> str:
        res = run_cli("ocr", inbox, outbox, "--pdf", "--no-progress", state_dir=state, models=models_dir)
        assert res.returncode == 0, res.stderr
        return res.stderr

    ocr()
    assert copy.read_bytes().startswith((inbox / "mail" / "report.pdf").read_bytes())
    copy.unlink()
    log = ocr()
    (repaired,) = [ln for ln in log.splitlines() if "event=output_repaired" in ln]
    assert all(kv in repaired.split() for kv in ("what=searchable_copy", "path=mail/report.pdf", "reason=missing"))
    assert "event=image_done" not in log
    assert copy.read_bytes().startswith((inbox / "mail" / "report.pdf").read_bytes())
    with pymupdf.open(copy) as doc:
        assert doc[0].get_text().split("\n")[:2] == list(BORN_DIGITAL_TEXT)
    with pymupdf.open(outbox / "mail" / "mail.pdf") as doc:
        assert doc[0].get_text().split("\n")[:2] == list(BORN_DIGITAL_TEXT)


def test_archive_keeps_and_mirror_removes_the_json_of_a_page_moved_away(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, config(rescan_s=1.0)).start()  # archive: the default
    d.ready()
    _first_build(d)
    mine = d.outbox / "book" / "notes.txt"
    mine.write_text("a person's file")
    theirs = d.outbox / "book" / "scan 9.png.json"  # named like ours, not written by the daemon
    theirs.write_text('{"mine": true}')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    (d.inbox / "book" / NAMES[0]).rename(elsewhere / NAMES[0])
    d.until(lambda: _count(d, "image_gone", path=f"book/{NAMES[0]}"), "the page gone")
    scans = _count(d, "scan_done")
    d.until(lambda: _count(d, "scan_done") > scans, "a rescan after it")
    _check_json(d.outbox, NAMES[0])  # archive: kept as it was
    assert _book(d)["done"] == 1  # not counted as the folder's any more

    d.config_path.write_text(config(rescan_s=1.0, outbox={"mode": "mirror"}))
    d.signal(signal.SIGHUP)
    d.until(lambda: _count(d, "output_removed", path=f"book/{NAMES[0]}"), "the archived JSON removed")
    assert not (d.outbox / "book" / f"{NAMES[0]}.json").exists()
    (d.inbox / "book" / NAMES[1]).rename(elsewhere / NAMES[1])
    d.until(lambda: _count(d, "output_removed", what="json", path=f"book/{NAMES[1]}"), "the moved page's JSON removed")
    assert not (d.outbox / "book" / f"{NAMES[1]}.json").exists()
    assert mine.read_text() == "a person's file" and theirs.read_text() == '{"mine": true}'
    assert (d.outbox / "book" / "book.pdf").exists()  # the kept PDF: its pages are nowhere else now
    book = _book(d)
    assert (book["done"], book["pdf_kept"]) == (0, True)
    assert d.stop() == 0
