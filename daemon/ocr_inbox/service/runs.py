"""Which trees a ledger is for: ``run.json`` beside it, and where ``ocr-inbox ocr`` keeps its runs.

A one-shot run's state is ``STATE_DIR/runs/<id>/``, one per (inbox, outbox);
the daemon's is ``STATE_DIR`` itself. Each holds a ``run.json`` naming its
inbox and outbox, so that ``ocr-inbox search`` can name the PDFs (the daemon
may have been started with ``--inbox``/``--outbox``, not a configuration)
and ``search --outbox OUT`` finds a run without being told its inbox.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ocr_inbox.support import statedir
from ocr_inbox.support.errors import BadArguments, StateError

RUNS_DIR = "runs"
RUN_INFO = "run.json"


def state_dir_for(state_dir: Path, inbox: Path, outbox: Path) -> Path:
    """One ledger per (inbox, outbox) pair, so runs over different trees never mix."""
    key = f"{os.path.realpath(inbox)}\0{os.path.realpath(outbox)}".encode()
    return state_dir / RUNS_DIR / hashlib.sha256(key).hexdigest()[:16]


def record(run_dir: Path, inbox: Path, outbox: Path) -> None:
    """Name the trees of the ledger in ``run_dir`` in its ``run.json`` (rewritten, atomically, when they change)."""
    info = {"inbox": os.path.realpath(inbox), "outbox": os.path.realpath(outbox)}
    if recorded(run_dir) == (Path(info["inbox"]), Path(info["outbox"])):
        return
    with statedir.directory(run_dir) as d:
        statedir.write_replace(d, RUN_INFO, json.dumps(info).encode(), run_dir, durable=True)


def recorded(run_dir: Path) -> tuple[Path, Path] | None:
    """(inbox, outbox) as ``record`` wrote them, or None."""
    try:
        info = json.loads(statedir.read_bytes(run_dir, RUN_INFO))
        return Path(info["inbox"]), Path(info["outbox"])
    except (OSError, ValueError, KeyError, TypeError, StateError):
        return None


def find(state_dir: Path, outbox: Path, inbox: Path | None = None) -> tuple[Path, Path]:
    """The run dir and inbox of the run into ``outbox`` (and from ``inbox``, when given).

    Raises ``BadArguments`` when there is none, or several and no ``inbox`` to choose.
    """
    if inbox is not None:
        run_dir = state_dir_for(state_dir, inbox, outbox)
        if not run_dir.is_dir():
            raise BadArguments(f"no `ocr-inbox ocr {inbox} {outbox}` run is recorded in {state_dir}")
        return run_dir, inbox
    want = os.path.realpath(outbox)
    found: list[tuple[Path, Path]] = []
    try:
        candidates = sorted((state_dir / RUNS_DIR).iterdir())
    except OSError:
        candidates = []
    for run_dir in candidates:
        trees = recorded(run_dir)
        if trees is not None and str(trees[1]) == want:
            found.append((run_dir, trees[0]))
    if not found:
        raise BadArguments(
            f"no `ocr-inbox ocr` run into {outbox} is recorded in {state_dir}: give the same --state-dir "
            "as the run, and --inbox if the run is older than search"
        )
    if len(found) > 1:
        inboxes = ", ".join(str(i) for _, i in found)
        raise BadArguments(f"several runs wrote into {outbox} (from {inboxes}): choose one with --inbox")
    return found[0]
