"""``ocr-inbox search QUERY``: the best pages, read-only beside a running daemon.

The ledger is opened read-only (WAL: the daemon keeps writing; a search sees
the index as of its start) and without the integrity check, which would read
the whole index on every search. On a terminal each page is shown with its
PDF page and up to :data:`LINES_SHOWN` of its lines, hits highlighted; names
and text are Rich ``Text`` (never markup) with control characters written out
(``logs.printable``), as in ``status``. ``--json`` prints every line with its
hits' character spans and box.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from rich.console import Console
from rich.text import Text

from ocr_inbox.config import Settings
from ocr_inbox.ledger import Ledger, index
from ocr_inbox.search import query
from ocr_inbox.search.scope import Scope, resolve
from ocr_inbox.support import jsonout
from ocr_inbox.support.errors import BadArguments, ExitCode, StateError
from ocr_inbox.support.logs import printable

log = structlog.get_logger(__name__)

#: lines with hits shown per page on a terminal (``--json`` has them all)
LINES_SHOWN = 3
HIT_STYLE = "bold reverse"


def run(
    settings: Settings,
    text: str,
    *,
    folder: str | None = None,
    limit: int = 20,
    as_json: bool = False,
    outbox: Path | None = None,
    inbox: Path | None = None,
) -> int:
    scope = resolve(settings, outbox, inbox)
    within = relative_folder(scope, folder) if folder else ""
    with Ledger.open_readonly(scope.state_dir, verify=False) as ledger:
        conn = ledger.connection
        if not index.has_index(conn):
            raise StateError(
                f"the ledger {ledger.path} has no search index yet: it was written by an older ocr-inbox. "
                "Start this version's daemon once (it upgrades the ledger), stop it, and run `ocr-inbox index rebuild`"
            )
        if not index.complete(conn):
            log.warning("search_index_incomplete", ledger=str(ledger.path),
                        fix="images done before the index existed are missing: run `ocr-inbox index rebuild`")
        results = query.search(
            conn, text, inbox=scope.inbox, outbox=scope.outbox, folder=within, limit=limit,
            first_prefixes=settings.pdf.first_prefixes,
        )
    if as_json:
        out = {"query": text, "folder": within, "results": [r.as_dict() for r in results]}
        jsonout.emit(out)
    else:
        render(results, text)
    return ExitCode.ok


def relative_folder(scope: Scope, folder: str) -> str:
    """``--folder`` as an inbox-relative path (given relative to the inbox, or as a path inside it)."""
    if not os.path.isabs(folder):
        return os.path.normpath(folder).replace(os.sep, "/").strip("/") if folder.strip("/.") else ""
    inbox, real = os.path.realpath(scope.inbox), os.path.realpath(folder)
    if os.path.commonpath([inbox, real]) != inbox:
        raise BadArguments(f"{folder} is not inside the inbox {scope.inbox}: give --folder relative to the inbox")
    rel = os.path.relpath(real, inbox)
    return "" if rel == "." else rel.replace(os.sep, "/")


def render(results: list[query.Result], text: str) -> None:
    con = Console(highlight=False)
    if not results:
        con.print(Text(f"no page matches {printable(text)}"))
        return
    for n, r in enumerate(results, 1):
        head = Text(f"{n}. ", style="bold")
        head.append(printable(r.image), style="bold")
        if r.page:
            head.append(f" (page {r.page + 1})")
        head.append(f"  ->  {printable(str(r.pdf))} page {r.pdf_page}")
        if not r.pdf.is_file():
            head.append(" (not built yet)", style="dim")
        con.print(head)
        for h in r.hits[:LINES_SHOWN]:
            con.print(_line(h))
        if len(r.hits) > LINES_SHOWN:
            con.print(Text(f"    ... {len(r.hits) - LINES_SHOWN} more lines (--json lists them)", style="dim"))


def _line(h: query.Hit) -> Text:
    """``    [x0,y0,x1,y1] the line`` with the hits styled; the text is escaped piece by piece."""
    line = Text("    ")
    line.append("[{},{},{},{}] ".format(*h.box), style="dim")
    pos = 0
    for start, end in h.spans:
        line.append(printable(h.text[pos:start]))
        line.append(printable(h.text[start:end]), style=HIT_STYLE)
        pos = end
    line.append(printable(h.text[pos:]))
    return line
