"""What the Prometheus metrics cost the daemon (not a test: it prints figures).

1. the status tick's extra ledger work when ``[metrics] listen`` is set
   (``reports.failed_by_reason`` and ``reports.size_bytes``, beside the
   ``reports.stats`` the tick already ran) on a ledger of ``--images`` rows,
   ``--failed-pct`` of them failed over 20 reasons;
2. one scrape: the exposition of the daemon's registry (``--workers`` workers);
3. the hooks the main loop runs per image (``image_done`` + ``queue_wait``).

    python bench/bench_metrics.py [--images 1000000] [--failed-pct 1] [--workers 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from common import machine  # noqa: E402

from ocr_inbox.executors.base import WorkerView  # noqa: E402
from ocr_inbox.ledger import Ledger, reports  # noqa: E402
from ocr_inbox.service import metrics  # noqa: E402
from ocr_inbox.support.version import SourceVersion  # noqa: E402


def median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def fill(ledger: Ledger, images: int, failed_pct: float) -> None:
    """``images`` rows in 1,000-image folders, done but for ``failed_pct`` % failed."""
    now = time.time()
    step = 50_000
    for start in range(0, images, step):
        ledger.observe_many(
            ((f"f{i // 1000:05d}/p{i:07d}.png", SourceVersion(1000, i)) for i in range(start, min(images, start + step))),
            now,
        )
    every = max(1, round(100 / failed_pct)) if failed_pct else 0
    c = ledger.connection  # one transaction straight in SQL: this is set-up, not the measure
    c.execute("BEGIN")
    c.execute("UPDATE images SET status = 'done', done_at = ?", (now - 3600,))  # done an hour ago
    if every:
        c.execute(
            "UPDATE images SET status = 'failed', error_reason = 'reason' || (rowid % 20) WHERE rowid % ? = 0",
            (every,),
        )
    c.execute("COMMIT")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--failed-pct", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=64)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp, Ledger.open(Path(tmp)) as ledger:
        t0 = time.perf_counter()
        fill(ledger, args.images, args.failed_pct)
        print(f"ledger: {args.images:,} images, {args.failed_pct:g} % failed, built in {time.perf_counter() - t0:.0f} s")
        now = time.time()
        stats = median_ms(lambda: reports.stats(ledger, now), 21)
        extra = median_ms(lambda: (reports.failed_by_reason(ledger), reports.size_bytes(ledger)), 21)
        print(f"status tick: reports.stats {stats:.1f} ms; + failed_by_reason and size_bytes {extra:.1f} ms (median of 21)")

        m = metrics.Metrics()
        m.workers([WorkerView(i, "host", "cpu", "idle", 1000 + i, 10) for i in range(args.workers)])
        for i in range(args.workers):
            m.worker_rss(i, 400 << 20)
        m.workers([WorkerView(i, "host", "cpu", "idle", 1000 + i, 10) for i in range(args.workers)])
        st = reports.stats(ledger, now)
        m.ledger(metrics.LedgerState(st, tuple(reports.failed_by_reason(ledger)), reports.size_bytes(ledger), False, False))

    from prometheus_client import generate_latest

    body = generate_latest(m.registry)
    lines = body.count(b"\n")
    scrape = median_ms(lambda: generate_latest(m.registry), 51)
    print(f"scrape: {len(body):,} bytes, {lines:,} lines, {scrape:.2f} ms to generate ({args.workers} workers)")

    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        m.image_done(1.0)
        m.queue_wait(2.0)
    print(f"hooks per image (image_done + queue_wait): {(time.perf_counter() - t0) / n * 1e6:.2f} us")


if __name__ == "__main__":
    main()
