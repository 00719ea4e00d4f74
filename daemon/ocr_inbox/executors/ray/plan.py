"""From the settings to the bridge's configuration, and what a cluster's nodes can hold.

Pure functions, no Ray: the daemon uses them (``executors.create``, the token check at
start, ``ocr-inbox doctor``, the workers' view), the bridge to place actors.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pwd
import stat
from pathlib import Path

from ocr_inbox.config import Settings
from ocr_inbox.executors.ray.wire import BridgeConfig
from ocr_inbox.executors.setup import worker_config_factory
from ocr_inbox.ocr.devices import Device, WorkerSlot


def actors_for(resources: dict[str, float], cfg: BridgeConfig) -> int:
    """How many OCR actors a node with these total ``resources`` gets."""
    by_cpu = math.floor(resources.get("CPU", 0.0) / cfg.cpus_per_worker + 1e-9)
    if cfg.workers_per_gpu <= 0:
        return by_cpu
    by_gpu = math.floor(resources.get(cfg.gpu_resource, 0.0) * cfg.workers_per_gpu + 1e-9)
    return min(by_gpu, by_cpu)


def placement_problem(nodes: list[dict[str, float]], cfg: BridgeConfig) -> str:
    """Why no OCR actor fits on any of these nodes (their total resources), naming the
    setting to change; "" when one does. Waiting cannot fix it: only a node that has
    what the settings ask for, or other settings."""
    if not nodes or any(actors_for(r, cfg) > 0 for r in nodes):
        return ""
    n = f"{len(nodes)} node" + ("s" if len(nodes) != 1 else "")
    most_cpus = max(r.get("CPU", 0.0) for r in nodes)
    if cfg.workers_per_gpu > 0:
        most = max(r.get(cfg.gpu_resource, 0.0) for r in nodes)
        if most <= 0:
            return (f"executor.workers_per_gpu = {cfg.workers_per_gpu}: OCR actors need a share of the resource "
                    f"{cfg.gpu_resource!r} (executor.gpu_resource), which none of the {n} has; "
                    "for CPU-only nodes set executor.workers_per_gpu = 0")
        if most * cfg.workers_per_gpu < 1:
            return (f"executor.workers_per_gpu = {cfg.workers_per_gpu}: the nodes have at most {most:g} of "
                    f"{cfg.gpu_resource!r}, less than one actor's share ({gpu_share(cfg):g})")
    return (f"executor.cpus_per_worker = {cfg.cpus_per_worker:g}: each OCR actor needs that many CPUs, "
            f"and none of the {n} has as many (the most: {most_cpus:g})")


def gpu_share(cfg: BridgeConfig) -> float:
    """Each actor's share of one GPU (or of the stand-in resource); Ray keeps 4 decimals."""
    return math.floor(10_000 / cfg.workers_per_gpu) / 10_000


def token_file_problem(path: str, uid: int) -> tuple[str, str] | None:
    """Why the cluster's token file is not fit for the service user ``uid``, and the fix;
    None when it is. Whoever can read the token can join the cluster, and a cluster node
    is as trusted as the service user (docs/SCALE-OUT.md): the file must be the service
    user's own, readable by nobody else."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}", f"write the cluster's token into {path}"
    owner = _user_name(st.st_uid)
    fix = f"chown {_user_name(uid)} {path} && chmod 0400 {path}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file", f"write the cluster's token into {path}"
    if st.st_uid != uid:
        return f"{path} is owned by {owner}, not by {_user_name(uid)} (the service user)", fix
    if st.st_mode & 0o077:
        return f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: others may read the cluster's token", fix
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def bridge_config(settings: Settings, inbox: Path, max_workers: int | None = None) -> BridgeConfig:
    """The bridge's configuration from the daemon's settings: each actor is configured like a
    local worker (``setup.worker_config_factory``) on "gpu:0" (the GPU share Ray gives it) or the CPU."""
    e = settings.executor
    on_gpu = e.workers_per_gpu > 0 and e.gpu_resource == "GPU"
    threads = settings.ocr.threads_per_worker or max(1, math.ceil(e.cpus_per_worker))
    slot = WorkerSlot(0, Device("gpu", 0) if on_gpu else Device("cpu"), threads)
    worker = worker_config_factory(settings, inbox)(slot)
    # Ray sets CUDA_VISIBLE_DEVICES for an actor with a GPU share; a CPU actor sees none
    worker = dataclasses.replace(worker, env={} if on_gpu else {"CUDA_VISIBLE_DEVICES": ""})
    if e.transport == "paths":
        worker = dataclasses.replace(worker, inbox=str(inbox.resolve()))
    return BridgeConfig(
        address=e.address,
        token_file=e.token_file,
        workers_per_gpu=e.workers_per_gpu,
        cpus_per_worker=e.cpus_per_worker,
        gpu_resource=e.gpu_resource,
        transport=e.transport,
        worker=worker,
        image_timeout_s=settings.pool.image_timeout_s,
        max_actors=max_workers,
        log_level=settings.log.level,
        log_format=worker.log_format,
        max_images_per_actor=settings.pool.max_images_per_worker,
        max_actor_rss_mb=settings.pool.max_worker_rss_mb,
    )
