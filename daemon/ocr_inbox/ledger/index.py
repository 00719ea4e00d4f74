"""The search index: every OCR'd line, in the ledger's own SQLite database.

One row per image page (``search_pages``: its lines and their boxes) and an
FTS5 index over it (``search_fts``, external content). The ledger writes it in
the transaction that records the image (``done``, ``adopt``) and drops it in
the one that records a new version or the file's departure, so a crash never
leaves the index and the ledger apart. ``ocr-inbox index rebuild`` fills new
tables from the outbox JSON and swaps them in with one transaction.

Tokens: FTS5's ``unicode61`` (case-folded, ``remove_diacritics 2``: ``über``
finds ``Uber``) keeps a run of ideographs or kana as *one* token, so ``姓名``
would not be found inside ``姓名：夏艳辰``. Every CJK character is made a token
of its own by putting U+001F (the ASCII unit separator: one byte, a separator
to ``unicode61``, never in the stored OCR text, whose control characters are
blanked) between it and a neighbouring letter or digit; a query of N such
characters is then a phrase of N adjacent tokens, which finds any length, one
character included, even across a line's end.
docs/BENCHMARKS.md compares this with bigrams and the trigram tokenizer.

What is indexed differs from what is stored in one way: full-width ASCII
(``１９８３``, ``ＰＤＦ``) is folded to ASCII (:func:`fold`), so either width
finds both; the stored text keeps what OCR read, and has the same tokens in
the same places, so FTS5's ``highlight()`` marks the right characters in it.
:func:`fold` and :func:`segment` are part of the index format: deleting a row
passes FTS5 the folded text again, so changing either needs a schema
migration that rebuilds the index.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ocr_inbox.ocr.results import Line, Page

#: between a CJK character and a neighbouring letter or digit: a token boundary, removed for display
SPLIT = "\x1f"
#: characters written without spaces between words: Han, kana, Hangul, Bopomofo (and their extensions)
CJK_CLASS = (
    "\u1100-\u11ff\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3031-\u3035\u303b\u303c\u3040-\u30ff"
    "\u3100-\u31bf\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
    "\uff66-\uffdc\U00020000-\U0003134f"
)
_BOUNDARY = re.compile(f"(?<=[{CJK_CLASS}])(?=[^\\W_])|(?<=[^\\W_])(?=[{CJK_CLASS}])")
#: U+FF01..U+FF5E are ASCII 0x21..0x7E at full width (same Unicode category, one character each)
_FULL_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
TOKENIZER = "unicode61 remove_diacritics 2"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Tables:
    """The names of one generation of the index: the live one, or the one a rebuild fills."""

    pages: str
    fts: str


LIVE = Tables("search_pages", "search_fts")
NEXT = Tables("search_pages_next", "search_fts_next")


def _create(t: Tables, *, index: bool) -> list[str]:
    # content= names the *live* table even for NEXT: renamed into place by the swap, it then
    # is the content table (FTS5 reads it only for highlight(), never while a rebuild fills it)
    stmts = [
        f"CREATE TABLE {t.pages} (id INTEGER PRIMARY KEY, rel TEXT NOT NULL, page INTEGER NOT NULL,"
        " text TEXT NOT NULL, boxes TEXT NOT NULL)",
        f"CREATE VIRTUAL TABLE {t.fts} USING fts5(text, content='{LIVE.pages}', content_rowid='id',"
        f" tokenize='{TOKENIZER}')",
    ]
    if index:
        stmts.append(_INDEX)
    return stmts


_INDEX = f"CREATE UNIQUE INDEX search_pages_by_image ON {LIVE.pages} (rel, page)"

#: the ledger's migration to schema 3. An existing ledger's done images are not in the new
#: index: ``complete`` = 0 until ``ocr-inbox index rebuild`` (reading their JSON at start-up
#: could keep a daemon with 100,000 pages from starting for minutes)
MIGRATION = ";\n".join(
    [
        *_create(LIVE, index=True),
        "CREATE TABLE search_state (id INTEGER PRIMARY KEY CHECK (id = 1), complete INTEGER NOT NULL,"
        " rebuilt_at REAL)",
        "INSERT INTO search_state (id, complete) VALUES (1, NOT EXISTS (SELECT 1 FROM images WHERE status = 'done'))",
    ]
)


def segment(text: str) -> str:
    """``text`` with :data:`SPLIT` between each CJK character and a neighbouring letter or digit."""
    return _BOUNDARY.sub(SPLIT, text)


def fold(text: str) -> str:
    """What FTS5 indexes of a stored text: full-width ASCII as ASCII."""
    return text.translate(_FULL_WIDTH)


def shown(text: str) -> str:
    """A stored text as OCR read it (without the :data:`SPLIT` boundaries)."""
    return text.replace(SPLIT, "")


def line_box(line: Line) -> tuple[int, int, int, int]:
    """The line's polygon as an axis-aligned ``[x0, y0, x1, y1]`` in whole pixels, covering it."""
    xs, ys = [p[0] for p in line.poly], [p[1] for p in line.poly]
    return (math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys)))


def page_row(page: Page) -> tuple[str, str]:
    """(text, boxes) of one page: its lines one per row of text, their boxes as JSON."""
    # a line is one row of the stored text (line n has the n-th box), and no control
    # character is stored: query.py marks hits with them, and they have no place on a terminal
    text = "\n".join(segment(_CONTROL.sub(" ", ln.text)) for ln in page.lines)
    boxes = json.dumps([line_box(ln) for ln in page.lines], separators=(",", ":"))
    return text, boxes


def put(c: sqlite3.Connection, rel: str, pages: Sequence[Page], t: Tables = LIVE) -> None:
    """Index ``rel``'s pages (after :func:`drop` for the live tables: one version per image)."""
    for page in pages:
        text, boxes = page_row(page)
        cur = c.execute(
            f"INSERT INTO {t.pages} (rel, page, text, boxes) VALUES (?, ?, ?, ?)", (rel, page.index, text, boxes)
        )
        c.execute(f"INSERT INTO {t.fts} (rowid, text) VALUES (?, ?)", (cur.lastrowid, fold(text)))


def replace(c: sqlite3.Connection, rel: str, pages: Sequence[Page]) -> None:
    drop(c, [rel])
    put(c, rel, pages)


def drop(c: sqlite3.Connection, rels: Iterable[str]) -> int:
    """Remove these images' text; returns pages removed."""
    n = 0
    for rel in rels:
        rows = c.execute(f"SELECT id, text FROM {LIVE.pages} WHERE rel = ?", (rel,)).fetchall()
        if not rows:
            continue
        # external content: FTS5 is told which tokens to remove (what put() gave it)
        c.executemany(
            f"INSERT INTO {LIVE.fts} ({LIVE.fts}, rowid, text) VALUES ('delete', ?, ?)",
            [(rowid, fold(text)) for rowid, text in rows],
        )
        c.execute(f"DELETE FROM {LIVE.pages} WHERE rel = ?", (rel,))
        n += len(rows)
    return n


def has_index(c: sqlite3.Connection) -> bool:
    """Whether the ledger has the search tables (schema 3; an older daemon's ledger has not)."""
    row = c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'search_state'").fetchone()
    return row is not None


def complete(c: sqlite3.Connection) -> bool:
    """False when images were done before the index existed and no rebuild has run since."""
    row = c.execute("SELECT complete FROM search_state WHERE id = 1").fetchone()
    return bool(row and row[0])


# -- a rebuild: fill NEXT, then swap it in -----------------------------------------


def start_rebuild(c: sqlite3.Connection) -> None:
    """Empty NEXT tables (a rebuild cut off earlier left some: they are dropped)."""
    discard_rebuild(c)
    for stmt in _create(NEXT, index=False):
        c.execute(stmt)


def discard_rebuild(c: sqlite3.Connection) -> None:
    c.execute(f"DROP TABLE IF EXISTS {NEXT.fts}")
    c.execute(f"DROP TABLE IF EXISTS {NEXT.pages}")


def swap_in(c: sqlite3.Connection, now: float) -> None:
    """NEXT becomes the live index (call in one transaction: readers see the old or the new)."""
    # merge FTS5's segments once: a bulk load leaves many, and every query reads them all
    c.execute(f"INSERT INTO {NEXT.fts} ({NEXT.fts}) VALUES ('optimize')")
    c.execute(f"DROP TABLE {LIVE.fts}")
    c.execute(f"DROP TABLE {LIVE.pages}")
    c.execute(f"ALTER TABLE {NEXT.pages} RENAME TO {LIVE.pages}")
    c.execute(f"ALTER TABLE {NEXT.fts} RENAME TO {LIVE.fts}")
    c.execute(_INDEX)
    c.execute("UPDATE search_state SET complete = 1, rebuilt_at = ? WHERE id = 1", (now,))
