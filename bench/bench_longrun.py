"""Long run of the daemon through REAL inference: memory over time, worker recycling.

Not a test: it prints figures. Makes small real text images (the cnocr lines,
crops of tesseract_test/phototest.tif, eurotext.tif and a FUNSD form), copies
them under unique names into the inbox in waves (one new folder per wave, so
the watcher -> settle -> ledger path is exercised), and runs the REAL daemon
(``python -m ocr_inbox run``, default profile on CPU) with
``[pool] max_images_per_worker`` (500 by default). Every ``--sample`` seconds it
records the RSS of the main process and of each worker (psutil children, the
workers' pids from ``worker_spawned``), then prints the curve and a summary.

    python bench/bench_longrun.py [--pages 3000] [--waves 10] [--profile ppocrv6-tiny]
                                  [--max-images-per-worker 500] [--sample 3] [--work DIR] [--keep]

Try ``--pages 200`` first; 3,000 pages take about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import loadavg  # noqa: E402
from common import CORPUS, MODELS, machine  # noqa: E402
from daemon_run import DaemonRun, clean_up  # noqa: E402


def source_images(dest: Path) -> list[Path]:
    """Small real text images: whole cnocr lines and crops of larger pages, as PNG."""
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []

    def save(im: Image.Image, name: str) -> None:
        p = dest / f"{name}.png"
        im.convert("L" if im.mode in ("1", "L", "P", "LA") else "RGB").save(p)
        out.append(p)

    for p in sorted((CORPUS / "cnocr").glob("*.png")) + sorted((CORPUS / "cnocr").glob("*.jpg")):
        save(Image.open(p), p.stem)

    def bands(path: Path, n: int, name: str) -> None:
        """Save ``path`` cut into ``n`` horizontal bands (smaller pages with real text)."""
        if not path.is_file():
            return
        page = Image.open(path)
        w, h = page.size
        for i in range(n):
            save(page.crop((0, i * h // n, w, (i + 1) * h // n)), f"{name}{i}")

    save(Image.open(CORPUS / "tesseract_test" / "phototest.tif"), "phototest")
    bands(CORPUS / "tesseract_test" / "phototest.tif", 3, "phototest-band")
    bands(CORPUS / "tesseract_test" / "eurotext.tif", 2, "eurotext-half")
    bands(CORPUS / "funsd" / "82200067_0069.png", 3, "funsd-third")
    return out


def feed_wave(inbox: Path, sources: list[Path], wave: int, start: int, count: int) -> None:
    """Copy ``count`` images into a new folder; each copy has a unique name (the daemon OCRs each)."""
    folder = inbox / f"wave{wave:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src = sources[(start + i) % len(sources)]
        shutil.copyfile(src, folder / f"p{start + i:05d}-{src.name}")


def mb(n: float) -> str:
    return f"{n / 2**20:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=3000)
    ap.add_argument("--waves", type=int, default=10)
    ap.add_argument("--profile", default="ppocrv6-tiny")
    ap.add_argument("--max-images-per-worker", type=int, default=500)
    ap.add_argument("--sample", type=float, default=3.0, help="seconds between RSS samples")
    ap.add_argument("--rows", type=int, default=30, help="rows of the printed curve (evenly spaced)")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    root = args.work or Path(tempfile.mkdtemp(prefix="ocr-inbox-longrun-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "inbox").mkdir(exist_ok=True)
    print(f"# bench_longrun: {args.pages} pages in {args.waves} waves, profile {args.profile}, "
          f"max_images_per_worker {args.max_images_per_worker}; {machine()}")
    print(f"# work dir {root}; load average at start {loadavg()}")
    sources = source_images(root / "sources")
    print(f"# {len(sources)} distinct source images: " + ", ".join(f"{p.stem} {Image.open(p).size[0]}x{Image.open(p).size[1]}" for p in sources))
    cfg = f"""
[ocr]
profile = "{args.profile}"
[pool]
max_images_per_worker = {args.max_images_per_worker}
[pdf]
enabled = false
[log]
level = "info"
"""
    d = DaemonRun(root, cfg, "longrun", MODELS, sample_s=args.sample)
    try:
        d.start()
        ready_s = d.ready_s()
        t_ready = time.monotonic()
        print(f"READY after {ready_s:.1f} s (models loaded on {len(d.events('worker_ready'))} workers); load {loadavg()}")
        per_wave = -(-args.pages // args.waves)
        fed = wave = 0
        last_print = 0.0
        while True:
            done = d.done()
            # next wave once the previous one is mostly done: the queue never runs dry, the watcher keeps working
            if fed < args.pages and done >= fed - per_wave // 2:
                n = min(per_wave, args.pages - fed)
                feed_wave(d.inbox, sources, wave, fed, n)
                fed += n
                wave += 1
            if done >= args.pages:
                break
            if d.proc is not None and d.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {d.proc.returncode}\n{d.log()[-3000:]}")
            if time.monotonic() - last_print > 60:
                last_print = time.monotonic()
                print(f"  t={time.monotonic() - d.t_start:5.0f} s fed {fed} {d.status_text()} load {loadavg()}", flush=True)
            time.sleep(1.0)
        t_done = time.monotonic()
        time.sleep(args.sample * 2)
        st = d.status(timeout=300)["totals"]
        rc, stop_s = d.stop_timed()

        worker_pids = {int(e["pid"]) for e in d.events("worker_spawned")}
        rows = []
        for s in d.samples:
            wr = [v for pid, v in s["kids"].items() if pid in worker_pids]
            rows.append((s["t"], s["done"], s["rss"], min(wr) if wr else 0, max(wr) if wr else 0, len(wr)))
        step = max(1, len(rows) // args.rows)
        print(f"\n{'t (s)':>7} {'done':>6} {'main RSS MB':>12} {'worker RSS MB min':>18} {'max':>6} {'workers':>8}")
        for i, r in enumerate(rows):
            if i % step == 0 or i == len(rows) - 1:
                print(f"{r[0]:7.0f} {r[1]:6d} {mb(r[2]):>12} {mb(r[3]):>18} {mb(r[4]):>6} {r[5]:>8}")

        after_ready = [r for r in rows if r[0] >= ready_s]
        first, last = after_ready[0], after_ready[-1]
        busy = [r for r in after_ready if r[1] > 0 and r[5]]
        recycles = d.events("worker_recycle")
        retired = d.events("worker_retired")
        span = t_done - t_ready
        print("\nsummary")
        print(f"  pages {args.pages}, done {st['done']}, failed {st['failed']}; {span:.0f} s from READY to the last page: "
              f"{args.pages / span:.2f} images/s; daemon stopped rc={rc} in {stop_s:.1f} s")
        print(f"  main RSS: at READY {mb(first[2])} MB, peak {mb(max(r[2] for r in rows))} MB, at the end {mb(last[2])} MB")
        if busy:
            wmax = [r[4] for r in busy]
            print(f"  worker RSS while working: first {mb(busy[0][4])} MB, median {mb(statistics.median(wmax))} MB, "
                  f"peak {mb(max(wmax))} MB, last {mb(busy[-1][4])} MB")
        print(f"  worker recycles: {len(recycles)} ({', '.join(sorted({e.get('reason', '?') for e in recycles})) or '-'}), "
              f"retired {len(retired)}, workers spawned {len(worker_pids)}, lost {len(d.events('worker_lost'))}")
        per_rec = [(e.get("slot"), e.get("images"), e.get("rss_mb")) for e in recycles]
        if per_rec:
            print("  recycles (slot, images, rss_mb at recycle): " + ", ".join(f"({a},{b},{c})" for a, b, c in per_rec))
        print(f"  load average at the end {loadavg()}")
        return 0 if st["done"] == args.pages and st["failed"] == 0 else 1
    finally:
        clean_up(root, args.keep, [d])


if __name__ == "__main__":
    sys.exit(main())
