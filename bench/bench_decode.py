"""A worker's page decode: ``images.pages`` (JPEG straight to BGR) against PIL's path, on the corpus.

    python bench/bench_decode.py [--reps 7]

For every corpus image: milliseconds per file through ``ocr/images.py``'s ``pages`` (what a
worker runs: YCbCr and grey JPEGs decoded by libjpeg-turbo through simplejpeg into BGR, every
other format through PIL) and through PIL alone (``frames`` + ``upright_bgr``: the decode every
page took before), interleaved, medians of ``--reps``; and whether the pixels are the same.
Memory is the workers' (``bench_cascade.py``'s rss part), not measured here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict

from common import CORPUS, REPO, corpus_images, machine

sys.path.insert(0, str(REPO / "daemon"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    import numpy as np

    from ocr_inbox.ocr import images

    lim = images.Limits()

    def pil_path(data: bytes) -> list[np.ndarray]:
        out = []
        for frame in images.frames(data, lim):
            assert isinstance(frame, images.Frame)
            out.append(images.upright_bgr(frame))
        return out

    def pages_path(data: bytes) -> list[np.ndarray]:
        return [p.bgr for p in images.pages(data, lim)]

    print(f"# machine: {machine()}")
    rows: dict[str, list[tuple[float, float, bool]]] = defaultdict(list)
    for rel in corpus_images():
        data = (CORPUS / rel).read_bytes()
        kind = rel.rsplit(".", 1)[-1].lower()
        times: dict[str, list[float]] = {"pages": [], "pil": []}
        for rep in range(args.reps):
            for name, fn in (("pages", pages_path), ("pil", pil_path))[:: 1 if rep % 2 == 0 else -1]:
                t0 = time.perf_counter()
                got = fn(data)
                times[name].append(time.perf_counter() - t0)
                del got
        same = all(np.array_equal(a, b) for a, b in zip(pages_path(data), pil_path(data), strict=True))
        rows[kind].append((statistics.median(times["pages"]) * 1000, statistics.median(times["pil"]) * 1000, same))
    print(f"\n{args.reps} decodes of each file per path, interleaved; medians per file, averaged per format\n")
    print("| format | files | images.pages ms | PIL path ms | ratio | same pixels |")
    print("|---|---|---|---|---|---|")
    for kind, got in sorted(rows.items()):
        new = statistics.mean(g[0] for g in got)
        old = statistics.mean(g[1] for g in got)
        print(f"| {kind} | {len(got)} | {new:.1f} | {old:.1f} | {new / old:.2f} | {sum(g[2] for g in got)}/{len(got)} |")


if __name__ == "__main__":
    main()
