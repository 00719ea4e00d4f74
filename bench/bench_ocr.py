"""The old script's way vs `ocr-inbox ocr`, on the same pages in one run.

    python bench/bench_ocr.py [--copies 2] [--profile ppocrv6-tiny]

(a) seed-style: one PaddleX pipeline in one process, ``predict(path)`` per image,
    ``save_to_json`` (PaddleX defaults: its thread count, fixed detection limits);
(b) ``ocr-inbox ocr`` (worker pool, tuned threads, per-image detection limits),
    wall time including process start and model loading.
Prints images/s for both and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import MODELS, copy_corpus, machine, ocr_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))


def seed_style(inbox: Path, outbox: Path, profile: str, cache: Path) -> float:
    t0 = time.perf_counter()
    os.environ["PADDLE_PDX_CACHE_HOME"] = str(cache)
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    from paddlex import create_pipeline

    from ocr_inbox.ocr import profiles

    p = profiles.get(profile)
    cfg = {
        "pipeline_name": "OCR",
        "text_type": "general",
        "use_doc_preprocessor": False,
        "use_textline_orientation": False,
        "SubModules": {
            "TextDetection": {"module_name": "text_detection", "model_name": p.det.model_name,
                              "model_dir": str(MODELS / profile / "det"), "limit_side_len": 64, "limit_type": "min"},
            "TextRecognition": {"module_name": "text_recognition", "model_name": p.rec.model_name,
                                "model_dir": str(MODELS / profile / "rec"), "batch_size": 1},
        },
    }
    pipe = create_pipeline(config=cfg, engine=p.engine)
    for img in sorted(inbox.rglob("*")):
        if img.is_file():
            rel = img.relative_to(inbox)
            for res in pipe.predict(str(img)):
                res.save_to_json(str(outbox / rel.parent))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--profile", default="ppocrv6-tiny")
    args = ap.parse_args()
    print(f"# machine: {machine()}")
    with tempfile.TemporaryDirectory() as td:
        root = Path(td)
        rels = copy_corpus(root / "in", args.copies)
        n = len(rels)
        b = ocr_cli(root / "in", root / "out-b", root / "state", "--profile", args.profile)
        a = seed_style(root / "in", root / "out-a", args.profile, root / "cache")
        print(f"images: {n} (corpus x{args.copies}), profile {args.profile}")
        print(f"(a) seed-style loop : {a:7.1f} s  {n / a:6.3f} images/s  {a / n:6.3f} s/image")
        print(f"(b) ocr-inbox ocr   : {b:7.1f} s  {n / b:6.3f} images/s  {b / n:6.3f} s/image")
        print(f"speed-up (b)/(a)    : {a / b:.2f}x")


if __name__ == "__main__":
    main()
