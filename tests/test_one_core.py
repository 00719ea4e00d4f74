"""One core for both commands: the PDF holds exactly the ledger's done images, sources are
deleted only after their PDF, and ``ocr-inbox ocr --pdf`` gives what the daemon gives.

Real daemon and CLI processes, real PaddleX inference on corpus pages (the
kill -9 case uses the fake engine: it needs many images, not real text).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from conftest import CORPUS, run_cli
from daemon_harness import Daemon, cli_env, json_files
from imagemaker import plain

pytestmark = [pytest.mark.slow, pytest.mark.corpus]

FAST = """
[watch]
settle_seconds = 0.5
ignore = ["*draft*"]
[pdf]
quiet_seconds = 1
"""

BOOK = {"p1.tif": "tesseract_test/phototest.tif", "p2.jpg": "cnocr/helloworld.jpg"}


def _pdf(path: Path) -> list[tuple[str, str]]:
    """(outline title, text) per page."""
    with pymupdf.open(path) as doc:
        titles = {page: title for _, title, page in doc.get_toc()}
        return [(titles.get(i + 1, ""), doc[i].get_text()) for i in range(doc.page_count)]


def _copy_book(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rel in BOOK.items():
        shutil.copy(CORPUS / rel, folder / name)


def _same_json(a: dict[str, Any], b: dict[str, Any]) -> None:
    """The same OCR result: everything but timings."""
    for doc in (a, b):
        doc.pop("elapsed_ms", None)
    assert a == b


def test_pdf_holds_exactly_the_done_images(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, FAST).start()
    d.ready()
    book = d.inbox / "book"
    _copy_book(book)
    shutil.copy(CORPUS / "cnocr/multi-line_en_black.png", book / "p3 draft.png")  # ignored by the config
    shutil.copy(CORPUS / "cnocr/multi-line_en_black.png", book / ".p4.png")  # ignored by default
    (book / "p5.png").write_text("not an image at all\n")  # refused by the worker: no page
    # PostScript under an image name: refused, and never handed to Ghostscript by the PDF builder
    (book / "p6.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n")
    (book / "notes.txt").write_text("not an image name\n")
    out = d.outbox / "book" / "book.pdf"
    d.until(out.exists, "the folder PDF")
    pages = _pdf(out)
    assert [title for title, _ in pages] == ["p1.tif", "p2.jpg"]
    assert "quick brown dog" in pages[0][1] and "hello" in pages[1][1].lower()
    failed = {f["rel"]: f["reason"] for f in d.status()["failures"]}
    assert failed == {"book/p5.png": "not_an_image", "book/p6.png": "unsupported_format"}

    # p2 is replaced by another picture: the PDF is rebuilt with its new text, never the old layer
    first = out.stat().st_mtime_ns
    shutil.copy(CORPUS / "cnocr/multi-line_en_white.png", book / "p2.jpg.tmp")
    (book / "p2.jpg.tmp").rename(book / "p2.jpg")  # a .png under a .jpg name: decoded by content
    d.until(lambda: out.stat().st_mtime_ns != first, "the rebuilt PDF")
    pages = _pdf(out)
    doc = json.loads((d.outbox / "book" / "p2.jpg.json").read_text())
    assert doc["source"]["size"] == (book / "p2.jpg").stat().st_size
    assert [title for title, _ in pages] == ["p1.tif", "p2.jpg"]
    assert "hello" not in pages[1][1].lower()
    assert doc["pages"][0]["lines"][0]["text"].split()[0] in pages[1][1]
    assert d.stop() == 0


def test_delete_processed_deletes_sources_only_after_their_pdf(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, FAST + "[inbox]\ndelete_processed = true\n").start()
    d.ready()
    book = d.inbox / "book"
    _copy_book(book)
    out = d.outbox / "book" / "book.pdf"
    d.until(lambda: not any(book.iterdir()), "the sources deleted")
    # deleted only once the PDF that holds them was published
    assert out.exists() and [t for t, _ in _pdf(out)] == ["p1.tif", "p2.jpg"]
    log = d.log()
    assert log.index("event=pdf_done") < log.index("event=source_deleted")
    assert json_files(d.outbox).keys() == {"book/p1.tif", "book/p2.jpg"}

    # a late page extends the PDF instead of replacing it with the one page left in the inbox
    shutil.copy(CORPUS / "cnocr/multi-line_en_black.png", book / "p3.png")
    d.until(lambda: not any(book.iterdir()) and len(_pdf(out)) == 3, "the extended PDF")
    pages = _pdf(out)
    assert [t for t, _ in pages] == ["p1.tif", "p2.jpg", "p3.png"]
    assert "quick brown dog" in pages[0][1]
    assert d.stop() == 0


def test_oneshot_pdf_equals_the_daemon_and_a_second_run_does_nothing(tmp_path: Path, models_dir: Path) -> None:
    inbox = tmp_path / "in"
    _copy_book(inbox / "book")
    (inbox / "forms").mkdir()
    shutil.copy(CORPUS / "xfund_zh/zh_val_0.jpg", inbox / "forms" / "f1.jpg")
    res = run_cli("ocr", inbox, tmp_path / "out", "--pdf", state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 0, res.stderr
    one = tmp_path / "out"
    assert (one / "book" / "book.pdf").exists() and (one / "forms" / "forms.pdf").exists()

    d = Daemon(tmp_path / "d", models_dir, FAST).start()
    d.ready()
    shutil.copytree(inbox, d.inbox, dirs_exist_ok=True)
    d.until(lambda: (d.outbox / "book" / "book.pdf").exists() and (d.outbox / "forms" / "forms.pdf").exists(),
            "the daemon's PDFs")
    assert d.stop() == 0
    mine, theirs = json_files(one), json_files(d.outbox)
    assert mine.keys() == theirs.keys() == {"book/p1.tif", "book/p2.jpg", "forms/f1.jpg"}
    for rel in mine:
        _same_json(mine[rel], theirs[rel])
    for pdf in ("book/book.pdf", "forms/forms.pdf"):
        assert _pdf(one / pdf) == _pdf(d.outbox / pdf)

    before = {p: p.stat().st_mtime_ns for p in one.rglob("*") if p.is_file() and ".ocr-inbox" not in p.parts}
    again = run_cli("ocr", inbox, one, "--pdf", state_dir=tmp_path / "s", models=models_dir)
    assert again.returncode == 0, again.stderr
    assert "event=worker_spawned" not in again.stderr  # nothing to do: no worker even started
    assert {p: p.stat().st_mtime_ns for p in before} == before
    report = json.loads((one / ".ocr-inbox" / "failures.json").read_text())
    assert report == {"failures": [], "done": 0, "skipped": 3}


def test_oneshot_killed_mid_run_resumes_on_rerun(tmp_path: Path, models_dir: Path) -> None:
    inbox = tmp_path / "in"
    rels = [f"v{i % 3}/p{i:02d}.png" for i in range(60)]
    for i, rel in enumerate(rels):
        plain(inbox / rel, size=(40 + i, 30))
    cfg = tmp_path / "fake.toml"
    cfg.write_text('[ocr]\nengine_plugin = "fake_engine:create"\nworkers_per_device = 2\n[pool]\nbatch_size = 2\n')
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ocr_inbox", "ocr", str(inbox), str(out), "--pdf", "--config", str(cfg),
           "--state-dir", str(tmp_path / "s"), "--models-dir", str(models_dir), "--log-format", "logfmt", "--no-progress"]
    env = cli_env(FAKE_ENGINE_DELAY_S="0.05")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    assert proc.stderr is not None
    done = 0
    for line in proc.stderr:
        done += "event=image_done" in line
        if done == 10:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = json_files(out)
    assert 10 <= len(partial) < len(rels)

    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    docs = json_files(out)
    assert docs.keys() == set(rels)
    for rel in rels:
        assert docs[rel]["source"]["size"] == (inbox / rel).stat().st_size
    report = json.loads((out / ".ocr-inbox" / "failures.json").read_text())
    assert report["failures"] == [] and report["done"] + report["skipped"] == len(rels)
    assert report["done"] <= len(rels) - 10  # what the killed run finished was not done again
    for v in range(3):
        with pymupdf.open(out / f"v{v}" / f"v{v}.pdf") as doc:
            assert doc.page_count == 20
    assert not list(out.rglob(".ocr-inbox-tmp-*"))


def test_oneshot_publishes_a_folder_pdf_while_the_next_folder_is_still_ocrd(tmp_path: Path, models_dir: Path) -> None:
    inbox = tmp_path / "in"
    (inbox / "a").mkdir(parents=True)
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", inbox / "a" / "p1.jpg")
    forms = sorted((CORPUS / "xfund_zh").glob("*.jpg"))
    (inbox / "b").mkdir()
    for i, src in enumerate(forms, 1):
        shutil.copy(src, inbox / "b" / f"p{i}.jpg")
    (inbox / "b" / "p2b.jpg").write_text("not an image\n")  # fails: no page, and the pages after it still come
    res = run_cli("ocr", inbox, tmp_path / "out", "--pdf", "--workers", "1", "--no-progress",
                  state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 1, res.stderr  # p2b failed
    log = res.stderr.splitlines()
    a_published = next(i for i, line in enumerate(log) if "event=pdf_done" in line and "folder=a " in line)
    b_done = [i for i, line in enumerate(log) if "event=image_done" in line and "path=b/" in line]
    assert len(b_done) == len(forms)
    assert a_published < b_done[-1]  # a's PDF was out while b still had images to OCR
    names = [f"p{i}.jpg" for i in range(1, len(forms) + 1)]
    assert [t for t, _ in _pdf(tmp_path / "out" / "a" / "a.pdf")] == ["p1.jpg"]
    pages = _pdf(tmp_path / "out" / "b" / "b.pdf")
    assert [t for t, _ in pages] == names  # exactly the done pages, in order
    for name, (_, text) in zip(names, pages):  # each page searchable, with its own image's text
        doc = json.loads((tmp_path / "out" / "b" / (name + ".json")).read_text())
        assert doc["pages"][0]["lines"][0]["text"] in text
