"""What the bridge and the daemon tell each other (besides ``messages``), and the bridge's
configuration. Used in both processes: the daemon's (``executor.py``) and the bridge's
(``bridge.py``); pickled over the pipe between them (both are this host's processes)."""

from __future__ import annotations

from dataclasses import dataclass

from ocr_inbox.executors import messages as m
from ocr_inbox.executors.worker import WorkerConfig


@dataclass(frozen=True)
class Connected:
    address: str
    nodes: int


@dataclass(frozen=True)
class Beat:
    """The bridge heard from the cluster's GCS (a node scan answered)."""

    nodes: int


@dataclass(frozen=True)
class Unreachable:
    """The bridge could not connect; ``key`` is the setting to look at."""

    key: str
    error: str


@dataclass(frozen=True)
class ActorAdded:
    slot: int
    node: str


@dataclass(frozen=True)
class ActorGone:
    """An actor that held no work is gone (its node left, it could not boot)."""

    slot: int
    cause: str


@dataclass(frozen=True)
class ActorRetired:
    """An actor was replaced after its batch (recycling): ``reason`` is "max_images" or "max_rss"."""

    slot: int
    reason: str
    images: int
    rss_mb: int


@dataclass(frozen=True)
class Submit:
    slot: int
    batch: m.Batch


@dataclass(frozen=True)
class Placement:
    """Whether any OCR actor fits on the cluster's nodes: ``problem`` says why none does,
    naming the setting ("" = one does). Sent when it changes."""

    problem: str
    nodes: int


BridgeEvent = Connected | Beat | Unreachable | ActorAdded | ActorGone | ActorRetired | Placement | m.Event


@dataclass(frozen=True)
class BridgeConfig:
    address: str
    token_file: str
    workers_per_gpu: int
    cpus_per_worker: float
    gpu_resource: str
    transport: str
    #: each actor's worker configuration (its ``slot`` is replaced per actor)
    worker: WorkerConfig
    image_timeout_s: float
    max_actors: int | None
    log_level: str
    log_format: str
    #: recycling (``pool.max_images_per_worker``, ``pool.max_worker_rss_mb``; 0 = never)
    max_images_per_actor: int = 0
    max_actor_rss_mb: int = 0
