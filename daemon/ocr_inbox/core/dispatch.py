"""Dispatch: the ledger's queue -> batches -> an executor -> results recorded.

One implementation for the daemon and for ``ocr-inbox ocr`` (``Pipeline`` owns
it and the executor it fills): claiming
batches, attempts and retries, quarantine of an image that kills workers,
pauses while the outbox or the state disk refuses writes. Dispatch is the one
writer of results: it writes each image's JSON (atomically) and then records
it in the ledger, so wherever OCR runs, nothing else writes the outbox.

Which failure is whose:

- the image's (unreadable, corrupt, too large, an engine error on it, a name
  the outbox cannot hold): quarantined at once with its reason;
- a worker dying on it (``worker_crashed``, or ``worker_stuck`` when it was
  killed for silence): tried again, quarantined after ``pool.max_attempts``;
  when the next image's decode ran beside it, both are suspects (a retry runs
  alone, so the second crash is blamed exactly);
- the machine's (memory pressure, a GPU error): ``pool.crash_breaker``
  different images crashing workers in a row with no success between is a
  crash storm: dispatch pauses for ``pool.crash_pause_s`` (doubling while the
  storm lasts), the crashes of that streak are not counted against the images,
  and one image done ends it;
- the file's own motion (changed or vanished while read): back to intake,
  which settles it and queues the new version;
- the outbox's or state disk's (full, read-only, unwritable): nobody's; the
  image goes back to the queue and dispatch pauses for ``pool.output_retry_s``.

What the other stages need to know comes back from ``record`` as events
(``core/events.py``): an image done, one quarantined, a file that moved.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import structlog

from ocr_inbox.config import PoolSettings
from ocr_inbox.core.events import Event, ImageDone, ImageFailed, ImageMoved
from ocr_inbox.executors import messages as m
from ocr_inbox.executors.base import Executor
from ocr_inbox.ledger import Ledger, in_use
from ocr_inbox.ledger.store import DB_NAME
from ocr_inbox.outbox import document, names
from ocr_inbox.support import statedir
from ocr_inbox.support.errors import StateError
from ocr_inbox.support.reasons import Reason
from ocr_inbox.support.recorder import Recorder

log = structlog.get_logger(__name__)

#: errors of an output *path* (a directory where the JSON goes, a name too long):
#: that image fails; any other write error is the outbox's and pauses everything
_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EINVAL, errno.ELOOP})
#: reasons of an image that took a worker down with it
CRASH_REASONS = (Reason.worker_crashed, Reason.worker_stuck)
#: STATE_DIR/requests/: what ``ocr-inbox retry`` asks of a running daemon (the one ledger writer)
REQUESTS_DIR = "requests"
#: a storm's pause doubles each time it goes on, up to this many times ``crash_pause_s``
MAX_STORM_FACTOR = 16


class Dispatch:
    def __init__(self, ledger: Ledger, outbox: Path, settings: PoolSettings, *, recorder: Recorder = Recorder()) -> None:
        self.ledger = ledger
        self.outbox = outbox
        self.settings = settings
        #: what the events recorded so far mean for the other stages (``record`` returns them)
        self._out: list[Event] = []
        #: the metrics (the base records nothing)
        self.recorder = recorder
        self.paused_until = 0.0
        #: STATE_DIR/requests/ could not be read (said once)
        self._requests_warned = False
        #: the crash breaker: different images that crashed workers since the last one done
        self._streak: dict[str, None] = {}
        #: storms in a row (pauses double); 0 = the breaker is closed
        self._storms = 0
        self.storm_until = 0.0
        #: events the ledger could not take yet (state disk refusing writes), oldest first
        self._backlog: list[m.Event] = []
        self._job_ids = itertools.count(1)
        self._batch_ids = itertools.count(1)

    @property
    def paused(self) -> bool:
        return time.monotonic() < self.paused_until

    @property
    def storm(self) -> bool:
        """Paused by the crash breaker."""
        return time.monotonic() < self.storm_until

    @property
    def pause_reason(self) -> str:
        """Why no work is handed out ("" = it is)."""
        if self.paused:
            return "output paused"
        if self.storm:
            return "crash storm: dispatch paused"
        return ""

    def pause(self, event: str, **why: object) -> None:
        """Stop handing out work for ``output_retry_s``; logged once per pause."""
        if not self.paused:
            log.error(event, retry_in_s=self.settings.output_retry_s, **why)
            self.recorder.paused(str(why.get("reason", event)))
        self.paused_until = time.monotonic() + self.settings.output_retry_s

    # -- out ------------------------------------------------------------------

    def fill(self, executor: Executor) -> None:
        """Give every idle worker of ``executor`` a batch from the queue (smaller batches when it runs short)."""
        if self.paused or self.storm:
            return
        while executor.capacity() > 0:
            per = self.settings.batch_size
            queued = self.ledger.pending_count(per * executor.size)
            size = max(1, min(per, math.ceil(queued / executor.size)))
            now = time.time()
            rows = self.ledger.claim(size, now)
            if not rows:
                return
            for r in rows:
                self.recorder.queue_wait(now - r.queued_at)
            jobs = tuple(m.Job(next(self._job_ids), r.rel, attempt=r.attempts + 1) for r in rows)
            executor.submit(m.Batch(next(self._batch_ids), jobs))

    # -- back -----------------------------------------------------------------

    def record(self, events: Iterable[m.Event]) -> list[Event]:
        """Record an executor's results; returns what they mean for the other stages.
        What the ledger can't take now is kept and tried again on the next call."""
        self._backlog.extend(events)
        while self._backlog:
            try:
                self._record(self._backlog[0])
            except sqlite3.OperationalError as exc:
                self.state_write_failed(exc)
                break
            self._backlog.pop(0)
        out, self._out = self._out, []
        return out

    def state_write_failed(self, exc: Exception) -> None:
        self.pause("ledger_write_failed", error=str(exc), state_dir=str(self.ledger.path.parent))

    def _record(self, ev: m.Event) -> None:
        if isinstance(ev, m.Done):
            self._done(ev)
        elif isinstance(ev, m.Failed):
            self._failed(ev)
        elif isinstance(ev, m.WorkerLost):
            self._lost(ev)
        elif isinstance(ev, m.WorkerExit):
            self.recorder.worker_exit(ev.reason)
        elif isinstance(ev, m.BatchDone):
            self.recorder.worker_rss(ev.slot, ev.rss_bytes)

    def _done(self, ev: m.Done) -> None:
        rel, now = ev.job.rel, time.time()
        if not self.ledger.running_version(rel, ev.size, ev.mtime_ns):
            # a newer version arrived meanwhile (or the image left): its result is not written
            self.ledger.done(rel, ev.size, ev.mtime_ns, "", ev.elapsed_ms, now)
            log.info("result_outdated", path=rel)
            return
        dest = names.json_path_for(self.outbox, rel)
        doc = document.Document(
            source=document.SourceInfo(rel, ev.size, ev.mtime_ns, ev.sha256),
            engine=ev.engine,
            pages=ev.pages,
            elapsed_ms=ev.elapsed_ms,
        )
        try:
            document.write(dest, doc)
        except OSError as exc:
            if exc.errno in _NAME_ERRNOS:
                detail = f"cannot write {dest}: {exc.strerror or exc}"
                if self.ledger.failed(rel, Reason.output_name, detail, now, retry=False):
                    self.recorder.image_failed(Reason.output_name)
                log.warning("image_failed", path=rel, reason="output_name", detail=detail)
                self._out.append(ImageFailed(rel, Reason.output_name))
                return
            self.ledger.release([rel], now)
            reason = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "output_error"
            self.pause("output_paused", reason=reason, path=rel, detail=str(exc))
            return
        self.ledger.done(rel, ev.size, ev.mtime_ns, str(dest), ev.elapsed_ms, now, pages=ev.pages,
                         written=names.written(dest))
        log.info("image_done", path=rel, slot=ev.slot, pages=len(ev.pages), lines=ev.lines, ms=ev.elapsed_ms)
        self.recorder.image_done(ev.elapsed_ms / 1000)
        self._streak.clear()
        if self._storms:
            log.info("crash_storm_over", path=rel)
            self._storms, self.storm_until = 0, 0.0
        self._out.append(ImageDone(rel, ev.size, ev.mtime_ns))

    def _failed(self, ev: m.Failed) -> None:
        rel, now = ev.job.rel, time.time()
        if ev.transient:
            # it moved under the worker: not its fault; intake settles and queues what is there now
            self.ledger.release([rel], now)
            self._out.append(ImageMoved(rel))
            return
        if self.ledger.failed(rel, ev.reason, ev.detail, now, retry=False):
            self.recorder.image_failed(ev.reason)
        self._out.append(ImageFailed(rel, ev.reason))

    def _lost(self, ev: m.WorkerLost) -> None:
        now = time.time()
        self.ledger.release([j.rel for j in ev.unstarted], now)
        suspects = ev.suspects
        if not suspects:
            return
        if self.storm:
            # work handed out before the pause: a storm's crash is not the image's
            self.ledger.release([j.rel for j in suspects], now)
            log.warning("image_released", paths=",".join(j.rel for j in suspects), reason="crash_storm", cause=ev.cause)
            return
        for j in suspects:
            self._streak[j.rel] = None
        breaker = self.settings.crash_breaker
        if breaker and len(self._streak) >= breaker:
            self._trip(ev, suspects, now)
            return
        for j in suspects:
            self._count_crash(ev, j, beside=len(suspects) > 1, now=now)

    def _count_crash(self, ev: m.WorkerLost, j: m.Job, *, beside: bool, now: float) -> None:
        final = j.attempt >= self.settings.max_attempts
        what = "the worker died" if ev.reason == Reason.worker_crashed else "the worker hung"
        both = " (another image was being decoded or OCR'd beside it)" if beside else ""
        detail = f"{what} on it ({ev.cause}){both}; attempt {j.attempt} of {self.settings.max_attempts}"
        recorded = self.ledger.failed(j.rel, ev.reason, detail, now, retry=not final)
        if final:
            log.error("image_quarantined", path=j.rel, reason=ev.reason, cause=ev.cause)
            if recorded:
                self.recorder.image_failed(ev.reason)
            self._out.append(ImageFailed(j.rel, ev.reason))
        else:
            log.warning("image_retry", path=j.rel, attempt=j.attempt + 1, reason=ev.reason, cause=ev.cause)

    def _trip(self, ev: m.WorkerLost, suspects: tuple[m.Job, ...], now: float) -> None:
        """A crash storm: pause; the streak's crashes are not counted against its images.

        Only the first storm refunds them: if crashes go on after a pause, they count
        again, so images that really kill workers are still quarantined, slowly.
        """
        streak = list(self._streak)
        self._streak.clear()
        self.ledger.release([j.rel for j in suspects], now)
        if self._storms == 0:
            self.ledger.requeue_failed(now, CRASH_REASONS, streak)
            self.ledger.forgive(streak, now)
        pause = self.settings.crash_pause_s * min(2.0**self._storms, MAX_STORM_FACTOR)
        self._storms += 1
        self.storm_until = time.monotonic() + pause
        self.recorder.paused("crash_storm")
        log.error(
            "crash_storm_paused",
            images=len(streak),
            storms=self._storms,
            pause_s=pause,
            cause=ev.cause,
            note="different images crash workers in a row: the machine, not the images; they stay queued",
        )

    # -- requests from `ocr-inbox retry` ------------------------------------------

    def take_requests(self) -> int:
        """Apply the retry requests left in STATE_DIR/requests/ by ``ocr-inbox retry``; returns images requeued.

        Each is renamed aside (``.applying-NAME``) before it is applied, answered in
        ``NAME.done`` (what the waiting command prints), then removed; one that cannot
        be read or applied is kept as ``.rejected-NAME`` with a warning saying why. A
        request never raises out of here: the loop goes on whatever it holds.
        """
        state_dir = self.ledger.path.parent
        total = 0
        try:
            with statedir.directory(state_dir, REQUESTS_DIR) as d:
                names = os.listdir(d)
                for name in sorted(names):
                    if name.endswith(".json") and (not name.startswith(".") or name.startswith(_APPLYING)):
                        total += self._take_request(d, name, state_dir / REQUESTS_DIR)
                    elif name.endswith(_ANSWER):
                        _drop_stale_answer(d, name)
        except (OSError, StateError) as exc:
            if not self._requests_warned:
                log.warning("retry_requests_unreadable", error=str(exc), note="making STATE_DIR/requests/ again")
                self._requests_warned = True
            with contextlib.suppress(OSError, StateError):
                prepare_requests(state_dir)
        return total

    def _take_request(self, d: int, name: str, where: Path) -> int:
        applying = name if name.startswith(_APPLYING) else _APPLYING + name
        request = name.removeprefix(_APPLYING)
        answer = request.removesuffix(".json") + _ANSWER
        try:
            if applying != name:
                os.rename(name, applying, src_dir_fd=d, dst_dir_fd=d)
            fd = statedir.open_file(d, applying, os.O_RDONLY, where)
            with os.fdopen(fd, "rb") as f:
                data = f.read(statedir.MAX_READ + 1)
            if len(data) > statedir.MAX_READ:
                raise ValueError(f"larger than {statedir.MAX_READ >> 20} MB")
            req = json.loads(data)
            reasons, paths = req.get("reasons", []), req.get("paths", [])
            if not all(isinstance(x, str) for x in [*reasons, *paths]):
                raise ValueError("reasons and paths must be lists of strings")
            n = self.ledger.requeue_failed(time.time(), reasons, paths)
        except (OSError, StateError, ValueError, TypeError, AttributeError, sqlite3.Error) as exc:
            log.warning("retry_request_rejected", file=str(where / request), error=str(exc),
                        kept_as=str(where / (_REJECTED + request)))
            with contextlib.suppress(OSError):
                os.rename(applying, _REJECTED + request, src_dir_fd=d, dst_dir_fd=d)
            with contextlib.suppress(OSError, StateError):
                statedir.write_replace(d, answer, json.dumps({"error": str(exc)}).encode(), where)
            return 0
        log.info("retry_applied", images=n, reasons=",".join(reasons), paths=len(paths))
        with contextlib.suppress(OSError, StateError):
            statedir.write_replace(d, answer, json.dumps({"images": n}).encode(), where)
        with contextlib.suppress(OSError):
            os.unlink(applying, dir_fd=d)
        return n


# -- `ocr-inbox retry` --------------------------------------------------------------

#: a request being applied (renamed aside first), one that failed, and the daemon's answer
_APPLYING = ".applying-"
_REJECTED = ".rejected-"
_ANSWER = ".done"
#: ``ocr-inbox retry`` waits this long for the daemon's answer (it applies requests every pass)
RETRY_WAIT_S = 15.0
#: answers nobody collected (the command gave up waiting) are removed after this long
STALE_ANSWER_S = 3600.0


def _drop_stale_answer(d: int, name: str) -> None:
    with contextlib.suppress(OSError):
        if time.time() - os.stat(name, dir_fd=d, follow_symlinks=False).st_mtime > STALE_ANSWER_S:
            os.unlink(name, dir_fd=d)


def prepare_requests(state_dir: Path) -> None:
    """Make STATE_DIR/requests/ the daemon's own (``0700``); something else in its place (a
    link, a directory of another user left by an older version's root ``retry``) is moved
    aside with a warning."""
    path = state_dir / REQUESTS_DIR
    try:
        with statedir.directory(state_dir, REQUESTS_DIR, create=True) as d:
            os.fchmod(d, statedir.DIR_MODE)
        return
    except StateError as exc:
        aside = path.with_name(f"{REQUESTS_DIR}.refused-{time.time_ns()}")
        log.warning("retry_requests_dir_replaced", path=str(path), error=str(exc), moved_to=str(aside))
        os.rename(path, aside)
    with statedir.directory(state_dir, REQUESTS_DIR, create=True):
        pass


def request_retry(state_dir: Path, reasons: list[str], paths: list[str]) -> Path:
    """Leave a retry request for the running daemon, which applies it at its next loop pass."""
    name = f"retry-{time.time_ns()}-{os.getpid()}.json"
    with statedir.directory(state_dir, REQUESTS_DIR, create=True) as d:
        statedir.write_replace(d, name, json.dumps({"reasons": reasons, "paths": paths}).encode(), state_dir)
    return state_dir / REQUESTS_DIR / name


def await_answer(request: Path, wait_s: float = RETRY_WAIT_S) -> int | None:
    """The images the daemon queued for ``request``; None when it did not answer in ``wait_s``.
    Raises StateError with the daemon's reason when it rejected the request."""
    answer = request.name.removesuffix(".json") + _ANSWER
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        try:
            data = statedir.read_bytes(request.parent.parent, answer, REQUESTS_DIR)
        except FileNotFoundError:
            time.sleep(0.1)  # the daemon answers within one loop pass (about a second)
            continue
        with contextlib.suppress(OSError, StateError), statedir.directory(request.parent.parent, REQUESTS_DIR) as d:
            os.unlink(answer, dir_fd=d)
        reply = json.loads(data)
        if "error" in reply:
            raise StateError(f"the daemon rejected the retry request: {reply['error']}")
        return int(reply["images"])
    return None


def retry_failed(state_dir: Path, reasons: list[str], paths: list[str]) -> tuple[int | None, bool]:
    """Requeue failed images: directly when no daemon runs, else through a request the
    daemon applies. Returns (images queued, None if the daemon did not answer in time;
    whether the daemon did it)."""
    if not in_use(state_dir):
        if not state_dir.is_dir() or not statedir.check_file(state_dir, DB_NAME):
            raise StateError(f"no ledger in {state_dir}: nothing has failed there (is it the daemon's state_dir?)")
        try:
            with Ledger.open(state_dir) as ledger:
                return ledger.requeue_failed(time.time(), reasons, paths), False
        except StateError:
            if not in_use(state_dir):  # a daemon started meanwhile: ask it
                raise
    return await_answer(request_retry(state_dir, reasons, paths)), True
