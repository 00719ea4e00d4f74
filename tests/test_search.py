"""Full-text search: `ocr-inbox search` and `ocr-inbox index rebuild`.

The end-to-end tests OCR real corpus pages for real (the one-shot CLI and the
daemon) and search them with the real command; the unit tests cover query
parsing against FTS5 itself and the ledger's index transitions, without OCR.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymupdf
import pytest
import structlog
from conftest import CORPUS, run_cli
from daemon_harness import Daemon, cli_env

from ocr_inbox import config
from ocr_inbox.ledger import DB_NAME, Ledger, Observation, db, index, schema
from ocr_inbox.ocr.results import Line, Page
from ocr_inbox.outbox import document, names
from ocr_inbox.search import query, rebuild, show
from ocr_inbox.search.scope import Scope
from ocr_inbox.support.errors import BadArguments, StateError

# -- helpers ------------------------------------------------------------------------


def _page(*lines: str, index_: int = 0) -> Page:
    return Page(
        index=index_, width=1000, height=1000,
        lines=tuple(Line(t, 0.9, ((10.0, 20.0 + 40 * i), (300.5, 20.0 + 40 * i), (300.5, 50.2 + 40 * i), (10.0, 50.2 + 40 * i)))
                    for i, t in enumerate(lines)),
    )


def _done(led: Ledger, rel: str, *pages: Page, size: int = 1) -> None:
    led.observe(rel, size, 1, now=1.0)
    assert [r.rel for r in led.claim(1, now=2.0)] == [rel]
    assert led.done(rel, size, 1, rel + ".json", 5, now=3.0, pages=pages)


def _find(led: Ledger, text: str, **kw: Any) -> list[str]:
    return [r.image for r in query.search(led.connection, text, inbox=Path("/in"), outbox=Path("/out"), **kw)]


def _rows(db: Path) -> list[tuple[str, int, str, str]]:
    """The index's rows without their ids, and FTS5's own check that its index matches them."""
    conn = sqlite3.connect(db)
    try:
        conn.execute(f"INSERT INTO {index.LIVE.fts} ({index.LIVE.fts}) VALUES ('integrity-check')")
        return conn.execute(f"SELECT rel, page, text, boxes FROM {index.LIVE.pages} ORDER BY rel, page").fetchall()
    finally:
        conn.close()


@pytest.fixture
def led(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "state") as ledger:
        yield ledger


# -- queries: parsing and escaping, against FTS5 itself -------------------------------------


@pytest.mark.parametrize(
    ("raw", "expr"),
    [
        ("invoice", '"invoice"'),
        ("Inv*", '"Inv" *'),
        ('"two words" three', '"two words" AND "three"'),
        ('"two wor"*', '"two wor" *'),
        ('"unclosed phrase', '"unclosed phrase"'),
        ("姓名", '"姓\x1f名"'),
        ("Hello你好", '"Hello\x1f你\x1f好"'),
        ("１９８３", '"1983"'),  # full-width digits fold as the index folds them
        ("NEAR(a b)", '"NEAR(a" AND "b)"'),
        ("a OR b", '("a" OR "b")'),
        ("invoice 2024 OR 2025 OR 2026*", '"invoice" AND ("2024" OR "2025" OR "2026" *)'),
        ('"two words" OR 姓名', '("two words" OR "姓\x1f名")'),
        ("OR a", '"OR" AND "a"'),  # not between two terms: a word
        ("a OR", '"a" AND "OR"'),
        ("a or b", '"a" AND "or" AND "b"'),  # only in capitals
        ("a OR OR b", '("a" OR "b")'),
        ("a OR -b", '("a" AND "OR") NOT ("b")'),
        ("-foo col:bar ^x", '("col:bar" AND "^x") NOT ("foo")'),
        ('invoice -draft -"do not file" e-mail', '("invoice" AND "e-mail") NOT ("draft" OR "do not file")'),
        ('say"hi"there', '"say" AND "hi" AND "there"'),
    ],
)
def test_a_query_becomes_quoted_terms(raw: str, expr: str) -> None:
    assert query.match_expression(query.parse(raw)) == expr


@pytest.mark.parametrize("raw", ["", "   ", '"', '""', "*", "-", "- * ( ) :", '"*"', "🙂", "\u200b", "\x1f"])
def test_a_query_with_nothing_to_search_is_refused(raw: str, led: Ledger) -> None:
    assert query.parse(raw) == []
    with pytest.raises(BadArguments, match="nothing to search"):
        query.search(led.connection, raw, inbox=Path("/in"), outbox=Path("/out"))


@pytest.mark.parametrize("raw", ["-draft", '-"do not file" -x', "-a* -b"])
def test_a_query_of_exclusions_only_is_refused(raw: str, led: Ledger) -> None:
    with pytest.raises(BadArguments, match="besides the ones it excludes"):
        query.search(led.connection, raw, inbox=Path("/in"), outbox=Path("/out"))


def test_either_word_and_excluded_words_find_the_right_pages(led: Ledger) -> None:
    _done(led, "inv/2024.png", _page("Invoice 2024", "total due"))
    _done(led, "inv/2025.png", _page("Invoice 2025", "DRAFT"))
    _done(led, "inv/2026.png", _page("Invoice 2026", "do not file"))
    _done(led, "misc/note.png", _page("note 2025"))
    assert sorted(_find(led, "invoice 2024 OR 2025")) == ["inv/2024.png", "inv/2025.png"]
    assert sorted(_find(led, "2025 OR 2026")) == ["inv/2025.png", "inv/2026.png", "misc/note.png"]
    assert sorted(_find(led, "invoice -draft")) == ["inv/2024.png", "inv/2026.png"]
    assert _find(led, 'invoice -draft -"do not file"') == ["inv/2024.png"]
    assert _find(led, "2025 -invoice") == ["misc/note.png"]
    assert _find(led, "invoice -inv*") == []
    # the hits shown are the words found, never the excluded ones
    (res,) = query.search(led.connection, "total OR nothing -draft", inbox=Path("/in"), outbox=Path("/out"))
    assert [(h.text, h.spans) for h in res.hits] == [("total due", ((0, 5),))]


def test_no_typed_query_makes_fts5_fail(led: Ledger) -> None:
    """Any string of FTS5's special characters and keywords: a result or 'nothing to search', never an error."""
    _done(led, "a/1.jpg", _page('He said "NEAR" and OR not AND', "x-y z*w ^caret col:val"))
    alphabet = ['"', "*", "-", "+", "(", ")", ":", "^", "NEAR", "OR", "AND", "NOT", " ", "a", "é", "姓", "{", "}", "'", ","]
    rng = random.Random(12)
    for _ in range(2000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        try:
            query.search(led.connection, raw, inbox=Path("/in"), outbox=Path("/out"))
        except BadArguments:  # nothing to find: no term, or only exclusions
            assert all(t.exclude for t in query.parse(raw))
    assert _find(led, '"NEAR" and OR') == ["a/1.jpg"]
    assert _find(led, "col:val") == ["a/1.jpg"]


def test_latin_case_accents_phrases_prefixes(led: Ledger) -> None:
    _done(led, "eu/1.tif", _page("Über den faulen Hund", "marrón rápido salta", "E-mail from Aspammer"))
    _done(led, "eu/2.tif", _page("the quick brown dog", "jumped over"))
    _done(led, "eu/3.tif", _page("brown", "quick"))
    assert _find(led, "uber hund") == ["eu/1.tif"]
    assert _find(led, "MARRON RAPIDO") == ["eu/1.tif"]
    assert _find(led, "e-mail") == _find(led, "E mail") == ["eu/1.tif"]
    assert _find(led, "aspam*") == _find(led, "ráp*") == ["eu/1.tif"]
    assert _find(led, '"quick brown"') == ["eu/2.tif"]  # a phrase: in that order, adjacent
    assert sorted(_find(led, "quick brown")) == ["eu/2.tif", "eu/3.tif"]  # words: anywhere on the page
    assert _find(led, "quick brown", folder="eu") and _find(led, "quick", folder="e") == []


def test_pages_that_rank_alike_come_in_path_order(led: Ledger) -> None:
    for rel in ("b/2.png", "a/9.png", "b/10.png", "a/1.png"):  # the same text: the same bm25
        _done(led, rel, _page("invoice total", "paid"))
    _done(led, "c/multi.tif", _page("invoice total", "paid"), _page("invoice total", "paid", index_=1))
    _done(led, "z/best.png", _page("invoice invoice invoice"))
    found = query.search(led.connection, "invoice", inbox=Path("/in"), outbox=Path("/out"))
    assert found[0].image == "z/best.png"  # the better match first, whatever its path
    rest = [(r.image, r.page) for r in found[1:]]
    assert rest == [("a/1.png", 0), ("a/9.png", 0), ("b/10.png", 0), ("b/2.png", 0), ("c/multi.tif", 0), ("c/multi.tif", 1)]
    assert len({r.bm25 for r in found[1:]}) == 1
    assert _find(led, "invoice", limit=2) == ["z/best.png", "a/1.png"]


def test_cjk_any_length_inside_runs_and_across_lines(led: Ledger) -> None:
    _done(led, "f/1.jpg", _page("姓名：夏艳辰", "Maribyrnong市政府", "出生日期：１９８３/6/8"))
    _done(led, "f/2.jpg", _page("一个账户一一这个账", "户可以是信用卡", "ひらがなとカタカナ"))
    assert _find(led, "姓名") == _find(led, "夏艳辰") == _find(led, "名") == ["f/1.jpg"]
    assert _find(led, "市政府") == _find(led, "maribyrnong") == ["f/1.jpg"]
    assert _find(led, "1983") == _find(led, "１９８３") == ["f/1.jpg"]
    assert _find(led, "名夏") == ["f/1.jpg"]  # punctuation does not separate, as for Latin words
    assert _find(led, "账户") == ["f/2.jpg"] and _find(led, "这个账户") == ["f/2.jpg"]  # across a line's end
    assert _find(led, "がなとカ") == ["f/2.jpg"] and _find(led, "政府可") == []
    (res,) = query.search(led.connection, "这个账户", inbox=Path("/in"), outbox=Path("/out"))
    assert [(h.line, h.text, h.spans) for h in res.hits] == [(0, "一个账户一一这个账", ((6, 9),)), (1, "户可以是信用卡", ((0, 1),))]
    assert res.hits[1].box == (10, 60, 301, 91)  # the line's polygon, whole pixels covering it


# -- the index follows the ledger -------------------------------------------------------


def test_the_index_follows_every_transition(led: Ledger, tmp_path: Path) -> None:
    _done(led, "a/1.jpg", _page("alpha one"))
    _done(led, "a/2.jpg", _page("alpha two"))
    _done(led, "b/c/3.jpg", _page("alpha three"))
    _done(led, "b/c/4.jpg", _page("alpha four"))
    _done(led, "d/5.jpg", _page("alpha five"))
    assert len(_find(led, "alpha")) == 5

    assert led.observe("a/1.jpg", 2, 1, now=4.0) is Observation.changed  # a new version: old text gone now
    assert _find(led, "one") == []
    led.claim(1, now=5.0)
    assert led.done("a/1.jpg", 2, 1, "a/1.jpg.json", 5, now=6.0, pages=(_page("uno"),))
    assert _find(led, "uno") == ["a/1.jpg"]

    assert led.gone("a/2.jpg", now=7.0) and _find(led, "two") == []
    assert led.gone_tree("b", now=7.0) == 2 and _find(led, "three") == _find(led, "four") == []
    assert led.refuse("d/5.jpg", "not_a_regular_file", "swapped for a fifo", now=8.0) and _find(led, "five") == []
    # back unchanged: adopted again from its JSON, with its text
    assert led.observe("a/2.jpg", 1, 1, now=9.0) is Observation.returned
    assert led.adopt("a/2.jpg", 1, 1, "a/2.jpg.json", now=9.0, pages=(_page("alpha two"),))
    assert sorted(_find(led, "alpha")) == ["a/2.jpg"]
    assert _rows(led.path) == [("a/1.jpg", 0, "uno", "[[10,20,301,51]]"), ("a/2.jpg", 0, "alpha two", "[[10,20,301,51]]")]


def test_a_source_deleted_by_delete_processed_stays_searchable(led: Ledger) -> None:
    _done(led, "a/1.jpg", _page("kept in the PDF"))
    assert led.source_deleted("a/1.jpg", 1, 1, now=4.0)
    assert not led.gone("a/1.jpg", now=5.0)
    assert _find(led, "kept") == ["a/1.jpg"]


def test_pdf_pages_follow_the_pdf_builders_order(led: Ledger) -> None:
    """Natural order, first_prefixes first, every page of a multi-page image, pages kept by
    delete_processed before the new ones (a late page extends their PDF)."""
    _done(led, "f/p10.jpg", _page("ten"))
    _done(led, "f/p2.tif", _page("two a"), _page("two b", index_=1), _page("two c", index_=2))
    _done(led, "f/cover.jpg", _page("cover"))
    _done(led, "f/a.jpg", _page("deleted"))
    assert led.source_deleted("f/a.jpg", 1, 1, now=4.0)
    assert query.first_pdf_pages(led.connection, "f") == {"f/a.jpg": 1, "f/cover.jpg": 2, "f/p2.tif": 3, "f/p10.jpg": 6}
    first = query.first_pdf_pages(led.connection, "f", first_prefixes=("p1",))
    assert first == {"f/a.jpg": 1, "f/p10.jpg": 2, "f/cover.jpg": 3, "f/p2.tif": 4}
    (res,) = query.search(led.connection, '"two c"', inbox=Path("/in"), outbox=Path("/out"))
    assert (res.image, res.page, res.pdf_page, res.pdf) == ("f/p2.tif", 2, 5, Path("/out/f/f.pdf"))


def test_rebuild_swaps_at_once_and_an_interrupted_one_changes_nothing(led: Ledger) -> None:
    _done(led, "a/1.jpg", _page("alpha"))
    _done(led, "a/2.jpg", _page("beta"))
    live = _rows(led.path)

    def broken() -> Iterator[tuple[str, tuple[Page, ...]]]:
        yield "a/1.jpg", (_page("alpha"),)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        led.rebuild_index(broken(), now=5.0, chunk=1)  # one chunk committed beside the live index
    assert _rows(led.path) == live and _find(led, "beta") == ["a/2.jpg"]
    tables = {n for (n,) in led.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not any(n.startswith(index.NEXT.pages) for n in tables)

    assert led.rebuild_index(iter([("a/1.jpg", (_page("alpha"),)), ("a/2.jpg", (_page("beta"),))]), now=6.0, chunk=1) == 2
    assert _rows(led.path) == live and _find(led, "alpha") == ["a/1.jpg"]


def test_a_v2_ledger_upgrades_in_place_and_a_rebuild_fills_the_index(tmp_path: Path) -> None:
    state, outbox = tmp_path / "state", tmp_path / "out"
    state.mkdir()
    conn = sqlite3.connect(state / DB_NAME, isolation_level=None)
    for version in (0, 1):
        for stmt in db._statements(schema._MIGRATIONS[version]):
            conn.execute(stmt)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO folders (folder, first_seen, last_activity) VALUES ('a', 1, 1)")
    conn.execute("INSERT INTO images (rel, folder, natkey, size, mtime_ns, status, first_seen, updated)"
                 " VALUES ('a/1.jpg', 'a', 'k', 7, 8, 'done', 1, 1)")
    conn.close()
    document.write(names.json_path_for(outbox, "a/1.jpg"), document.Document(
        document.SourceInfo("a/1.jpg", 7, 8, "0" * 64), {}, (_page("done before the index"),), 1))

    settings = config.load(None, {"paths": {"state_dir": state, "inbox": tmp_path / "in", "outbox": outbox}})
    with structlog.testing.capture_logs() as logs:
        with Ledger.open(state) as led:
            assert not index.complete(led.connection) and _find(led, "index") == []
        show.run(settings, "index", as_json=True)
    assert [e["event"] for e in logs].count("search_index_incomplete") == 2  # the daemon's start, and search

    done = rebuild.rebuild(Scope(state, tmp_path / "in", outbox), progress=False)
    assert (done.images, done.pages, done.left_out) == (1, 1, ())
    with Ledger.open_readonly(state) as led:
        assert index.complete(led.connection) and _find(led, "before") == ["a/1.jpg"]


def test_a_rebuild_into_the_wrong_outbox_keeps_the_index(led: Ledger, tmp_path: Path) -> None:
    _done(led, "a/1.jpg", _page("alpha"))
    live = _rows(led.path)
    led.close()
    with pytest.raises(BadArguments, match="none of the 1 done images"):
        rebuild.rebuild(Scope(led.path.parent, tmp_path / "in", tmp_path / "elsewhere"), progress=False)
    assert _rows(led.path) == live


def test_a_sqlite_without_fts5_is_named_not_called_damage() -> None:
    err = db._state_error(Path("/s/ledger.sqlite3"), sqlite3.OperationalError("no such module: fts5"))
    assert "lacks FTS5" in str(err) and "damaged" not in str(err)


def test_search_before_the_index_exists_says_what_to_do(tmp_path: Path) -> None:
    settings = config.load(None, {"paths": {"state_dir": tmp_path / "nothing"}})
    with pytest.raises(StateError, match="no ledger"):
        show.run(settings, "x")


# -- end to end: real OCR of corpus pages, the real commands --------------------------------

#: Chinese and Latin pages (the ground truth says what is on them)
TREE = {
    "forms/zh_val_0.jpg": "xfund_zh/zh_val_0.jpg",  # 姓名：夏艳辰, 纾困申请表
    "mixed/eurotext.tif": "tesseract_test/eurotext.tif",  # über, marrón rápido, E-mail, aspammer@website.com
    "mixed/helloworld.jpg": "cnocr/helloworld.jpg",  # Hello world!你好世界
    "mixed/multi-line_cn1.png": "cnocr/multi-line_cn1.png",  # 手机号码, 账户 (once across a line's end)
    "mixed/phototest.tif": "tesseract_test/phototest.tif",  # the quick brown dog
}


def _tree(inbox: Path, tree: dict[str, str]) -> Path:
    for dest, src in tree.items():
        (inbox / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CORPUS / src, inbox / dest)
    return inbox


def _search(state: Path, models: Path, *args: str | Path) -> list[dict[str, Any]]:
    res = run_cli("search", *args, "--json", state_dir=state, models=models)
    assert res.returncode == 0, res.stderr
    return list(json.loads(res.stdout)["results"])


def _pdf_page_text(pdf: str, page: int) -> str:
    with pymupdf.open(pdf) as doc:
        return str(doc[page - 1].get_text()).replace(" ", "").replace("\n", "").casefold()


@pytest.fixture(scope="module")
def oneshot(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> tuple[Path, Path, Path]:
    """TREE OCR'd for real by `ocr-inbox ocr --pdf`: (inbox, outbox, state dir)."""
    if not CORPUS.is_dir():
        pytest.skip(f"needs the corpus at {CORPUS}")
    root = tmp_path_factory.mktemp("search")
    inbox, outbox, state = _tree(root / "in", TREE), root / "out", root / "state"
    res = run_cli("ocr", inbox, outbox, "--pdf", "--no-progress", state_dir=state, models=models_dir)
    assert res.returncode == 0, res.stderr
    return inbox, outbox, state


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.parametrize(
    ("q", "image", "word"),
    [
        ("姓名", "forms/zh_val_0.jpg", "姓名"),  # two characters, inside 姓名：夏艳辰
        ("纾困申请表", "forms/zh_val_0.jpg", "纾困申请表"),
        ("手机号", "mixed/multi-line_cn1.png", "手机号"),  # three characters
        ("你好", "mixed/helloworld.jpg", "你好"),
        ("UBER", "mixed/eurotext.tif", "über"),  # case and accents do not matter
        ("marron rapido", "mixed/eurotext.tif", "rápido"),
        ('"quick brown dog"', "mixed/phototest.tif", "quickbrowndog"),  # a phrase
        ("aspam*", "mixed/eurotext.tif", "aspammer"),  # a prefix
    ],
)
def test_oneshot_pages_are_found_with_their_pdf_page(
    oneshot: tuple[Path, Path, Path], models_dir: Path, q: str, image: str, word: str
) -> None:
    inbox, outbox, state = oneshot
    results = _search(state, models_dir, q, "--outbox", outbox)
    assert results[0]["image"] == image and len({r["image"] for r in results}) == len(results)
    top = results[0]
    folder = image.rsplit("/", 1)[0]
    assert top["pdf"] == str(outbox / folder / f"{folder}.pdf") and top["pdf_exists"]
    assert word.replace(" ", "").casefold() in _pdf_page_text(top["pdf"], top["pdf_page"])  # the right PDF page
    doc = json.loads(names.json_path_for(outbox, image).read_text(encoding="utf-8"))
    width, height = doc["pages"][0]["width"], doc["pages"][0]["height"]
    assert top["lines"]
    for line in top["lines"]:
        assert line["text"] == doc["pages"][0]["lines"][line["line"]]["text"]  # as OCR read it
        x0, y0, x1, y1 = line["box"]
        assert -2 <= x0 < x1 <= width + 2 and -2 <= y0 < y1 <= height + 2
        assert line["hits"] and all(0 <= a < b <= len(line["text"]) for a, b in line["hits"])


@pytest.mark.slow
@pytest.mark.corpus
def test_oneshot_search_options_and_terminal_output(oneshot: tuple[Path, Path, Path], models_dir: Path) -> None:
    inbox, outbox, state = oneshot
    assert {r["image"] for r in _search(state, models_dir, "quick", "--outbox", outbox)} == {
        "mixed/eurotext.tif", "mixed/phototest.tif"}
    assert _search(state, models_dir, "quick", "--outbox", outbox, "--folder", "forms") == []
    assert len(_search(state, models_dir, "the", "--outbox", outbox, "--inbox", inbox, "--limit", "1")) == 1
    assert _search(state, models_dir, "nowhere-to-be-found", "--outbox", outbox) == []
    # either, and not
    assert {r["image"] for r in _search(state, models_dir, "姓名", "OR", "format", "--outbox", outbox)} == {
        "forms/zh_val_0.jpg", "mixed/phototest.tif"}
    assert {r["image"] for r in _search(state, models_dir, "quick -über", "--outbox", outbox)} == {"mixed/phototest.tif"}
    assert {r["image"] for r in _search(state, models_dir, "quick", "-über", "--outbox", outbox)} == {"mixed/phototest.tif"}
    assert run_cli("search", "--outbox", outbox, "-quick", state_dir=state, models=models_dir).returncode == 2
    for hostile in ('"', "NEAR(", "*", "-"):
        res = run_cli("search", "--outbox", outbox, "--", hostile, state_dir=state, models=models_dir)
        assert res.returncode in (0, 2) and "Traceback" not in res.stderr, (hostile, res.stderr)
    assert run_cli("search", "--outbox", outbox, "*", state_dir=state, models=models_dir).returncode == 2
    assert run_cli("search", "x", "--outbox", outbox / "nope", state_dir=state, models=models_dir).returncode == 2

    res = run_cli("search", "姓名", "--outbox", outbox, state_dir=state, models=models_dir,
                  env=cli_env(FORCE_COLOR="1", COLUMNS="200"))
    assert res.returncode == 0, res.stderr
    assert "forms/zh_val_0.jpg" in res.stdout and "forms.pdf page 1" in res.stdout
    assert "\x1b[1;7m姓名\x1b[0m" in res.stdout  # the hit, highlighted


@pytest.mark.slow
@pytest.mark.corpus
def test_oneshot_changed_and_deleted_images_leave_the_index_and_rebuild_equals_live(
    tmp_path: Path, models_dir: Path
) -> None:
    inbox = _tree(tmp_path / "in", {"a/p1.jpg": "cnocr/helloworld.jpg", "a/p2.png": "cnocr/multi-line_cn1.png",
                                    "a/[/] odd name.jpg": "cnocr/helloworld.jpg"})
    outbox, state = tmp_path / "out", tmp_path / "state"

    def ocr() -> None:
        res = run_cli("ocr", inbox, outbox, "--no-progress", state_dir=state, models=models_dir)
        assert res.returncode == 0, res.stderr

    def found(q: str) -> list[str]:
        return sorted(r["image"] for r in _search(state, models_dir, q, "--outbox", outbox))

    ocr()
    assert found("hello") == ["a/[/] odd name.jpg", "a/p1.jpg"] and found("手机号") == ["a/p2.png"]
    human = run_cli("search", "hello", "--outbox", outbox, state_dir=state, models=models_dir)
    assert human.returncode == 0 and "a/[/] odd name.jpg" in human.stdout  # a name is text, not markup

    shutil.copy(CORPUS / "tesseract_test/phototest.tif", inbox / "a" / "p1.jpg")  # another page, same name
    (inbox / "a" / "p2.png").unlink()
    ocr()
    assert found("hello") == ["a/[/] odd name.jpg"] and found("手机号") == []
    assert found('"quick brown"') == ["a/p1.jpg"]

    (run_dir,) = (state / "runs").iterdir()
    live = _rows(run_dir / DB_NAME)
    answers = {q: _search(state, models_dir, q, "--outbox", outbox) for q in ("hello", "quick", "你好", "typ*")}
    res = run_cli("index", "rebuild", "--outbox", outbox, "--no-progress", state_dir=state, models=models_dir)
    assert res.returncode == 0, res.stderr
    assert "indexed 2 image(s), 2 page(s)" in res.stdout
    assert _rows(run_dir / DB_NAME) == live  # same rows, and FTS5 finds its index consistent with them
    assert {q: _search(state, models_dir, q, "--outbox", outbox) for q in answers} == answers


@pytest.mark.slow
@pytest.mark.corpus
def test_the_daemon_keeps_the_index_current_and_search_reads_beside_it(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, "[watch]\nsettle_seconds = 0.5\n").start()  # --inbox, --outbox: no [paths]
    d.ready()

    def found(q: str) -> list[tuple[str, int]]:
        results = _search(d.state, models_dir, q)
        assert all(r["pdf"] == str(d.outbox / "book" / "book.pdf") for r in results)
        return sorted((r["image"], r["pdf_page"]) for r in results)

    _tree(d.inbox, {"book/p1.jpg": "cnocr/helloworld.jpg", "book/p2.png": "cnocr/multi-line_cn1.png"})
    d.until(lambda: found("手机号") and found("hello"), "both pages searchable while the daemon runs")
    assert found("hello") == [("book/p1.jpg", 1)] and found("手机号") == [("book/p2.png", 2)]

    shutil.copy(CORPUS / "tesseract_test/eurotext.tif", d.inbox / "book" / "p1.jpg")  # replaced by another page
    d.until(lambda: found("marron"), "the new page's text")
    assert found("hello") == [] and found("marron") == [("book/p1.jpg", 1)]
    (d.inbox / "book" / "p2.png").unlink()
    d.until(lambda: not found("手机号"), "the deleted page's text gone")
    # moved out and back unchanged: its JSON is adopted again, not OCR'd again
    ocr_runs = len(d.events("image_done"))
    (d.inbox / "book" / "p1.jpg").rename(tmp_path / "p1.jpg")
    d.until(lambda: not found("marron"), "the page moved out")
    (tmp_path / "p1.jpg").rename(d.inbox / "book" / "p1.jpg")
    d.until(lambda: found("marron"), "the page back")
    assert len(d.events("image_done")) == ocr_runs

    res = run_cli("index", "rebuild", state_dir=d.state, models=models_dir)
    assert res.returncode == 6 and "stop it" in res.stderr  # the daemon is the ledger's one writer
    live = _rows(d.state / DB_NAME)
    assert d.stop() == 0
    res = run_cli("index", "rebuild", state_dir=d.state, models=models_dir)
    assert res.returncode == 0, res.stderr
    assert _rows(d.state / DB_NAME) == live == [("book/p1.jpg", 0, live[0][2], live[0][3])]
