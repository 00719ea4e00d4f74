"""A refactor must not cost speed: a base commit vs the working tree, in one run.

    python bench/bench_core.py --base REV [--copies 2] [--files 3000] [--reps 2]

Each version runs from its own source tree (``PYTHONPATH``), alternately, on the
same inputs and the same models:

1. ``ocr-inbox ocr`` on the corpus pages (real inference), wall time with start-up;
2. the daemon with real inference: corpus pages already in the inbox at start,
   time from start to every folder's PDF published;
3. the daemon with the fake engine (scheduling, ledger, JSON writes; no OCR):
   ``--files`` tiny images in 30 folders, time from READY to all done.

Prints seconds per run and the ratio working tree / base (below 1: faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, copy_corpus, machine, ocr_cli  # noqa: E402
from daemon_run import DaemonRun  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from imagemaker import plain  # noqa: E402

REAL = "[watch]\nsettle_seconds = 0.5\n[pdf]\nquiet_seconds = 1\n"
# each version's own test engine, under a name the tests' fakes/ folder (first on the path) does not shadow
FAKE = REAL + '[ocr]\nengine_plugin = "bench_fake_engine:create"\n'


def _with_source(src: Path, fn: Callable[[], float]) -> float:
    old = os.environ.get("PYTHONPATH")
    fakes = Path(tempfile.mkdtemp(prefix="bench-fakes-"))
    shutil.copy(src / "tests" / "fakes" / "fake_engine.py", fakes / "bench_fake_engine.py")
    os.environ["PYTHONPATH"] = f"{fakes}{os.pathsep}{src / 'daemon'}"
    try:
        return fn()
    finally:
        shutil.rmtree(fakes, ignore_errors=True)
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def oneshot(inbox: Path, work: Path) -> float:
    shutil.rmtree(work, ignore_errors=True)
    return ocr_cli(inbox, work / "out", work / "state")


def daemon_pdfs(inbox: Path, work: Path, folders: int) -> float:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(inbox, work / "inbox")
    d = DaemonRun(work, REAL, "real")
    t0 = time.monotonic()
    d.start()
    try:
        d.until(lambda: len(d.events("pdf_done")) >= folders, "every folder PDF", timeout=1800, tick=0.1)
        return time.monotonic() - t0
    finally:
        d.kill()


def daemon_fake(files: int, work: Path) -> float:
    shutil.rmtree(work, ignore_errors=True)
    for i in range(files):
        plain(work / "inbox" / f"f{i % 30:02d}" / f"p{i:05d}.png", size=(40 + i % 50, 30))
    d = DaemonRun(work, FAKE, "fake")
    d.start()
    try:
        d.ready(600)
        t0 = time.monotonic()
        d.until(lambda: d.done() >= files, "all done", timeout=1800, tick=0.1)
        return time.monotonic() - t0
    finally:
        d.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the commit to compare against")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        root = Path(tmp)
        base = root / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.base],
                       check=True, capture_output=True)
        try:
            inbox = root / "corpus"
            rels = copy_corpus(inbox, args.copies)
            folders = len({r.rsplit("/", 1)[0] for r in rels})
            cases: dict[str, Callable[[], float]] = {
                f"ocr-inbox ocr, {len(rels)} corpus pages": lambda: oneshot(inbox, root / "w"),
                f"daemon, {len(rels)} pages to {folders} PDFs": lambda: daemon_pdfs(inbox, root / "w", folders),
                f"daemon, fake engine, {args.files} files": lambda: daemon_fake(args.files, root / "w"),
            }
            for name, fn in cases.items():
                times: dict[str, list[float]] = {"base": [], "tree": []}
                for _ in range(args.reps):
                    for label, src in (("base", base), ("tree", REPO)):
                        times[label].append(_with_source(src, fn))
                b, t = statistics.median(times["base"]), statistics.median(times["tree"])
                print(f"{name}: base {b:.2f} s {times['base']}, tree {t:.2f} s {times['tree']}, ratio {t / b:.3f}")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], capture_output=True)


if __name__ == "__main__":
    main()
