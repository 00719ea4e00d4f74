"""Dispatch on a real ledger with a fake in-process executor: no worker processes.

The executor only records the batches it is given and returns the events a test
scripts (``Done``, ``Failed``, ``WorkerLost``, ``WorkerExit``), so retries,
quarantine and the crash breaker are decided by ``Dispatch`` alone, as the daemon
and ``ocr-inbox ocr`` use it. The daemon-level fault tests (test_faults.py,
test_hostile_workers.py) cover the same rules with real processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ocr_inbox.config import PoolSettings
from ocr_inbox.core.dispatch import Dispatch
from ocr_inbox.core.events import Event, ImageDone, ImageFailed, ImageMoved
from ocr_inbox.executors import messages as m
from ocr_inbox.executors.base import Executor, WorkerView
from ocr_inbox.ledger import ImageStatus, Ledger, reports
from ocr_inbox.ocr.results import Line, Page
from ocr_inbox.outbox import document, names

SIZE, MTIME = 1234, 1_700_000_000_000_000_000


class FakeExecutor:
    """An ``Executor`` with ``size`` workers that runs nothing: ``submit`` keeps the batch,
    ``poll`` returns what the test queued with ``emit``. A batch holds its worker until the
    test ends it (``finish``), as a worker is busy until its batch is done or it dies."""

    boots_beside = True

    def __init__(self, size: int = 1) -> None:
        self._size = size
        self.batches: list[m.Batch] = []
        self.running: list[m.Batch] = []
        self._events: list[m.Event] = []
        self.stopped = False

    # the test's side
    def emit(self, *events: m.Event) -> None:
        self._events.extend(events)

    def finish(self, batch: m.Batch) -> None:
        self.running.remove(batch)

    def job(self, rel: str) -> m.Job:
        """The last job handed out for ``rel``."""
        return next(j for b in reversed(self.batches) for j in b.jobs if j.rel == rel)

    # the protocol
    def start(self) -> None:
        pass

    @property
    def size(self) -> int:
        return self._size

    def ready_count(self) -> int:
        return self._size

    def healthy(self) -> bool:
        return True

    def capacity(self) -> int:
        return self._size - len(self.running)

    def submit(self, batch: m.Batch) -> None:
        assert self.capacity() > 0
        self.batches.append(batch)
        self.running.append(batch)

    def poll(self, timeout: float, extra: Iterable[Any] = ()) -> list[m.Event]:
        events, self._events = self._events, []
        return events

    def busy(self) -> bool:
        return bool(self.running)

    def in_flight(self) -> list[m.Job]:
        return [j for b in self.running for j in b.jobs]

    def workers_view(self) -> list[WorkerView]:
        return []

    def status_note(self) -> str:
        return ""

    def unavailable_for(self) -> float:
        return 0.0

    def unavailable_why(self) -> str:
        return ""

    def stop(self, deadline_s: float = 10.0) -> None:
        self.running.clear()
        self.stopped = True


def _typed(ex: FakeExecutor) -> Executor:
    return ex  # mypy checks here that the fake implements the protocol


class LedgerLooks:
    """What a rig's ledger says of one image (both rigs, this one and the pipeline's)."""

    ledger: Ledger

    def status(self, rel: str) -> ImageStatus:
        row = self.ledger.get(rel)
        assert row is not None, rel
        return row.status

    def attempts(self, rel: str) -> int:
        row = self.ledger.get(rel)
        assert row is not None, rel
        return row.attempts


class Rig(LedgerLooks):
    """A ``Dispatch`` over a ledger in a temp dir, the fake executor and the events it returned."""

    def __init__(self, tmp: Path, workers: int = 1, **pool: Any) -> None:
        self.outbox = tmp / "outbox"
        self.ledger = Ledger.open(tmp / "state")
        self.ex = FakeExecutor(workers)
        self.moved: list[str] = []
        self.results: list[tuple[str, bool]] = []
        self.done: list[tuple[str, int, int]] = []
        self.d = Dispatch(self.ledger, self.outbox, PoolSettings(**pool))

    def _saw(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, ImageMoved):
                self.moved.append(ev.rel)
            elif isinstance(ev, ImageDone):
                self.results.append((ev.rel, True))
                self.done.append((ev.rel, ev.size, ev.mtime_ns))
            elif isinstance(ev, ImageFailed):
                self.results.append((ev.rel, False))

    def queue(self, *rels: str) -> None:
        for rel in rels:
            assert self.ledger.observe(rel, SIZE, MTIME, 1.0).queued

    def fill(self) -> list[m.Batch]:
        before = len(self.ex.batches)
        self.d.fill(_typed(self.ex))
        return self.ex.batches[before:]

    def record(self, *events: m.Event) -> None:
        self.ex.emit(*events)
        self._saw(self.d.record(self.ex.poll(0)))

    def lost(self, batch: m.Batch, in_flight: str | None, decoding: str | None = None, reason: str = "worker_crashed") -> None:
        """The worker holding ``batch`` died while OCR'ing ``in_flight``."""
        self.ex.finish(batch)
        jobs = {j.rel: j for j in batch.jobs}
        unstarted = tuple(j for j in batch.jobs if j.rel not in (in_flight, decoding))
        self.record(
            m.WorkerLost(0, "signal SIGKILL", jobs.get(in_flight or ""), unstarted,
                         decoding=jobs.get(decoding or ""), reason=reason),
            m.WorkerExit(0, "crashed"),
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, workers=1, batch_size=3, max_attempts=2, crash_breaker=0)
    yield r
    r.ledger.close()


def _done(job: m.Job, text: str = "hello world") -> m.Done:
    line = Line(text, 0.99, ((0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (0.0, 5.0)))
    return m.Done(0, job, SIZE, MTIME, "ab" * 32, {"engine": "fake"}, (Page(0, 64, 48, (line,)),), 7)


# -- success -------------------------------------------------------------------------


def test_a_done_image_gets_its_json_and_the_ledger_says_done(rig: Rig) -> None:
    rig.queue("box/a.png")
    (batch,) = rig.fill()
    assert [j.rel for j in batch.jobs] == ["box/a.png"] and batch.jobs[0].attempt == 1
    assert rig.status("box/a.png") == ImageStatus.running
    rig.ex.finish(batch)
    rig.record(_done(batch.jobs[0]), m.BatchDone(0, batch.batch_id, 100 << 20))

    doc = document.read_current(names.json_path_for(rig.outbox, "box/a.png"), SIZE, MTIME)
    assert doc is not None and doc.pages[0].text == "hello world"
    row = rig.ledger.get("box/a.png")
    assert row is not None and row.status == ImageStatus.done
    assert row.output == str(names.json_path_for(rig.outbox, "box/a.png"))
    assert rig.results == [("box/a.png", True)] and rig.done == [("box/a.png", SIZE, MTIME)]


def test_a_result_for_a_version_replaced_meanwhile_is_not_written(rig: Rig) -> None:
    rig.queue("a.png")
    (batch,) = rig.fill()
    rig.ledger.observe("a.png", SIZE + 1, MTIME + 1, 2.0)  # the file changed while it was OCR'd
    rig.record(_done(batch.jobs[0]))
    assert not names.json_path_for(rig.outbox, "a.png").exists()
    assert rig.status("a.png") == ImageStatus.pending and rig.results == []


# -- the image's own failures ------------------------------------------------------------


def test_an_image_that_fails_is_quarantined_at_once_with_its_reason(rig: Rig) -> None:
    rig.queue("bad.png")
    (batch,) = rig.fill()
    rig.record(m.Failed(0, batch.jobs[0], "truncated", "image file is truncated"))
    assert rig.status("bad.png") == ImageStatus.failed
    assert [(f.rel, f.reason) for f in reports.failures(rig.ledger)] == [("bad.png", "truncated")]
    assert rig.results == [("bad.png", False)]


def test_a_file_that_moved_under_the_worker_goes_back_to_intake_uncounted(rig: Rig) -> None:
    rig.queue("moving.png")
    (batch,) = rig.fill()
    rig.record(m.Failed(0, batch.jobs[0], "changed", "the file changed while read", transient=True))
    assert rig.status("moving.png") == ImageStatus.pending and rig.attempts("moving.png") == 0
    assert rig.moved == ["moving.png"] and rig.results == []


# -- a worker lost: retries, then quarantine ------------------------------------------


def test_a_lost_worker_retries_its_image_and_requeues_the_unstarted_uncounted(rig: Rig) -> None:
    rig.queue("f/1.png", "f/2.png", "f/3.png")
    (batch,) = rig.fill()
    assert [j.rel for j in batch.jobs] == ["f/1.png", "f/2.png", "f/3.png"]
    rig.lost(batch, in_flight="f/2.png")

    # the suspect: retried, its attempt counted with the reason; the others: never started
    assert rig.status("f/2.png") == ImageStatus.pending and rig.attempts("f/2.png") == 1
    row = rig.ledger.get("f/2.png")
    assert row is not None and row.error_reason == "worker_crashed" and "attempt 1 of 2" in (row.error_detail or "")
    for rel in ("f/1.png", "f/3.png"):
        assert rig.status(rel) == ImageStatus.pending and rig.attempts(rel) == 0
    assert rig.results == []

    # handed out again, the retry carries its attempt number
    (again,) = rig.fill()
    assert rig.ex.job("f/2.png").attempt == 2 and {j.rel for j in again.jobs} == {"f/1.png", "f/2.png", "f/3.png"}


def test_an_image_that_keeps_killing_workers_is_quarantined_as_worker_crashed(rig: Rig) -> None:
    rig.queue("poison.png", "fine.png")
    for attempt in (1, 2):
        (batch,) = rig.fill()
        assert rig.ex.job("poison.png").attempt == attempt
        rig.lost(batch, in_flight="poison.png")
    assert rig.status("poison.png") == ImageStatus.failed
    (failure,) = reports.failures(rig.ledger)
    assert (failure.rel, failure.reason, failure.attempts) == ("poison.png", "worker_crashed", 2)
    assert rig.results == [("poison.png", False)]
    # the image beside it was never blamed and is still queued
    assert rig.status("fine.png") == ImageStatus.pending and rig.attempts("fine.png") == 0


def test_a_stuck_worker_blames_its_image_as_worker_stuck(rig: Rig) -> None:
    rig.queue("slow.png")
    for _ in (1, 2):
        (batch,) = rig.fill()
        rig.lost(batch, in_flight="slow.png", reason="worker_stuck")
    assert [(f.rel, f.reason) for f in reports.failures(rig.ledger)] == [("slow.png", "worker_stuck")]


def test_the_image_decoded_beside_the_crash_is_a_suspect_too(rig: Rig) -> None:
    rig.queue("a.png", "b.png", "c.png")
    (batch,) = rig.fill()
    rig.lost(batch, in_flight="a.png", decoding="b.png")
    for rel in ("a.png", "b.png"):
        row = rig.ledger.get(rel)
        assert row is not None and row.attempts == 1 and "beside it" in (row.error_detail or "")
    assert rig.attempts("c.png") == 0


def test_a_worker_lost_between_images_blames_nobody(rig: Rig) -> None:
    rig.queue("a.png", "b.png")
    (batch,) = rig.fill()
    rig.lost(batch, in_flight=None)
    assert [(rig.status(r), rig.attempts(r)) for r in ("a.png", "b.png")] == [(ImageStatus.pending, 0)] * 2


# -- the crash breaker ----------------------------------------------------------------


@pytest.fixture
def stormy(tmp_path: Path) -> Iterator[Rig]:
    """Four workers of one image each; an image is quarantined at its first crash, and
    three different images crashing in a row is a storm."""
    r = Rig(tmp_path, workers=4, batch_size=1, max_attempts=1, crash_breaker=3, crash_pause_s=60.0)
    yield r
    r.ledger.close()


def _by_rel(batches: list[m.Batch]) -> dict[str, m.Batch]:
    return {b.jobs[0].rel: b for b in batches}


def test_a_crash_storm_pauses_dispatch_and_forgives_the_streak(stormy: Rig) -> None:
    stormy.queue("a.png", "b.png", "c.png", "d.png", "e.png")
    held = _by_rel(stormy.fill())
    assert set(held) == {"a.png", "b.png", "c.png", "d.png"}

    stormy.lost(held["a.png"], in_flight="a.png")
    stormy.lost(held["b.png"], in_flight="b.png")
    # before the breaker trips, each crash counts: max_attempts=1 quarantines them
    assert stormy.status("a.png") == stormy.status("b.png") == ImageStatus.failed
    assert not stormy.d.storm

    stormy.lost(held["c.png"], in_flight="c.png")
    # the third different image in a row: the machine's fault, not theirs
    assert stormy.d.storm and stormy.d.pause_reason.startswith("crash storm")
    for rel in ("a.png", "b.png", "c.png"):
        assert stormy.status(rel) == ImageStatus.pending and stormy.attempts(rel) == 0, rel
    assert reports.failures(stormy.ledger) == []
    assert stormy.fill() == []  # nothing handed out during the pause

    # work handed out before the pause that crashes during it is not counted either
    stormy.lost(held["d.png"], in_flight="d.png")
    assert stormy.status("d.png") == ImageStatus.pending and stormy.attempts("d.png") == 0


def test_crashes_after_a_storm_count_again_and_one_success_ends_it(stormy: Rig) -> None:
    stormy.queue("a.png", "b.png", "c.png", "d.png")
    held = _by_rel(stormy.fill())
    with capture_logs() as logs:
        for rel in ("a.png", "b.png", "c.png"):
            stormy.lost(held[rel], in_flight=rel)
        assert stormy.d.storm

        stormy.d.storm_until = 0.0  # the pause ran out (it is 60 s; no test waits for it)
        again = _by_rel(stormy.fill())
        assert set(again) == {"a.png", "b.png", "c.png"}  # d.png's worker still holds it
        for rel in ("a.png", "b.png"):
            stormy.lost(again[rel], in_flight=rel)
        # the storm goes on: these crashes count (images that really kill workers still end quarantined)
        assert {f.rel for f in reports.failures(stormy.ledger)} == {"a.png", "b.png"}
        stormy.lost(again["c.png"], in_flight="c.png")
        assert stormy.d.storm
        assert {f.rel for f in reports.failures(stormy.ledger)} == {"a.png", "b.png"}  # no refund the second time
        assert stormy.status("c.png") == ImageStatus.pending

        # one image done ends the storm
        stormy.ex.finish(held["d.png"])
        stormy.record(_done(held["d.png"].jobs[0]))
        assert not stormy.d.storm and stormy.d.pause_reason == ""
    pauses = [(e["storms"], e["pause_s"]) for e in logs if e["event"] == "crash_storm_paused"]
    assert pauses == [(1, 60.0), (2, 120.0)]  # the pause doubles while the storm lasts
    assert [e["event"] for e in logs if e["event"] == "crash_storm_over"] == ["crash_storm_over"]


def test_a_crash_breaker_of_zero_never_pauses(tmp_path: Path) -> None:
    r = Rig(tmp_path, workers=4, batch_size=1, max_attempts=1, crash_breaker=0)
    r.queue("a.png", "b.png", "c.png", "d.png")
    held = _by_rel(r.fill())
    for rel in held:
        r.lost(held[rel], in_flight=rel)
    assert not r.d.storm and len(reports.failures(r.ledger)) == 4
    r.ledger.close()
