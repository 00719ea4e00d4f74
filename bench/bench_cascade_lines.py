"""The cascade line by line: which lines to re-read, and whose reading to keep.

    OCR_INBOX_MODELS_DIR=.models python bench/bench_cascade_lines.py [--below 0.9,0.93,0.95,0.97,0.98]
        [--min-below 0.5,0.6,0.7,0.8]

One pass over ../shared/corpus: PP-OCRv6 tiny (the default engine, 1 thread) reads every
page; then PP-OCRv6 small's recognizer reads every one of tiny's line crops (PaddleX's own
``CropByPolys``, as ``ocr/refine.py`` does), each crop timed on its own. From these two
readings of every line, every cascade setting is worked out without running it again:

- trigger: tiny's line score (the mean of its characters' probabilities, what
  ``[ocr] refine_below`` compares) or its least sure character (``--min-below``; tiny's
  per-character probabilities are taken from PaddleX's CTC decoder by a wrapper here);
- rule: "replace" (small's reading is kept, what ``ocr/refine.py`` does) or "better"
  (the higher line score wins);
- time: tiny's time for the pages plus small's time for the re-read crops, over tiny's.

"small rec, every line" is tiny's detection with small's recognizer everywhere: against
the ``ppocrv6-small`` profile's own accuracy (bench_profiles.py) it tells what small's
detector adds. Accuracy: ../shared/tools/ocr_score.py's measures (char F1, word F1 on
the Latin pages), computed in this process.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import CORPUS, MODELS, REPO, SCORE, corpus_images, machine

sys.path.insert(0, str(REPO / "daemon"))
sys.path.insert(0, str(SCORE.parent))

import ocr_score  # noqa: E402  (../shared/tools)

#: tiny's per-character probabilities of the line just decoded, in decoding order
_CHAR_PROBS: list[tuple[str, float, float]] = []


def _record_char_probs() -> None:
    """Wrap PaddleX's CTC decoding to keep each line's least sure character (bench only)."""
    from paddlex.inference.models.text_recognition import processors

    orig = processors.BaseRecLabelDecode.decode

    def decode(self: Any, text_index: Any, text_prob: Any = None, is_remove_duplicate: bool = False,
               return_word_box: bool = False) -> Any:
        out = orig(self, text_index, text_prob, is_remove_duplicate, return_word_box)
        for b, idx in enumerate(text_index):
            keep = np.ones(len(idx), dtype=bool)
            keep[1:] = idx[1:] != idx[:-1]
            keep &= idx != 0  # the CTC blank
            probs = text_prob[b][keep] if text_prob is not None else np.zeros(0)
            _CHAR_PROBS.append((out[b][0], round(float(out[b][1]), 6), float(probs.min()) if len(probs) else 0.0))
        return out

    processors.BaseRecLabelDecode.decode = decode


@dataclass
class LineReading:
    rel: str
    tiny: str
    tiny_score: float
    tiny_min: float  # tiny's least sure character
    small: str
    small_score: float
    small_s: float  # small's time for this crop


def read_lines(work: Path) -> tuple[list[LineReading], float]:
    import paddlex
    from paddlex.inference.pipelines.components import CropByPolys

    from ocr_inbox.ocr import engine, images

    _record_char_probs()
    tiny = engine.PaddleXEngine(engine.EngineSettings("ppocrv6-tiny", MODELS, work / "cache"))
    small = paddlex.create_predictor(
        model_name="PP-OCRv6_small_rec", model_dir=str(MODELS / "ppocrv6-small" / "rec"), device="cpu",
        engine="onnxruntime", engine_config={"intra_op_num_threads": 1, "inter_op_num_threads": 1}, batch_size=1)
    crop = CropByPolys(det_box_type="quad")
    lim = images.Limits(max_pixels=200_000_000, max_file_bytes=512 << 20, max_pages=2000, max_total_pixels=10**9)
    pages = [(rel, p.bgr) for rel in corpus_images() for p in images.decode((CORPUS / rel).read_bytes(), lim)]
    tiny.recognise(pages[0][1])  # first predicts set sessions up: not timed
    list(small([pages[0][1][:48, :320]]))
    out: list[LineReading] = []
    tiny_s = 0.0
    for rel, bgr in pages:
        lim_ = engine.det_limits_for(bgr.shape[1], bgr.shape[0])
        _CHAR_PROBS.clear()
        t0 = time.perf_counter()
        (res,) = tiny.pipeline.predict(bgr, return_word_box=True, text_det_limit_side_len=lim_.limit_side_len,
                                       text_det_limit_type=lim_.limit_type)
        tiny_s += time.perf_counter() - t0
        least = {(t, s): m for t, s, m in _CHAR_PROBS}
        polys = list(res["rec_polys"])
        for text, score, img in zip(res["rec_texts"], res["rec_scores"], crop(bgr, polys) if polys else [], strict=True):
            t0 = time.perf_counter()
            (o,) = small([img])
            dt = time.perf_counter() - t0
            s_text = o["rec_text"] if isinstance(o["rec_text"], str) else o["rec_text"][0]
            out.append(LineReading(rel, str(text), float(score), least[(text, round(float(score), 6))],
                                   str(s_text), float(o["rec_score"]), dt))
    return out, tiny_s


def ground_truth() -> dict[str, tuple[str, str]]:
    """image -> (set, ground truth), as ocr_score.py selects them."""
    rows = csv.DictReader(open(CORPUS / "MANIFEST.tsv", encoding="utf-8"), delimiter="\t")
    out = {}
    for r in rows:
        gt = CORPUS / (os.path.splitext(r["file"])[0] + ".gt.txt")
        if r.get("has_gt") == "yes" and gt.is_file():
            out[r["file"]] = (r["set"], gt.read_text(encoding="utf-8"))
    return out


Choice = Callable[[LineReading], tuple[bool, bool]]  # -> (keep small's text, re-read at all)


def evaluate(lines: list[LineReading], tiny_s: float, gts: dict[str, tuple[str, str]], choose: Choice) -> str:
    texts: dict[str, list[str]] = collections.defaultdict(list)
    extra, reread = 0.0, 0
    for ln in lines:
        use, tried = choose(ln)
        if tried:
            extra += ln.small_s
            reread += 1
        texts[ln.rel].append(ln.small if use else ln.tiny)
    chars, words = [], []
    per_set: dict[str, list[float]] = collections.defaultdict(list)
    for rel, (set_, gt) in gts.items():
        pred = "\n".join(texts.get(rel, []))
        c = ocr_score.f1(ocr_score.chars(gt), ocr_score.chars(pred))
        chars.append(c)
        per_set[set_].append(c)
        if not any("\u4e00" <= ch <= "\u9fff" for ch in gt):
            words.append(ocr_score.f1(ocr_score.words(gt), ocr_score.words(pred)))
    sets = " | ".join(f"{sum(v) / len(v):.3f}" for _, v in sorted(per_set.items()))
    return (f"{reread / len(lines):.0%} | {(tiny_s + extra) / tiny_s:.2f} | {sum(chars) / len(chars):.3f} | "
            f"{sum(words) / len(words):.3f} | {sets} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--below", default="0.9,0.93,0.95,0.97,0.98")
    ap.add_argument("--min-below", default="0.5,0.6,0.7,0.8")
    args = ap.parse_args()
    print(f"# machine: {machine()}")
    gts = ground_truth()
    with tempfile.TemporaryDirectory() as td:
        lines, tiny_s = read_lines(Path(td))
    small_s = sum(ln.small_s for ln in lines)
    print(f"# {len(lines)} lines; tiny {tiny_s:.2f} s for the pages, small's recognizer {small_s:.2f} s for every crop\n")
    set_names = sorted({s for s, _ in gts.values()})
    print("| trigger | rule | lines re-read | time vs tiny | char F1 | word F1 (Latin) | " + " | ".join(set_names) + " |")
    print("|---" * (6 + len(set_names)) + "|")
    print("| – | tiny | 0% | " + evaluate(lines, tiny_s, gts, lambda ln: (False, False)).split(" | ", 1)[1])
    print("| every line | small rec | " + evaluate(lines, tiny_s, gts, lambda ln: (True, True)))
    rules: dict[str, Callable[[LineReading, bool], bool]] = {
        "replace": lambda ln, tried: tried,
        "better": lambda ln, tried: tried and ln.small_score > ln.tiny_score,
    }
    for kind, values in (("score", args.below), ("least char", args.min_below)):
        for t in (float(v) for v in values.split(",")):
            for rule, keep in rules.items():
                def choose(ln: LineReading, t: float = t, kind: str = kind, keep: Any = keep) -> tuple[bool, bool]:
                    tried = (ln.tiny_score if kind == "score" else ln.tiny_min) < t
                    return keep(ln, tried), tried

                print(f"| {kind} < {t:g} | {rule} | " + evaluate(lines, tiny_s, gts, choose))


if __name__ == "__main__":
    main()
