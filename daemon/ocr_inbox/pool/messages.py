"""Picklable messages between the supervisor and its worker processes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    """One image to OCR. ``src`` is the resolved path inside the inbox."""

    job_id: int
    rel: str
    src: str
    dest: str
    attempt: int = 1


@dataclass(frozen=True)
class Batch:
    batch_id: int
    jobs: tuple[Job, ...]


@dataclass(frozen=True)
class Stop:
    """Finish nothing more; exit after the current image."""


# worker -> supervisor


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
    slot: int
    job_id: int


@dataclass(frozen=True)
class Done:
    slot: int
    job: Job
    pages: int
    lines: int
    chars: int
    size: int
    mtime_ns: int
    elapsed_ms: int


@dataclass(frozen=True)
class Failed:
    slot: int
    job: Job
    reason: str
    detail: str
    #: worth trying again later (the file changed or vanished while being read, disk full)
    transient: bool = False


@dataclass(frozen=True)
class BatchDone:
    slot: int
    batch_id: int
    rss_bytes: int


WorkerMessage = Ready | BootFailed | Started | Done | Failed | BatchDone
