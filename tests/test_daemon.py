"""The real daemon process (`ocr-inbox run`), real PaddleX inference, real corpus pages."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import pymupdf
import pytest
from conftest import CORPUS, run_cli
from daemon_harness import Daemon, alive, json_files, slow_copy, temp_files

pytestmark = [pytest.mark.slow, pytest.mark.corpus]

FAST = """
[watch]
settle_seconds = 0.5
[pdf]
quiet_seconds = 2
"""

BOOK = ("tesseract_test/phototest.tif", "cnocr/multi-line_en_black.png", "cnocr/helloworld.jpg")
FORMS = ("xfund_zh/zh_val_0.jpg", "cnocr/multi-line_cn1.png")


def _pdf_text(path: Path) -> tuple[int, str]:
    with pymupdf.open(path) as doc:
        return doc.page_count, "\n".join(page.get_text() for page in doc)


def _all_done(d: Daemon, n: int) -> bool:
    st = d.status()["totals"]
    return st["done"] == n and st["queued"] == 0 and st["running"] == 0


def test_lifecycle_notify_and_clean_stop(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, FAST, watchdog_usec=1_000_000).start()
    ready = d.ready()
    before = d.messages[:ready]
    # READY only after the workers loaded their models, with the start timeout extended meanwhile
    assert any(m.startswith("STATUS=loading models") for m in before)
    assert any("EXTEND_TIMEOUT_USEC=" in m for m in before)
    (logged,) = d.until(lambda: d.events("ready"), "the ready event")  # logged just after READY=1
    assert len(d.events("worker_ready")) == int(logged["workers"]) >= 1  # one per core by default
    d.wait_notify(lambda m: m == "WATCHDOG=1", start=ready)
    d.wait_notify(lambda m: m.startswith("STATUS=queued 0, running 0, done 0"), start=ready)
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", d.inbox / "hello.jpg")
    d.wait_notify(lambda m: m.startswith("STATUS=") and "done 1," in m, start=ready)
    # status shows the running daemon's workers (from its live view), on this host
    def idle_after_one(v: dict) -> bool:
        return sum(w["images"] for w in v["workers"]) == 1 and {w["state"] for w in v["workers"]} == {"idle"}

    live = d.until(lambda: v if idle_after_one(v := d.status()["daemon"]) else None, "the live view")
    assert live["running"] and live["executor"] == "local" and live["pid"] == d.proc.pid
    assert len(live["workers"]) == int(logged["workers"])
    assert {(w["node"], w["device"]) for w in live["workers"]} == {(socket.gethostname(), "cpu")}
    human = run_cli("status", state_dir=d.state, models=models_dir)
    assert human.returncode == 0 and "done 1" in human.stdout and "folders" in human.stdout
    assert "daemon: running" in human.stdout and "workers per node" in human.stdout
    assert d.stop() == 0
    after = d.status()["daemon"]
    assert not after["running"] and after["workers"] == []
    assert "daemon: not running" in run_cli("status", state_dir=d.state, models=models_dir).stdout
    assert any(m == "STOPPING=1" for m in d.messages)
    assert d.events("stopped")
    assert (tmp_path / "stdout.txt").read_text() == ""  # logs go to stderr; stdout stays clean
    workers = d.pids()
    assert workers and not any(alive(p) for p in workers)
    # real PaddleX workers: every line is one record (no raw warning, banner, ANSI or traceback),
    # and the engine's info is JSON, not a Python repr
    log = d.log()
    assert all(line.startswith("timestamp=") for line in log.splitlines()), log
    assert "\x1b" not in log and "{'" not in log
    assert d.events("worker_ready")[0]["models"].startswith('"{\\"det\\":')


def test_folders_become_searchable_pdfs_and_late_pages_rebuild(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, FAST).start()
    d.ready()
    (d.inbox / "book").mkdir()
    for rel in BOOK:
        shutil.copy(CORPUS / rel, d.inbox / "book" / Path(rel).name)
    for i, rel in enumerate(FORMS):  # the second folder arrives slowly, in small chunks
        slow_copy(CORPUS / rel, d.inbox / "forms" / "batch 1" / f"{i + 1:02d} {Path(rel).name}")
    book_pdf = d.outbox / "book" / "book.pdf"
    forms_pdf = d.outbox / "forms" / "batch 1" / "batch 1.pdf"
    d.until(lambda: book_pdf.exists() and forms_pdf.exists(), "both folder PDFs")

    docs = json_files(d.outbox)
    assert set(docs) == {f"book/{Path(r).name}" for r in BOOK} | {
        f"forms/batch 1/{i + 1:02d} {Path(r).name}" for i, r in enumerate(FORMS)
    }
    assert d.status()["failures"] == []  # the slow writer's files were never read half-written
    pages, text = _pdf_text(book_pdf)
    assert pages == 3 and "quick brown dog" in text and "hello" in text.lower()
    pages, text = _pdf_text(forms_pdf)
    assert pages == 2 and "纾困申请表" in text.replace(" ", "") and "网络支付" in text.replace("\n", "")

    first_build = book_pdf.stat().st_mtime_ns
    shutil.copy(CORPUS / "cnocr/multi-line_en_white.png", d.inbox / "book" / "zz late.png")
    d.until(lambda: book_pdf.stat().st_mtime_ns != first_build and _pdf_text(book_pdf)[0] == 4, "the rebuilt PDF")
    folders = {f["folder"]: f for f in d.status()["folders"]}
    assert folders["book"]["pdf_state"] == "done" and folders["book"]["pdf_pages"] == 4
    assert Path(folders["book"]["pdf_path"]).resolve() == book_pdf.resolve()
    assert d.stop() == 0


def test_kill9_while_busy_loses_and_corrupts_nothing(tmp_path: Path, models_dir: Path) -> None:
    pages = [
        "tesseract_test/phototest.tif", "funsd/82092117.png", "xfund_zh/zh_val_0.jpg",
        "cnocr/multi-line_cn1.png", "cnocr/multi-line_en_black.png", "ocrmypdf_linn/linn.png",
        "funsd/82200067_0069.png", "xfund_zh/zh_val_1.jpg",
    ]
    d = Daemon(tmp_path, models_dir, FAST).start()
    d.ready()
    for i, rel in enumerate(pages):
        dest = d.inbox / f"vol{i % 2}" / f"p{i}{Path(rel).suffix}"
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(CORPUS / rel, dest)
    d.until(lambda: d.events("image_done"), "the first image done")
    workers = d.pids()
    d.kill9()
    # the workers die with their supervisor (no orphans writing into the outbox)
    d.until(lambda: not any(alive(p) for p in workers), "orphaned workers gone", timeout=30)

    d2 = Daemon(tmp_path, models_dir, name="restart").start()
    d2.ready()
    pdfs = [d2.outbox / "vol0" / "vol0.pdf", d2.outbox / "vol1" / "vol1.pdf"]
    d2.until(lambda: _all_done(d2, len(pages)) and all(p.exists() for p in pdfs), "everything done after restart")
    docs = json_files(d2.outbox)
    assert len(docs) == len(pages)
    for rel, doc in docs.items():
        st = (d2.inbox / rel).stat()
        assert (doc["source"]["size"], doc["source"]["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        assert doc["pages"][0]["lines"], rel
    for p in pdfs:
        assert _pdf_text(p)[0] == 4
    assert d2.stop() == 0
    assert temp_files(d2.outbox, d2.state) == []


def test_worker_killed_mid_batch_is_respawned_and_batch_redone(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, FAST + "[pool]\nbatch_size = 4\n[ocr]\nworkers_per_device = 1\n").start()
    d.ready()
    names = []
    for i in range(3):
        for rel in ("tesseract_test/phototest.tif", "cnocr/multi-line_en_black.png"):
            name = f"p{len(names)}{Path(rel).suffix}"
            shutil.copy(CORPUS / rel, d.inbox / name)
            names.append(name)
    d.until(lambda: d.events("image_done"), "a first image")
    (victim,) = d.pids()
    os.kill(victim, signal.SIGKILL)
    d.until(lambda: d.events("worker_lost"), "the loss noticed")
    d.until(lambda: _all_done(d, len(names)), "all images done")
    assert len(d.pids()) == 2 and len(d.events("worker_ready")) == 2  # respawned in the same slot
    assert "killed by SIGKILL" in d.events("worker_lost")[0]["cause"]
    assert set(json_files(d.outbox)) == set(names)
    assert d.status()["failures"] == []
    assert d.stop() == 0


def test_reload_applies_config_and_rejects_a_broken_one(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, FAST).start()
    first = d.ready()
    d.config_path.write_text(FAST.replace("quiet_seconds = 2", "quiet_seconds = 7"))
    d.signal(signal.SIGHUP)
    i = d.wait_notify(lambda m: "RELOADING=1" in m and "MONOTONIC_USEC=" in m, start=first)
    d.wait_notify(lambda m: "READY=1" in m.split("\n"), start=i)
    d.until(lambda: d.events("config_changed"), "the change logged")
    assert d.events("config_changed")[0]["key"] == "pdf.quiet_seconds"
    assert not d.events("workers_restarting")

    d.config_path.write_text("[pool]\nbatch_size = 'many'\n")
    d.signal(signal.SIGHUP)
    d.until(lambda: d.events("reload_rejected"), "the broken config rejected")
    assert d.events("reload_rejected")[0]["key"] == "pool.batch_size"

    d.config_path.write_text(FAST + '[ocr]\nprofile = "ppocrv6-small"\n')
    d.signal(signal.SIGHUP)
    d.until(lambda: d.events("workers_restarting") and len(d.events("worker_ready")) == 4, "workers on the new model")
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", d.inbox / "after.jpg")
    d.until(lambda: "after.jpg" in json_files(d.outbox), "an image OCR'd after the reload")
    assert json_files(d.outbox)["after.jpg"]["engine"]["profile"] == "ppocrv6-small"
    assert d.proc is not None and d.proc.poll() is None
    assert d.stop() == 0


def test_broken_config_refuses_to_start(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, "[watch]\nsettle_seconds = -1\n").start()
    assert d.wait_exit(60) == 3
    (err,) = d.events("config_invalid")
    assert err["key"] == "watch.settle_seconds" and err["file"] == str(d.config_path)
    assert not any("READY=1" in m for m in d.messages)


def test_outbox_inside_inbox_refused(tmp_path: Path, models_dir: Path) -> None:
    res = run_cli("run", "--inbox", tmp_path, "--outbox", tmp_path / "out", state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 2 and "inside the inbox" in res.stderr


def test_symlinks_out_of_the_inbox_and_junk_are_ignored(tmp_path: Path, models_dir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(CORPUS / "cnocr/multi-line_cn1.png", outside / "secret.png")
    d = Daemon(tmp_path / "d", models_dir, FAST)
    book = d.inbox / "book"
    book.mkdir()
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", book / "p1.jpg")
    os.symlink(outside / "secret.png", book / "p2.png")
    os.symlink(outside, d.inbox / "linked")
    (book / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (book / "Thumbs.db").write_bytes(b"x")
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", book / "p3.jpg.part")
    (d.inbox / "__MACOSX").mkdir()
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", d.inbox / "__MACOSX" / "._p1.jpg")
    d.start()
    d.ready()
    pdf = d.outbox / "book" / "book.pdf"
    d.until(lambda: pdf.exists(), "the folder PDF")
    assert set(json_files(d.outbox)) == {"book/p1.jpg"}
    assert _pdf_text(pdf)[0] == 1  # the outside image did not get into the PDF either
    failures = {f["rel"]: f["reason"] for f in d.status()["failures"]}
    assert failures == {"book/p2.png": "symlink_outside_inbox", "linked": "directory_symlink"}
    refused = {e["path"]: e["reason"] for e in d.events("file_refused")}
    assert refused == failures
    assert d.stop() == 0
    assert sorted(p.name for p in outside.iterdir()) == ["secret.png"]
