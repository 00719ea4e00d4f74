"""Fault battery on the real daemon process: kill -9 at random, worker crashes,
full disks, things vanishing mid-work, locked/corrupt state, SIGTERM at awkward moments.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pymupdf
import pytest
from conftest import CORPUS, run_cli
from daemon_harness import Daemon, json_files, temp_files, toml_config
from imagemaker import POISON_EXIT, POISON_SEGV, POISON_SIGKILL, plain
from PIL import Image

from ocr_inbox.ledger import DB_NAME, Ledger
from ocr_inbox.support.atomic import TMP_PREFIX

pytestmark = [pytest.mark.slow, pytest.mark.corpus]

def config(fake: bool = False, **sections: dict[str, object]) -> str:
    """A fast test configuration in TOML; ``fake`` uses the test engine plug-in."""
    base: dict[str, dict[str, object]] = {
        "watch": {"settle_seconds": 0.3, "rescan_interval_s": 2},
        "pdf": {"quiet_seconds": 0.5},
        "pool": {"output_retry_s": 1.0},
        "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 2} if fake else {},
    }
    return toml_config(base, sections)


FAST = config()


def _small_pages(dest: Path, folders: int, per_folder: int) -> list[str]:
    """Small real text images (corpus crops) so many OCR runs stay affordable."""
    sources = sorted((CORPUS / "cnocr").glob("*.png")) + [CORPUS / "cnocr/helloworld.jpg"]
    with Image.open(CORPUS / "tesseract_test/phototest.tif") as page:
        crops = [page.convert("L").crop((0, y, 640, y + 120)) for y in (60, 180, 300)]
    rels = []
    for f in range(folders):
        for i in range(per_folder):
            rel = f"box{f}/p{i}.png"
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            k = (f * per_folder + i) % (len(sources) + len(crops))
            if k < len(sources):
                with Image.open(sources[k]) as img:
                    img.save(dest / rel)
            else:
                crops[k - len(sources)].save(dest / rel)
            rels.append(rel)
    return rels


def _check_consistent(root: Path, final: bool) -> None:
    """What must hold after any crash: valid JSON, PDFs that open, ledger == outbox."""
    inbox, outbox = root / "inbox", root / "outbox"
    docs = json_files(outbox)  # every JSON parses: never half-written
    for rel, doc in docs.items():
        assert (inbox / rel).exists(), rel
        assert doc["source"]["path"] == rel
    for pdf in outbox.rglob("*.pdf"):
        if any(part.startswith(TMP_PREFIX) for part in pdf.parts):
            continue  # a killed build's chunks: never published, swept at the next start
        folder = pdf.parent
        with pymupdf.open(pdf) as doc:
            n_images = len([p for p in (inbox / folder.relative_to(outbox)).iterdir() if p.suffix == ".png"])
            assert 1 <= doc.page_count <= n_images
            if final:
                assert doc.page_count == n_images
    if not (root / "state" / DB_NAME).exists():
        return
    with Ledger.open_readonly(root / "state") as ledger:
        for k in ledger.known_paths():
            if k.status == "done":
                doc = docs[k.rel]  # a done image has its JSON, describing the same file version
                assert (doc["source"]["size"], doc["source"]["mtime_ns"]) == (k.size, k.mtime_ns), k.rel
            if final:
                assert k.status == "done", k


def test_kill9_at_random_moments_50_times(tmp_path: Path, models_dir: Path) -> None:
    rng = random.Random(20261122)
    rels = _small_pages(tmp_path / "inbox", folders=4, per_folder=4)
    kills = 50
    moments: dict[str, int] = {}
    for i in range(kills):
        if rng.random() < 0.6:  # keep new work coming: a new page, or a page changed on disk
            if rng.random() < 0.5:
                rel = f"box{rng.randrange(4)}/late{i}.png"
                shutil.copy(tmp_path / "inbox" / rels[rng.randrange(len(rels))], tmp_path / "inbox" / rel)
                rels.append(rel)
            else:
                p = tmp_path / "inbox" / rels[rng.randrange(len(rels))]
                os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
        d = Daemon(tmp_path, models_dir, FAST, name=f"run{i}").start()
        # Kill at a random moment of a random phase: loading models, idle or scanning, mid-OCR or mid-PDF.
        phase = rng.choice(["loading", "ready", "working", "working"])
        if phase == "loading":
            d.wait_notify(lambda m: m.startswith("STATUS=loading models"))
        elif phase == "ready":
            d.ready()
        else:
            d.ready()
            d.until(lambda: d.events("image_done") or d.events("pdf_start") or d.status()["totals"]["queued"] == 0,
                    "work under way (or none left)")
        time.sleep(rng.uniform(0.0, 0.6))  # the random moment within the phase, not a synchronisation
        d.kill9()
        moments[phase] = moments.get(phase, 0) + 1
        _check_consistent(tmp_path, final=False)
    d = Daemon(tmp_path, models_dir, FAST, name="final").start()
    d.ready()

    def settled() -> bool:
        st = d.status()
        folders = st["folders"]
        return (
            st["totals"]["done"] == len(rels)
            and st["totals"]["queued"] == 0
            and len(folders) == 4
            and all(f["pdf_state"] == "done" for f in folders)
        )

    d.until(settled, "every image done and every PDF built after 50 kills")
    assert d.stop() == 0
    _check_consistent(tmp_path, final=True)
    assert sorted(json_files(tmp_path / "outbox")) == sorted(rels)
    assert temp_files(tmp_path / "outbox", tmp_path / "state") == []
    killed_while_working = sum(1 for i in range(kills) if "event=image_done" in (tmp_path / f"run{i}.log").read_text())
    assert killed_while_working > 0 and moments["loading"] > 0  # kills really hit a busy and a booting daemon


def _workers_alive(d: Daemon) -> set[int]:
    """Pids of the pool's live workers: those it reported ready and never lost.
    (Counting spawned children would also count a PDF job for a quiet folder.)"""
    assert d.proc is not None
    kids = {k.pid for k in psutil.Process(d.proc.pid).children() if k.status() != psutil.STATUS_ZOMBIE}
    ready = {int(e["pid"]) for e in d.events("worker_ready")}
    gone = {int(e["pid"]) for e in d.events("worker_lost") + d.events("worker_exited")}
    return (ready - gone) & kids


def test_worker_crashes_quarantine_poison_and_refill_the_pool(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, config(fake=True, pool={"batch_size": 3})).start()
    d.ready()
    good = [plain(d.inbox / "f" / f"good{i:02d}.png", size=(40 + i, 30)).name for i in range(24)]
    rng = random.Random(7)
    poison = {"kill.png": POISON_SIGKILL, "segv.png": POISON_SEGV, "exit.png": POISON_EXIT}
    for name, marker in poison.items():  # scattered among the good ones
        plain(d.inbox / "f" / f"good{rng.randrange(24):02d}-{name}", marker=marker)
    d.until(lambda: d.status()["totals"]["done"] == len(good) and len(d.status()["failures"]) == 3, "all accounted for")
    failures = {f["rel"].split("-", 1)[1]: f for f in d.status()["failures"]}
    assert set(failures) == set(poison)
    for f in failures.values():
        assert f["reason"] == "worker_crashed" and f["attempts"] == 2
    assert set(json_files(d.outbox)) == {f"f/{g}" for g in good}
    deaths = d.events("worker_lost")
    lost = len(deaths)
    for name in poison:  # each poison image was a suspect of two deaths, then was quarantined
        # (named as the image OCR'd, or as the one decoded beside it: then both were suspects)
        assert sum(e.get("image", "").endswith(name) or e.get("decoding", "").endswith(name) for e in deaths) == 2
    d.until(lambda: len(d.events("worker_ready")) == 2 + lost, "every lost worker replaced")
    assert len(_workers_alive(d)) == 2  # the pool is back to full size
    assert d.stop() == 0


@pytest.fixture
def tmpfs(tmp_path: Path):
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()}); the disk-full test needs it")
        mounted.append(path)
        return path

    yield mount
    for p in reversed(mounted):
        subprocess.run(["umount", "-l", str(p)], check=False)


def _fill(path: Path) -> Path:
    """Fill the filesystem at ``path`` completely; returns the filler file."""
    filler = path / "filler.bin"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def test_full_outbox_pauses_and_resumes_by_itself(tmp_path: Path, models_dir: Path, tmpfs) -> None:
    d = Daemon(tmp_path, models_dir, FAST)
    rels = _small_pages(d.inbox, folders=2, per_folder=3)
    filler = _fill(tmpfs(d.outbox, "4m"))
    d.start()
    d.ready()
    d.until(lambda: d.events("output_paused"), "the pause on a full outbox")
    assert d.events("output_paused")[0]["reason"] == "disk_full"
    _check_consistent(tmp_path, final=False)  # no truncated JSON passes for a complete one
    assert d.status()["failures"] == []  # a full disk is not the images' fault
    filler.unlink()
    d.until(lambda: d.status()["totals"]["done"] == len(rels) and all(
        f["pdf_state"] == "done" for f in d.status()["folders"]), "everything done once space returned")
    assert d.stop() == 0
    _check_consistent(tmp_path, final=True)
    assert temp_files(d.outbox) == []


def test_full_state_dir_pauses_and_resumes_by_itself(tmp_path: Path, models_dir: Path, tmpfs) -> None:
    d = Daemon(tmp_path, models_dir, FAST)
    tmpfs(d.state, "8m")
    d.start()
    d.ready()
    filler = _fill(d.state)
    rels = _small_pages(d.inbox, folders=1, per_folder=4)
    d.until(lambda: d.events("ledger_write_failed"), "the ledger's full disk noticed")
    assert d.proc is not None and d.proc.poll() is None
    filler.unlink()

    def all_in_the_pdf() -> bool:  # an image the full disk kept out of the ledger may arrive after a first PDF
        st = d.status()
        return st["totals"]["done"] == len(rels) and all(
            f["pdf_state"] == "done" and f["pdf_pages"] == f["done"] for f in st["folders"]
        )

    d.until(all_in_the_pdf, "everything recorded, and in the PDF, once space returned")
    assert d.stop() == 0
    _check_consistent(tmp_path, final=True)


def test_things_vanishing_or_renamed_mid_work(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, FAST)
    _small_pages(d.inbox, folders=3, per_folder=4)
    d.start()
    d.ready()
    d.until(lambda: d.events("image_done"), "work under way")
    os.rename(d.inbox / "box0", d.inbox / "renamed")  # a folder renamed
    shutil.rmtree(d.inbox / "box1")  # a folder deleted
    (d.inbox / "box2" / "p3.png").unlink()  # an image deleted
    d.until(lambda: {"renamed/p0.png", "renamed/p3.png"} <= set(json_files(d.outbox)), "the renamed folder done")
    d.until(lambda: d.status()["totals"]["queued"] == 0 and d.status()["totals"]["running"] == 0, "the queue empty")
    assert d.status()["failures"] == []  # vanished files are not failures
    # the whole inbox disappears for a while and comes back
    away = tmp_path / "away"
    os.rename(d.inbox, away)
    d.until(lambda: d.events("inbox_missing"), "the missing inbox noticed")
    os.rename(away, d.inbox)
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", d.inbox / "renamed" / "back.jpg")
    d.until(lambda: "renamed/back.jpg" in json_files(d.outbox), "work resumed after the inbox returned")
    assert d.proc is not None and d.proc.poll() is None
    assert d.stop() == 0


def test_a_file_in_the_way_of_an_output_folder_fails_only_its_images(tmp_path: Path, models_dir: Path) -> None:
    # An output path blocked by a *name* (a file where a folder must go, a folder where
    # a JSON must go) is that image's problem: it fails with a reason; nothing pauses.
    d = Daemon(tmp_path, models_dir, FAST)
    rels = _small_pages(d.inbox, folders=2, per_folder=2)
    d.outbox.mkdir()
    (d.outbox / "box0").write_text("a file where the daemon needs a folder")
    (d.outbox / "box1" / "p1.png.json").mkdir(parents=True)  # a folder where a JSON must go
    d.start()
    d.ready()
    d.until(lambda: d.status()["totals"]["done"] + d.status()["totals"]["failed"] == len(rels), "all accounted for")
    failed = {f["rel"]: f["reason"] for f in d.status()["failures"]}
    assert failed == {"box0/p0.png": "output_name", "box0/p1.png": "output_name", "box1/p1.png": "output_name"}
    assert not d.events("output_paused")
    written = lambda: {p.relative_to(d.outbox).as_posix()[: -len(".json")] for p in d.outbox.rglob("*.json") if p.is_file()}  # noqa: E731
    assert written() == {"box1/p0.png"}
    # once the blocker is gone, a new version of the image is done as usual
    (d.outbox / "box0").unlink()
    page = d.inbox / "box0" / "p0.png"
    os.utime(page, ns=(page.stat().st_atime_ns, page.stat().st_mtime_ns + 10**9))
    d.until(lambda: "box0/p0.png" in written(), "redone")
    assert d.stop() == 0


def test_locked_and_corrupt_state_are_clear_errors(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, FAST).start()
    d.ready()
    second = run_cli("run", "--inbox", d.inbox, "--outbox", tmp_path / "out2", state_dir=d.state, models=models_dir)
    assert second.returncode == 6, second.stderr
    assert "lock" in second.stderr and str(d.state) in second.stderr
    assert d.stop() == 0

    db = d.state / DB_NAME
    garbage = b"this is not a database" * 200
    db.write_bytes(garbage)
    for extra in d.state.glob(db.name + "-*"):
        extra.unlink()
    res = run_cli("run", "--inbox", d.inbox, "--outbox", d.outbox, state_dir=d.state, models=models_dir)
    assert res.returncode == 6, res.stderr
    assert str(db) in res.stderr
    assert db.read_bytes() == garbage  # never silently reset


def test_sigterm_while_loading_models_then_resume(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, FAST)
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", d.inbox / "a.jpg")
    d.start()
    d.wait_notify(lambda m: m.startswith("STATUS=loading models"))
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert "STOPPING=1" in d.messages and not any("READY=1" in m for m in d.messages)
    d2 = Daemon(tmp_path, models_dir, name="again").start()
    d2.ready()
    d2.until(lambda: "a.jpg" in json_files(d2.outbox), "resumed on the next start")
    assert d2.stop() == 0


def test_sigterm_during_a_pdf_build_then_resume(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, config(fake=True, pdf={"chunk_pages": 10}))
    page = (CORPUS / "xfund_zh/zh_val_0.jpg").read_bytes()
    (d.inbox / "big").mkdir()
    for i in range(120):
        (d.inbox / "big" / f"p{i:03d}.jpg").write_bytes(page)
    d.start()
    d.ready()
    d.until(lambda: d.events("pdf_build_started"), "the PDF build under way")
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    pdf = d.outbox / "big" / "big.pdf"
    assert d.events("pdf_cancelled")
    assert not pdf.exists()  # nothing half-written is visible
    d2 = Daemon(tmp_path, models_dir, name="again").start()
    d2.ready()
    d2.until(lambda: pdf.exists(), "the PDF built after the restart")
    with pymupdf.open(pdf) as doc:
        assert doc.page_count == 120
    assert d2.stop() == 0
    assert temp_files(d2.outbox) == []
