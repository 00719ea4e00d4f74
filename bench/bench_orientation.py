"""Pages fed sideways or upside down: accuracy per turn, and what the classifier costs.

Usage: python bench/bench_orientation.py [--reps N] [--skip-accuracy] [--skip-cost]

1. Accuracy: every corpus *page* (MANIFEST kind "page") turned 0/90/180/270 degrees
   clockwise by this script (decoded pixels turned, written losslessly as PNG, the
   file's DPI kept: the 0 variant has exactly the original's pixels), OCR'd through
   the real CLI with the default settings, scored with ../shared/tools/ocr_score.py;
   also how many pages were turned back by the right amount (the JSON's
   ``pages[].rotation``). Run once with ``[ocr] orientation = false`` too.
2. Cost on upright pages: the default engine (tiny + cascade + word lists) in this
   process with the classifier on and off, every page through both in a shuffled
   order, ``--reps`` passes (a busy machine slows both engines of a pass alike), and
   the classifier alone per page. ``--cli N``: also N alternating runs of the real CLI
   on the upright pages, on then off (wall seconds, start-up included).
``--textline``: the same for ``[ocr] textline_orientation`` (the 0/180 line classifier),
with the page classifier on in both (turns 0 and 180 only; a 90° page is the page
classifier's).
Prints Markdown rows for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from common import CORPUS, MODELS, SCORE, machine, ocr_cli  # noqa: E402

TURNS = (0, 90, 180, 270)
#: the setting compared on/off (``--textline``: the line classifier's)
SETTING = "orientation"


def pages() -> list[str]:
    rows = csv.DictReader(open(CORPUS / "MANIFEST.tsv", encoding="utf-8"), delimiter="\t")
    return [r["file"] for r in rows if r["kind"] == "page" and (CORPUS / r["file"]).is_file()]


def turned_inbox(dest: Path, turn: int) -> None:
    """Each page turned ``turn`` degrees clockwise at ``dest/<set>/<file>.png``."""
    from PIL import Image

    for rel in pages():
        with Image.open(CORPUS / rel) as im:
            dpi = im.info.get("dpi")
            out = im if turn == 0 else im.transpose(getattr(Image.Transpose, f"ROTATE_{360 - turn}"))  # PIL: counter-clockwise
            path = dest / (rel + ".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            out.save(path, dpi=dpi) if dpi else out.save(path)


def predictions(outbox: Path, pred: Path) -> dict[str, int]:
    """JSON -> ``pred/<set>/<original file>.txt``; returns each page's rotation."""
    rotations = {}
    for j in outbox.rglob("*.png.json"):
        doc = json.loads(j.read_text(encoding="utf-8"))
        rel = doc["source"]["path"].removesuffix(".png")
        rotations[rel] = doc["pages"][0].get("rotation", 0)
        (pred / (rel + ".txt")).parent.mkdir(parents=True, exist_ok=True)
        (pred / (rel + ".txt")).write_text("\n".join(ln["text"] for p in doc["pages"] for ln in p["lines"]), encoding="utf-8")
    return rotations


def sets() -> str:
    return ",".join(sorted({rel.split("/")[0] for rel in pages()}))


def accuracy(work: Path, orientation: bool) -> None:
    cfg = work / f"orient-{orientation}.toml"
    cfg.write_text(f"[ocr]\n{SETTING} = {'true' if orientation else 'false'}\n")
    for turn in TURNS if SETTING == "orientation" else (0, 180):
        inbox, outbox, pred = work / f"in{turn}", work / f"out{turn}-{orientation}", work / f"pred{turn}-{orientation}"
        if not inbox.is_dir():
            turned_inbox(inbox, turn)
        secs = ocr_cli(inbox, outbox, work / f"state{turn}-{orientation}", "--config", str(cfg))
        rotations = predictions(outbox, pred)
        right = sum(1 for r in rotations.values() if r == (360 - turn) % 360)
        res = subprocess.run([sys.executable, str(SCORE), str(CORPUS), str(pred), "--sets", sets()],
                             capture_output=True, text=True, check=True)
        allrow = next(line.split("\t") for line in res.stdout.splitlines() if line.startswith("ALL"))
        print(f"| {'on' if orientation else 'off'} | {turn} | {allrow[1]} | {right}/{len(rotations)} | "
              f"{float(allrow[2]):.3f} | {float(allrow[3]):.3f} | {secs:.0f} |", flush=True)


def cost(reps: int) -> None:
    from common import interleaved_passes

    from ocr_inbox.ocr import images, models
    from ocr_inbox.ocr.engine import EngineSettings, create
    from ocr_inbox.ocr.orientation import PageOrientation

    cache = Path(tempfile.mkdtemp(prefix="pdx"))
    base = dict(profile="ppocrv6-tiny", models_dir=MODELS, cache_dir=cache, threads=1,
                refine_profile="ppocrv6-small", refine_below=0.93, lexicon=("en",))
    engines = {"on": create(EngineSettings(**base, **{SETTING: True})),  # type: ignore[arg-type]
               "off": create(EngineSettings(**base, **{SETTING: False}))}  # type: ignore[arg-type]
    lim = images.Limits()
    upright = [(rel, [p.bgr for p in images.decode((CORPUS / rel).read_bytes(), lim)]) for rel in pages()]
    totals, first = interleaved_passes(engines, upright, reps, seed=23)
    n = sum(len(b) for _, b in upright)
    same = sum(1 for rel, _ in upright if [ln.text for p in first["on"][rel] for ln in p] == [ln.text for p in first["off"][rel] for ln in p])
    clf = PageOrientation(models.orientation_model(MODELS), threads=1)
    times = [0.0]
    for _ in range(reps if SETTING == "orientation" else 0):
        for _, bgrs in upright:
            for b in bgrs:
                t0 = time.perf_counter()
                clf.classify(b)
                times.append(time.perf_counter() - t0)
    on, off = statistics.median(totals["on"]) / n, statistics.median(totals["off"]) / n
    print(f"| upright pages, 1 thread | {n} | {off:.3f} | {on:.3f} | {on / off:.3f} | "
          f"{statistics.median(times) * 1000:.0f} ms (max {max(times) * 1000:.0f}) | {same}/{len(upright)} |")
    print("# per pass (on/off s): " + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(totals["on"], totals["off"], strict=True)))


def cli_runs(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-orient-cli") as tmp:
        work = Path(tmp)
        turned_inbox(work / "in", 0)
        walls: dict[bool, list[float]] = {True: [], False: []}
        for i in range(n):
            for on in (True, False) if i % 2 == 0 else (False, True):
                cfg = work / f"{on}.toml"
                cfg.write_text(f"[ocr]\n{SETTING} = {'true' if on else 'false'}\n")
                walls[on].append(ocr_cli(work / "in", work / f"out{i}{on}", work / f"state{i}{on}", "--config", str(cfg)))
        print("# CLI wall s, upright pages, on: " + ", ".join(f"{w:.1f}" for w in walls[True])
              + "; off: " + ", ".join(f"{w:.1f}" for w in walls[False]))
        print(f"# CLI median on {statistics.median(walls[True]):.1f} s, off {statistics.median(walls[False]):.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--cli", type=int, default=0)
    ap.add_argument("--textline", action="store_true", help="compare [ocr] textline_orientation on/off")
    a = ap.parse_args()
    if a.textline:
        global SETTING
        SETTING = "textline_orientation"
    print(f"# {machine()}, models {MODELS}")
    if not a.skip_accuracy:
        print(f"| {SETTING} | turned (° clockwise) | pages | turned back right | char-F1 | word-F1 | wall s |")
        print("|---|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory(prefix="bench-orient") as work:
            for on in (True, False):
                accuracy(Path(work), on)
    if not a.skip_cost:
        print("| | pages | s/page off | s/page on | on/off | classifier alone | same text |")
        print("|---|---|---|---|---|---|---|")
        cost(a.reps)
    if a.cli:
        cli_runs(a.cli)


if __name__ == "__main__":
    main()
