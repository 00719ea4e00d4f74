"""The ledger's state transitions, crash recovery and refusal to use a bad state dir."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocr_inbox.ledger import DB_NAME, LOCK_NAME, Ledger, Observation, natural_key, reports
from ocr_inbox.ledger.schema import SCHEMA_VERSION
from ocr_inbox.support.errors import ExitCode, StateError


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "state") as led:
        yield led


def status(led: Ledger, rel: str) -> str:
    row = led.get(rel)
    assert row is not None, rel
    return row.status


def claim_one(led: Ledger, rel: str, now: float) -> None:
    got = [r.rel for r in led.claim(100, now)]
    assert rel in got


# -- opening -----------------------------------------------------------------


def test_open_creates_schema_in_wal_mode(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    with Ledger.open(state) as led:
        assert led.path == state / DB_NAME
    conn = sqlite3.connect(state / DB_NAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    conn.close()
    assert (state / LOCK_NAME).exists()


def test_reopen_keeps_data(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as led:
        led.observe("a/1.jpg", 10, 100, now=1.0)
    with Ledger.open(tmp_path) as led:
        assert status(led, "a/1.jpg") == "pending"


def test_corrupt_database_is_refused_with_its_path(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database, " * 400)
    with pytest.raises(StateError) as err:
        Ledger.open(tmp_path)
    assert str(tmp_path / DB_NAME) in str(err.value)
    assert "mv " in str(err.value)
    assert err.value.exit_code == ExitCode.state_error
    # never silently reset: the garbage is still there
    assert (tmp_path / DB_NAME).read_bytes().startswith(b"this is not a database")
    # and the lock was released, so a fixed state dir can be opened by this process
    (tmp_path / DB_NAME).unlink()
    Ledger.open(tmp_path).close()


def test_corrupt_pages_fail_quick_check(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as led:
        for i in range(2000):
            led.observe(f"f/{i}.jpg", i, i, now=1.0)
    # keep the header (page 1) valid, smash the pages after it
    db = tmp_path / DB_NAME
    with db.open("r+b") as fh:
        fh.seek(4096 * 2)
        fh.write(os.urandom(4096 * 6))
    with pytest.raises(StateError) as err:
        Ledger.open(tmp_path)
    assert str(db) in str(err.value)


def test_second_open_of_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    with Ledger.open(tmp_path):
        with pytest.raises(StateError) as err:
            Ledger.open(tmp_path)
        assert str(tmp_path / LOCK_NAME) in str(err.value)
        assert f"pid {os.getpid()}" in str(err.value)
    Ledger.open(tmp_path).close()  # released on close


def test_database_locked_by_another_writer(tmp_path: Path) -> None:
    Ledger.open(tmp_path).close()
    other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateError, match="locked"):
            Ledger.open(tmp_path)
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_state_dir(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StateError, match="state_dir"):
            Ledger.open(tmp_path / "state")
    finally:
        tmp_path.chmod(0o700)


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("x")
    with pytest.raises(StateError, match="state_dir"):
        Ledger.open(tmp_path / "state")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Ledger.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StateError, match="schema version 99"):
        Ledger.open(tmp_path)


def test_readonly_open_beside_the_daemon(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as led:
        led.observe("a.jpg", 1, 1, now=1.0)
        with Ledger.open_readonly(tmp_path) as ro:
            assert reports.stats(ro, now=2.0).queued == 1
            with pytest.raises(sqlite3.OperationalError):
                ro.observe("b.jpg", 1, 1, now=2.0)


def test_readonly_open_without_a_ledger(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no ledger"):
        Ledger.open(tmp_path, readonly=True)


# -- observe -----------------------------------------------------------------


def test_observe_new_unchanged_changed(ledger: Ledger) -> None:
    assert ledger.observe("a/1.jpg", 10, 100, now=1.0) is Observation.new
    assert ledger.observe("a/1.jpg", 10, 100, now=2.0) is Observation.unchanged
    assert ledger.folder("a").last_activity == 1.0  # type: ignore[union-attr]
    assert ledger.observe("a/1.jpg", 11, 100, now=3.0) is Observation.changed
    assert ledger.observe("a/1.jpg", 11, 101, now=4.0) is Observation.changed
    row = ledger.get("a/1.jpg")
    assert row is not None
    assert (row.size, row.mtime_ns, row.status, row.folder, row.first_seen) == (11, 101, "pending", "a", 1.0)
    assert ledger.folder("a").last_activity == 4.0  # type: ignore[union-attr]
    assert Observation.changed.queued and not Observation.unchanged.queued


def test_top_level_images_belong_to_the_root_folder(ledger: Ledger) -> None:
    ledger.observe("top.jpg", 1, 1, now=1.0)
    assert ledger.get("top.jpg").folder == ""  # type: ignore[union-attr]
    assert ledger.folder("") is not None


def test_changed_file_is_done_again(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 10, 100, now=1.0)
    [row] = ledger.claim(10, now=2.0)
    assert ledger.done(row.rel, row.size, row.mtime_ns, "out/a/1.json", 50, now=3.0)
    assert status(ledger, "a/1.jpg") == "done"
    assert ledger.observe("a/1.jpg", 10, 100, now=4.0) is Observation.unchanged
    assert ledger.observe("a/1.jpg", 20, 200, now=5.0) is Observation.changed
    row2 = ledger.get("a/1.jpg")
    assert row2 is not None and row2.status == "pending" and row2.done_at is None
    [again] = ledger.claim(10, now=6.0)
    assert (again.rel, again.size, again.mtime_ns) == ("a/1.jpg", 20, 200)


def test_change_while_running_rejects_the_stale_result(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 10, 100, now=1.0)
    [old] = ledger.claim(10, now=2.0)
    ledger.observe("a/1.jpg", 20, 200, now=3.0)  # rewritten while the worker reads it
    assert status(ledger, "a/1.jpg") == "pending"
    [new] = ledger.claim(10, now=4.0)
    # the first worker finishes with the old version: refused, the new claim stands
    assert not ledger.done(old.rel, old.size, old.mtime_ns, "x.json", 5, now=5.0)
    assert ledger.get("a/1.jpg").status == "pending"  # type: ignore[union-attr]
    [newest] = ledger.claim(10, now=6.0)
    assert ledger.done(newest.rel, new.size, new.mtime_ns, "x.json", 5, now=7.0)
    assert status(ledger, "a/1.jpg") == "done"


def test_done_with_a_different_size_goes_back_to_pending(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 10, 100, now=1.0)
    ledger.claim(10, now=2.0)
    assert not ledger.done("a/1.jpg", 11, 100, "x.json", 5, now=3.0)
    assert status(ledger, "a/1.jpg") == "pending"


def test_changed_failed_image_gets_fresh_attempts(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 10, 100, now=1.0)
    ledger.claim(10, now=2.0)
    ledger.failed("a/1.jpg", "decode_error", "truncated", now=3.0, retry=False)
    assert ledger.observe("a/1.jpg", 10, 100, now=4.0) is Observation.unchanged
    assert status(ledger, "a/1.jpg") == "failed"  # an unchanged bad file is not retried
    assert ledger.observe("a/1.jpg", 12, 100, now=5.0) is Observation.changed
    row = ledger.get("a/1.jpg")
    assert row is not None
    assert (row.status, row.attempts, row.error_reason) == ("pending", 0, None)


# -- claim -------------------------------------------------------------------


def test_claim_takes_oldest_folder_first_in_natural_order(ledger: Ledger) -> None:
    ledger.observe("old/p10.jpg", 1, 1, now=1.0)
    ledger.observe("new/p1.jpg", 1, 1, now=2.0)
    ledger.observe("old/p2.jpg", 1, 1, now=3.0)
    ledger.observe("old/P1.jpg", 1, 1, now=4.0)
    ledger.observe("new/p0.jpg", 1, 1, now=5.0)
    first = ledger.claim(3, now=6.0)
    assert [r.rel for r in first] == ["old/P1.jpg", "old/p2.jpg", "old/p10.jpg"]
    assert all(r.status == "running" and r.updated == 6.0 for r in first)
    assert status(ledger, "old/p10.jpg") == "running"
    second = ledger.claim(3, now=7.0)
    assert [r.rel for r in second] == ["new/p0.jpg", "new/p1.jpg"]
    assert ledger.claim(3, now=8.0) == []
    assert ledger.claim(0, now=8.0) == []


def test_claim_spans_folders_to_fill_the_batch(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 1, 1, now=1.0)
    ledger.observe("b/1.jpg", 1, 1, now=2.0)
    ledger.observe("c/1.jpg", 1, 1, now=3.0)
    assert [r.rel for r in ledger.claim(2, now=4.0)] == ["a/1.jpg", "b/1.jpg"]


def test_folder_age_is_its_first_image_not_its_name(ledger: Ledger) -> None:
    ledger.observe("zzz/1.jpg", 1, 1, now=1.0)
    ledger.observe("aaa/1.jpg", 1, 1, now=2.0)
    assert [r.rel for r in ledger.claim(1, now=3.0)] == ["zzz/1.jpg"]


def test_natural_key() -> None:
    names = ["p10.jpg", "p2.jpg", "P1.jpg", "p1a.jpg", "p01b.jpg"]
    assert sorted(names, key=natural_key) == ["P1.jpg", "p1a.jpg", "p01b.jpg", "p2.jpg", "p10.jpg"]


# -- failed / release / recover ---------------------------------------------


def test_failed_with_retry_then_quarantine(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 1, 1, now=1.0)
    ledger.claim(1, now=2.0)
    assert ledger.failed("a/1.jpg", "worker_lost", "killed", now=3.0, retry=True)
    row = ledger.get("a/1.jpg")
    assert row is not None and (row.status, row.attempts, row.error_reason) == ("pending", 1, "worker_lost")
    ledger.claim(1, now=4.0)
    assert ledger.failed("a/1.jpg", "decode_error", "bad huffman", now=5.0, retry=False)
    row = ledger.get("a/1.jpg")
    assert row is not None and (row.status, row.attempts) == ("failed", 2)
    assert ledger.claim(1, now=6.0) == []
    [f] = reports.failures(ledger, 10)
    assert (f.rel, f.reason, f.detail, f.attempts) == ("a/1.jpg", "decode_error", "bad huffman", 2)


def test_failed_ignores_images_that_are_not_running(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 1, 1, now=1.0)
    assert not ledger.failed("a/1.jpg", "x", "", now=2.0, retry=False)
    assert status(ledger, "a/1.jpg") == "pending"


def test_release_does_not_count_an_attempt(ledger: Ledger) -> None:
    for i in range(3):
        ledger.observe(f"a/{i}.jpg", 1, 1, now=1.0)
    ledger.claim(3, now=2.0)
    assert ledger.release(["a/0.jpg", "a/1.jpg", "nope.jpg"], now=3.0) == 2
    assert [status(ledger, f"a/{i}.jpg") for i in range(3)] == ["pending", "pending", "running"]
    assert ledger.get("a/0.jpg").attempts == 0  # type: ignore[union-attr]


def test_recover_after_a_crash(tmp_path: Path) -> None:
    led = Ledger.open(tmp_path)
    led.observe("a/1.jpg", 1, 1, now=1.0)
    led.observe("a/2.jpg", 1, 1, now=1.0)
    led.claim(10, now=2.0)
    led.done("a/2.jpg", 1, 1, "a/2.json", 5, now=3.0)
    led.pdf_started("a")  # cut off while building, too
    led.close()  # a crash: nothing marked

    with Ledger.open(tmp_path) as led:
        assert status(led, "a/1.jpg") == "running"
        assert led.recover(now=10.0) == 1
        assert status(led, "a/1.jpg") == "pending"
        assert status(led, "a/2.jpg") == "done"  # nothing done is redone
        assert led.folder("a").pdf_state == "needed"  # type: ignore[union-attr]
        assert led.get("a/1.jpg").attempts == 0  # type: ignore[union-attr]
        assert led.recover(now=11.0) == 0


def test_work_survives_an_abandoned_connection(tmp_path: Path) -> None:
    """Committed transitions are visible to the next process even without close()."""
    led = Ledger.open(tmp_path)
    led.observe("a/1.jpg", 1, 1, now=1.0)
    # simulate kill -9: drop the lock and leave the connection (and its WAL) as it is
    assert led._lock_fd is not None
    os.close(led._lock_fd)
    led._lock_fd = None
    with Ledger.open(tmp_path) as again:
        assert status(again, "a/1.jpg") == "pending"
    led.close()


def test_kill_9_loses_nothing_committed(tmp_path: Path) -> None:
    """A real SIGKILL mid-flight: committed work stays, the lock dies with the process."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from ocr_inbox.ledger import Ledger
        led = Ledger.open(Path({str(tmp_path)!r}))
        for i in range(500):
            led.observe(f"a/{{i}}.jpg", i, i, now=1.0)
        rows = led.claim(10, now=2.0)
        for r in rows[:4]:
            led.done(r.rel, r.size, r.mtime_ns, r.rel + ".json", 5, now=3.0)
        print("ready", flush=True)
        import time
        while True:
            led.observe("b/busy.jpg", int(time.time_ns()), 1, now=4.0)  # writing when killed
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # structlog's default output shares stdout
        if line.strip() == "ready":
            break
    else:
        pytest.fail("the child died before it was ready")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    with Ledger.open(tmp_path) as led:  # the flock went with the process
        assert led.recover(now=10.0) == 6
        s = reports.stats(led, now=10.0)
        assert (s.done, s.running) == (4, 0)
        assert s.queued == 496 + (1 if led.get("b/busy.jpg") else 0)


# -- gone / refuse -----------------------------------------------------------


def test_gone_and_back(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 10, 100, now=1.0)
    assert ledger.gone("a/1.jpg", now=5.0)
    assert status(ledger, "a/1.jpg") == "gone"
    assert ledger.folder("a").last_activity == 5.0  # type: ignore[union-attr]
    assert ledger.claim(10, now=6.0) == []
    assert reports.stats(ledger, now=6.0).gone == 1
    assert ledger.observe("a/1.jpg", 10, 100, now=7.0) is Observation.returned
    assert status(ledger, "a/1.jpg") == "pending"
    assert not ledger.gone("unknown.jpg", now=8.0)


def test_a_done_image_whose_file_left_is_gone_unless_delete_processed_took_it(ledger: Ledger) -> None:
    for rel in ("a/1.jpg", "a/2.jpg"):
        ledger.observe(rel, 1, 1, now=1.0)
    ledger.claim(2, now=2.0)
    for rel in ("a/1.jpg", "a/2.jpg"):
        ledger.done(rel, 1, 1, rel + ".json", 5, now=3.0)
    assert ledger.source_deleted("a/2.jpg", 1, 1, now=3.5)
    assert ledger.gone("a/1.jpg", now=4.0)
    assert not ledger.gone("a/2.jpg", now=4.0)  # its page lives on in the folder's PDF
    assert [status(ledger, r) for r in ("a/1.jpg", "a/2.jpg")] == ["gone", "done"]
    assert ledger.folder("a").pdf_state == "needed"  # type: ignore[union-attr]  # not re-armed by the leaving
    # back unchanged: seen as returned (its JSON is then adopted again, see intake)
    assert ledger.observe("a/1.jpg", 1, 1, now=5.0) is Observation.returned


def test_gone_while_running_refuses_the_result(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 1, 1, now=1.0)
    ledger.claim(1, now=2.0)
    assert ledger.gone("a/1.jpg", now=3.0)
    assert not ledger.done("a/1.jpg", 1, 1, "a/1.json", 5, now=4.0)
    assert status(ledger, "a/1.jpg") == "gone"


def test_gone_tree(ledger: Ledger) -> None:
    for rel in ("book/1.jpg", "book/ch1/2.jpg", "bookend/3.jpg", "other/4.jpg"):
        ledger.observe(rel, 1, 1, now=1.0)
    ledger.claim(1, now=2.0)  # book/1.jpg running
    assert ledger.gone_tree("book", now=5.0) == 2
    assert [status(ledger, r) for r in ("book/1.jpg", "book/ch1/2.jpg", "bookend/3.jpg", "other/4.jpg")] == [
        "gone",
        "gone",
        "pending",
        "pending",
    ]
    assert ledger.folder("book/ch1").last_activity == 5.0  # type: ignore[union-attr]
    assert ledger.gone_tree("book/", now=6.0) == 0


def test_as_dict(ledger: Ledger) -> None:
    ledger.refuse("a/x.jpg", "not_a_regular_file", "p", now=1.0)
    assert reports.failures(ledger, 1)[0].as_dict()["reason"] == "not_a_regular_file"
    assert reports.folders(ledger)[0].as_dict()["folder"] == "a"
    assert reports.stats(ledger, now=1.0).as_dict()["failed"] == 1


def test_refuse_quarantines_without_retry(ledger: Ledger) -> None:
    assert ledger.refuse("a/link.jpg", "symlink_outside_inbox", "points to /etc", now=1.0)
    assert not ledger.refuse("a/link.jpg", "symlink_outside_inbox", "points to /etc", now=2.0)
    row = ledger.get("a/link.jpg")
    assert row is not None and row.status == "failed" and row.error_reason == "symlink_outside_inbox"
    assert ledger.claim(10, now=3.0) == []
    assert [f.reason for f in reports.failures(ledger, 10)] == ["symlink_outside_inbox"]
    assert ledger.folder("a").pdf_state == "none"  # type: ignore[union-attr]
    # fixed: now a real file -> queued
    assert ledger.observe("a/link.jpg", 10, 100, now=4.0) is Observation.changed
    assert status(ledger, "a/link.jpg") == "pending"


# -- folder PDFs -------------------------------------------------------------


def finish_all(led: Ledger, now: float) -> None:
    for r in led.claim(1000, now):
        led.done(r.rel, r.size, r.mtime_ns, r.rel + ".json", 5, now)


def test_quiet_folder_needs_time_and_all_images_done(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 1, 1, now=100.0)
    ledger.observe("a/2.jpg", 1, 1, now=101.0)
    assert ledger.folder("a").pdf_state == "needed"  # type: ignore[union-attr]
    assert ledger.quiet_folders(now=500.0, quiet_seconds=60) == []  # pending images
    [r1, r2] = ledger.claim(10, now=102.0)
    assert ledger.quiet_folders(now=500.0, quiet_seconds=60) == []  # running images
    ledger.done(r1.rel, 1, 1, "1.json", 5, now=103.0)
    ledger.failed(r2.rel, "decode_error", "", now=103.0, retry=False)
    assert ledger.quiet_folders(now=160.0, quiet_seconds=60) == []  # not quiet yet
    [f] = ledger.quiet_folders(now=161.0, quiet_seconds=60)  # quiet since the last change
    assert (f.folder, f.pdf_state) == ("a", "needed")

    ledger.pdf_started("a")
    assert ledger.quiet_folders(now=163.0, quiet_seconds=60) == []
    assert reports.stats(ledger, now=163.0).folders_waiting == 1
    assert ledger.pdf_done("a", pages=1, now=164.0)
    row = ledger.folder("a")
    assert row is not None and (row.pdf_state, row.pdf_pages, row.pdf_at) == ("done", 1, 164.0)
    assert ledger.quiet_folders(now=1000.0, quiet_seconds=60) == []
    assert reports.stats(ledger, now=1000.0).folders_waiting == 0


def test_folder_without_a_done_image_gets_no_pdf(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 1, 1, now=1.0)
    ledger.claim(1, now=2.0)
    ledger.failed("a/1.jpg", "decode_error", "", now=3.0, retry=False)
    assert ledger.quiet_folders(now=1000.0, quiet_seconds=60) == []


def test_late_page_rearms_the_pdf(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 1, 1, now=1.0)
    finish_all(ledger, now=2.0)
    ledger.pdf_started("a")
    ledger.pdf_done("a", pages=1, now=101.0)
    ledger.observe("a/2.jpg", 1, 1, now=200.0)  # a late page
    row = ledger.folder("a")
    assert row is not None and (row.pdf_state, row.last_activity) == ("needed", 200.0)
    assert ledger.quiet_folders(now=1000.0, quiet_seconds=60) == []  # 2.jpg pending
    finish_all(ledger, now=201.0)
    assert ledger.quiet_folders(now=259.0, quiet_seconds=60) == []
    assert [f.folder for f in ledger.quiet_folders(now=260.0, quiet_seconds=60)] == ["a"]


def test_page_arriving_during_the_build_keeps_the_pdf_needed(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 1, 1, now=1.0)
    finish_all(ledger, now=2.0)
    ledger.pdf_started("a")
    ledger.observe("a/2.jpg", 1, 1, now=101.0)
    assert not ledger.pdf_done("a", pages=1, now=102.0)
    row = ledger.folder("a")
    assert row is not None and row.pdf_state == "needed" and row.pdf_pages == 1


def test_pdf_failed_until_the_folder_changes(ledger: Ledger) -> None:
    ledger.observe("a/1.jpg", 1, 1, now=1.0)
    finish_all(ledger, now=2.0)
    ledger.pdf_started("a")
    assert ledger.pdf_failed("a", "disk full", now=101.0)
    row = ledger.folder("a")
    assert row is not None and (row.pdf_state, row.pdf_error) == ("failed", "disk full")
    assert ledger.quiet_folders(now=1000.0, quiet_seconds=60) == []
    ledger.observe("a/1.jpg", 2, 2, now=1001.0)  # the folder changes: try again
    assert ledger.folder("a").pdf_state == "needed"  # type: ignore[union-attr]
    ledger.pdf_started("a")
    assert ledger.folder("a").pdf_error is None  # type: ignore[union-attr]


# -- reports -----------------------------------------------------------------


def test_stats_and_throughput(ledger: Ledger) -> None:
    for i in range(10):
        ledger.observe(f"a/{i}.jpg", 1, 1, now=0.0)
    rows = ledger.claim(8, now=1.0)
    for r in rows[:6]:
        ledger.done(r.rel, 1, 1, "x.json", 5, now=100.0 if r.rel < "a/3" else 30.0)
    ledger.failed(rows[6].rel, "decode_error", "", now=100.0, retry=False)
    s = reports.stats(ledger, now=100.0, window_s=60)
    assert (s.queued, s.running, s.done, s.failed, s.gone) == (2, 1, 6, 1, 0)
    assert s.rate == pytest.approx(3 / 60)  # 3 done within the window
    assert s.folders_waiting == 1


def test_folders_summary(ledger: Ledger) -> None:
    ledger.observe("b/1.jpg", 1, 1, now=1.0)
    ledger.observe("a/1.jpg", 1, 1, now=2.0)
    ledger.observe("a/2.jpg", 1, 1, now=2.0)
    ledger.observe("a/3.jpg", 1, 1, now=2.0)
    ledger.claim(1, now=3.0)  # b/1
    [a1, a2] = ledger.claim(2, now=3.0)
    ledger.done(a1.rel, 1, 1, "x", 5, now=4.0)
    ledger.failed(a2.rel, "r", "", now=4.0, retry=False)
    b, a = reports.folders(ledger)
    assert (b.folder, b.done, b.pending, b.running, b.failed) == ("b", 0, 0, 1, 0)
    assert (a.folder, a.done, a.pending, a.running, a.failed) == ("a", 1, 1, 0, 1)
    assert a.pdf_state == "needed"


def test_known_paths_iterates_everything_in_chunks(ledger: Ledger) -> None:
    for i in range(25):
        ledger.observe(f"a/{i:02}.jpg", i, i * 10, now=1.0)
    ledger.refuse("a/fifo.jpg", "not_a_regular_file", "p", now=1.0)
    seen = []
    for k in ledger.known_paths(chunk=4):
        seen.append(k)
        if k.rel == "a/03.jpg":
            ledger.gone("a/03.jpg", now=2.0)  # writing while iterating is fine
    assert len(seen) == 26
    assert seen[0][:5] == ("a/00.jpg", 0, 0, "pending", False)
    assert ("a/fifo.jpg", -1, -1, "failed", False) in [k[:5] for k in seen]
    assert ledger.get("a/03.jpg").status == "gone"  # type: ignore[union-attr]


def _done_folder(led: Ledger, names: list[str], now: float) -> None:
    """Folder ``a``'s images done and its PDF published with them."""
    for rel in names:
        led.observe(rel, 10, 1, now)
    assert sorted(r.rel for r in led.claim(100, now)) == names
    for rel in names:
        assert led.done(rel, 10, 1, "out", 5, now)
    led.pdf_started("a")
    assert led.pdf_done("a", len(names), now)


def test_a_done_image_leaving_rearms_its_folders_pdf_and_an_emptied_folder_keeps_its_last_one(ledger: Ledger) -> None:
    _done_folder(ledger, ["a/1.png", "a/2.png"], 100.0)
    assert ledger.gone("a/1.png", 101.0)
    assert ledger.folder("a").pdf_state == "needed"  # rebuilt without it once quiet
    assert [r.rel for r in ledger.pages_of("a")] == ["a/2.png"]
    ledger.pdf_started("a")
    assert ledger.pdf_done("a", 1, 102.0)
    assert ledger.gone("a/2.png", 103.0)
    row = ledger.folder("a")
    assert (row.pdf_state, row.pdf_pages) == ("done", 1)  # nothing left: the last PDF is kept
    (summary,) = reports.folders(ledger)
    assert summary.pdf_kept and summary.done == 0
    assert ledger.quiet_folders(1000.0, 0.0) == [] and ledger.next_quiet_at(0.0) is None


def test_a_folder_emptied_during_its_build_is_due_for_nothing(ledger: Ledger) -> None:
    _done_folder(ledger, ["a/1.png", "a/2.png"], 100.0)
    ledger.observe("a/3.png", 10, 1, 101.0)  # a new page: a build starts
    claim_one(ledger, "a/3.png", 101.0)
    assert ledger.done("a/3.png", 10, 1, "out", 5, 101.0)
    ledger.pdf_started("a")
    assert ledger.gone_tree("a", 102.0) == 3  # the folder deleted mid-build
    assert ledger.folder("a").pdf_state == "done"
    assert not ledger.pdf_failed("a", "a/1.png changed since it was OCR'd", 103.0)  # the build's end changes nothing
    ledger.pdf_rearm("a")
    assert ledger.folder("a").pdf_state == "done" and ledger.folder("a").pdf_pages == 2


def test_a_pending_image_leaving_does_not_rearm_a_published_pdf(ledger: Ledger) -> None:
    _done_folder(ledger, ["a/1.png"], 100.0)
    ledger.observe("a/2.png", 10, 1, 101.0)
    ledger.pdf_started("a")
    ledger.pdf_done("a", 1, 101.5)  # (as if built before it came)
    assert ledger.gone("a/2.png", 102.0)
    assert ledger.folder("a").pdf_state == "done"
