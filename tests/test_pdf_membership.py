"""What a folder's PDF holds, against the real daemon (test engine): the folder's images that
are done and still belong to it. A page moved to another folder, or deleted, leaves its old
folder's PDF once the folder is quiet again; a folder emptied by people keeps its last PDF,
marked in ``status``; a file that leaves while a worker has it is gone, not a failure; and a
folder deleted while its PDF is built never gets a partial PDF published as done.

Pages are checked by content: the test engine's text names the image's size, and each test
image has a size of its own, so every page's text layer says which image it is."""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import pymupdf
import pytest
from daemon_harness import Daemon, toml_config
from imagemaker import plain

pytestmark = [pytest.mark.slow]


def config(**sections: dict[str, object]) -> str:
    base: dict[str, dict[str, object]] = {
        "watch": {"settle_seconds": 0.3, "rescan_interval_s": 60},
        "pdf": {"quiet_seconds": 0.5},
        "pool": {"output_retry_s": 1.0},
        "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 2},
    }
    return toml_config(base, sections)


#: each image's width: its page's text is "fake {width}x40"
WIDTH = {"p1.png": 61, "p2.png": 62, "p3.png": 63, "q1.png": 71, "c1.png": 81}


def _image(d: Daemon, folder: str, name: str) -> None:
    plain(d.inbox / folder / name, size=(WIDTH[name], 40))


def _pages(pdf: Path) -> list[tuple[str, str]]:
    """(outline title, text layer) of every page: which image each page shows, and its text."""
    with pymupdf.open(pdf) as doc:
        titles = [t for _, t, _ in doc.get_toc()]
        texts = [page.get_text().strip() for page in doc]
    return list(zip(titles, texts, strict=True))


def _expect(*names: str) -> list[tuple[str, str]]:
    return [(n, f"fake {WIDTH[n]}x40") for n in names]


def _folder(d: Daemon, folder: str) -> dict[str, object]:
    (row,) = [f for f in d.status()["folders"] if f["folder"] == folder]
    return dict(row)


def _built(d: Daemon, folder: str) -> int:
    return len([e for e in d.events("pdf_done") if e["folder"] == folder])


def _start(tmp_path: Path, models_dir: Path) -> Daemon:
    d = Daemon(tmp_path, models_dir, config())
    for name in ("p1.png", "p2.png", "p3.png"):
        _image(d, "a", name)
    _image(d, "b", "q1.png")
    d.start()
    d.ready()
    d.until(lambda: _built(d, "a") == 1 and _built(d, "b") == 1, "both folders' first PDFs")
    assert _pages(d.outbox / "a" / "a.pdf") == _expect("p1.png", "p2.png", "p3.png")
    assert _pages(d.outbox / "b" / "b.pdf") == _expect("q1.png")
    return d


def test_a_page_moved_to_another_folder_leaves_the_old_folders_pdf(tmp_path: Path, models_dir: Path) -> None:
    d = _start(tmp_path, models_dir)
    (d.inbox / "a" / "p1.png").rename(d.inbox / "b" / "p1.png")
    d.until(lambda: _built(d, "a") == 2 and _built(d, "b") == 2, "both folders' PDFs rebuilt")
    assert _pages(d.outbox / "a" / "a.pdf") == _expect("p2.png", "p3.png")
    assert _pages(d.outbox / "b" / "b.pdf") == _expect("p1.png", "q1.png")
    a, b = _folder(d, "a"), _folder(d, "b")
    assert (a["done"], a["pdf_pages"], a["pdf_state"]) == (2, 2, "done")  # the page that left is not a's
    assert (b["done"], b["pdf_pages"], b["pdf_state"]) == (2, 2, "done")
    assert not d.events("image_failed")
    assert d.stop() == 0


def test_a_deleted_image_leaves_its_folders_pdf_and_an_emptied_folder_keeps_its_last_one(
    tmp_path: Path, models_dir: Path
) -> None:
    d = _start(tmp_path, models_dir)
    (d.inbox / "a" / "p2.png").unlink()
    d.until(lambda: _built(d, "a") == 2, "a's PDF rebuilt")
    assert _pages(d.outbox / "a" / "a.pdf") == _expect("p1.png", "p3.png")
    assert (_folder(d, "a")["done"], _folder(d, "a")["pdf_pages"]) == (2, 2)

    # people empty the folder: its last PDF stays as it was, and status says why
    for name in ("p1.png", "p3.png"):
        (d.inbox / "a" / name).unlink()
    d.until(lambda: d.status()["totals"]["gone"] == 3, "the folder's images gone")
    a = _folder(d, "a")
    assert (a["done"], a["pdf_state"], a["pdf_pages"], a["pdf_kept"]) == (0, "done", 2, True)
    # another folder's PDF comes and goes: the emptied folder's is not started again meanwhile
    _image(d, "c", "c1.png")
    d.until(lambda: _built(d, "c") == 1, "c's PDF")
    assert [e["folder"] for e in d.events("pdf_start")][-1] == "c"
    assert _built(d, "a") == 2
    assert _pages(d.outbox / "a" / "a.pdf") == _expect("p1.png", "p3.png")
    assert d.stop() == 0


def test_a_file_that_leaves_while_a_worker_has_it_is_gone_not_failed(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an image "costs" long enough that the worker still has it when it is deleted; whether
    # it is read before the delete or not, it is the same: the file vanished
    monkeypatch.setenv("FAKE_ENGINE_DELAY_S", "5")
    d = Daemon(tmp_path, models_dir, config())
    _image(d, "a", "p1.png")
    d.start()
    d.ready()
    d.until(lambda: d.status()["totals"]["running"] == 1, "the image with a worker")
    (d.inbox / "a" / "p1.png").unlink()
    d.until(lambda: d.status()["totals"]["gone"] == 1, "the image gone")
    t = d.status()["totals"]
    assert (t["failed"], t["done"], t["queued"], t["running"]) == (0, 0, 0, 0)
    assert d.status()["failures"] == []
    assert d.events("image_gone")[0]["path"] == "a/p1.png"
    warned = [ln for ln in d.log().splitlines() if "a/p1.png" in ln and "level=info" not in ln and "level=debug" not in ln]
    assert warned == []
    assert not d.events("image_failed")
    assert d.stop() == 0


def _writer_once_read(fifo: Path) -> int | None:
    """The FIFO opened for writing once the PDF child waits on it (else None)."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nobody reads it yet
            return None
        raise


def test_a_folder_deleted_during_its_pdf_build_gets_no_partial_pdf(tmp_path: Path, models_dir: Path) -> None:
    # the folder is OCR'd with PDFs off; then one JSON is a FIFO, so the build stops there,
    # mid-way, until the test writes it: the folder is deleted at that moment
    d = Daemon(tmp_path, models_dir, config(pdf={"enabled": False}))
    pages = 6
    for i in range(pages):
        plain(d.inbox / "gone" / f"p{i}.png")
    d.start()
    d.ready()
    d.until(lambda: d.status()["totals"]["done"] == pages, "the pages OCR'd")
    fifo = d.outbox / "gone" / "p2.png.json"
    fifo.unlink()
    os.mkfifo(fifo)
    d.config_path.write_text(config(pdf={"enabled": True, "quiet_seconds": 0.5}))
    d.signal(signal.SIGHUP)
    fd = d.until(lambda: _writer_once_read(fifo), "the build reading p2's JSON")
    shutil.rmtree(d.inbox / "gone")
    d.until(lambda: d.status()["totals"]["gone"] == pages, "the folder's images gone")
    os.close(fd)  # the build goes on: its pages are lost
    d.until(lambda: [e for e in d.events("pdf_waits_for_ocr") if e["folder"] == "gone"], "the build's end")
    assert not d.events("pdf_done")
    assert not (d.outbox / "gone" / "gone.pdf").exists()
    row = _folder(d, "gone")
    assert row["pdf_state"] == "none" and not row["pdf_pages"] and not row["pdf_kept"]
    assert d.stop() == 0
