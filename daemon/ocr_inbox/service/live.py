"""The running daemon's live view, for ``ocr-inbox status``: its workers per node, and why
dispatch is paused, and what intake did not take (folders and files it may not read yet,
files of other types).

The ledger says what was done; only the daemon's memory knows which workers (processes,
or Ray actors on which nodes) exist now. The daemon writes
``STATE_DIR/live.json`` atomically when that view changes (at most every few seconds), and
once more without workers when it stops. Whether a daemon is running at all is told by the
state dir's lock, not by this file: after a ``kill -9`` the file stays, and ``status``
says the daemon is not running.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ocr_inbox.executors.base import WorkerView
from ocr_inbox.ledger import in_use
from ocr_inbox.support import statedir

LIVE_NAME = "live.json"


def write(
    state_dir: Path, executor: str, workers: list[WorkerView], note: str, paused: str,
    inbox: dict[str, Any] | None = None, quiet_seconds: float | None = None,
) -> None:
    """``inbox``: what intake did not take (``Intake.report``: unreadable paths, skipped
    files); ``quiet_seconds``: the running ``[pdf] quiet_seconds``, for "PDF in N s"."""
    view = {
        "pid": os.getpid(),
        "written_at": time.time(),
        "executor": executor,
        "note": note,
        "paused": paused,
        "workers": [w.as_dict() for w in workers],
        "inbox": inbox or {},
        "quiet_seconds": quiet_seconds,
    }
    # Replaced whole (a reader never sees half a file), through one fixed temp name: a kill
    # leaves at most that one file, overwritten by the next write. No fsync: it is a view
    # of memory, rewritten within seconds, and worthless after a crash anyway.
    with statedir.directory(state_dir) as d:
        statedir.write_replace(d, LIVE_NAME, json.dumps(view, ensure_ascii=False).encode(), state_dir)


def read(state_dir: Path) -> dict[str, Any]:
    """The last view the daemon wrote, with ``running``; a daemon that is not running has no
    workers, whatever a killed one left in the file. Read like every file of the state dir
    (``statedir``): a link or another user's file there is refused (StateError)."""
    view: dict[str, Any] = {}
    if state_dir.is_dir():
        with contextlib.suppress(OSError, ValueError):
            view = json.loads(statedir.read_bytes(state_dir, LIVE_NAME))
    view["running"] = in_use(state_dir)  # the state dir's lock
    if not view["running"]:
        view.update(workers=[], note="", paused="", inbox={})
    return view


def per_node(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Workers grouped by node and device: counts by state and images done, for the table."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for w in workers:
        g = groups.setdefault((w["node"], w["device"]), {"node": w["node"], "device": w["device"], "workers": 0, "images": 0, "states": {}})
        g["workers"] += 1
        g["images"] += w["images"]
        g["states"][w["state"]] = g["states"].get(w["state"], 0) + 1
    return [groups[k] for k in sorted(groups)]
