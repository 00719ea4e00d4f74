"""What travels between dispatch and the OCR workers, wherever they run.

Picklable and small: a ``Batch`` of ``Job``\\ s goes out; ``Started``,
``Decoding``/``Decoded`` (the next image being decoded meanwhile), ``Progress``
(a page OCR'd), ``Done`` (with the OCR result; dispatch writes the JSON),
``Failed`` and ``BatchDone`` come back, plus ``WorkerLost`` from the executor
when a worker dies with work in hand, and ``WorkerExit`` (for the metrics) whenever
a worker ends without being stopped.

Between processes of this host they travel pickled (the local pool's pipes). What a
Ray actor returns travels as *plain data* instead (``to_plain``/``from_plain``): JSON
of the message's fields, checked field by field on the bridge's side, because a
cluster node is another host and unpickling what it sends would run its code. The
plain form carries no job and no slot: the bridge puts in the job it sent and the
actor's slot, never the actor's own idea of them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ocr_inbox.ocr.results import Line, Page, Word
from ocr_inbox.support.reasons import Reason


@dataclass(frozen=True)
class Job:
    """One image to OCR: ``rel`` beneath the inbox, the version the ledger recorded."""

    job_id: int
    rel: str
    attempt: int = 1


@dataclass(frozen=True)
class Batch:
    batch_id: int
    jobs: tuple[Job, ...]


@dataclass(frozen=True)
class Stop:
    """Finish nothing more; exit after the current image."""


# worker -> dispatch


@dataclass(frozen=True)
class Ready:
    slot: int
    pid: int
    info: dict[str, Any]
    load_s: float


@dataclass(frozen=True)
class BootFailed:
    slot: int
    error: str
    #: the error is about configuration (missing models, bad device): respawning won't help
    fatal: bool


@dataclass(frozen=True)
class Started:
    """The worker's main thread took this image (waits for its decode, then OCRs it)."""

    slot: int
    job_id: int


@dataclass(frozen=True)
class Decoding:
    """The decode thread began reading and decoding this (next) image, beside the current one."""

    slot: int
    job_id: int


@dataclass(frozen=True)
class Decoded:
    """The decode thread finished with this image (decoded, or refused: Failed follows)."""

    slot: int
    job_id: int


@dataclass(frozen=True)
class Progress:
    """A page OCR'd: the heartbeat of a long multi-page file."""

    slot: int
    job_id: int
    page: int  # 1-based
    pages: int


@dataclass(frozen=True)
class Done:
    """An image OCR'd: the version read (size, mtime, hash) and its pages."""

    slot: int
    job: Job
    size: int
    mtime_ns: int
    sha256: str
    engine: dict[str, Any]
    pages: tuple[Page, ...]
    elapsed_ms: int

    @property
    def lines(self) -> int:
        return sum(len(p.lines) for p in self.pages)


@dataclass(frozen=True)
class Failed:
    slot: int
    job: Job
    reason: str
    detail: str
    #: worth trying again later (the file changed or vanished while being read)
    transient: bool = False


@dataclass(frozen=True)
class BatchDone:
    slot: int
    batch_id: int
    rss_bytes: int


@dataclass(frozen=True)
class WorkerLost:
    """A worker died or was killed with work in hand."""

    slot: int
    cause: str
    #: the image it was working on when it died (the suspect), if any
    in_flight: Job | None
    #: images of its batch it had not started: not their fault
    unstarted: tuple[Job, ...]
    #: the next image, when its decode was running beside ``in_flight`` at the death: either
    #: may be the cause, so both are suspects (a retried image runs with nothing beside it)
    decoding: Job | None = None
    #: the failure reason a suspect gets: "worker_crashed", or "worker_stuck" (killed for silence)
    reason: str = Reason.worker_crashed

    @property
    def suspects(self) -> tuple[Job, ...]:
        return tuple(j for j in (self.in_flight, self.decoding) if j is not None)


#: why a worker ended without being stopped (``WorkerExit.reason``): it crashed; it was killed
#: for silence; it was recycled after pool.max_images_per_worker or past pool.max_worker_rss_mb;
#: it died or failed while loading its models; its Ray actor was gone (its node left) or the
#: whole Ray cluster was lost
WORKER_EXIT_REASONS = (
    "crashed", "stuck", "recycled_max_images", "recycled_max_rss", "boot_failed", "actor_gone", "cluster_lost",
)


@dataclass(frozen=True)
class WorkerExit:
    """A worker ended without being stopped; the executor replaces it. Only counted (metrics):
    ``WorkerLost`` is what tells dispatch about the work it held."""

    slot: int
    reason: str  # one of WORKER_EXIT_REASONS


WorkerMessage = Ready | BootFailed | Started | Decoding | Decoded | Progress | Done | Failed | BatchDone
#: what an executor's ``poll`` returns
Event = WorkerMessage | WorkerLost | WorkerExit


# -- plain data: what a Ray actor returns (JSON bytes, validated here) ----------------------

#: what the plain form can carry back from an actor
Plain = Ready | BootFailed | Done | Failed
#: a key of ``Ready.info`` / ``Done.engine``: a name (they become log fields)
_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: keys the daemon's worker_ready record sets itself
_RESERVED = frozenset({"event", "slot", "node", "pid", "load_s", "level", "timestamp", "logger", "worker"})


class NotPlain(ValueError):
    """What an actor returned is not a message in the plain form."""


def _page_plain(p: Page) -> dict[str, Any]:
    return {
        "index": p.index, "width": p.width, "height": p.height, "dpi": list(p.dpi) if p.dpi else None,
        "rotation": p.rotation, "source": p.source,
        "lines": [
            {"text": ln.text, "score": ln.score, "poly": [list(pt) for pt in ln.poly],
             "words": [[w.text, list(w.box)] for w in ln.words], "rec": ln.rec,
             "respelled": [list(r) for r in ln.respelled]}
            for ln in p.lines
        ],
    }


def to_plain(msg: Plain | int) -> bytes:
    """A Ray actor's result as JSON bytes (an ``int``: its resident memory)."""
    d: dict[str, Any]
    if isinstance(msg, int):
        d = {"t": "rss", "bytes": msg}
    elif isinstance(msg, Ready):
        d = {"t": "ready", "pid": msg.pid, "info": msg.info, "load_s": msg.load_s}
    elif isinstance(msg, BootFailed):
        d = {"t": "boot_failed", "error": msg.error, "fatal": msg.fatal}
    elif isinstance(msg, Done):
        d = {"t": "done", "size": msg.size, "mtime_ns": msg.mtime_ns, "sha256": msg.sha256, "engine": msg.engine,
             "pages": [_page_plain(p) for p in msg.pages], "elapsed_ms": msg.elapsed_ms}
    else:
        d = {"t": "failed", "reason": msg.reason, "detail": msg.detail, "transient": msg.transient}
    # ASCII: a lone surrogate in recognised text is written as an escape, not an encoding error
    return json.dumps(d, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _get(d: Any, key: str, *types: type) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise NotPlain(f"{key!r} missing")
    v = d[key]
    # bool is an int to isinstance: a field of one is not the other
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise NotPlain(f"{key!r} is {type(v).__name__}, not {' or '.join(t.__name__ for t in types)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise NotPlain(f"{key!r} is not finite")
    return v


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise NotPlain(f"{what}: not a number")
    return float(v)


def _fields(v: Any, what: str) -> dict[str, Any]:
    """``Ready.info`` / ``Done.engine``: names to plain values, none a reserved log field."""
    if not isinstance(v, dict) or len(v) > 64:
        raise NotPlain(f"{what}: not a small object")
    for k, x in v.items():
        if not _KEY.fullmatch(k) or k in _RESERVED:
            raise NotPlain(f"{what}: key {k[:40]!r} is not allowed")
        if not isinstance(x, str | int | float | bool | list | dict | None):
            raise NotPlain(f"{what}: {k}")
    return dict(v)


def _line(d: Any) -> Line:
    poly = _get(d, "poly", list)
    if len(poly) != 4 or not all(isinstance(pt, list) and len(pt) == 2 for pt in poly):
        raise NotPlain("poly: four points")
    words = []
    for w in _get(d, "words", list):
        if not (isinstance(w, list) and len(w) == 2 and isinstance(w[0], str) and isinstance(w[1], list) and len(w[1]) == 4):
            raise NotPlain("words: [text, [x0, y0, x1, y1]]")
        box = tuple(_num(x, "word box") for x in w[1])
        words.append(Word(w[0], (box[0], box[1], box[2], box[3])))
    respelled = []
    for r in _get(d, "respelled", list):
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)):
            raise NotPlain("respelled: [read, written]")
        respelled.append((r[0], r[1]))
    pts = [(_num(pt[0], "poly"), _num(pt[1], "poly")) for pt in poly]
    return Line(
        _get(d, "text", str), _num(_get(d, "score", int, float), "score"), (pts[0], pts[1], pts[2], pts[3]),
        tuple(words), _get(d, "rec", str), tuple(respelled),
    )


def _page(d: Any) -> Page:
    dpi = _get(d, "dpi", list, type(None))
    if dpi is not None and len(dpi) != 2:
        raise NotPlain("dpi: [x, y]")
    # absent from a node still on a version without page orientation: read as it lay
    rotation = _get(d, "rotation", int) if "rotation" in d else 0
    if rotation not in (0, 90, 180, 270):
        raise NotPlain("rotation: 0, 90, 180 or 270")
    return Page(
        _get(d, "index", int), _get(d, "width", int), _get(d, "height", int),
        tuple(_line(ln) for ln in _get(d, "lines", list)),
        (_num(dpi[0], "dpi"), _num(dpi[1], "dpi")) if dpi is not None else None,
        rotation,
        _get(d, "source", str) if "source" in d else "",
    )


def from_plain(data: Any, slot: int, job: Job | None = None) -> Plain | int:
    """The message in ``data`` (what ``to_plain`` wrote), for this ``slot`` and ``job`` (the
    ones the bridge knows, never the actor's): ``Ready``/``BootFailed`` for a boot call,
    ``Done``/``Failed`` for an image call (``job`` given), an ``int`` for a memory call.
    Anything else, or a field of the wrong type, raises ``NotPlain``."""
    if not isinstance(data, bytes):
        raise NotPlain(f"a {type(data).__name__}, not bytes")
    try:
        d = json.loads(data.decode("utf-8"), parse_constant=lambda c: _raise(NotPlain(f"{c} is not a number")))
    except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
        raise NotPlain(f"not JSON: {exc}") from None
    t = _get(d, "t", str)
    if job is None and t == "rss":
        rss: int = _get(d, "bytes", int)
        return max(0, rss)
    if job is None and t == "ready":
        return Ready(slot, _get(d, "pid", int), _fields(_get(d, "info", dict), "info"),
                     _num(_get(d, "load_s", int, float), "load_s"))
    if job is None and t == "boot_failed":
        return BootFailed(slot, _get(d, "error", str), _get(d, "fatal", bool))
    if job is not None and t == "done":
        sha = _get(d, "sha256", str)
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise NotPlain("sha256: 64 hex digits")
        return Done(
            slot, job, _get(d, "size", int), _get(d, "mtime_ns", int), sha, _fields(_get(d, "engine", dict), "engine"),
            tuple(_page(p) for p in _get(d, "pages", list)), _get(d, "elapsed_ms", int),
        )
    if job is not None and t == "failed":
        reason = _get(d, "reason", str)
        if not _KEY.fullmatch(reason):
            raise NotPlain("reason: a name")
        return Failed(slot, job, reason, _get(d, "detail", str), _get(d, "transient", bool))
    raise NotPlain(f"{t[:40]!r} is not an answer to this call")


def _raise(exc: Exception) -> Any:
    raise exc
