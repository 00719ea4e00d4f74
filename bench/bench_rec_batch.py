"""Recognition batch size per engine on ../shared/corpus: time per page and accuracy.

    OCR_INBOX_MODELS_DIR=.models python bench/bench_rec_batch.py [--profiles a,b] [--batches 1,2,4,8,16]
        [--reps 3] [--threads 1] [--device cpu] [--cli]

For each profile, one engine per batch size in this process (``[ocr] rec_batch_size``;
PaddleX sorts a page's line crops by width before batching them, and pads each
batch to its widest crop). Every page goes through every batch size, in a shuffled
order per page, ``--reps`` times; the table gives medians over the passes of the
per-pass total and of its ratio to batch 1 in the same pass (robust to a busy
machine), and the char F1 of the first pass (padding can change a line's reading).

``--cli``: instead, ``ocr-inbox ocr`` over the corpus per batch size (2 workers x 1
thread, start-up included), each run in its own processes, batch sizes interleaved.
Use it for Paddle's engine: predictors in one process share oneDNN's cache of
compiled shapes, so the in-process figures would not be a worker's.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

from common import MODELS, REPO, interleaved_passes, machine, score

sys.path.insert(0, str(REPO / "daemon"))

from bench_cascade import load_pages, parse_score  # noqa: E402


def bench(profile: str, batches: list[int], reps: int, pages: list[tuple[str, list[object]]], args: argparse.Namespace, work: Path) -> None:
    from ocr_inbox.ocr import engine, profiles

    if profiles.get(profile).engine == "paddle" and importlib.util.find_spec("paddle") is None:
        print(f"\n## {profile}: skipped (paddlepaddle is not installed)")
        return
    engines = {
        bs: engine.create(
            engine.EngineSettings(profile, MODELS, work / "cache", device=args.device, reported_device=args.device,
                                  threads=args.threads, rec_batch_size=bs)
        )
        for bs in batches
    }
    totals, first = interleaved_passes(engines, pages, reps, seed=8, label=f"{profile} (batch sizes) ")
    texts = {bs: {rel: "\n".join(ln.text for page in out for ln in page) for rel, out in first[bs].items()} for bs in batches}
    print(f"\n## {profile} ({profiles.get(profile).engine}, {args.device}, {args.threads} thread(s)), "
          f"{len(pages)} pages, {reps} passes\n")
    print("| rec batch | s/page | time vs batch 1 | char F1 | word F1 (Latin) |")
    print("|---|---|---|---|---|")
    base = batches[0]
    for bs in batches:
        pred = work / f"pred-{profile}-{bs}"
        for rel, text in texts[bs].items():
            (pred / f"{rel}.txt").parent.mkdir(parents=True, exist_ok=True)
            (pred / f"{rel}.txt").write_text(text, encoding="utf-8")
        rows = parse_score(score(pred))
        ratio = statistics.median(totals[bs][r] / totals[base][r] for r in range(reps))
        print(f"| {bs} | {statistics.median(totals[bs]) / len(pages):.3f} | {ratio:.2f} | {rows['ALL'][0]:.3f} | {rows['ALL'][1]:.3f} |")
    del engines


def bench_cli(profile: str, batches: list[int], reps: int, work: Path) -> None:
    from common import copy_corpus, ocr_cli, write_predictions

    inbox = work / "in"
    if not inbox.is_dir():
        copy_corpus(inbox)
    n = sum(1 for p in inbox.rglob("*") if p.is_file())
    secs: dict[int, list[float]] = {bs: [] for bs in batches}
    for rep in range(reps):
        for bs in batches if rep % 2 == 0 else batches[::-1]:
            cfg = work / f"b{bs}.toml"
            cfg.write_text(f'[ocr]\nrec_batch_size = {bs}\nprofile = "{profile}"\n')
            out = work / f"out-{profile}-{bs}-{rep}"
            secs[bs].append(ocr_cli(inbox, out, work / f"state-{profile}-{bs}-{rep}", "--config", str(cfg)))
            if rep == 0:
                write_predictions(out, work / f"clipred-{profile}-{bs}")
        print(f"# {profile} cli pass {rep + 1}: " + ", ".join(f"b{bs} {secs[bs][-1]:.1f}s" for bs in batches), flush=True)
    print(f"\n## {profile}, `ocr-inbox ocr`, {n} images, 2 workers x 1 thread, {reps} runs (wall time with start-up)\n")
    print("| rec batch | s/image | time vs batch 1 | char F1 | word F1 (Latin) |")
    print("|---|---|---|---|---|")
    for bs in batches:
        rows = parse_score(score(work / f"clipred-{profile}-{bs}"))
        ratio = statistics.median(secs[bs][r] / secs[batches[0]][r] for r in range(reps))
        print(f"| {bs} | {statistics.median(secs[bs]) / n:.3f} | {ratio:.2f} | {rows['ALL'][0]:.3f} | {rows['ALL'][1]:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profiles", default="ppocrv6-tiny,ppocrv6-small,ppocrv4-mobile-onnx,ppocrv4-mobile")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="per engine, as in a worker")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cli", action="store_true", help="whole `ocr-inbox ocr` runs, one per batch size")
    args = ap.parse_args()
    print(f"# machine: {machine()}")
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as td:
        for prof in args.profiles.split(","):
            if args.cli:
                bench_cli(prof, batches, args.reps, Path(td))
            else:
                bench(prof, batches, args.reps, load_pages(), args, Path(td))


if __name__ == "__main__":
    main()
