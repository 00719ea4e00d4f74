"""``ocr-inbox ocr INBOX OUTBOX``: the daemon's core, run once over a tree until the queue is empty.

The same stages as the daemon (intake -> ledger -> dispatch -> executor ->
JSON, and folder PDFs with ``--pdf``), with no watcher and no settle time.
PDFs are built while OCR goes on: a folder's build starts with its first pages
done and gets the rest as they are done (``FolderPdfs(stream=True)``), so when
the last image is done only its page and the merge are left.
Its ledger lives in ``STATE_DIR/runs/<tree id>``: a second run skips what is
current, an interrupted run (even ``kill -9``) resumes where it stopped, and
a JSON already in the outbox for exactly this version of an image is adopted.
Never writes into the inbox.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import wait
from pathlib import Path

import structlog

from ocr_inbox import executors
from ocr_inbox.config import Settings
from ocr_inbox.core.dispatch import Dispatch
from ocr_inbox.core.folder_pdfs import FolderPdfs
from ocr_inbox.executors.setup import preflight
from ocr_inbox.inbox.intake import Intake
from ocr_inbox.ledger import Ledger, reports
from ocr_inbox.outbox import names
from ocr_inbox.service import runs
from ocr_inbox.service.runs import state_dir_for
from ocr_inbox.support import atomic, cache, paths
from ocr_inbox.support.errors import BadArguments, EngineUnavailable, ExitCode, OutputError
from ocr_inbox.support.progress import Progress

__all__ = ["Failure", "RunSummary", "run", "state_dir_for", "validate_paths"]

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


def validate_paths(inbox: Path, outbox: Path, state_dir: Path) -> None:
    if not inbox.is_dir():
        raise BadArguments(f"the inbox {inbox} is not a directory")
    problem = paths.check_layout(inbox, ("outbox", outbox), ("state dir", state_dir))
    if problem:
        raise BadArguments(problem)


def run(
    settings: Settings,
    inbox: Path,
    outbox: Path,
    *,
    pdfs: bool = False,
    retry_failed: bool = False,
    progress: bool | None = None,
) -> RunSummary:
    validate_paths(inbox, outbox, settings.paths.state_dir)
    preflight(settings)
    t0 = time.monotonic()
    outbox.mkdir(parents=True, exist_ok=True)
    atomic.sweep_temp_files(outbox, older_than_s=60)  # a daemon may be writing into the same outbox
    # No settle time (the tree is taken as it is) and no periodic rescan.
    watch = settings.watch.model_copy(update={"settle_seconds": 0.0, "rescan_interval_s": 0.0})
    run_dir = state_dir_for(settings.paths.state_dir, inbox, outbox)
    with Ledger.open(run_dir) as ledger:
        runs.record(run_dir, inbox, outbox)
        ledger.recover(time.time())
        intake = Intake(inbox, outbox, ledger, watch, watch=False, mode=settings.outbox.mode)
        intake.start()
        while intake.settling:
            intake.step()
        if retry_failed:
            log.info("failures_requeued", images=ledger.requeue_failed(time.time()))
        done_before = reports.stats(ledger, time.time()).done
        todo = ledger.unfinished()
        log.info("scan_done", inbox=str(inbox), to_do=todo, current=done_before)
        want_pdfs = pdfs and settings.pdf.enabled
        folder_pdfs = FolderPdfs(ledger, settings, inbox, outbox, stream=True) if want_pdfs else None
        try:
            done = _ocr(settings, inbox, outbox, ledger, intake, todo, progress, folder_pdfs) if todo else 0
            built = _finish_pdfs(folder_pdfs) if folder_pdfs else 0
        finally:
            if folder_pdfs:
                folder_pdfs.cancel()  # interrupted: nothing half-built is published, the next run builds it
        st = reports.stats(ledger, time.time())
        failed = tuple(Failure(f.rel, f.reason, f.detail) for f in reports.failures(ledger, limit=st.failed))
    summary = RunSummary(st.done + st.failed, st.done - done, done, failed, built, time.monotonic() - t0)
    report = names.report_path(outbox)
    atomic.write_json(report, {"failures": [asdict(f) for f in failed], "done": done, "skipped": summary.skipped})
    log.info("run_finished", done=done, skipped=summary.skipped, failed=len(failed), pdfs=built,
             seconds=round(summary.seconds, 2), report=str(report))
    return summary


def _ocr(
    settings: Settings,
    inbox: Path,
    outbox: Path,
    ledger: Ledger,
    intake: Intake,
    todo: int,
    show: bool | None,
    pdfs: FolderPdfs | None,
) -> int:
    """Run dispatch until nothing is queued, running or settling, and with ``pdfs`` the folder
    builds beside it; returns the images done."""
    bar = Progress(todo, show)
    done = 0

    def result(rel: str, ok: bool) -> None:
        nonlocal done
        done += ok
        bar.advance(ok)
        if pdfs:
            pdfs.wake(rel)  # its folder may have its next pages (or all of them) now

    # no point booting more workers than there are images
    dispatch = Dispatch(ledger, executors.create(settings, inbox, max_workers=todo), outbox, settings.pool,
                        on_moved=intake.track, on_result=result)
    try:
        dispatch.executor.start()
        while ledger.unfinished() or intake.settling:
            dispatch.record(dispatch.executor.poll(1.0, pdfs.waitables if pdfs else []))
            if dispatch.paused:  # a one-shot run does not wait for space: rerun to resume
                raise OutputError("the outbox or the state directory refused a write (see the log); "
                                  "fix it and run again: the run resumes where it stopped")
            lost = dispatch.executor.unavailable_for()
            if lost > settings.executor.connect_timeout_s:  # nor for a cluster (the daemon does)
                raise EngineUnavailable(
                    f"{dispatch.executor.unavailable_why()}, for {lost:.0f} s "
                    f"(executor.connect_timeout_s = {settings.executor.connect_timeout_s:g}); "
                    "run again once it is fixed: the run resumes where it stopped")
            intake.step()
            dispatch.fill()
            if pdfs:
                pdfs.step(may_start=True, quiet_seconds=0.0)
                while pdfs.moved:  # changed since its OCR: OCR'd again, then its folder's PDF
                    intake.track(pdfs.moved.pop())
    finally:
        bar.close()
        dispatch.drain(10.0)
        cache.purge_temp(cache.paddlex_cache_dir(settings.paths.resolved_cache_dir()), 0)
    return done


def _finish_pdfs(pdfs: FolderPdfs) -> int:
    """Finish the build under way and build every folder's PDF still due, one after the other;
    returns how many were published in this run."""
    pdfs.look_now()
    while True:
        pdfs.step(may_start=True, quiet_seconds=0.0)
        if not pdfs.busy:
            return pdfs.published
        wait(pdfs.waitables)
        pdfs.step(may_start=False)
