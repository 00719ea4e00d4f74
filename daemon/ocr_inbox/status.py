"""``ocr-inbox status``: what the daemon has done, read from its ledger (read-only).

Folder and file names come from whoever writes the inbox: in the tables they
are shown as text, never as Rich markup (``[/]`` would end a style that was
never opened, and fail), and their control characters are written out
(``\\x1b``), so a name cannot paint or move the operator's terminal.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from ocr_inbox import config
from ocr_inbox.logs import printable
from ocr_inbox.errors import ExitCode
from ocr_inbox.ledger import Ledger, reports


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else "-"


def _shown(value: str) -> Any:
    """A name or reason as a Rich cell: plain text (no markup, no emoji codes), escaped."""
    from rich.text import Text

    return Text(printable(value))


def collect(settings: config.Settings, failures_limit: int = 50) -> dict[str, Any]:
    with Ledger.open_readonly(settings.paths.state_dir) as ledger:
        now = time.time()
        st = reports.stats(ledger, now)
        return {
            "state_dir": str(settings.paths.state_dir),
            "totals": {
                "queued": st.queued,
                "running": st.running,
                "done": st.done,
                "failed": st.failed,
                "images_per_s": round(st.rate, 3),
                "folders_waiting_for_pdf": st.folders_waiting,
            },
            "folders": [f.as_dict() for f in reports.folders(ledger)],
            "failures": [f.as_dict() for f in reports.failures(ledger, failures_limit)],
        }


def show(settings: config.Settings, as_json: bool = False) -> int:
    data = collect(settings)
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=1))
        return ExitCode.ok
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = data["totals"]
    con.print(
        f"queued {t['queued']}  running {t['running']}  done {t['done']}  failed {t['failed']}  "
        f"{t['images_per_s']} img/s (last minute)  folders waiting for a PDF {t['folders_waiting_for_pdf']}"
    )
    ft = Table(title="folders")
    for col in ("folder", "done", "pending", "failed", "pdf", "pages", "pdf at"):
        ft.add_column(col)
    for f in data["folders"]:
        ft.add_row(
            _shown(f["folder"] or "."), str(f["done"]), str(f["pending"]), str(f["failed"]),
            _shown(f["pdf_state"]), str(f["pdf_pages"] or "-"), _when(f["pdf_at"]),
        )
    con.print(ft)
    if data["failures"]:
        xt = Table(title="failures")
        for col in ("image", "reason", "detail", "attempts"):
            xt.add_column(col)
        for x in data["failures"]:
            xt.add_row(_shown(x["rel"]), _shown(x["reason"]), _shown(x["detail"]), str(x["attempts"]))
        con.print(xt)
    return ExitCode.ok
