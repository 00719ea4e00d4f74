"""Words on skewed pages: how well a word's axis-aligned ``box`` and its ``poly`` cover the word.

Usage: python bench/bench_skew_words.py [--angle 7]

Every FUNSD page of ../shared/corpus (the one set with word boxes in its truth) is
turned ``--angle`` degrees counter-clockwise by this script (PIL, bicubic, on white,
the canvas grown to hold it), and each true word box is turned with it (its four
corners: a quadrilateral). The pages go through the real CLI with the default
settings. Each word of the JSON whose text matches exactly one true word of its page
is scored by IoU with that word's quadrilateral, once for its ``box`` and once for
its ``poly``; the page upright (angle 0) is the baseline. Prints Markdown rows for
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from common import CORPUS, machine, ocr_cli  # noqa: E402
from PIL import Image  # noqa: E402
from shapely.geometry import Polygon  # noqa: E402


def turned(points: list[tuple[float, float]], angle: float, size: tuple[int, int], new: tuple[int, int]) -> list[tuple[float, float]]:
    """``points`` of an image of ``size`` turned ``angle`` degrees counter-clockwise (PIL's
    rotate with expand: about the centre, the result centred in ``new``)."""
    a = math.radians(angle)
    cx, cy, nx, ny = size[0] / 2, size[1] / 2, new[0] / 2, new[1] / 2
    out = []
    for x, y in points:
        dx, dy = x - cx, y - cy
        out.append((nx + dx * math.cos(a) + dy * math.sin(a), ny - dx * math.sin(a) + dy * math.cos(a)))
    return out


def iou(a: Polygon, b: Polygon) -> float:
    union = a.union(b).area
    return a.intersection(b).area / union if union else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--angle", type=float, default=7.0)
    args = ap.parse_args()
    pages = sorted(CORPUS.glob("funsd/*.png"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        truth: dict[str, dict[float, dict[str, list[list[tuple[float, float]]]]]] = {}
        for angle in (0.0, args.angle):
            inbox = root / f"in{angle:g}"
            inbox.mkdir()
            for png in pages:
                gt = json.loads(png.with_suffix("").with_suffix(".gt.json").read_text())
                with Image.open(png) as im:
                    out = im.convert("RGB").rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor="white")
                    words: dict[str, list[list[tuple[float, float]]]] = collections.defaultdict(list)
                    for field in gt["form"]:
                        for w in field["words"]:
                            x0, y0, x1, y1 = w["box"]
                            if w["text"].strip():
                                words[w["text"].strip()].append(turned([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], angle, im.size, out.size))
                    out.save(inbox / png.name)
                truth.setdefault(png.name, {})[angle] = words
            ocr_cli(inbox, root / f"out{angle:g}", root / f"state{angle:g}")
        print(f"Machine: {machine()}; {len(pages)} FUNSD pages")
        print("| page | words scored | median IoU `box` | median IoU `poly` |")
        print("|---|---|---|---|")
        for angle in (0.0, args.angle):
            box_iou, poly_iou = [], []
            for png in pages:
                doc = json.loads((root / f"out{angle:g}" / f"{png.name}.json").read_text())
                gt = truth[png.name][angle]
                for ln in doc["pages"][0]["lines"]:
                    for w in ln.get("words", ()):
                        cands = gt.get(w["text"].strip(), [])
                        if len(cands) != 1:
                            continue
                        g = Polygon(cands[0])
                        x0, y0, x1, y1 = w["box"]
                        box_iou.append(iou(Polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]), g))
                        poly_iou.append(iou(Polygon(w["poly"]), g))
            print(f"| {'upright' if not angle else f'skewed {angle:g}°'} | {len(box_iou)} | "
                  f"{statistics.median(box_iou):.3f} | {statistics.median(poly_iou):.3f} |")


if __name__ == "__main__":
    main()
