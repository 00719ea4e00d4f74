"""Queries: what a user types -> a safe FTS5 MATCH expression -> ranked pages with their hits.

The query language is small and never fails: words (all must be on the page),
``"a phrase"`` (an unclosed quote runs to the end), ``prefix*``; Chinese and
Japanese as typed (``姓名`` is a phrase of two characters); ``a OR b`` (either;
``OR`` in capitals, between two words or phrases; it binds tighter than the
implicit AND: ``invoice 2024 OR 2025``); ``-word`` or ``-"a phrase"`` (not on the
page), as web search engines read them. Nothing a user types reaches FTS5's own
syntax: each word or phrase becomes one quoted string (FTS5 reads no operator
inside quotes) and the operators are written here, so ``NEAR(``, ``:``, ``^``,
``AND``, a ``-`` inside a word or a stray ``*`` are only text. A query with nothing
to search (no letter or digit), or nothing but exclusions, is refused with
``BadArguments`` (exit 2).

Results are pages, best first (FTS5's bm25), each with its lines that hold a
hit, the hits' character spans (marked by FTS5's ``highlight()`` itself, so
they are exactly what matched) and each line's box; and where the page is in
its folder's PDF.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocr_inbox.ledger.index import LIVE, SPLIT, fold, segment
from ocr_inbox.ledger.schema import ImageStatus
from ocr_inbox.outbox import names, order
from ocr_inbox.support.errors import BadArguments
from ocr_inbox.support.paths import folder_of

#: a quoted phrase (closed or not, maybe a prefix) or a bare word (up to the next space or quote),
#: either one maybe excluded by a leading ``-``
_CHUNK = re.compile(r'(-?)"([^"]*)"?(\*?)|([^\s"]+)')
#: marks around each hit in highlight()'s output: control characters never stored (index.page_row)
OPEN, CLOSE = "\x01", "\x02"


@dataclass(frozen=True)
class Term:
    """One part of a query: a word or a quoted phrase; ``prefix``: its last word may continue."""

    text: str
    phrase: bool = False
    prefix: bool = False
    #: ``-word``: the page must not hold it
    exclude: bool = False
    #: joined to the term before it by ``OR``
    either: bool = False


@dataclass(frozen=True)
class Hit:
    """A line that holds a hit: its number on the page, its text, the hits' [start, end) and its box."""

    line: int
    text: str
    spans: tuple[tuple[int, int], ...]
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Result:
    image: str  # relative to the inbox
    page: int  # the page of the image (a multi-page TIFF has several), from 0
    pdf: Path  # the folder's PDF (names.pdf_path_for)
    pdf_page: int  # where this page is (or will be) in it, from 1
    bm25: float  # FTS5's rank: lower is better
    hits: tuple[Hit, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "page": self.page,
            "pdf": str(self.pdf),
            "pdf_page": self.pdf_page,
            "pdf_exists": self.pdf.is_file(),
            "bm25": self.bm25,
            "lines": [{"line": h.line, "text": h.text, "hits": [list(s) for s in h.spans], "box": list(h.box)}
                      for h in self.hits],
        }


def _searchable(text: str) -> bool:
    """Whether FTS5's unicode61 would find a token in ``text`` (a letter, a digit, private use)."""
    return any(unicodedata.category(ch)[0] in "LN" or unicodedata.category(ch) == "Co" for ch in text)


def _term(m: re.Match[str]) -> Term | None:
    """One chunk of the query as a term, or None when it has no letter or digit."""
    minus, quoted, star, bare = m.groups()
    if bare is not None:
        exclude = bare.startswith("-")
        word = bare.removeprefix("-") if exclude else bare
        text = word.rstrip("*")
        term = Term(text, prefix=text != word, exclude=exclude)
    else:
        term = Term(quoted, phrase=True, prefix=bool(star), exclude=bool(minus))
    return term if _searchable(term.text) else None


def parse(query: str) -> list[Term]:
    """The words and phrases of ``query``; parts without a letter or digit are dropped. A bare
    ``OR`` between two terms to find joins them (``either``); anywhere else it is a word."""
    chunks = [(m.group(4) == "OR", _term(m)) for m in _CHUNK.finditer(unicodedata.normalize("NFC", query))]
    terms: list[Term] = []
    join = False
    for k, (bare_or, term) in enumerate(chunks):
        if bare_or and terms and not terms[-1].exclude:
            if join:
                continue  # "a OR OR b"
            after = next((t for _, t in chunks[k + 1:] if t is not None), None)
            if after is not None and not after.exclude:
                join = True
                continue
        if term is None:
            continue
        if join:
            term = dataclasses.replace(term, either=True)
            join = False
        terms.append(term)
    return terms


def _quoted(t: Term) -> str:
    quoted = '"' + fold(segment(t.text)).replace('"', '""') + '"'
    return quoted + " *" if t.prefix else quoted


def match_expression(terms: Sequence[Term]) -> str:
    """The FTS5 MATCH expression: every term a quoted string (its words a phrase); terms
    joined by OR grouped, the groups ANDed, the exclusions after a NOT."""
    if not terms:
        raise BadArguments("nothing to search for: the query has no letter or digit")
    groups: list[list[str]] = []
    for t in terms:
        if t.exclude:
            continue
        if t.either and groups:
            groups[-1].append(_quoted(t))
        else:
            groups.append([_quoted(t)])
    if not groups:
        raise BadArguments("nothing to search for: a query needs a word or phrase to find besides the ones it excludes (-word)")
    expr = " AND ".join(g[0] if len(g) == 1 else "(" + " OR ".join(g) + ")" for g in groups)
    excluded = [_quoted(t) for t in terms if t.exclude]
    if excluded:
        expr = f"({expr}) NOT ({' OR '.join(excluded)})"
    return expr


def search(
    conn: sqlite3.Connection,
    query: str,
    *,
    inbox: Path,
    outbox: Path,
    folder: str = "",
    limit: int = 20,
    first_prefixes: Sequence[str] = (),
) -> list[Result]:
    """The ``limit`` best pages for ``query`` (at or beneath ``folder``, inbox-relative)."""
    if limit < 1:
        raise BadArguments(f"--limit must be at least 1, not {limit}")
    expr = match_expression(parse(query))
    where, args = "", [OPEN, CLOSE, expr]
    prefix = folder.strip("/")
    if prefix not in ("", "."):
        where = f" AND substr(p.rel, 1, {len(prefix) + 1}) = ?"
        args.append(prefix + "/")
    rows = conn.execute(
        f"SELECT p.rel, p.page, p.boxes, highlight({LIVE.fts}, 0, ?, ?), {LIVE.fts}.rank"
        f" FROM {LIVE.fts} JOIN {LIVE.pages} p ON p.id = {LIVE.fts}.rowid"
        # equal ranks (the same text on several pages) in path order, so a listing is reproducible
        f" WHERE {LIVE.fts} MATCH ?{where} ORDER BY {LIVE.fts}.rank, p.rel, p.page LIMIT ?",
        (*args, limit),
    ).fetchall()
    starts: dict[str, dict[str, int]] = {}
    results = []
    for rel, page, boxes, marked, rank in rows:
        f = folder_of(rel)
        if f not in starts:
            starts[f] = first_pdf_pages(conn, f, first_prefixes)
        results.append(
            Result(
                image=rel,
                page=page,
                pdf=names.pdf_path_for(outbox, inbox, f),
                pdf_page=starts[f].get(rel, 1) + page,
                bm25=rank,
                hits=tuple(hits(marked, json.loads(boxes))),
            )
        )
    return results


def hits(marked: str, boxes: Sequence[Sequence[int]]) -> list[Hit]:
    """The lines of ``highlight()``'s output that hold a mark, as they were OCR'd, with the marks' spans.

    A phrase may run over a line's end (``账`` / ``户``): each line gets its part.
    """
    out: list[Hit] = []
    inside = False
    for n, raw in enumerate(marked.split("\n")):
        chars: list[str] = []
        spans: list[tuple[int, int]] = []
        start = 0 if inside else -1
        for ch in raw:
            if ch == OPEN:
                inside, start = True, len(chars)
            elif ch == CLOSE:
                if len(chars) > start >= 0:
                    spans.append((start, len(chars)))
                inside, start = False, -1
            elif ch != SPLIT:
                chars.append(ch)
        if inside and len(chars) > start >= 0:
            spans.append((start, len(chars)))
        if spans and n < len(boxes):
            x0, y0, x1, y1 = boxes[n]
            out.append(Hit(n, "".join(chars), tuple(spans), (x0, y0, x1, y1)))
    return out


def first_pdf_pages(conn: sqlite3.Connection, folder: str, first_prefixes: Sequence[str] = ()) -> dict[str, int]:
    """The PDF page (from 1) of each searchable image's first page in ``folder``'s PDF.

    The order is the PDF builder's (``folder_pdfs``): the folder's done images in
    ``order.page_order``, those whose sources ``delete_processed`` took first (a
    late page extends their PDF), each taking as many pages as it has.
    """
    rows = conn.execute(
        f"SELECT i.rel, i.source_deleted, count(*) FROM images i JOIN {LIVE.pages} p ON p.rel = i.rel"
        " WHERE i.folder = ? AND i.status = ? GROUP BY i.rel",
        (folder, ImageStatus.done),
    ).fetchall()
    by_name = {rel.rsplit("/", 1)[-1]: (rel, bool(deleted), int(n)) for rel, deleted, n in rows}
    kept = order.page_order([k for k, v in by_name.items() if v[1]], first_prefixes)
    new = order.page_order([k for k, v in by_name.items() if not v[1]], first_prefixes)
    first, page = {}, 1
    for name in kept + new:
        rel, _, n = by_name[name]
        first[rel] = page
        page += n
    return first
