"""Drops the service user may not read yet, other files, "where is my PDF?": the real daemon,
bound by file modes like the unit's unprivileged user (``service_user_prefix``).

What people do: ``cp -a``, ``rsync -a``, ``mv`` across file systems and sync clients
make a folder with a closed mode and open it up once the copy is done; a writer with
``umask 077`` leaves files only it may read. "Someone else" here is ``OTHER_UID``
(nobody); a folder is made outside the inbox and moved in whole, as ``mv`` does, so the
daemon never sees it open. The rescan interval is an hour in every test: a pass proves
the event (or the backoff, where a test says so), never the five-minute rescan.

Every wait is on a condition (a log record, ``status --json``, a file), never a sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import imagemaker as im
import pytest
from conftest import CORPUS
from daemon_harness import OTHER_UID, Daemon, cli_env, json_files, service_user_prefix, toml_config

pytestmark = [pytest.mark.slow]

#: long enough that a pass never comes from the periodic rescan
NO_RESCAN = {"settle_seconds": 0.2, "rescan_interval_s": 3600, "unreadable_retry_s": 0}
FAKE = {"engine_plugin": "fake_engine:create", "workers_per_device": 1}


def _config(ocr: dict[str, object] | None = None, **sections: dict[str, object]) -> str:
    base: dict[str, dict[str, object]] = {"ocr": FAKE if ocr is None else ocr, "watch": NO_RESCAN, "pdf": {"quiet_seconds": 600}}
    return toml_config(base, sections)


@pytest.fixture
def prefix() -> list[str]:
    got = service_user_prefix()
    if isinstance(got, str):
        pytest.skip(got)
    if os.geteuid() != 0:
        pytest.skip("making another user's files needs root (chown)")
    return got


@pytest.fixture
def run(tmp_path: Path, models_dir: Path, prefix: list[str]) -> Iterator[callable]:  # type: ignore[valid-type]
    started: list[Daemon] = []

    def start(config: str, *, ready: bool = True, before: callable | None = None) -> Daemon:  # type: ignore[valid-type]
        d = Daemon(tmp_path, models_dir, config, prefix=prefix)
        if before is not None:
            before(d)
        d.start()
        started.append(d)
        if ready:
            d.ready()
        return d

    yield start
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def _page(path: Path) -> Path:
    im.save(im.Image.new("L", (60, 40), 255), path)
    return path


def _closed_folder(d: Daemon, name: str, pages: int = 2) -> Path:
    """A folder with ``pages`` images, another user's, mode 0700, moved into the inbox whole."""
    stage = d.root / "stage" / name
    stage.mkdir(parents=True)
    for i in range(1, pages + 1):
        os.chown(_page(stage / f"p{i}.png"), OTHER_UID, OTHER_UID)
    os.chown(stage, OTHER_UID, OTHER_UID)
    stage.chmod(0o700)
    dest = d.inbox / name
    os.rename(stage, dest)
    return dest


def _val(event: dict[str, str], key: str) -> str:
    v = event.get(key, "")
    return v[1:-1].replace('\\"', '"') if v.startswith('"') else v


def _unreadable(d: Daemon) -> dict[str, dict[str, object]]:
    return {u["path"]: u for u in d.status()["unreadable"]}


def _no_raw_warnings(d: Daemon) -> None:
    """Every line of the daemon's log is a record of ours: no RuntimeWarning about ``wd=-1``."""
    log = d.log()
    assert "RuntimeWarning" not in log and "wd=-1" not in log, log[-3000:]
    assert all(line.startswith("timestamp=") for line in log.splitlines()), log[-3000:]


# ---------------------------------------------------------------------------- permissions


@pytest.mark.corpus
def test_folder_closed_then_opened_is_ocrd_on_the_event(run) -> None:  # type: ignore[no-untyped-def]
    """Real OCR: a folder another user made 0700 is waited for, then OCR'd the moment it is
    opened up: no ``retry``, no rescan, and it is watched from then on."""
    d: Daemon = run(_config(ocr={"workers_per_device": 1}))
    folder = d.root / "stage" / "scan"
    folder.mkdir(parents=True)
    shutil.copy(CORPUS / "tesseract_test/phototest.tif", folder / "page.tif")
    os.chown(folder / "page.tif", OTHER_UID, OTHER_UID)
    os.chown(folder, OTHER_UID, OTHER_UID)
    folder.chmod(0o700)
    os.rename(folder, d.inbox / "scan")
    entry = d.until(lambda: _unreadable(d).get("scan"), "the closed folder in status")
    assert entry["kind"] == "folder" and "drwx------" in entry["missing"] and "doctor --user" in entry["fix"]
    assert not (d.outbox / "scan").exists()

    (d.inbox / "scan").chmod(0o755)
    d.until(lambda: "scan/page.tif" in json_files(d.outbox), "the page OCR'd once readable")
    doc = json_files(d.outbox)["scan/page.tif"]
    assert "quick brown dog" in " ".join(line["text"] for p in doc["pages"] for line in p["lines"])
    # a file added now is seen by the folder's new watch (no rescan comes within the hour)
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", d.inbox / "scan" / "later.jpg")
    d.until(lambda: "scan/later.jpg" in json_files(d.outbox), "a later file in the opened folder")
    d.until(lambda: not _unreadable(d), "the status entry gone")
    assert len(d.events("scan_done")) == 1  # the start-up scan only
    assert [_val(e, "path") for e in d.events("path_readable")] == ["scan"]
    assert not d.events("retry_applied")
    d.stop()
    _no_raw_warnings(d)


def test_file_left_0600_is_reported_with_the_fix_then_taken(run) -> None:  # type: ignore[no-untyped-def]
    d: Daemon = run(_config())
    f = _page(d.inbox / "private.png")
    os.chown(f, OTHER_UID, OTHER_UID)
    f.chmod(0o600)
    (refused,) = d.until(lambda: d.events("file_refused"), "the refusal")
    assert refused["level"] == "warning" and _val(refused, "path") == "private.png"
    assert _val(refused, "reason") == "unreadable"
    assert "-rw-------" in _val(refused, "detail") and "nobody" in _val(refused, "detail")
    fix = _val(refused, "fix")
    assert "chmod g+r" in fix and "doctor --user" in fix
    entry = d.until(lambda: _unreadable(d).get("private.png"), "the file in status")
    assert entry["kind"] == "file" and entry["fix"] == fix
    (failure,) = d.status()["failures"]
    assert failure["reason"] == "unreadable" and "doctor --user" in failure["advice"]
    text = _status_text(d)
    assert "not readable by the service user yet" in text and "private.png" in text

    f.chmod(0o644)
    d.until(lambda: "private.png" in json_files(d.outbox), "taken once readable")
    d.until(lambda: not _unreadable(d) and not d.status()["failures"], "the status entries gone")
    assert d.status()["totals"]["done"] == 1
    assert len(d.events("file_refused")) == 1 and len(d.events("scan_done")) == 1
    d.stop()
    _no_raw_warnings(d)


def test_folder_that_stays_closed_is_reported_once(run) -> None:  # type: ignore[no-untyped-def]
    """A short backoff looks at it again and again, its mode is changed (still closed):
    one warning record, with what is missing and the fix."""
    d: Daemon = run(_config(watch={**NO_RESCAN, "unreadable_retry_s": 0.5}))
    closed = _closed_folder(d, "closed")
    (warned,) = d.until(lambda: d.events("folder_unreadable"), "the warning")
    assert warned["level"] == "warning" and _val(warned, "path") == "closed"
    assert "may not list and enter (r-x) the folder closed (drwx------ nobody:" in _val(warned, "missing")
    assert "chmod g+rx" in _val(warned, "fix") and "doctor --user" in _val(warned, "fix")
    closed.chmod(0o701)  # an attribute event; still not listable
    # then something the daemon does after all that: a good file OCR'd
    _page(d.inbox / "open.png")
    d.until(lambda: "open.png" in json_files(d.outbox), "another file done meanwhile")
    assert "closed" in _unreadable(d)
    d.stop()
    assert len(d.events("folder_unreadable")) == 1
    _no_raw_warnings(d)


def test_backoff_finds_what_no_event_tells(run) -> None:  # type: ignore[no-untyped-def]
    """Where inotify does not see the change (NFS; here a poller that looks once an hour),
    the backoff takes the folder once it opens up."""
    def closed_before_start(d: Daemon) -> None:
        _closed_folder(d, "nfs")

    d: Daemon = run(
        _config(watch={**NO_RESCAN, "observer": "polling", "poll_interval_s": 3600, "unreadable_retry_s": 1}),
        before=closed_before_start,
    )
    d.until(lambda: "nfs" in _unreadable(d), "the closed folder in status")
    (d.inbox / "nfs").chmod(0o755)
    d.until(lambda: {"nfs/p1.png", "nfs/p2.png"} <= json_files(d.outbox).keys(), "taken on the backoff")
    assert len(d.events("scan_done")) == 1
    d.stop()
    _no_raw_warnings(d)


# ---------------------------------------------------------------------------- other files


def test_other_files_are_reported_once_and_counted(run) -> None:  # type: ignore[no-untyped-def]
    d: Daemon = run(_config())
    (d.inbox / "docs").mkdir()
    (d.inbox / "docs" / "notes.txt").write_text("a note")
    (d.inbox / "docs" / "letter.docx").write_bytes(b"PK\x03\x04")
    (d.inbox / "docs" / "sheet.ods").write_bytes(b"PK\x03\x04")
    d.until(lambda: len(d.events("file_skipped")) == 3, "three records")
    with open(d.inbox / "docs" / "notes.txt", "a") as fh:
        fh.write(" changed")  # seen again: not said again
    _page(d.inbox / "docs" / "page.png")
    d.until(lambda: "docs/page.png" in json_files(d.outbox), "the image beside them done")
    st = d.until(lambda: s if (s := d.status())["skipped"]["count"] == 3 else None, "counted in status")
    assert st["skipped"]["by_type"] == {".docx": 1, ".ods": 1, ".txt": 1}
    assert st["totals"]["skipped"] == 3 and ".png" in st["skipped"]["accepted"]
    assert "other files (not taken, see the README): 3" in _status_text(d)
    d.stop()
    records = d.events("file_skipped")
    assert sorted(_val(e, "path") for e in records) == ["docs/letter.docx", "docs/notes.txt", "docs/sheet.ods"]
    assert {e["level"] for e in records} == {"info"}


# ---------------------------------------------------------------------------- status


def test_pdf_due_in_the_journal_and_status(run) -> None:  # type: ignore[no-untyped-def]
    d: Daemon = run(_config())
    _page(d.inbox / "book" / "p1.png")
    _page(d.inbox / "book" / "p2.png")
    (due,) = d.until(lambda: d.events("pdf_due"), "the pdf_due record")
    assert _val(due, "folder") == "book" and float(due["quiet_seconds"]) == 600
    assert 0 < int(due["in_s"]) <= 600
    (book,) = [f for f in d.status()["folders"] if f["folder"] == "book"]
    assert 0 < book["pdf_due_in_s"] <= 600
    (row,) = [line for line in _status_text(d).splitlines() if "│ book " in line]
    shown = re.search(r"PDF in (\d+) s", row)
    assert shown and 0 < int(shown[1]) <= 600, row
    d.stop()


def test_status_totals_add_up_and_paths_are_whole_in_a_pipe(run) -> None:  # type: ignore[no-untyped-def]
    d: Daemon = run(_config())
    deep = d.inbox / "a-rather-long-folder-name-for-a-narrow-terminal" / "and-another-level-below-it"
    for i in range(3):
        _page(deep / f"good{i}.png")
    (deep / "broken.png").write_text("not an image at all")  # fails in the worker: not_an_image
    n = 4
    st = d.until(
        lambda: s if (t := (s := d.status())["totals"])["done"] + t["failed"] == n and not t["queued"] and not t["running"] else None,
        "all four accounted for",
    )
    assert (st["totals"]["done"], st["totals"]["failed"]) == (3, 1)
    # each image once in the totals; the workers' count is every image they returned, done or failed
    d.until(lambda: sum(w["images"] for w in d.status()["daemon"]["workers"]) == n, "the live view")
    text = _status_text(d, COLUMNS="40")
    assert "images done" not in text and "images returned (done or failed)" in text
    assert "done 3  failed 1" in text
    folder = str(deep.relative_to(d.inbox))
    assert any(folder in line for line in text.splitlines()), text  # one line, not cut, not wrapped
    assert any(str(d.outbox / folder) in line for line in text.splitlines()), text
    d.stop()


def _status_text(d: Daemon, **env: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "ocr_inbox", "status", "--state-dir", str(d.state), "--config", str(d.config_path)],
        capture_output=True, text=True, env=cli_env(**env), timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout
