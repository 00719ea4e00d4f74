"""The ``Pipeline`` (the core both commands drive) on a real ledger and inbox in a temp dir,
with the fake in-process executor of test_dispatch_unit.py: no worker processes.

Each test drives it as the daemon does (``step`` pass after pass) and checks what the
stages told each other through the events it routes: a done image wakes its folder's
PDF, a file that moved under a worker goes back to intake, a crash is retried, an image
quarantined; and the pipeline's own jobs, the pool swap on reload and the drain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imagemaker import plain
from structlog.testing import capture_logs
from test_dispatch_unit import FakeExecutor, LedgerLooks

from ocr_inbox import config
from ocr_inbox.core import pipeline
from ocr_inbox.core.events import ImageDone, ImageFailed, ImageMoved
from ocr_inbox.core.pipeline import Pipeline
from ocr_inbox.executors import messages as m
from ocr_inbox.executors.base import Executor
from ocr_inbox.ledger import ImageStatus, Ledger, reports
from ocr_inbox.ocr.results import Line, Page
from ocr_inbox.outbox import document, names

#: files settle at the first look again, no periodic rescan; one image a batch; a folder's
#: PDF is due an hour after its last change (no build starts in these tests: no processes)
BASE: dict[str, Any] = {
    "watch": {"settle_seconds": 0, "rescan_interval_s": 0},
    "pool": {"batch_size": 1, "max_attempts": 2, "crash_breaker": 0},
    "pdf": {"quiet_seconds": 3600},
}


def _settings(**sections: dict[str, Any]) -> config.Settings:
    merged = {k: {**BASE.get(k, {}), **sections.get(k, {})} for k in {*BASE, *sections}}
    return config.Settings.model_validate(merged)


class Rig(LedgerLooks):
    def __init__(self, tmp: Path, settings: config.Settings, workers: int = 1) -> None:
        self.inbox = tmp / "inbox"
        self.outbox = tmp / "outbox"
        self.inbox.mkdir()
        self.state = tmp / "state"
        self.ledger = Ledger.open(self.state)
        self.workers = workers
        #: every executor the pipeline made, oldest first (a reload makes a new one)
        self.made: list[FakeExecutor] = []
        self.p = Pipeline(settings, self.ledger, self.inbox, self.outbox, make_executor=self._make)
        self.p.recover(self.state)
        self.p.create_workers()
        self.p.intake.full_scan()

    def _make(self, settings: config.Settings, inbox: Path, max_workers: int | None) -> Executor:
        ex = FakeExecutor(self.workers)
        self.made.append(ex)
        return ex

    @property
    def ex(self) -> FakeExecutor:
        return self.made[-1]

    def add(self, *rels: str) -> None:
        """New files in the inbox, seen by a scan and settled: queued, and handed out at once."""
        for rel in rels:
            plain(self.inbox / rel)
        self.p.intake.full_scan()
        self.settle()

    def settle(self) -> None:
        for _ in range(100):
            if not self.p.intake.settling:
                return
            self.p.step(0)
        raise AssertionError("still settling")

    def done(self, job: m.Job) -> m.Done:
        """The worker's result for ``job``, for the version of the file in the inbox."""
        st = (self.inbox / job.rel).stat()
        line = Line("hello world", 0.99, ((0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (0.0, 5.0)))
        return m.Done(0, job, st.st_size, st.st_mtime_ns, "ab" * 32, {"engine": "fake"}, (Page(0, 64, 48, (line,)),), 7)

    def crash(self, ex: FakeExecutor, batch: m.Batch) -> None:
        """The worker holding ``batch`` (of one image) died on it."""
        ex.finish(batch)
        ex.emit(m.WorkerLost(0, "signal SIGKILL", batch.jobs[0], ()), m.WorkerExit(0, "crashed"))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, _settings())
    yield r
    r.p.stop(0.0)
    r.ledger.close()


# -- the flow -------------------------------------------------------------------------


def test_a_file_goes_from_queued_to_done_and_its_folders_pdf_becomes_due(rig: Rig) -> None:
    rig.add("book/a.png")
    (batch,) = rig.ex.batches
    assert [j.rel for j in batch.jobs] == ["book/a.png"] and rig.status("book/a.png") == ImageStatus.running

    rig.ex.finish(batch)
    rig.ex.emit(rig.done(batch.jobs[0]))
    with capture_logs() as logs:
        events = rig.p.step(0)

    st = (rig.inbox / "book/a.png").stat()
    assert events == [ImageDone("book/a.png", st.st_size, st.st_mtime_ns)]
    assert rig.status("book/a.png") == ImageStatus.done
    doc = document.read_current(names.json_path_for(rig.outbox, "book/a.png"), st.st_size, st.st_mtime_ns)
    assert doc is not None and doc.pages[0].text == "hello world"
    # the done image woke its folder's PDF stage: the PDF is due (said in the journal), and the
    # daemon's loop is told when to wake for it
    assert [e["folder"] for e in logs if e["event"] == "pdf_due"] == ["book"]
    assert reports.pdf_due_at(rig.ledger, "book", 3600) is not None
    due = rig.p.due_in()
    assert due is not None and 0 < due <= 3600


def test_a_file_that_moved_under_a_worker_goes_back_to_intake_and_is_queued_again(rig: Rig) -> None:
    rig.add("a.png")
    (batch,) = rig.ex.batches
    rig.ex.finish(batch)
    plain(rig.inbox / "a.png", size=(80, 60))  # rewritten while the worker read it
    rig.ex.emit(m.Failed(0, batch.jobs[0], "changed", "the file changed while read", transient=True))

    # intake takes it in the same pass (settle_seconds = 0 here) and queues its new version
    assert rig.p.step(0) == [ImageMoved("a.png")]
    rig.settle()
    row = rig.ledger.get("a.png")
    assert row is not None and row.size == (rig.inbox / "a.png").stat().st_size and row.attempts == 0
    assert [b.jobs[0].rel for b in rig.ex.batches] == ["a.png", "a.png"]  # its new version handed out


# -- faults ---------------------------------------------------------------------------


def test_a_worker_crash_retries_the_image_and_a_second_quarantines_it(rig: Rig) -> None:
    rig.add("f/poison.png")
    rig.crash(rig.ex, rig.ex.batches[-1])
    assert rig.p.step(0) == []  # not final: nothing for the other stages
    assert rig.attempts("f/poison.png") == 1
    assert rig.ex.job("f/poison.png").attempt == 2  # handed out again in the same pass

    rig.crash(rig.ex, rig.ex.batches[-1])
    with capture_logs() as logs:
        assert rig.p.step(0) == [ImageFailed("f/poison.png", "worker_crashed")]
    assert rig.status("f/poison.png") == ImageStatus.failed
    assert [(f.rel, f.reason, f.attempts) for f in reports.failures(rig.ledger)] == [("f/poison.png", "worker_crashed", 2)]
    assert len(rig.ex.batches) == 2  # not handed out again
    assert [e["event"] for e in logs if e["event"] == "image_quarantined"] == ["image_quarantined"]


def test_an_image_that_fails_is_quarantined_at_once_and_the_rest_goes_on(rig: Rig) -> None:
    rig.add("bad.png", "good.png")
    (first,) = rig.ex.batches
    bad = first.jobs[0].rel
    rig.ex.finish(first)
    rig.ex.emit(m.Failed(0, first.jobs[0], "truncated", "image file is truncated"))
    assert rig.p.step(0) == [ImageFailed(bad, "truncated")]
    assert rig.status(bad) == ImageStatus.failed
    (other,) = {"bad.png", "good.png"} - {bad}
    assert rig.ex.batches[-1].jobs[0].rel == other and rig.status(other) == ImageStatus.running


# -- delete_processed -----------------------------------------------------------------


def test_without_pdfs_delete_processed_deletes_a_source_once_its_json_is_recorded(tmp_path: Path) -> None:
    r = Rig(tmp_path, _settings(inbox={"delete_processed": True}, pdf={"enabled": False}))
    r.add("a.png")
    (batch,) = r.ex.batches
    r.ex.finish(batch)
    r.ex.emit(r.done(batch.jobs[0]))
    r.p.step(0)
    assert not (r.inbox / "a.png").exists()
    assert r.status("a.png") == ImageStatus.done  # its JSON stays, the ledger knows why it left
    r.p.stop(0.0)
    r.ledger.close()


def test_with_pdfs_delete_processed_waits_for_the_pdf(tmp_path: Path) -> None:
    r = Rig(tmp_path, _settings(inbox={"delete_processed": True}))
    r.add("a.png")
    (batch,) = r.ex.batches
    r.ex.finish(batch)
    r.ex.emit(r.done(batch.jobs[0]))
    r.p.step(0)
    assert (r.inbox / "a.png").exists() and r.status("a.png") == ImageStatus.done
    r.p.stop(0.0)
    r.ledger.close()


# -- the pool swap on reload, the drain ---------------------------------------------------


def test_a_reload_that_changes_the_pool_swaps_it_and_keeps_the_queued_work(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "preflight", lambda settings: None)  # the models are not the point here
    rig.add("a.png", "b.png", "c.png")
    old = rig.ex
    (held,) = old.batches  # the old pool is OCR'ing one image; two are queued
    queued = {"a.png", "b.png", "c.png"} - {held.jobs[0].rel}
    tended: list[Executor] = []

    def tend(ex: Executor) -> bool:
        """The driver's turn on each pass: the old pool's batch finishes during the swap."""
        tended.append(ex)
        if old.running:
            old.finish(held)
            old.emit(rig.done(held.jobs[0]))
        return True

    new_settings = _settings(pool={"batch_size": 2})
    in_effect = rig.p.reload(new_settings, [], tend, drain_s=60.0)

    assert in_effect.pool.batch_size == 2 and rig.p.dispatch.settings.batch_size == 2
    new = rig.ex
    assert new is not old and rig.p.executor is new and old.stopped and not new.stopped
    assert tended and all(ex is new for ex in tended)  # the working pool was served while the old one finished
    # the old pool's last batch was recorded; the queued images went to the new pool, none lost
    assert rig.status(held.jobs[0].rel) == ImageStatus.done
    assert {j.rel for b in new.batches for j in b.jobs} == queued
    assert all(rig.status(rel) == ImageStatus.running for rel in queued)


def test_a_reload_given_up_while_the_new_pool_loads_keeps_the_running_one(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "preflight", lambda settings: None)
    rig.add("a.png")
    old = rig.ex

    def not_ready(ex: FakeExecutor) -> int:
        return 0

    # every new pool never gets ready: a stop asked meanwhile gives it up at once
    monkeypatch.setattr(FakeExecutor, "ready_count", not_ready)
    in_effect = rig.p.reload(_settings(pool={"batch_size": 2}), [], lambda ex: False, drain_s=60.0)
    assert in_effect.pool.batch_size == 1 and rig.p.executor is old and not old.stopped
    assert rig.made[-1] is not old and rig.made[-1].stopped  # the new one was stopped
    assert rig.status("a.png") == ImageStatus.running  # still the old pool's


def test_the_drain_returns_unfinished_work_to_the_queue_and_stops_the_workers(rig: Rig) -> None:
    rig.add("a.png", "b.png")
    assert sorted([rig.status("a.png"), rig.status("b.png")]) == sorted([ImageStatus.running, ImageStatus.pending])
    rig.p.stop(0.0)  # the batch in flight does not finish within the deadline
    assert rig.ex.stopped
    assert [(rig.status(r), rig.attempts(r)) for r in ("a.png", "b.png")] == [(ImageStatus.pending, 0)] * 2
    assert rig.p.drain(0.0) == []  # a second drain has nothing to do
