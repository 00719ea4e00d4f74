"""What travels between dispatch and the OCR workers, wherever they run.

Picklable and small: a ``Batch`` of ``Job``\\ s goes out; ``Started``,
``Decoding``/``Decoded`` (the next image being decoded meanwhile), ``Progress``
(a page OCR'd), ``Done`` (with the OCR result; dispatch writes the JSON),
``Failed`` and ``BatchDone`` come back, plus ``WorkerLost`` from the executor
when a worker dies with work in hand, and ``WorkerExit`` (for the metrics) whenever
a worker ends without being stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ocr_inbox.ocr.results import Page


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
    reason: str = "worker_crashed"

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
