"""``ocr-inbox ocr INBOX OUTBOX``: the daemon's core, run once over a tree until the queue is empty.

The daemon's ``Pipeline`` (intake -> ledger -> dispatch -> executor -> JSON,
and folder PDFs with ``--pdf``) in its one-shot mode: no watcher, no settle
time, stepped until nothing is queued. PDFs are built while OCR goes on: a
folder's build starts with its first pages done and gets the rest as they are
done (``FolderPdfs(stream=True)``), so when the last image is done only its
page and the merge are left.
Its ledger lives in ``STATE_DIR/runs/<tree id>``: a second run skips what is
current, an interrupted run (even ``kill -9``) resumes where it stopped, and
a JSON already in the outbox for exactly this version of an image is adopted.
Never writes into the inbox.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from ocr_inbox.config import Settings
from ocr_inbox.core.events import Event, ImageDone, ImageFailed
from ocr_inbox.core.pipeline import Pipeline, check_paths
from ocr_inbox.executors.setup import preflight
from ocr_inbox.ledger import Ledger, reports
from ocr_inbox.outbox import names
from ocr_inbox.service.runs import state_dir_for
from ocr_inbox.support import atomic, cache
from ocr_inbox.support.errors import EngineUnavailable, ExitCode, OutputError
from ocr_inbox.support.progress import Progress

__all__ = ["Failure", "RunSummary", "run", "state_dir_for"]

log = structlog.get_logger(__name__)


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
    pdfs: int
    seconds: float

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.some_failed if self.failed else ExitCode.ok


def run(
    settings: Settings,
    inbox: Path,
    outbox: Path,
    *,
    pdfs: bool = False,
    retry_failed: bool = False,
    progress: bool | None = None,
) -> RunSummary:
    check_paths(inbox, outbox, settings.paths.state_dir)
    preflight(settings)
    t0 = time.monotonic()
    outbox.mkdir(parents=True, exist_ok=True)
    run_dir = state_dir_for(settings.paths.state_dir, inbox, outbox)
    with Ledger.open(run_dir) as ledger:
        want_pdfs = pdfs and settings.pdf.enabled
        p = Pipeline(settings, ledger, inbox, outbox, oneshot=True, pdfs=want_pdfs)
        p.recover(run_dir)
        p.intake.start()
        while p.intake.settling:
            p.intake.step()
        if retry_failed:
            log.info("failures_requeued", images=ledger.requeue_failed(time.time()))
        done_before = reports.stats(ledger, time.time()).done
        todo = ledger.unfinished()
        log.info("scan_done", inbox=str(inbox), to_do=todo, current=done_before)
        try:
            done = _ocr(settings, p, todo, progress) if todo else 0
            built = p.finish_pdfs()
        finally:
            p.stop(DRAIN_S)  # interrupted: nothing half-built is published, the next run builds it
        st = reports.stats(ledger, time.time())
        failed = tuple(Failure(f.rel, f.reason, f.detail) for f in reports.failures(ledger, limit=st.failed))
    summary = RunSummary(st.done + st.failed, st.done - done, done, failed, built, time.monotonic() - t0)
    report = names.report_path(outbox)
    atomic.write_json(report, {"failures": [asdict(f) for f in failed], "done": done, "skipped": summary.skipped})
    log.info("run_finished", done=done, skipped=summary.skipped, failed=len(failed), pdfs=built,
             seconds=round(summary.seconds, 2), report=str(report))
    return summary


#: how long the end waits for the batches in flight (an interrupted run resumes the rest)
DRAIN_S = 10.0


def _ocr(settings: Settings, p: Pipeline, todo: int, show: bool | None) -> int:
    """Step the pipeline until nothing is queued, running or settling (with PDFs, the folder
    builds beside it); returns the images done."""
    bar = Progress(todo, show)
    done = 0

    def count(events: list[Event]) -> None:
        nonlocal done
        for ev in events:
            if isinstance(ev, ImageDone | ImageFailed):
                ok = isinstance(ev, ImageDone)
                done += ok
                bar.advance(ok)

    def go_on() -> bool:
        if p.dispatch.paused:  # a one-shot run does not wait for space: rerun to resume
            raise OutputError("the outbox or the state directory refused a write (see the log); "
                              "fix it and run again: the run resumes where it stopped")
        lost = p.executor.unavailable_for()
        if lost > settings.executor.connect_timeout_s:  # nor for a cluster (the daemon does)
            raise EngineUnavailable(
                f"{p.executor.unavailable_why()}, for {lost:.0f} s "
                f"(executor.connect_timeout_s = {settings.executor.connect_timeout_s:g}); "
                "run again once it is fixed: the run resumes where it stopped")
        return True

    p.create_workers(max_workers=todo)  # no point booting more workers than there are images
    try:
        p.executor.start()
        while p.unfinished:
            count(p.step(1.0, (), go_on))
    finally:
        bar.close()
        count(p.drain(DRAIN_S))
        cache.purge_temp(cache.paddlex_cache_dir(settings.paths.resolved_cache_dir()), 0)
    return done
