"""The seam between dispatch and wherever OCR runs.

Dispatch (``dispatch.py``) owns the queue, retries and every write; an
executor only runs batches and reports what happened. The local process pool
(``local.py``) is the first implementation; a distributed one (Ray) implements
the same protocol: batches in, ``messages.Event``\\ s out, with a dead worker's
in-flight image told apart from the images it had not started.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ocr_inbox.executors.messages import Batch, Event, Job


@dataclass(frozen=True)
class WorkerView:
    """One worker as ``ocr-inbox status`` and the metrics show it."""

    slot: int
    node: str  # this host's name, or the Ray node ("address/node id")
    device: str  # "cpu", "gpu:0", or the Ray resource share ("GPU x 0.5")
    state: str  # booting, idle, busy, retiring, respawning
    pid: int | None
    images: int  # images finished by this worker (process or actor) since it started

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def recycle_reason(images: int, rss: int, max_images: int, max_rss_mb: int) -> str | None:
    """Why a worker that has finished ``images`` and holds ``rss`` bytes should be replaced
    after its batch (``pool.max_images_per_worker``, ``pool.max_worker_rss_mb``; 0 = never):
    "max_images", "max_rss", or None. PaddleOCR's memory grows over long runs; a fresh
    process gives it back. The local pool and the Ray actors apply the same rule."""
    if max_images and images >= max_images:
        return "max_images"
    if max_rss_mb and rss > max_rss_mb * 1024 * 1024:
        return "max_rss"
    return None


class Executor(Protocol):
    """Runs OCR batches; one owner thread calls every method."""

    #: a reload may boot a second executor beside this one (the local pool: the machine has
    #: room for both for a while); False for Ray, whose actors hold the cluster's GPU shares,
    #: so a second set could never be placed: it is stopped first, then replaced
    boots_beside: bool

    def start(self) -> None:
        """Start the workers (loading models happens asynchronously: see ``ready``)."""

    @property
    def size(self) -> int:
        """How many workers it runs when complete."""

    def ready_count(self) -> int:
        """Workers that have loaded their models."""

    def healthy(self) -> bool:
        """Some worker can take work, or one is still within its time to load models."""

    def capacity(self) -> int:
        """How many more batches it takes now (one per idle worker)."""

    def submit(self, batch: Batch) -> None:
        """Hand a batch to an idle worker; only when ``capacity() > 0``."""

    def poll(self, timeout: float, extra: Iterable[Any] = ()) -> list[Event]:
        """Wait up to ``timeout`` for events (or any of the ``extra`` waitables); return them."""

    def busy(self) -> bool:
        """Some batch is in progress."""

    def in_flight(self) -> list[Job]:
        """Jobs handed out and not finished."""

    def workers_view(self) -> list[WorkerView]:
        """Every worker now, for ``status`` (through the daemon's live file) and the metrics."""

    def status_note(self) -> str:
        """A note for the daemon's STATUS= line ("" = nothing to add), e.g. a cluster that is unreachable."""

    def unavailable_for(self) -> float:
        """Seconds it has had no way to run anything (a lost Ray cluster it keeps reconnecting
        to, or on which none of its workers can be placed); 0 while it can. The daemon waits it
        out; a one-shot run gives up after a while."""

    def unavailable_why(self) -> str:
        """Why it has no way to run anything, naming the setting to look at ("" while it can)."""

    def stop(self, deadline_s: float = 10.0) -> None:
        """Ask every worker to exit after its current image; kill those that don't."""
