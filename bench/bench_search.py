"""Search index: size, time to index and query latency at 100,000 pages; CJK approaches compared.

    python bench/bench_search.py [--pages 100000] [--queries 40] [--work DIR]

Pages are synthetic but shaped like real ones: each copies the line lengths of
a page of the corpus as OCR'd (``ocr-inbox ocr`` on ``../shared/corpus``, done
once into ``--work``), and a line that OCR read as mostly CJK gets Chinese
text, the others Latin words. Characters and words are drawn from Zipf(1)
vocabularies whose top ranks are the corpus's own (3,500 ideographs; 50,000
words, the rest made-up words of corpus-like lengths, 1 in 20 with an accent).

Measured, for the index as built (``unigram``: every CJK character a token,
``search/index.py``) and two alternatives indexing the same pages:

- ``bigram``: CJK runs indexed as overlapping character pairs (a 2-character
  query is one token, N characters a phrase of N-1 pairs);
- ``trigram``: FTS5's ``trigram`` tokenizer (substrings of 3+ characters; a
  2-character query falls back to ``LIKE``, a scan; SQLite < 3.45 cannot fold
  accents with it).

Figures: database size per 1,000 pages, bulk indexing rate (``rebuild_index``),
the extra time ``Ledger.done`` spends indexing one image, ``index rebuild``
from JSON files, and the median / 95th percentile of a query returning the
best 20 pages (all matches ranked by bm25) for CJK 2- and 3-character words,
a Latin word, a two-word phrase and a prefix.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import itertools
import json
import math
import random
import re
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS, copy_corpus, machine, ocr_cli  # noqa: E402

from ocr_inbox.ledger import (
    Ledger,  # noqa: E402
    index,  # noqa: E402
)
from ocr_inbox.ocr.results import Line, Page  # noqa: E402
from ocr_inbox.outbox import document, names  # noqa: E402
from ocr_inbox.search import query, rebuild
from ocr_inbox.search.scope import Scope  # noqa: E402

CJK = re.compile(f"[{index.CJK_CLASS}]")
CJK_RUN = re.compile(f"[{index.CJK_CLASS}]+")
#: a Latin word (letters, no CJK)
WORD = re.compile(r"[^\W\d_\u1100-\U0003134f]+")
PAGES_PER_FOLDER = 200
KINDS = ("cjk2", "cjk3", "word", "phrase", "prefix")


# -- synthetic pages shaped like the corpus -------------------------------------------


def corpus_profiles(work: Path) -> list[list[tuple[int, bool]]]:
    """Per corpus page as OCR'd: (characters, mostly CJK) of each line."""
    outbox = work / "corpus-out"
    if not (outbox / ".ocr-inbox" / "failures.json").exists():
        shutil.rmtree(work / "corpus-in", ignore_errors=True)
        copy_corpus(work / "corpus-in")
        ocr_cli(work / "corpus-in", outbox, work / "corpus-state")
    profiles = []
    for j in sorted(outbox.rglob("*.json")):
        if ".ocr-inbox" in j.parts:
            continue
        for page in json.loads(j.read_text(encoding="utf-8"))["pages"]:
            lines = [ln["text"] for ln in page["lines"] if ln["text"].strip()]
            if lines:
                profiles.append([(len(t), len(CJK.findall(t)) * 2 > len(t)) for t in lines])
    return profiles


class Vocabulary:
    """Zipf(1) draws over ranked items: ``first`` (the corpus's, most frequent first), then ``more``."""

    def __init__(self, first: Sequence[str], more: Sequence[str], rng: random.Random) -> None:
        self.items = list(dict.fromkeys([*first, *more]))
        weights = [1.0 / (r + 1) for r in range(len(self.items))]
        total = sum(weights)
        self.cum = list(itertools.accumulate(w / total for w in weights))
        self.rng = rng

    def draw(self) -> str:
        return self.items[min(bisect.bisect(self.cum, self.rng.random()), len(self.items) - 1)]


def vocabularies(rng: random.Random) -> tuple[Vocabulary, Vocabulary]:
    gt = "\n".join(p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*/*.gt.txt")))
    chars = [c for c, _ in collections.Counter(CJK.findall(gt)).most_common()]
    # more ideographs from the common block, in a fixed shuffled order
    pool = [chr(c) for c in range(0x4E00, 0x9FA6)]
    rng.shuffle(pool)
    han = Vocabulary(chars, pool[: 3500 - len(chars)], rng)
    words = [w for w, _ in collections.Counter(w.lower() for w in WORD.findall(gt) if not CJK.search(w)).most_common()]
    lengths = [len(w) for w in words]
    letters, accented = "etaoinshrdlcumwfgypbvkjxqz", "éèàüöäçñíóú"
    made = []
    while len(words) + len(made) < 50_000:
        w = "".join(rng.choice(letters[: rng.choice((8, 14, 26))]) for _ in range(rng.choice(lengths)))
        if rng.random() < 0.05:
            i = rng.randrange(len(w))
            w = w[:i] + rng.choice(accented) + w[i + 1 :]
        made.append(w)
    return han, Vocabulary(words, made, rng)


def make_pages(n: int, profiles: list[list[tuple[int, bool]]], seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    han, latin = vocabularies(rng)
    pages = []
    for _ in range(n):
        lines = []
        for length, cjk in rng.choice(profiles):
            if cjk:
                lines.append("".join(han.draw() for _ in range(length)))
            else:
                words: list[str] = []
                while sum(map(len, words)) + len(words) < length:
                    w = latin.draw()
                    words.append(w.capitalize() if rng.random() < 0.1 else w)
                lines.append(" ".join(words)[: max(length, 1)])
        pages.append(lines)
    return pages


def as_page(lines: Sequence[str]) -> Page:
    return Page(0, 2480, 3508, tuple(
        Line(t, 0.95, ((100.0, 40.0 * i), (900.0, 40.0 * i), (900.0, 40.0 * i + 30), (100.0, 40.0 * i + 30)))
        for i, t in enumerate(lines)))


def rel_of(i: int) -> str:
    return f"box{i // PAGES_PER_FOLDER:05d}/page{i % PAGES_PER_FOLDER:03d}.jpg"


# -- queries that exist in the pages ---------------------------------------------------


def pick_queries(pages: list[list[str]], count: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    out: dict[str, list[str]] = {k: [] for k in KINDS}
    while any(len(v) < count for v in out.values()):
        line = rng.choice(rng.choice(pages)) if pages else ""
        runs = CJK_RUN.findall(line)
        # what people look for: words of 4+ letters (not "the"), and not one cut at the line's end
        words = [w for w in line.split()[:-1] if WORD.fullmatch(w) and len(w) >= 4]
        for k, size in (("cjk2", 2), ("cjk3", 3)):
            long = [r for r in runs if len(r) >= size]
            if long and len(out[k]) < count:
                r = rng.choice(long)
                i = rng.randrange(len(r) - size + 1)
                out[k].append(r[i : i + size])
        if words and len(out["word"]) < count:
            out["word"].append(rng.choice(words))
        pairs = [p for p in itertools.pairwise(line.split()[:-1]) if all(WORD.fullmatch(w) for w in p)]
        pairs = [p for p in pairs if max(map(len, p)) >= 4]
        if pairs and len(out["phrase"]) < count:
            first, second = rng.choice(pairs)
            out["phrase"].append(f'"{first} {second}"')
        long_words = [w for w in words if len(w) >= 5]
        if long_words and len(out["prefix"]) < count:
            out["prefix"].append(rng.choice(long_words)[:3] + "*")
    return out


# -- the alternatives: the same pages, another way of making tokens ------------------------


def bigrams(text: str) -> str:
    def pairs(m: re.Match[str]) -> str:
        run = m.group()
        return run if len(run) == 1 else " ".join(run[i : i + 2] for i in range(len(run) - 1))

    return " " + CJK_RUN.sub(lambda m: " " + pairs(m) + " ", text)


def bigram_query(q: str) -> str:
    parts = []
    for term in query.parse(q):
        body = CJK_RUN.sub(lambda m: " " + bigrams(m.group()).strip() + " ", term.text)
        parts.append('"' + body.replace('"', '""') + '"' + (" *" if term.prefix else ""))
    return " AND ".join(parts)


def build_alternative(db: Path, tokenizer: str, make: Callable[[str], str], pages: list[list[str]]) -> float:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE pages (id INTEGER PRIMARY KEY, rel TEXT NOT NULL, text TEXT NOT NULL, boxes TEXT NOT NULL)")
    conn.execute(f"CREATE VIRTUAL TABLE fts USING fts5(text, content='pages', content_rowid='id', tokenize='{tokenizer}')")
    t0 = time.perf_counter()
    for start in range(0, len(pages), 200):
        conn.execute("BEGIN")
        for i in range(start, min(start + 200, len(pages))):
            text, boxes = index.page_row(as_page(pages[i]))
            text = index.shown(text)
            cur = conn.execute("INSERT INTO pages (rel, text, boxes) VALUES (?, ?, ?)", (rel_of(i), text, boxes))
            conn.execute("INSERT INTO fts (rowid, text) VALUES (?, ?)", (cur.lastrowid, make(text)))
        conn.execute("COMMIT")
    conn.execute("INSERT INTO fts (fts) VALUES ('optimize')")
    seconds = time.perf_counter() - t0
    conn.close()
    return seconds


def fts_search(db: Path, approach: str) -> Callable[[str], int]:
    """One query the same way for every approach: all matches ranked, the best 20 with highlight()."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    fts, pages = ("fts", "pages") if approach != "unigram" else (index.LIVE.fts, index.LIVE.pages)

    def run(q: str) -> int:
        if approach == "trigram":
            text = q.strip('"*')
            if len(text) < 3:  # shorter than a trigram: a scan of every page (all matches, to rank them)
                return min(20, len(conn.execute(f"SELECT id FROM {pages} WHERE text LIKE ?", (f"%{text}%",)).fetchall()))
            expr = '"' + text.replace('"', '""') + '"'
        elif approach == "bigram":
            expr = bigram_query(q)
        else:
            expr = query.match_expression(query.parse(q))
        return len(conn.execute(
            f"SELECT p.rel, highlight({fts}, 0, '\x01', '\x02'), {fts}.rank FROM {fts} JOIN {pages} p"
            f" ON p.id = {fts}.rowid WHERE {fts} MATCH ? ORDER BY {fts}.rank LIMIT 20", (expr,)).fetchall())

    return run


# -- measuring ----------------------------------------------------------------------


def timed(fn: Callable[[str], int], queries: list[str]) -> tuple[float, float, float]:
    """(median ms, 95th percentile ms, mean results) over ``queries``, after one warm-up pass."""
    for q in queries:
        fn(q)
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(fn(q))
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)], statistics.mean(found)


def db_size(db: Path) -> int:
    """Bytes of the database once vacuumed (pages in use; the WAL is checkpointed away)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    return int(size)


def ours(state: Path, pages: list[list[str]]) -> tuple[float, Ledger]:
    """The real code: a ledger whose done images are the pages, its index built by rebuild_index."""
    led = Ledger.open(state)
    c = led.connection
    c.execute("BEGIN")
    c.executemany("INSERT INTO folders (folder, first_seen, last_activity, pdf_state) VALUES (?, 0, 0, 'done')",
                  [(rel_of(i).split("/")[0],) for i in range(0, len(pages), PAGES_PER_FOLDER)])
    c.executemany(
        "INSERT INTO images (rel, folder, natkey, size, mtime_ns, status, first_seen, updated, done_at)"
        " VALUES (?, ?, ?, 1, 1, 'done', 0, 0, 0)",
        [(rel_of(i), rel_of(i).split("/")[0], rel_of(i).split("/")[1]) for i in range(len(pages))])
    c.execute("COMMIT")
    t0 = time.perf_counter()
    led.rebuild_index(((rel_of(i), (as_page(p),)) for i, p in enumerate(pages)), time.time())
    return time.perf_counter() - t0, led


def live_cost(led: Ledger, pages: list[list[str]], n: int) -> tuple[float, float]:
    """ms per ``Ledger.done`` with the page indexed, and without (same pages, other names)."""
    out = []
    for with_text in (True, False):
        rels = [f"live-{with_text}/{i:05d}.jpg" for i in range(n)]
        for rel in rels:
            led.observe(rel, 1, 1, now=1.0)
        led.claim(n, now=2.0)
        t0 = time.perf_counter()
        for rel, p in zip(rels, pages, strict=False):
            led.done(rel, 1, 1, rel + ".json", 1, now=3.0, pages=(as_page(p),) if with_text else ())
        out.append((time.perf_counter() - t0) * 1000 / n)
    return out[0], out[1]


def rebuild_from_json(work: Path, pages: list[list[str]]) -> tuple[int, float]:
    """``ocr-inbox index rebuild`` over real JSON files of ``pages``: (images, seconds)."""
    state, outbox = work / "json-state", work / "json-out"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(outbox, ignore_errors=True)
    with Ledger.open(state) as led:
        for i, p in enumerate(pages):
            rel = rel_of(i)
            led.observe(rel, 1, 1, now=1.0)
            document.write(names.json_path_for(outbox, rel), document.Document(
                document.SourceInfo(rel, 1, 1, "0" * 64), {"profile": "bench"}, (as_page(p),), 1))
        led.claim(len(pages), now=2.0)
        for i, p in enumerate(pages):
            led.done(rel_of(i), 1, 1, "", 1, now=3.0)
    done = rebuild.rebuild(Scope(state, work / "in", outbox), progress=False)
    return done.images, done.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=40, help="queries of each kind")
    ap.add_argument("--live", type=int, default=1000, help="images for the Ledger.done cost")
    ap.add_argument("--json-pages", type=int, default=5000, help="pages for the rebuild-from-JSON rate")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ocr-inbox-bench-search"))
    ap.add_argument("--skip", action="append", default=[], choices=["bigram", "trigram"])
    args = ap.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    args.work.mkdir(parents=True, exist_ok=True)
    print(machine())
    profiles = corpus_profiles(args.work)
    t0 = time.perf_counter()
    pages = make_pages(args.pages, profiles, seed=1)
    raw = sum(len("\n".join(p).encode()) for p in pages)
    lines = sum(len(p) for p in pages)
    cjk_lines = sum(1 for p in pages for ln in p if CJK.search(ln))
    print(f"{args.pages} synthetic pages from {len(profiles)} corpus page shapes in {time.perf_counter() - t0:.0f} s: "
          f"{lines / args.pages:.1f} lines/page, {raw / lines:.1f} bytes/line, {cjk_lines / lines:.0%} CJK lines, "
          f"text {raw / args.pages * 1000 / 2**20:.2f} MiB per 1,000 pages")
    queries = pick_queries(pages, args.queries, seed=2)
    print("sample queries:", {k: v[:3] for k, v in queries.items()})

    rows: list[tuple[str, float, float, dict[str, tuple[float, float, float]]]] = []
    state = args.work / "unigram"
    shutil.rmtree(state, ignore_errors=True)
    seconds, led = ours(state, pages)
    inbox, outbox = Path("/in"), Path("/out")

    def search(q: str) -> int:
        return len(query.search(led.connection, q, inbox=inbox, outbox=outbox, limit=20))

    full = {k: timed(search, queries[k]) for k in KINDS}
    lat = {k: timed(fts_search(state / "ledger.sqlite3", "unigram"), queries[k]) for k in KINDS}
    size = db_size(state / "ledger.sqlite3")
    with_ms, without_ms = live_cost(led, pages, args.live)
    led.close()
    t_check = time.perf_counter()
    with Ledger.open_readonly(state):
        pass
    t_check = time.perf_counter() - t_check
    rows.append(("unigram", size, seconds, lat))
    print("`query.search` (what `ocr-inbox search` runs: + PDF page numbers, lines, boxes), ms median / p95: "
          + ", ".join(f"{k} {full[k][0]:.1f} / {full[k][1]:.1f}" for k in KINDS))
    print(f"Ledger.done: {with_ms:.2f} ms per image with its page indexed, {without_ms:.2f} ms without "
          f"(indexing: {with_ms - without_ms:.2f} ms); read-only open with quick_check: {t_check:.2f} s")
    n, secs = rebuild_from_json(args.work, pages[: args.json_pages])
    print(f"index rebuild from JSON files: {n} images in {secs:.1f} s ({n / secs:.0f} images/s)")

    for name, tok, make in (("bigram", index.TOKENIZER, bigrams), ("trigram", "trigram", lambda t: t)):
        if name in args.skip:
            continue
        db = args.work / f"{name}.sqlite3"
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            p.unlink(missing_ok=True)
        seconds = build_alternative(db, tok, make, pages)
        lat = {k: timed(fts_search(db, name), queries[k]) for k in KINDS}
        rows.append((name, db_size(db), seconds, lat))

    print()
    print("| approach | MiB per 1,000 pages | bulk index, pages/s | " + " | ".join(
        f"{k} ms (median / p95)" for k in KINDS) + " |")
    print("|---|---|---|" + "---|" * len(KINDS))
    for name, size, seconds, lat in rows:
        cells = " | ".join(f"{lat[k][0]:.1f} / {lat[k][1]:.1f}" for k in KINDS)
        print(f"| {name} | {size / args.pages * 1000 / 2**20:.2f} | {args.pages / seconds:.0f} | {cells} |")
    print()
    print("mean pages found (of at most 20): " + "; ".join(
        f"{name} " + ", ".join(f"{k} {lat[k][2]:.1f}" for k in KINDS) for name, _, _, lat in rows))


if __name__ == "__main__":
    main()
