"""The Ray executor against the local pool, on one machine, same CPU share, one run.

    python bench/bench_ray.py [--copies 2]    (as root: it makes a loopback-only netns)

(a) throughput, real inference (ppocrv6-tiny), `ocr-inbox ocr` wall time including
    model loading, on the corpus pages:
      local pool, 2 workers x 1 thread
      Ray, 1 node with 2 CPUs (2 actors)
      Ray, 2 nodes with 1 CPU each (1 actor each)
(b) the per-image overhead of going through Ray (fake engine, which still decodes
    the image): one actor's round trip ``ray.get(ocr.remote(job, file))`` (bytes
    transport: the image goes through the object store) minus the time the actor
    itself measured (``Done.elapsed_ms``), by image size; the same ``ocr_one`` in
    this process for reference. Medians of 15 calls.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import CORPUS, MODELS, REPO, copy_corpus, machine, ocr_cli

sys.path.insert(0, str(REPO / "daemon"))
sys.path.insert(0, str(REPO / "tests" / "fakes"))
import ray_cluster  # noqa: E402


def ray_toml(c: ray_cluster.Cluster, fake: bool = False) -> str:
    plug = '[ocr]\nengine_plugin = "fake_engine:create"\n' if fake else "[ocr]\nthreads_per_worker = 1\n"
    return (
        plug
        + f'[executor]\nkind = "ray"\naddress = "{c.address}"\ntoken_file = "{c.token_file}"\n'
        + 'workers_per_gpu = 0\ncpus_per_worker = 1\n'
    )


def throughput(root: Path, copies: int) -> list[tuple[str, int, float]]:
    inbox = root / "inbox"
    n = len(copy_corpus(inbox, copies))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "daemon"), str(REPO / "tests" / "fakes")])
    rows = []
    local = root / "local.toml"
    local.write_text("[ocr]\nworkers_per_device = 2\nthreads_per_worker = 1\n")
    rows.append(("local pool, 2 workers x 1 thread", n, ocr_cli(inbox, root / "o-local", root / "s-local", "--config", str(local))))
    for label, nodes, cpus in (("Ray, 1 node x 2 CPUs (2 actors)", 1, 2), ("Ray, 2 nodes x 1 CPU (1 actor each)", 2, 1)):
        sub = root / f"ray{nodes}"
        sub.mkdir()
        c = ray_cluster.Cluster(sub, cpus=cpus)
        try:
            c.start(workers=nodes - 1)
            cfg = sub / "c.toml"
            cfg.write_text(ray_toml(c))
            wall = ocr_cli(inbox, sub / "out", sub / "state", "--config", str(cfg))
            done = len([p for p in (sub / "out").rglob("*.json") if ".ocr-inbox" not in p.parts])
            assert done == n, f"{label}: {done} of {n} images done"
            rows.append((label, n, wall))
        finally:
            c.stop()
    return rows


def overhead(root: Path) -> list[tuple[str, int, float, float, float]]:
    from PIL import Image

    from ocr_inbox import config
    from ocr_inbox.executors import messages as m
    from ocr_inbox.executors.ray.actor import OcrActor
    from ocr_inbox.executors.ray.plan import bridge_config
    from ocr_inbox.executors.worker import ocr_one
    from ocr_inbox.ocr import engine as engine_mod
    from ocr_inbox.ocr import images

    (root / "ov").mkdir()
    c = ray_cluster.Cluster(root / "ov", cpus=1)
    rows = []
    try:
        c.start(workers=0)
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(c.token_file), RAY_USAGE_STATS_ENABLED="0")
        import ray

        ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
        inbox = root / "ov-inbox"
        inbox.mkdir()
        settings = config.from_mapping(
            {"ocr": {"engine_plugin": "fake_engine:create"}, "executor": {"kind": "ray", "address": c.address}}
        )
        cfg = bridge_config(settings, inbox).worker
        actor = ray.remote(OcrActor).options(num_cpus=1, max_restarts=0).remote(cfg)
        assert isinstance(ray.get(actor.boot.remote()), m.Ready)
        eng = engine_mod.create(cfg.engine)
        info = eng.info()
        with Image.open(CORPUS / "tesseract_test/phototest.tif") as page:
            base = page.convert("RGB")
        for mp in (0.25, 1, 4, 16):
            side = int((mp * 1e6) ** 0.5)
            buf = io.BytesIO()
            base.resize((side, side)).save(buf, format="PNG")
            (inbox / f"{mp}.png").write_bytes(buf.getvalue())
            job = m.Job(1, f"{mp}.png")
            file = images.read(str(inbox), job.rel, cfg.limits)
            t_local, t_ray, t_over = [], [], []
            for _ in range(15):
                t0 = time.perf_counter()
                ocr_one(job, cfg, eng, info, file)
                t_local.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                res = ray.get(actor.ocr.remote(job, file))
                t_ray.append(time.perf_counter() - t0)
                assert isinstance(res, m.Done)
                t_over.append(t_ray[-1] - res.elapsed_ms / 1000)  # the round trip less the actor's own time
            rows.append((f"{mp:g} MP", file.size, statistics.median(t_local) * 1000, statistics.median(t_ray) * 1000,
                         statistics.median(t_over) * 1000))
        ray.shutdown()
    finally:
        c.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--no-throughput", action="store_true", help="only the per-image overhead")
    args = ap.parse_args()
    assert MODELS.is_dir(), f"models missing: {MODELS}"
    old = ray_cluster.enter_netns()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            rows = [] if args.no_throughput else throughput(root, args.copies)
            ov = overhead(root)
    finally:
        ray_cluster.leave_netns(old)
    print(machine())
    print("| executor | images | wall s (incl. model load) | images/s |")
    print("|---|---|---|---|")
    for label, n, wall in rows:
        print(f"| {label} | {n} | {wall:.1f} | {n / wall:.2f} |")
    print()
    print("| image | PNG bytes | ocr_one in this process ms | Ray round trip ms | overhead: round trip - actor's own ms |")
    print("|---|---|---|---|---|")
    for label, size, local, through, over in ov:
        print(f"| {label} | {size:,} | {local:.1f} | {through:.1f} | {over:.1f} |")


if __name__ == "__main__":
    main()
