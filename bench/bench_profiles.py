"""Speed and accuracy of each model profile on ../shared/corpus (chooses the CPU default).

    python bench/bench_profiles.py [--profiles a,b] [--workers N]

Runs `ocr-inbox ocr` on all corpus pages per profile (wall time includes start-up
and model loading) and scores the text with ../shared/tools/ocr_score.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

from common import copy_corpus, machine, ocr_cli, score, write_predictions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profiles", default="ppocrv6-tiny,ppocrv6-small,ppocrv4-mobile-onnx,ppocrv4-mobile")
    ap.add_argument("--workers", default="")
    args = ap.parse_args()
    print(f"# machine: {machine()}")
    with tempfile.TemporaryDirectory() as td:
        root = Path(td)
        rels = copy_corpus(root / "in")
        print(f"# {len(rels)} corpus images")
        for prof in args.profiles.split(","):
            if prof == "ppocrv4-mobile" and importlib.util.find_spec("paddle") is None:
                print(f"## {prof}: skipped (paddlepaddle not installed)")
                continue
            extra = ["--profile", prof] + (["--workers", args.workers] if args.workers else [])
            out = root / f"out-{prof}"
            secs = ocr_cli(root / "in", out, root / "state", *extra)
            write_predictions(out, root / f"pred-{prof}")
            print(f"## {prof}: {secs:.1f} s for {len(rels)} images = {secs / len(rels):.2f} s/image (incl. start-up)")
            print(score(root / f"pred-{prof}"))


if __name__ == "__main__":
    main()
