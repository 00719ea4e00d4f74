"""Benchmark the folder PDF builder: peak memory and speed against page count.

Not a test. Generates distinct A4 scans at 300 dpi (JPEG, noisy so no two
streams are alike) with a JSON per image adapted from a real engine result,
then builds PDFs of 200 / 1,000 / 2,000 pages, each in a fresh child process,
and prints the child's peak RSS, wall time and pages/s.

    python bench/bench_pdf.py [--pages 200 1000 2000] [--distinct 250] [--work DIR] [--naive]

``--naive`` swaps in the old merge (``insert_pdf`` of every chunk into one
document, then one ``save``) for comparison.

Pages beyond ``--distinct`` reuse a generated image under a new name (a hard
link): the builder never de-duplicates streams, so each page still carries
its own copy of the image in the output, as with unique scans.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE_JSON = REPO.parent / "shared" / "corpus" / "xfund_zh" / "zh_val_0.jpg"  # the page the sample JSON was made from
A4 = (2480, 3508)


def make_image(path: Path, seed: int) -> None:
    """A4 'scan': grey paper noise, dark text-like bars, a unique noise pattern per seed."""
    rng = np.random.default_rng(seed)
    w, h = A4
    page = rng.normal(238, 6, size=(h, w)).clip(0, 255)
    for y in range(200, h - 200, 55):  # text-line-like bars of random length
        x0 = int(rng.integers(150, 400))
        x1 = int(rng.integers(x0 + 400, w - 150))
        page[y : y + 28, x0:x1] -= rng.uniform(120, 180)
    rgb = np.repeat(page.clip(0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    Image.fromarray(rgb).save(path, "JPEG", quality=80, dpi=(300, 300))


def sample_document(json_source: Path) -> dict:
    with open(json_source, encoding="utf-8") as fh:
        return json.load(fh)


def prepare(folder: Path, json_dir: Path, pages: int, distinct: int, sample: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    json_dir.mkdir(parents=True, exist_ok=True)
    store = folder.parent / "distinct"
    store.mkdir(exist_ok=True)
    for i in range(pages):
        name = f"scan {i + 1:05d}.jpg"
        src = store / f"{i % distinct:05d}.jpg"
        if not src.exists():
            make_image(src, i % distinct)
        dest = folder / name
        if not dest.exists():
            os.link(src, dest)
        doc = dict(sample)
        doc["source"] = {**sample["source"], "path": name, "size": dest.stat().st_size}
        (json_dir / f"{name}.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def naive_merge(chunks, dest, title, toc) -> None:
    """The old builder's merge, for comparison: everything in one document until save."""
    import pymupdf

    with pymupdf.open() as out:
        for chunk in chunks:
            with pymupdf.open(chunk) as src:
                out.insert_pdf(src)
        out.set_metadata({"title": title})
        out.set_toc(toc)
        out.save(dest)


def child(folder: Path, json_dir: Path, out: Path, naive: bool) -> None:
    """Runs in a fresh process: build, then report this process's own peak RSS."""
    from ocr_inbox.outbox import pdf
    from ocr_inbox.outbox.pdf import build_folder_pdf

    if naive:
        pdf._merge = naive_merge

    t0 = time.perf_counter()
    report = build_folder_pdf(folder, json_dir, out, log=_Quiet())
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"pages": report.pages, "wall_s": wall, "peak_rss_mb": peak_kib / 1024,
                      "pdf_mb": out.stat().st_size / 1e6}))


class _Quiet:
    def __getattr__(self, name: str):  # a logger that drops everything (keeps output clean)
        return lambda *a, **k: None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, nargs="+", default=[200, 1000, 2000])
    ap.add_argument("--distinct", type=int, default=250, help="distinct images to generate")
    ap.add_argument("--json", type=Path, default=Path("/tmp/proto/json/zh_val_0.jpg.json"),
                    help="a real engine JSON for a 2480x3508 page, used as every page's text")
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir)")
    ap.add_argument("--naive", action="store_true", help="use the old all-in-memory merge, for comparison")
    ap.add_argument("--child", nargs=3, metavar=("IMAGES", "JSON", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*map(Path, args.child), naive=args.naive)
        return

    sample = sample_document(args.json)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-pdf-"))
    print(f"# work dir {work}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}"
          f"; merge: {'naive insert_pdf + save' if args.naive else 'incremental append'}")
    print(f"{'pages':>6} {'wall s':>8} {'pages/s':>8} {'peak RSS MB':>12} {'PDF MB':>8}")
    for n in args.pages:
        folder, json_dir = work / f"images-{n}", work / f"json-{n}"
        prepare(folder, json_dir, n, args.distinct, sample)
        out = work / f"out-{n}.pdf"
        cmd = [sys.executable, __file__, "--child", str(folder), str(json_dir), str(out)]
        res = subprocess.run(cmd + (["--naive"] if args.naive else []), capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{r['pages']:>6} {r['wall_s']:>8.1f} {r['pages'] / r['wall_s']:>8.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['pdf_mb']:>8.0f}", flush=True)
        out.unlink()


if __name__ == "__main__":
    main()
