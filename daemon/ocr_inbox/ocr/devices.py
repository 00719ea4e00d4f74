"""Device strings (``cpu``, ``gpu``, ``gpu:N``) and how workers are laid out on them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_DEVICE = re.compile(r"^(cpu|gpu)(?::(\d+))?$")


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" | "gpu"
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(text: str) -> Device:
    m = _DEVICE.match(text.strip().lower())
    if not m:
        raise ValueError(f"device must be 'cpu', 'gpu' or 'gpu:N' (got {text!r})")
    kind, idx = m.group(1), m.group(2)
    if kind == "cpu" and idx is not None:
        raise ValueError(f"'cpu' takes no index (got {text!r})")
    return Device(kind, int(idx) if idx is not None else (0 if kind == "gpu" else None))


@dataclass(frozen=True)
class WorkerSlot:
    """One worker process: its slot number, the device it owns and its CPU threads."""

    slot: int
    device: Device
    threads: int

    def child_env(self, parent_visible: str | None = None) -> dict[str, str]:
        """Environment for the worker: a GPU worker sees only its own card.

        ``gpu:N`` counts within the daemon's own ``CUDA_VISIBLE_DEVICES`` (the
        env file may restrict it to "2,3"), exactly as CUDA itself would.
        """
        if self.device.kind != "gpu":
            return {"CUDA_VISIBLE_DEVICES": ""}
        if parent_visible is None:
            parent_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        index = self.device.index or 0
        if parent_visible:
            visible = [v.strip() for v in parent_visible.split(",") if v.strip()]
            if index >= len(visible):
                raise ValueError(f"{self.device} is not among CUDA_VISIBLE_DEVICES={parent_visible}")
            return {"CUDA_VISIBLE_DEVICES": visible[index]}
        return {"CUDA_VISIBLE_DEVICES": str(index)}

    @property
    def local_device(self) -> str:
        """The device string inside the worker (its only visible GPU is number 0)."""
        return "gpu:0" if self.device.kind == "gpu" else "cpu"


def gpu_support_problem(engine: str) -> tuple[str, str] | None:
    """Why ``engine``'s installed build cannot run on a CUDA GPU, and the fix; None when it can.

    Imports the engine's runtime (ONNX Runtime, or Paddle for "paddle"): PaddleX would
    otherwise fall back to the CPU without a word."""
    if engine == "onnxruntime":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return (
                "ONNX Runtime has no CUDA provider",
                '`pip uninstall onnxruntime && pip install onnxruntime-gpu`, or set devices = ["cpu"]',
            )
        return None
    import paddle

    if not paddle.device.is_compiled_with_cuda() or paddle.device.cuda.device_count() < 1:
        return (
            "this Paddle build sees no CUDA GPU",
            "install paddlepaddle-gpu from Paddle's index (README, GPUs), check CUDA_VISIBLE_DEVICES "
            'and /dev/nvidia*, or set devices = ["cpu"]',
        )
    return None


def default_workers(device: Device, cpu_count: int) -> int:
    # Measured (docs/BENCHMARKS.md): on CPU, 1-thread processes beat fewer fatter ones;
    # on a GPU several processes overlap decoding and host work with inference.
    if device.kind == "cpu":
        return max(1, cpu_count)
    return 3


def plan_slots(
    devices: list[str], workers_per_device: int, threads_per_worker: int, cpu_count: int | None = None
) -> list[WorkerSlot]:
    cpus = cpu_count or len(os.sched_getaffinity(0))
    parsed = [parse_device(d) for d in devices]
    counts = [workers_per_device or default_workers(d, cpus) for d in parsed]
    total = sum(counts)
    threads = threads_per_worker or max(1, cpus // total)
    slots: list[WorkerSlot] = []
    for dev, n in zip(parsed, counts, strict=True):
        for _ in range(n):
            slots.append(WorkerSlot(len(slots), dev, threads))
    return slots
