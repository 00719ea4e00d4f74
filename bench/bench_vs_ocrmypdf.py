"""Folder -> searchable PDF: ``ocr-inbox ocr --pdf`` against OCRmyPDF on the same pages and cores.

    python bench/bench_vs_ocrmypdf.py [--pages 24] [--rounds 3] [--folders 1] [--cpus 0,1] [--base REV]
        [--variant LABEL=CONFIG ...] [--no-ocrmypdf]

Input: XFUND Chinese forms (A4 scans, 2480x3508 at 300 dpi) from ``../shared/corpus``,
cycled to ``--pages`` pages named ``pNNN_<source>.jpg`` in one folder (or split over
``--folders`` folders, one PDF each).

- ocr-inbox: ``python -m ocr_inbox ocr INBOX OUTBOX --pdf`` with the default profile and
  workers, fresh outbox and state dir each run; wall time from process start to
  process exit (the PDF is on disk, fsynced, before that; the log says when).
- OCRmyPDF: ``ocrmypdf --jobs 2 -l chi_sim+eng IN.pdf OUT.pdf`` (its defaults
  otherwise), where IN.pdf holds the same images in the same order, made with
  img2pdf beforehand (not timed: OCRmyPDF takes one image per run, or a PDF). One
  run per folder.

Rounds are interleaved (the order alternates each round) so both see the same load;
medians are reported, with pages/s and the ratio. ``--cpus`` pins every process to
those cores (``taskset``), e.g. to compare on 2 cores of a bigger machine.
``--base REV`` also times another commit's ``ocr-inbox`` in the same rounds
(e.g. the commit before the PDF overlap, to see what it pays); with
``--no-ocrmypdf`` only the ocr-inbox runs. ``--variant LABEL=CONFIG`` also times this
tree's ``ocr-inbox`` with ``--config CONFIG`` (e.g. the cascade off), in the same rounds.

Accuracy: the text layer of each PDF (PyMuPDF), page by page, scored with
``../shared/tools/ocr_score.py`` (order-insensitive char F1 after NFKC) on the first
copy of every source image.

ocr-inbox's run is broken down from its log (logfmt timestamps): start-up (process
start to the last worker ready), OCR (to the last image done), PDF work done while
OCR ran (from the first build's start), the PDF tail after the last image, exit.

Needs (not the daemon's dependencies): ``pip install -e '.[bench]'`` (ocrmypdf,
img2pdf; a separate venv works too, e.g. ``python -m venv /work/bench-venv`` and
``--ocrmypdf /work/bench-venv/bin/ocrmypdf``), and Tesseract with the Chinese
data: ``apt-get install tesseract-ocr tesseract-ocr-chi-sim tesseract-ocr-eng ghostscript``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS, MODELS, REPO, SCORE, corpus_images, machine  # noqa: E402

SETS = ("xfund_zh",)


def check_tools(ocrmypdf: list[str], langs: str) -> None:
    """Stop with how to install what is missing."""
    problems = []
    if shutil.which("tesseract") is None:
        problems.append("tesseract is not installed")
    else:
        have = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True).stdout.split()
        problems += [f"tesseract has no '{lang}' data" for lang in langs.split("+") if lang not in have]
    try:
        subprocess.run([*ocrmypdf, "--version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        problems.append(f"{' '.join(ocrmypdf)} does not run")
    try:
        import img2pdf  # noqa: F401
    except ImportError:
        problems.append("img2pdf is not importable")
    if problems:
        sys.exit(
            "missing: " + "; ".join(problems) + "\n"
            "install: apt-get install tesseract-ocr tesseract-ocr-chi-sim tesseract-ocr-eng ghostscript\n"
            "         pip install -e '.[bench]'   (ocrmypdf, img2pdf)"
        )


@dataclass
class Pages:
    """The benchmark's inbox: folder -> image names in page order, and each page's corpus source."""

    inbox: Path
    folders: dict[str, list[str]]
    source: dict[str, str] = field(default_factory=dict)  # "folder/name" -> corpus rel


def make_inbox(root: Path, n: int, folders: int, sets: tuple[str, ...]) -> Pages:
    sources = [rel for rel in corpus_images() if rel.split("/", 1)[0] in sets]
    pages = Pages(root / "inbox", {})
    per = -(-n // folders)
    for i in range(n):
        src = sources[i % len(sources)]
        folder = f"folder{i // per + 1}"
        name = f"p{i + 1:03d}_{Path(src).name}"
        (pages.inbox / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(CORPUS / src, pages.inbox / folder / name)
        pages.folders.setdefault(folder, []).append(name)
        pages.source[f"{folder}/{name}"] = src
    return pages


def make_input_pdfs(pages: Pages, dest: Path) -> dict[str, Path]:
    """One PDF of the folder's images per folder, for OCRmyPDF (img2pdf keeps JPEGs as they are)."""
    import img2pdf

    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for folder, names in pages.folders.items():
        out[folder] = dest / f"{folder}.pdf"
        out[folder].write_bytes(img2pdf.convert([str(pages.inbox / folder / n) for n in names]))
    return out


def pinned(cmd: list[str], cpus: str) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


@dataclass
class Run:
    wall_s: float
    pdfs: dict[str, Path]  # folder -> output
    log: str = ""
    t0: float = 0.0  # wall time at start
    cpu_s: float = 0.0  # user + system of every process of the run (on a busy box: what it cost)


def children_cpu() -> float:
    """CPU seconds of all waited-for descendants so far (workers, PDF child, tesseract included)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_ocr_inbox(pages: Pages, work: Path, src: Path, extra: tuple[str, ...] = (), cpus: str = "") -> Run:
    shutil.rmtree(work, ignore_errors=True)
    out = work / "out"
    cmd = [sys.executable, "-m", "ocr_inbox", "ocr", str(pages.inbox), str(out), "--pdf", "--no-progress",
           "--state-dir", str(work / "state"), "--models-dir", str(MODELS), "--log-format", "logfmt", *extra]
    env = {**os.environ, "PYTHONPATH": str(src / "daemon")}
    cpu0, t0 = children_cpu(), time.time()
    res = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if res.returncode != 0:
        sys.exit(f"ocr-inbox failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return Run(wall, {f: out / f / f"{f}.pdf" for f in pages.folders}, res.stderr, t0, children_cpu() - cpu0)


def run_ocrmypdf(inputs: dict[str, Path], work: Path, ocrmypdf: list[str], jobs: int, langs: str, cpus: str) -> Run:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    outs = {f: work / f"{f}.pdf" for f in inputs}
    cpu0, t0 = children_cpu(), time.time()
    for folder, pdf in inputs.items():
        cmd = [*ocrmypdf, "--jobs", str(jobs), "-l", langs, str(pdf), str(outs[folder])]
        res = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"ocrmypdf failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return Run(time.time() - t0, outs, t0=t0, cpu_s=children_cpu() - cpu0)


def pdf_texts(run: Run, pages: Pages) -> dict[str, str]:
    """Text layer per page ("folder/name" -> text), pages in the folder's order."""
    import pymupdf

    texts = {}
    for folder, pdf in run.pdfs.items():
        names = pages.folders[folder]
        with pymupdf.open(pdf) as doc:
            if doc.page_count != len(names):
                sys.exit(f"{pdf}: {doc.page_count} pages, {len(names)} images")
            for name, page in zip(names, doc):
                texts[f"{folder}/{name}"] = page.get_text()
    return texts


def char_f1(texts: dict[str, str], pages: Pages, pred: Path) -> float:
    """ocr_score.py's mean char F1 over the first copy of each source image."""
    shutil.rmtree(pred, ignore_errors=True)
    for key, src in pages.source.items():
        dest = pred / (src + ".txt")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(texts[key], encoding="utf-8")
    sets = sorted({src.split("/", 1)[0] for src in pages.source.values()})
    out = subprocess.run([sys.executable, str(SCORE), str(CORPUS), str(pred), "--sets", ",".join(sets)],
                         capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("ALL"))
    return float(line.split("\t")[2])


def _events(log: str) -> list[tuple[float, str, str]]:
    """(wall time, event, the line) of each logfmt line."""
    out = []
    for line in log.splitlines():
        if not line.startswith("timestamp="):
            continue
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        out.append((datetime.fromisoformat(fields["timestamp"]).timestamp(), fields.get("event", ""), line))
    return out


def breakdown(run: Run) -> dict[str, float]:
    """Seconds from process start: start-up, OCR, PDF overlap and tail, exit."""
    ev = _events(run.log)

    def at(name: str, last: bool = True) -> float:
        ts = [t for t, e, _ in ev if e == name]
        return (max(ts) if last else min(ts)) - run.t0

    ready, ocr_end = at("worker_ready"), at("image_done")
    pdf_start, pdf_on_disk = at("pdf_start", last=False), at("pdf_built")
    return {
        "start-up (to the last worker ready)": ready,
        "OCR (to the last image done)": ocr_end - ready,
        "PDF work beside OCR (first build start to last image)": max(0.0, ocr_end - pdf_start),
        "PDF tail (last image to the last PDF on disk)": pdf_on_disk - ocr_end,
        "exit (last PDF on disk to process exit)": run.wall_s - pdf_on_disk,
        "PDF on disk after": pdf_on_disk,
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=24)
    ap.add_argument("--folders", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sets", default=",".join(SETS), help="corpus sets to take pages from")
    ap.add_argument("--jobs", type=int, default=2, help="OCRmyPDF --jobs")
    ap.add_argument("--langs", default="chi_sim+eng", help="OCRmyPDF -l")
    ap.add_argument("--ocrmypdf", default=f"{sys.executable} -m ocrmypdf", help="how to run OCRmyPDF")
    ap.add_argument("--cpus", default="", help="pin every process to these cores (taskset -c)")
    ap.add_argument("--base", help="also time this commit's ocr-inbox")
    ap.add_argument("--no-ocrmypdf", action="store_true", help="only ocr-inbox (with --base: two versions)")
    ap.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=CONFIG",
                    help="also time this tree's ocr-inbox with --config CONFIG (repeatable)")
    args = ap.parse_args()
    ocrmypdf = args.ocrmypdf.split()
    if not args.no_ocrmypdf:
        check_tools(ocrmypdf, args.langs)
    print(machine(), f"| cpus {args.cpus or 'all'} | load before {load()}")

    root = args.work or Path(tempfile.mkdtemp(prefix="bench-vs-ocrmypdf-"))
    pages = make_inbox(root, args.pages, args.folders, tuple(args.sets.split(",")))
    inputs = {} if args.no_ocrmypdf else make_input_pdfs(pages, root / "ocrmypdf-in")
    n = args.pages
    print(f"{n} pages in {args.folders} folder(s), {args.rounds} round(s), interleaved")

    #: name -> (source tree, extra arguments)
    contenders: dict[str, tuple[Path, tuple[str, ...]]] = {"ocr-inbox": (REPO, ())}
    for v in args.variant:
        label, _, cfg = v.partition("=")
        contenders[f"ocr-inbox {label}"] = (REPO, ("--config", str(Path(cfg).resolve())))
    base_tree = None
    if args.base:
        base_tree = root / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.base],
                       check=True, capture_output=True)
        contenders[f"ocr-inbox {args.base}"] = (base_tree, ())
    names = [*contenders] + ([] if args.no_ocrmypdf else ["OCRmyPDF"])
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    #: per run: char F1, and for ocr-inbox the breakdown of its log
    parts: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                before = load()
                if name == "OCRmyPDF":
                    run = run_ocrmypdf(inputs, root / "ocrmypdf-out", ocrmypdf, args.jobs, args.langs, args.cpus)
                    figures = {}
                else:
                    run = run_ocr_inbox(pages, root / "ocr-inbox", *contenders[name], cpus=args.cpus)
                    figures = breakdown(run)
                walls[name].append(run.wall_s)
                cpus[name].append(run.cpu_s)
                print(f"round {r + 1} {name}: {run.wall_s:.2f} s ({n / run.wall_s:.2f} pages/s), "
                      f"CPU {run.cpu_s:.1f} s, load before {before}", flush=True)
                figures["char F1"] = char_f1(pdf_texts(run, pages), pages, root / "pred" / name.replace(" ", "_"))
                parts[name].append(figures)
    finally:
        if base_tree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)],
                           capture_output=True)

    ref = statistics.median(walls[names[-1]])
    cref = statistics.median(cpus[names[-1]])
    print(f"\n| | median wall s | pages/s | vs {names[-1]} | CPU s | CPU vs {names[-1]} | char F1 | runs (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ws in walls.items():
        med, cpu = statistics.median(ws), statistics.median(cpus[name])
        f1 = parts[name][-1]["char F1"]
        print(f"| {name} | {med:.2f} | {n / med:.2f} | {ref / med:.2f}x | {cpu:.1f} | {cref / cpu:.2f}x | {f1:.3f} "
              f"| {', '.join(f'{w:.1f}' for w in ws)} |")
    for name in contenders:
        print(f"\n{name}, medians over the rounds (seconds from process start):")
        for key in parts[name][0]:
            if key != "char F1":
                print(f"  {key}: {statistics.median(p[key] for p in parts[name]):.2f}")
    print(f"load after {load()}")
    if not args.work:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
