"""What an executor knows of each of its workers: the same for a local process and a Ray actor.

A worker boots (loads its models), takes one batch when idle, finishes its images one by
one and is idle again; the pool counts and hands out work from these facts alone
(``ready_count``, ``capacity``, ``in_flight`` of ``base.Executor``). The local pool adds
its process and pipes to a ``Slot``, the Ray executor the node its actor runs on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeVar

from ocr_inbox.executors import messages as m


class SlotState(enum.StrEnum):
    booting = "booting"  # loading its models
    idle = "idle"
    busy = "busy"  # has a batch
    retiring = "retiring"  # told to exit after its batch (recycling)


@dataclass
class Slot:
    """One worker as its executor tracks it."""

    slot: int
    started: float  # monotonic: its boot time counts from here
    state: SlotState = SlotState.booting
    pid: int | None = None
    batch: m.Batch | None = None
    #: job ids of ``batch`` it has answered
    finished: set[int] = field(default_factory=set)
    images: int = 0  # images finished since it started

    def take(self, batch: m.Batch) -> None:
        self.state, self.batch, self.finished = SlotState.busy, batch, set()

    def answered(self, job: m.Job) -> None:
        """``job`` is done or failed."""
        self.finished.add(job.job_id)
        self.images += 1

    def batch_done(self) -> None:
        self.state, self.batch = SlotState.idle, None

    def pending(self) -> list[m.Job]:
        """The jobs of its batch not answered yet, in the batch's order."""
        return [j for j in self.batch.jobs if j.job_id not in self.finished] if self.batch is not None else []


S = TypeVar("S", bound=Slot)


class Slots(dict[int, S]):
    """An executor's workers by slot number."""

    def ready_count(self) -> int:
        """Workers that have loaded their models."""
        return sum(1 for w in self.values() if w.state != SlotState.booting)

    def capacity(self) -> int:
        """How many more batches they take now: one per idle worker."""
        return sum(1 for w in self.values() if w.state == SlotState.idle)

    def idle(self) -> S | None:
        return next((w for w in self.values() if w.state == SlotState.idle), None)

    def busy(self) -> bool:
        return any(w.state == SlotState.busy for w in self.values())

    def in_flight(self) -> list[m.Job]:
        return [j for w in self.values() for j in w.pending()]

    def usable(self, now: float, boot_timeout_s: float) -> bool:
        """Some worker can take work, or one is still within its time to load its models."""
        return any(w.state != SlotState.booting or now - w.started < boot_timeout_s for w in self.values())
