"""``ocr-inbox status``: what the daemon has done, read from its ledger (read-only).

Folder and file names come from whoever writes the inbox: in the tables they
are shown as text, never as Rich markup (``[/]`` would end a style that was
never opened, and fail), and their control characters are written out
(``\\x1b``), so a name cannot paint or move the operator's terminal.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ocr_inbox import config, jsonout, live, runs
from ocr_inbox.errors import ExitCode
from ocr_inbox.ledger import Ledger, reports
from ocr_inbox.logs import printable
from ocr_inbox.outbox.names import pdf_path_for
from ocr_inbox.reasons import advice


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else "-"


def _shown(value: str) -> Any:
    """A name or reason as a Rich cell: plain text (no markup, no emoji codes), escaped."""
    from rich.text import Text

    return Text(printable(value))


def _folder(f: reports.FolderSummary, inbox: Path, outbox: Path) -> dict[str, Any]:
    return {**f.as_dict(), "pdf_path": str(pdf_path_for(outbox, inbox, f.folder))}


def _failure(x: reports.Failure) -> dict[str, Any]:
    return {**x.as_dict(), "advice": advice(x.reason)}


def collect(settings: config.Settings, failures_limit: int = 50) -> dict[str, Any]:
    state_dir = settings.paths.state_dir
    daemon = live.read(state_dir)
    # the daemon's own trees (its command line may have set them), else the configuration's
    inbox, outbox = runs.recorded(state_dir) or (settings.paths.inbox, settings.paths.outbox)
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
                "images_per_s": round(st.rate, 3),
                "folders_waiting_for_pdf": st.folders_waiting,
            },
            "folders": [_folder(f, inbox, outbox) for f in reports.folders(ledger)],
            "failures": [_failure(x) for x in reports.failures(ledger, failures_limit)],
        }


def show(settings: config.Settings, as_json: bool = False) -> int:
    data = collect(settings)
    if as_json:
        jsonout.emit(data)
        return ExitCode.ok
    from rich.console import Console
    from rich.table import Table

    con = Console()
    _show_daemon(con, data["daemon"])
    t = data["totals"]
    con.print(
        f"queued {t['queued']}  running {t['running']}  done {t['done']}  failed {t['failed']}  "
        f"{t['images_per_s']} img/s (last minute)  folders waiting for a PDF {t['folders_waiting_for_pdf']}"
    )
    ft = Table(title="folders")
    for col in ("folder", "done", "pending", "failed", "pdf", "pages", "pdf at", "pdf file"):
        ft.add_column(col)
    for f in data["folders"]:
        state = f["pdf_state"] + (f": {f['pdf_error']}" if f["pdf_state"] == "failed" and f["pdf_error"] else "")
        ft.add_row(
            _shown(f["folder"] or "."), str(f["done"]), str(f["pending"]), str(f["failed"]),
            _shown(state), str(f["pdf_pages"] or "-"), _when(f["pdf_at"]), _shown(f["pdf_path"]),
        )
    con.print(ft)
    if data["failures"]:
        xt = Table(title="failures")
        for col in ("image", "reason", "detail", "attempts", "what to do"):
            xt.add_column(col)
        for x in data["failures"]:
            xt.add_row(_shown(x["rel"]), _shown(x["reason"]), _shown(x["detail"]), str(x["attempts"]), _shown(x["advice"]))
        con.print(xt)
    return ExitCode.ok


def _show_daemon(con: Any, d: dict[str, Any]) -> None:
    """The daemon line, then its workers per node (the Ray actors per cluster node)."""
    from rich.table import Table

    if not d["running"]:
        con.print("daemon: not running")
        return
    extra = f", {d['note']}" if d.get("note") else ""
    extra += f", paused: {d['paused']}" if d.get("paused") else ""
    con.print(_shown(f"daemon: running (pid {d.get('pid', '?')}), executor {d.get('executor', '?')}{extra}"))
    nodes = live.per_node(d["workers"])
    if not nodes:
        return
    wt = Table(title="workers per node")
    for col in ("node", "device", "workers", "states", "images done"):
        wt.add_column(col)
    for n in nodes:
        states = ", ".join(f"{k} {v}" for k, v in sorted(n["states"].items()))
        wt.add_row(_shown(n["node"]), _shown(n["device"]), str(n["workers"]), states, str(n["images"]))
    con.print(wt)
