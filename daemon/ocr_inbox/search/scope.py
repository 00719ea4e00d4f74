"""Which index a command means: the daemon's, or that of one ``ocr-inbox ocr INBOX OUTBOX`` run.

The daemon's lives in its ledger (``STATE_DIR/ledger.sqlite3``) and is for the
inbox and outbox it last ran with (``runs.record``; else the configured ones); a run's lives in the run's own
ledger (``STATE_DIR/runs/<id>/``), chosen by ``--outbox OUT`` (and ``--inbox
IN`` when several runs wrote into OUT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ocr_inbox.config import Settings
from ocr_inbox.service import runs
from ocr_inbox.support.errors import BadArguments


@dataclass(frozen=True)
class Scope:
    #: the directory of the ledger that holds the index
    state_dir: Path
    inbox: Path
    outbox: Path


def resolve(settings: Settings, outbox: Path | None = None, inbox: Path | None = None) -> Scope:
    if outbox is None:
        if inbox is not None:
            raise BadArguments("--inbox chooses an `ocr-inbox ocr` run together with --outbox OUT")
        state_dir = settings.paths.state_dir
        # the trees the daemon last ran with, else the configured ones
        trees = runs.recorded(state_dir) or (settings.paths.inbox, settings.paths.outbox)
        return Scope(state_dir, *trees)
    run_dir, run_inbox = runs.find(settings.paths.state_dir, outbox, inbox)
    return Scope(run_dir, run_inbox, outbox)
