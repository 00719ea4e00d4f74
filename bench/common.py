"""Helpers shared by the benchmark scripts (not tests: they print figures)."""

from __future__ import annotations

import csv
import os
import platform
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
SCORE = REPO.parent / "shared" / "tools" / "ocr_score.py"
#: as every command reads $OCR_INBOX_MODELS_DIR (empty = unset), else where `make` installs them
MODELS = Path(os.environ.get("OCR_INBOX_MODELS_DIR") or REPO / ".models")


def corpus_images() -> list[str]:
    rows = csv.DictReader(open(CORPUS / "MANIFEST.tsv", encoding="utf-8"), delimiter="\t")
    return [r["file"] for r in rows if (CORPUS / r["file"]).is_file()]


def copy_corpus(dest: Path, copies: int = 1) -> list[str]:
    """The corpus images under dest (``copyN/<set>/<file>`` when copies > 1)."""
    rels = []
    for c in range(copies):
        for rel in corpus_images():
            out = f"copy{c}/{rel}" if copies > 1 else rel
            (dest / out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(CORPUS / rel, dest / out)
            rels.append(out)
    return rels


def machine() -> str:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {date.today()}"


def ocr_cli(inbox: Path, outbox: Path, state: Path, *extra: str) -> float:
    import time

    cmd = [sys.executable, "-m", "ocr_inbox", "ocr", str(inbox), str(outbox), "--no-progress",
           "--state-dir", str(state), "--models-dir", str(MODELS), "--log-level", "warning", *extra]
    # this checkout's code, whichever ocr_inbox the interpreter has installed (a worktree's bench)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "daemon"), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def write_predictions(outbox: Path, pred: Path) -> None:
    """JSON documents -> ``pred/<set>/<image>.txt`` for shared/tools/ocr_score.py."""
    import json

    for j in outbox.rglob("*.json"):
        if j.parent.name == ".ocr-inbox":
            continue
        doc = json.loads(j.read_text(encoding="utf-8"))
        rel = doc["source"]["path"]
        text = "\n".join(ln["text"] for p in doc["pages"] for ln in p["lines"])
        (pred / (rel + ".txt")).parent.mkdir(parents=True, exist_ok=True)
        (pred / (rel + ".txt")).write_text(text, encoding="utf-8")


def score(pred: Path) -> str:
    res = subprocess.run([sys.executable, str(SCORE), str(CORPUS), str(pred)], capture_output=True, text=True)
    return res.stdout


def interleaved_passes(engines: dict, pages: list, reps: int, seed: int, label: str = "") -> tuple[dict, dict]:
    """Every page through every engine, in a shuffled order per page, ``reps`` times.

    Returns each engine's total seconds per pass (a busy machine slows every engine of a
    pass alike, so compare within a pass) and the first pass's output: key -> rel -> the
    ``recognise`` result of each of the file's pages. The first predicts (session set-up)
    are made before, untimed.
    """
    import random
    import time

    keys = list(engines)
    for e in engines.values():
        e.recognise(pages[0][1][0])
    rng = random.Random(seed)
    totals: dict = {k: [] for k in keys}
    first: dict = {k: {} for k in keys}
    for rep in range(reps):
        t = dict.fromkeys(keys, 0.0)
        for rel, bgrs in pages:
            order = keys[:]
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                out = [engines[k].recognise(b) for b in bgrs]
                t[k] += time.perf_counter() - t0
                if rep == 0:
                    first[k][rel] = out
        for k in keys:
            totals[k].append(t[k])
        print(f"# {label}pass {rep + 1}: " + ", ".join(f"{k} {t[k]:.1f}s" for k in keys), flush=True)
    return totals, first
