"""``ocr-inbox ocr INBOX OUTBOX``: OCR an existing tree once, with the daemon's pool.

Scan -> skip images whose JSON is current -> batches -> worker pool -> JSON
files mirrored into the outbox -> failures report. Never writes into the inbox.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import natsort
import structlog

from ocr_inbox import atomic, cache
from ocr_inbox.config import Settings
from ocr_inbox.errors import BadArguments, ExitCode
from ocr_inbox.inbox import scan
from ocr_inbox.ocr.devices import plan_slots
from ocr_inbox.outbox import document
from ocr_inbox.pool import messages as m
from ocr_inbox.pool.factory import paddlex_cache_dir, preflight, worker_config_factory
from ocr_inbox.pool.pool import WorkerLost, WorkerPool
from ocr_inbox.progress import Progress

log = structlog.get_logger(__name__)

REPORT_DIR = ".ocr-inbox"
FAILURES_FILE = "failures.json"


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str
    detail: str


@dataclass(frozen=True)
class RunSummary:
    total: int
    skipped: int
    done: int
    failed: tuple[Failure, ...]
    seconds: float

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.some_failed if self.failed else ExitCode.ok


def validate_paths(inbox: Path, outbox: Path) -> None:
    if not inbox.is_dir():
        raise BadArguments(f"the inbox {inbox} is not a directory")
    problem = scan.check_layout(inbox, ("outbox", outbox))
    if problem:
        raise BadArguments(problem)


def _batches(jobs: deque[m.Job], size: int, ids: itertools.count[int]) -> m.Batch:
    take = [jobs.popleft() for _ in range(min(size, len(jobs)))]
    return m.Batch(next(ids), tuple(take))


def run(settings: Settings, inbox: Path, outbox: Path, progress: bool | None = None) -> RunSummary:
    validate_paths(inbox, outbox)
    preflight(settings)
    t0 = time.monotonic()
    outbox.mkdir(parents=True, exist_ok=True)
    atomic.sweep_temp_files(outbox, older_than_s=60)
    failures: list[Failure] = []
    todo: list[scan.Candidate] = []
    skipped = 0
    for item in scan.walk(inbox, settings.watch.ignore_patterns()):
        if isinstance(item, scan.Refused):
            log.warning("image_refused", path=item.rel, reason=item.reason, detail=item.detail)
            failures.append(Failure(item.rel, item.reason, item.detail))
        elif document.is_current(document.json_path_for(outbox, item.rel), os.stat(item.real)):
            skipped += 1
        else:
            todo.append(item)
    todo = natsort.natsorted(todo, key=lambda c: c.rel)
    log.info("scan_done", inbox=str(inbox), to_do=len(todo), skipped=skipped, refused=len(failures))

    done = 0
    if todo:
        done = _ocr(settings, inbox, outbox, todo, failures, progress)
    summary = RunSummary(len(todo) + skipped + len(failures), skipped, done, tuple(failures), time.monotonic() - t0)
    atomic.write_json(
        outbox / REPORT_DIR / FAILURES_FILE,
        {"failures": [f.__dict__ for f in failures], "done": done, "skipped": skipped},
    )
    log.info(
        "run_finished",
        done=done,
        skipped=skipped,
        failed=len(failures),
        seconds=round(summary.seconds, 2),
        report=str(outbox / REPORT_DIR / FAILURES_FILE),
    )
    return summary


def _ocr(
    settings: Settings, inbox: Path, outbox: Path, todo: list[scan.Candidate], failures: list[Failure], show: bool | None
) -> int:
    ids = itertools.count(1)
    jobs = deque(
        m.Job(next(ids), c.rel, c.real, str(document.json_path_for(outbox, c.rel))) for c in todo
    )
    slots = plan_slots(settings.ocr.devices, settings.ocr.workers_per_device, settings.ocr.threads_per_worker)
    slots = slots[: max(1, min(len(slots), len(jobs)))]  # no point booting idle workers
    pool = WorkerPool(slots, worker_config_factory(settings, inbox), settings.pool)
    bar = Progress(len(jobs), show)
    batch_ids = itertools.count(1)
    done = 0
    outstanding = len(jobs)
    max_attempts = settings.pool.max_attempts
    # Small batches while the queue is short keep every worker busy to the end.
    per_batch = settings.pool.batch_size
    try:
        pool.start()
        while outstanding:
            for slot in pool.idle_slots():
                if not jobs:
                    break
                size = max(1, min(per_batch, len(jobs) // pool.size or 1))
                pool.submit(slot, _batches(jobs, size, batch_ids))
            for ev in pool.poll(timeout=1.0):
                if isinstance(ev, m.Done):
                    done += 1
                    outstanding -= 1
                    bar.advance(True)
                elif isinstance(ev, m.Failed):
                    if ev.transient and ev.job.attempt < max_attempts:
                        jobs.append(m.Job(ev.job.job_id, ev.job.rel, ev.job.src, ev.job.dest, ev.job.attempt + 1))
                        continue
                    failures.append(Failure(ev.job.rel, ev.reason, ev.detail))
                    outstanding -= 1
                    bar.advance(False)
                elif isinstance(ev, WorkerLost):
                    jobs.extendleft(reversed(ev.unstarted))
                    j = ev.in_flight
                    if j is None:
                        continue
                    if j.attempt < max_attempts:
                        log.warning("image_retry", path=j.rel, attempt=j.attempt + 1, cause=ev.cause)
                        jobs.appendleft(m.Job(j.job_id, j.rel, j.src, j.dest, j.attempt + 1))
                    else:
                        log.error("image_quarantined", path=j.rel, reason="worker_crashed", cause=ev.cause)
                        failures.append(Failure(j.rel, "worker_crashed", f"the worker died on it {j.attempt} times: {ev.cause}"))
                        outstanding -= 1
                        bar.advance(False)
    finally:
        bar.close()
        pool.stop()
        cache.purge_temp(paddlex_cache_dir(settings), 0)
    return done
