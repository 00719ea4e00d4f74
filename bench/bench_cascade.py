"""The confidence cascade and the word lists on ../shared/corpus: accuracy, time relative to tiny, memory.

    OCR_INBOX_MODELS_DIR=.models python bench/bench_cascade.py [--settings tiny,tiny+en,<0.95+en,small]
        [--reps 3] [--cli-settings tiny,tiny+en,<0.93+en] [--cli-reps 3] [--skip curve,cli,rss]
        [--rss-settings tiny,<0.93+en] [--rss-tree before=../before]

A setting is ``tiny`` (ppocrv6-tiny), ``small`` (ppocrv6-small) or ``<T`` (tiny, and the lines it
reads with a score below T read again by small's recognizer: ``[ocr] refine_below = T``), with
``+en`` (or ``+de``, ``+en+fr`` …) for the word lists (``[ocr] lexicon``; without it: off). The
first setting is the one the times are compared with.

(1) curve: one engine per setting in this process (1 thread each, as in a worker). Every corpus
    page goes through every setting, in a shuffled order per page, ``--reps`` times. Times:
    medians over the passes of each setting's total and of its ratio to the first setting *in
    the same pass*, so a busy machine slows every setting alike. Accuracy: the first pass's
    text, scored by ../shared/tools/ocr_score.py.
(2) cli: ``ocr-inbox ocr`` over the corpus (2 workers, start-up and model loading included)
    for each ``--cli-settings``, interleaved (the order reversed every other run),
    ``--cli-reps`` times: medians of wall time and of the ratio to the first.
(3) rss: a fresh process per setting (``--rss-settings``, else ``--cli-settings``) creates the
    engine and OCRs every corpus file, read and decoded one page at a time as a worker does
    (what a worker holds): peak (VmHWM) and final (VmRSS) resident memory, and VmData (what
    ``[pool] worker_memory_mb`` caps) at the end, twice each,
    interleaved, medians. ``--rss-tree LABEL=DIR`` also runs them on another checkout's code
    (``git worktree add ../before REV``), to compare with the commit before a change.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import CORPUS, MODELS, REPO, corpus_images, interleaved_passes, machine, ocr_cli, score

sys.path.insert(0, str(REPO / "daemon"))

TINY, SMALL = "ppocrv6-tiny", "ppocrv6-small"


def parse(name: str) -> tuple[str, float, tuple[str, ...]]:
    """A setting's name -> (profile, refine_below, word lists)."""
    base, *langs = name.split("+")
    if base.startswith("<"):
        return TINY, float(base[1:]), tuple(langs)
    return {"tiny": TINY, "small": SMALL}.get(base, base), 0.0, tuple(langs)


def settings_for(name: str, cache: Path) -> object:
    from ocr_inbox.ocr.engine import EngineSettings

    profile, below, langs = parse(name)
    refine = SMALL if below > 0 else ""
    return EngineSettings(profile, MODELS, cache, refine_profile=refine, refine_below=below, lexicon=langs)


def label(name: str) -> str:
    profile, below, langs = parse(name)
    out = "tiny" if profile == TINY else "small" if profile == SMALL else profile
    if below > 0:
        out += f", re-read < {below:g}"
    return out + (f" + word lists {'+'.join(langs)}" if langs else "")


def config_for(name: str, work: Path) -> list[str]:
    """``ocr-inbox ocr`` arguments for a setting."""
    profile, below, langs = parse(name)
    cfg = work / f"{abs(hash(name))}.toml"
    cfg.write_text(f'[ocr]\nprofile = "{profile}"\nrefine_below = {below}\nrefine_profile = "{SMALL}"\n'
                   f"lexicon = {json.dumps(list(langs))}\n")
    return ["--config", str(cfg)]


def load_pages() -> list[tuple[str, list[object]]]:
    from ocr_inbox.ocr import images

    lim = images.Limits(max_pixels=200_000_000, max_file_bytes=512 << 20, max_pages=2000, max_total_pixels=10**9)
    return [(rel, [p.bgr for p in images.decode((CORPUS / rel).read_bytes(), lim)]) for rel in corpus_images()]


def curve(names: list[str], reps: int, work: Path) -> None:
    from ocr_inbox.ocr import engine

    engines = {n: engine.create(settings_for(n, work / "cache")) for n in names}  # type: ignore[arg-type]
    pages = load_pages()
    totals, first = interleaved_passes(engines, pages, reps, seed=13)
    texts = {n: {rel: "\n".join(ln.text for page in out for ln in page) for rel, out in first[n].items()} for n in names}
    lines = {n: [sum(len(page) for out in first[n].values() for page in out),  # [lines, refined]
                 sum(1 for out in first[n].values() for page in out for ln in page if ln.rec)] for n in names}
    print(f"\n## curve: {len(pages)} pages, {reps} passes, 1 thread per engine\n")
    print("| setting | lines re-read (kept) | s/page | time vs tiny | char F1 | word F1 (Latin) | " + " | ".join(sets()) + " |")
    print("|---" * (6 + len(sets())) + "|")
    for n in names:
        ratio = statistics.median(totals[n][r] / totals[names[0]][r] for r in range(reps))
        pred = work / f"pred{n}"
        for rel, text in texts[n].items():
            (pred / f"{rel}.txt").parent.mkdir(parents=True, exist_ok=True)
            (pred / f"{rel}.txt").write_text(text, encoding="utf-8")
        rows = parse_score(score(pred))
        below = parse(n)[1]
        tried = "" if not below else f"{tried_share(engines[names[0]], pages, below):.0%} ({lines[n][1] / max(lines[n][0], 1):.0%})"
        per_set = " | ".join(f"{rows[s][0]:.3f}" for s in sets())
        print(
            f"| {label(n)} | {tried} | {statistics.median(totals[n]) / len(pages):.3f} | {ratio:.2f} | "
            f"{rows['ALL'][0]:.3f} | {rows['ALL'][1]:.3f} | {per_set} |"
        )


_TINY_SCORES: list[float] = []


def tried_share(tiny: object, pages: list[tuple[str, list[object]]], below: float) -> float:
    """Share of tiny's lines scoring below ``below`` (those the cascade re-reads)."""
    if not _TINY_SCORES:
        for _, bgrs in pages:
            _TINY_SCORES.extend(ln.score for b in bgrs for ln in tiny.recognise(b))  # type: ignore[attr-defined]
    return sum(1 for s in _TINY_SCORES if s < below) / len(_TINY_SCORES)


def sets() -> list[str]:
    """The sets ocr_score.py scores (those with verified ground truth)."""
    return sorted(r for r in parse_score(score(Path("/nonexistent"))) if r != "ALL")


def parse_score(out: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for line in out.splitlines()[1:]:
        f = line.split("\t")
        rows[f[0]] = (float(f[2]), float(f[3]))
    return rows


def cli(names: list[str], reps: int, work: Path) -> None:
    from common import copy_corpus, write_predictions

    inbox = work / "in"
    rels = copy_corpus(inbox)
    runs = {n: config_for(n, work) for n in names}
    key = {n: f"s{i}" for i, n in enumerate(runs)}  # each setting its own outbox and ledger
    secs: dict[str, list[float]] = {n: [] for n in runs}
    for rep in range(reps):
        for n, extra in (runs.items() if rep % 2 == 0 else reversed(runs.items())):
            out = work / f"out-{rep}-{key[n]}"
            secs[n].append(ocr_cli(inbox, out, work / f"state-{rep}-{key[n]}", *extra))
            if rep == 0:
                write_predictions(out, work / f"clipred-{key[n]}")
        print(f"# cli pass {rep + 1}: " + ", ".join(f"{n} {s[-1]:.1f}s" for n, s in secs.items()), flush=True)
    print(f"\n## `ocr-inbox ocr`, {len(rels)} images, 2 workers x 1 thread, {reps} runs each (wall time with start-up)\n")
    print(f"| setting | wall s (median) | s/image | vs {label(names[0])} | char F1 | word F1 (Latin) |")
    print("|---|---|---|---|---|---|")
    for n, s in secs.items():
        ratio = statistics.median(s[r] / secs[names[0]][r] for r in range(reps))
        rows = parse_score(score(work / f"clipred-{key[n]}"))
        med = statistics.median(s)
        print(f"| {label(n)} | {med:.1f} | {med / len(rels):.3f} | {ratio:.2f} | {rows['ALL'][0]:.3f} | {rows['ALL'][1]:.3f} |")


_RSS_CHILD = """
import json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from ocr_inbox.ocr import engine, images  # first: bench_cascade puts this checkout's daemon/ on the path
import bench_cascade as b
assert Path(engine.__file__).is_relative_to(sys.argv[2]), engine.__file__
s = b.settings_for(sys.argv[3], Path(sys.argv[4]))
e = engine.create(s)
for rel in b.corpus_images():  # as a worker does: one file read and one page decoded at a time
    for page in images.pages((b.CORPUS / rel).read_bytes(), images.Limits()):
        e.recognise(page.bgr)
        del page
st = dict(l.split(":", 1) for l in open("/proc/self/status"))
print(json.dumps({k: int(st[k].split()[0]) // 1024 for k in ("VmHWM", "VmRSS", "VmData")}))
"""


def rss(names: list[str], reps: int, work: Path, trees: dict[str, Path]) -> None:
    """Each setting on each tree's ``daemon/`` (this checkout, and ``--rss-tree`` ones)."""
    runs = [(t, n) for t in trees for n in names]
    got: dict[tuple[str, str], list[dict[str, int]]] = {r: [] for r in runs}
    for rep in range(reps):
        for tree, n in runs if rep % 2 == 0 else reversed(runs):
            daemon = trees[tree].resolve() / "daemon"
            cmd = [sys.executable, "-c", _RSS_CHILD, str(REPO / "bench"), str(daemon), n, str(work / "cache")]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            got[(tree, n)].append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"\n## worker memory: one process per setting, engine + all {len(corpus_images())} files one page at a time, "
          f"{reps} runs, medians\n")
    print("| code | setting | peak RSS (VmHWM) MiB | RSS after MiB | VmData after MiB |")
    print("|---|---|---|---|---|")
    for tree, n in runs:
        hwm = statistics.median(g["VmHWM"] for g in got[(tree, n)])
        now = statistics.median(g["VmRSS"] for g in got[(tree, n)])
        data = statistics.median(g.get("VmData", 0) for g in got[(tree, n)])
        print(f"| {tree} | {label(n)} | {hwm:.0f} | {now:.0f} | {data:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default="tiny,tiny+en,<0.9+en,<0.93+en,<0.95+en,<0.98+en,<1+en,small,small+en")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cli-settings", default="tiny,tiny+en,<0.93+en,<0.95+en,small+en",
                    help="settings for the cli and rss parts")
    ap.add_argument("--cli-reps", type=int, default=3)
    ap.add_argument("--rss-tree", action="append", default=[], metavar="LABEL=DIR",
                    help="also measure the memory of another checkout's code (e.g. a worktree of the commit before)")
    ap.add_argument("--rss-settings", default="", help="settings for the rss part (default: --cli-settings)")
    ap.add_argument("--skip", default="")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    print(f"# machine: {machine()}")
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        if "curve" not in skip:
            curve(args.settings.split(","), args.reps, work)
        cli_settings = args.cli_settings.split(",")
        if "cli" not in skip:
            cli(cli_settings, args.cli_reps, work)
        if "rss" not in skip:
            trees = {"this tree": REPO, **{k: Path(v) for k, v in (t.split("=", 1) for t in args.rss_tree)}}
            rss(args.rss_settings.split(",") if args.rss_settings else cli_settings, 2, work, trees)


if __name__ == "__main__":
    main()
