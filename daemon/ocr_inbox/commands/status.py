"""``ocr-inbox status``: what the daemon has done, read from its ledger (read-only).

Folder and file names come from whoever writes the inbox: in the tables they
are shown as text, never as Rich markup (``[/]`` would end a style that was
never opened, and fail), and their control characters are written out
(``\\x1b``), so a name cannot paint or move the operator's terminal.

Paths are never cut: through a pipe or into a file the lines are as long as
they need to be (``grep``, ``less -S``), and in a narrow terminal a long path
wraps instead of ending in an ellipsis.

The totals are the ledger's (every image ever seen); the workers' column counts
what each running worker returned since it started, done or failed, each try.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ocr_inbox import config
from ocr_inbox.ledger import Ledger, reports
from ocr_inbox.outbox.names import pdf_path_for
from ocr_inbox.service import live, runs
from ocr_inbox.support import jsonout, paths
from ocr_inbox.support.errors import ExitCode
from ocr_inbox.support.logs import printable
from ocr_inbox.support.reasons import advice


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else "-"


def _shown(value: str) -> Any:
    """A name or reason as a Rich cell: plain text (no markup, no emoji codes), escaped."""
    from rich.text import Text

    return Text(printable(value))


def _folder(f: reports.FolderSummary, inbox: Path, outbox: Path, quiet_s: float | None, now: float) -> dict[str, Any]:
    """A folder for status; with a running daemon, when its PDF is due (``pdf_due_in_s``:
    whole seconds, 0 = now)."""
    due = f.pdf_due_at(quiet_s) if quiet_s is not None else None
    pdf = pdf_path_for(outbox, inbox, f.folder)
    return {
        **f.as_dict(), "pdf_path": str(pdf),
        "pdf_due_at": due, "pdf_due_in_s": None if due is None else max(0, math.ceil(due - now)),
        # published, but not there now (the daemon stopped, or its next scan not come yet):
        # never shown as a PDF that is done; the next scan rebuilds it
        "pdf_missing": f.pdf_state == "done" and not os.path.lexists(pdf),
    }


def _failure(x: reports.Failure) -> dict[str, Any]:
    return {**x.as_dict(), "advice": advice(x.reason)}


def collect(settings: config.Settings, failures_limit: int = 50) -> dict[str, Any]:
    state_dir = settings.paths.state_dir
    daemon = live.read(state_dir)
    # the daemon's own trees (its command line may have set them), else the configuration's
    inbox, outbox = runs.recorded(state_dir) or (settings.paths.inbox, settings.paths.outbox)
    # the running daemon's own quiet time (a reload may have changed it); no daemon, no due time
    quiet_s = daemon.get("quiet_seconds") if daemon["running"] else None
    if daemon["running"] and not isinstance(quiet_s, (int, float)):
        quiet_s = settings.pdf.quiet_seconds
    view = daemon.get("inbox") or {}
    skipped = view.get("skipped") or {}
    with Ledger.open_readonly(state_dir) as ledger:
        now = time.time()
        st = reports.stats(ledger, now)
        return {
            "state_dir": str(state_dir),
            "daemon": daemon,
            "totals": {
                "queued": st.queued,
                "running": st.running,
                "done": st.done,
                "failed": st.failed,
                "gone": st.gone,
                "images_per_s": round(st.rate, 3),
                "folders_waiting_for_pdf": st.folders_waiting,
                "skipped": int(skipped.get("count", 0)),
                "unreadable": int(view.get("unreadable_count", 0)),
            },
            "folders": [_folder(f, inbox, outbox, quiet_s, now) for f in reports.folders(ledger)],
            "failures": [_failure(x) for x in reports.failures(ledger, failures_limit)],
            # what the running daemon did not take: paths it may not read yet (with the fix),
            # files of a type it does not take (by type, a few named)
            "unreadable": list(view.get("unreadable") or []),
            "skipped": {
                "count": int(skipped.get("count", 0)),
                "by_type": dict(skipped.get("by_type") or {}),
                "examples": list(skipped.get("examples") or []),
                "accepted": str(skipped.get("accepted") or paths.accepted_types()),
            },
        }


def show(settings: config.Settings, as_json: bool = False) -> int:
    data = collect(settings)
    if as_json:
        jsonout.emit(data)
        return ExitCode.ok
    from rich.console import Console

    con = Console()
    if not con.is_terminal:
        # a pipe or a file: no width to fit, and a cut path is a wrong path
        con = Console(width=1_000_000)
    _show_daemon(con, data["daemon"])
    t = data["totals"]
    con.print(
        f"images: queued {t['queued']}  running {t['running']}  done {t['done']}  failed {t['failed']}  "
        f"{t['images_per_s']} img/s (last minute)  folders waiting for a PDF {t['folders_waiting_for_pdf']}"
    )
    sk = data["skipped"]
    if sk["count"]:
        kinds = ", ".join(f"{k} {v}" for k, v in sk["by_type"].items())
        con.print(_shown(f"other files (not taken, see the README): {sk['count']} ({kinds}); taken: {sk['accepted']}"))
    ft = _table("folders")
    for col in ("folder", "done", "pending", "failed", "pdf", "pages", "pdf at", "pdf file"):
        ft.add_column(col, overflow="fold")
    for f in data["folders"]:
        state = f["pdf_state"] + (f": {f['pdf_error']}" if f["pdf_state"] == "failed" and f["pdf_error"] else "")
        if f.get("pdf_kept"):
            state = "kept: its images left the inbox"
        if f.get("pdf_missing"):
            state = "missing: built again at the next scan" if not f.get("pdf_kept") else "removed"
        if f.get("pdf_due_in_s") is not None:
            state = f"PDF in {f['pdf_due_in_s']} s" if f["pdf_due_in_s"] else "PDF due now"
        ft.add_row(
            _shown(f["folder"] or "."), str(f["done"]), str(f["pending"]), str(f["failed"]),
            _shown(state), str((not f.get("pdf_missing") and f["pdf_pages"]) or "-"), _when(f["pdf_at"]),
            _shown(f["pdf_path"]),
        )
    con.print(ft)
    if data["unreadable"]:
        ut = _table(f"not readable by the service user yet ({t['unreadable']}; taken as soon as they are)")
        for col in ("path", "kind", "missing", "fix"):
            ut.add_column(col, overflow="fold")
        for u in data["unreadable"]:
            ut.add_row(_shown(u["path"] or "."), u["kind"], _shown(u["missing"]), _shown(u["fix"]))
        con.print(ut)
    if data["failures"]:
        xt = _table("failures")
        for col in ("image", "reason", "detail", "attempts", "what to do"):
            xt.add_column(col, overflow="fold")
        for x in data["failures"]:
            xt.add_row(_shown(x["rel"]), _shown(x["reason"]), _shown(x["detail"]), str(x["attempts"]), _shown(x["advice"]))
        con.print(xt)
    return ExitCode.ok


def _table(title: str) -> Any:
    from rich.table import Table

    return Table(title=title, title_justify="left")


def _show_daemon(con: Any, d: dict[str, Any]) -> None:
    """The daemon line, then its workers per node (the Ray actors per cluster node)."""
    if not d["running"]:
        con.print("daemon: not running")
        return
    extra = f", {d['note']}" if d.get("note") else ""
    extra += f", paused: {d['paused']}" if d.get("paused") else ""
    con.print(_shown(f"daemon: running (pid {d.get('pid', '?')}), executor {d.get('executor', '?')}{extra}"))
    nodes = live.per_node(d["workers"])
    if not nodes:
        return
    wt = _table("workers per node")
    # not "done": a worker's count holds the images it failed too, and each try (the
    # totals above are the ledger's, one per image)
    for col in ("node", "device", "workers", "states", "images returned (done or failed)"):
        wt.add_column(col, overflow="fold")
    for n in nodes:
        states = ", ".join(f"{k} {v}" for k, v in sorted(n["states"].items()))
        wt.add_row(_shown(n["node"]), _shown(n["device"]), str(n["workers"]), states, str(n["images"]))
    con.print(wt)
