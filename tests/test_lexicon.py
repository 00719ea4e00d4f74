"""Word lists: unsure Latin letters respelled with the recognizer's own second choices (``[ocr] lexicon``)."""

from __future__ import annotations

import collections
import dataclasses
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import CORPUS, char_f1, ground_truth

from ocr_inbox import config
from ocr_inbox.ocr import engine, images, models, profiles
from ocr_inbox.ocr.lexicon import Letter, Lexicon, LexiconDecode, Respelt, languages, respell_line

LEX = Lexicon(["confidential", "recipient", "the", "special", "november", "date", "tho"])


def word(text: str, unsure: dict[int, tuple[float, list[tuple[str, float]]]] | None = None) -> list[Letter]:
    """Letters of ``text``, sure (0.99) except ``unsure``: index -> (prob, alternatives)."""
    unsure = unsure or {}
    return [Letter(c, unsure[i][0], tuple(unsure[i][1])) if i in unsure else Letter(c, 0.99) for i, c in enumerate(text)]


def test_an_unknown_word_takes_the_second_choice_that_makes_a_known_word() -> None:
    assert LEX.respell(word("CONFIDENTLAL", {9: (0.55, [("I", 0.40), ("1", 0.02)])})) == "CONFIDENTIAL"
    assert LEX.respell(word("reciplent", {5: (0.7, [("i", 0.2)])})) == "recipient"
    # the most probable known spelling wins
    lex = Lexicon(["date", "data"])
    assert lex.respell(word("dato", {3: (0.5, [("a", 0.1), ("e", 0.3)])})) == "date"


def test_what_stays_as_read() -> None:
    # a known word, even if unsure ("tho" is listed here)
    assert LEX.respell(word("tho", {2: (0.6, [("e", 0.35)])})) is None
    # an unknown word read surely (a name, a code)
    assert LEX.respell(word("Zausner")) is None
    # no alternative makes a known word
    assert LEX.respell(word("Novembor", {6: (0.5, [("a", 0.4)])})) is None
    # an alternative below 1 %
    assert LEX.respell(word("Novembor", {6: (0.5, [("e", 0.005)])})) is None
    # the case must stay: Title-case stays Title-case, UPPER stays UPPER
    assert LEX.respell(word("CONFIDENTLAL", {9: (0.55, [("i", 0.40)])})) is None
    assert LEX.respell(word("Novembor", {6: (0.5, [("e", 0.4)])})) == "November"
    # short words, digits, CJK and mixed tokens are never touched
    assert LEX.respell(word("tbe", {1: (0.5, [("h", 0.4)])})) == "the"
    assert Lexicon(["of"]).respell(word("0f", {0: (0.5, [("o", 0.4)])})) is None
    assert Lexicon(["合同"]).respell(word("合司", {1: (0.5, [("同", 0.4)])})) is None
    assert LEX.respell(word("th3", {2: (0.5, [("e", 0.4)])})) is None
    # at most one letter changed below 5 letters
    assert Lexicon(["date"]).respell(word("bato", {0: (0.5, [("d", 0.4)]), 3: (0.5, [("e", 0.4)])})) is None


def test_a_line_is_respelled_word_by_word_inside_punctuation() -> None:
    line = word("(reciplent), Dato", {6: (0.7, [("i", 0.2)]), 16: (0.5, [("e", 0.3)])})
    assert respell_line(LEX, line) == [Respelt(1, "reciplent", "recipient"), Respelt(13, "Dato", "Date")]


def _ctc_decode(chars: list[str]) -> Any:
    from paddlex.inference.models.text_recognition.processors import CTCLabelDecode

    return CTCLabelDecode(character_list=chars, use_space_char=True)


def _probs(decode: Any, steps: list[dict[str, float]]) -> np.ndarray:
    """A (1, T, classes) softmax-like array: each step's given probabilities, the rest to blank."""
    k = {c: i for i, c in enumerate(decode.character)}
    p = np.zeros((1, len(steps), len(decode.character)), dtype=np.float32)
    for t, step in enumerate(steps):
        for c, v in step.items():
            p[0, t, k[c]] = v
        p[0, t, 0] += 1.0 - sum(step.values())
    return p


def test_paddlex_decodes_the_respelled_line_with_its_word_boxes() -> None:
    decode = _ctc_decode(list("abcdefghijklmnopqrstuvwxyz"))
    steps: list[dict[str, float]] = []
    for c in "reciplent":
        if c == "l":  # unsure, two time steps long (CTC collapses the repeat)
            steps += [{"l": 0.6, "i": 0.35}, {"l": 0.55, "i": 0.4}]
        else:
            steps.append({c: 0.99})
        steps.append({})  # a blank between letters
    pred = [_probs(decode, steps)]
    before = pred[0].copy()
    kw = {"return_word_box": True, "wh_ratio_list": [4.0], "max_wh_ratio": 6.0}
    ((text_raw, info_raw),), (score_raw,) = decode(pred, **kw)
    wrapped = LexiconDecode(decode, LEX)
    ((text, info),), (score,) = wrapped(pred, **kw)
    assert text_raw == "reciplent" and text == "recipient"
    assert score == pytest.approx(score_raw)  # the line keeps its score
    assert ["".join(w) for w in info[1]] == ["recipient"] and info[2] == info_raw[2]  # same columns
    assert np.array_equal(pred[0], before)  # the runner's output is not changed
    assert wrapped.respelled == 1
    # what it changed, found again by the decoded line's text and score
    assert wrapped.respelt("recipient", score) == (("reciplent", "recipient"),)
    # a sure line goes through untouched, and nothing is recorded for it
    sure = [_probs(decode, [{c: 0.99} for c in "tho"])]
    ((tho, _),), (tho_score,) = wrapped(sure, **kw)
    assert tho == "tho" and wrapped.respelt("tho", tho_score) == ()
    wrapped.clear()
    assert wrapped.respelt("recipient", score) == ()


def test_english_is_on_by_default_and_the_lists_ship_with_the_dependency() -> None:
    assert config.OcrSettings().lexicon == ["en"]
    assert {"en", "de", "fr"} <= set(languages())
    en = Lexicon.load(["en"])
    assert en.known("Confidential") and en.known("november") and not en.known("confidentlal")


@pytest.mark.parametrize("lang", ["en", "de"])
def test_the_lists_are_read_as_json_reads_them(lang: str) -> None:
    import gzip
    import importlib.resources
    import json

    from ocr_inbox.ocr import lexicon

    path = importlib.resources.files("spellchecker") / "resources" / f"{lang}.json.gz"
    counts = json.loads(gzip.decompress(path.read_bytes()))
    assert lexicon._words(lang) == {w for w, n in counts.items() if n >= lexicon.MIN_COUNT and w.isalpha()}


def test_the_fast_yaml_loader_builds_the_same_model_configs(models_dir: Path) -> None:
    for role in ("det", "rec"):
        path = models.model_dir(models_dir, profiles.get("ppocrv6-tiny"), role) / "inference.yml"
        text = path.read_text(encoding="utf-8")
        assert yaml.load(text, Loader=yaml.CFullLoader) == yaml.load(text, Loader=yaml.FullLoader)


# --- real models on real pages ----------------------------------------------------------

FAX = "funsd/82092117.png"  # tiny reads CONFIDENTLAL, reciplent, SPECLAL here
CJK = ("xfund_zh/zh_val_0.jpg", "cnocr/multi-line_cn1.png", "cnocr/helloworld.jpg")


def _words(text: str) -> collections.Counter[str]:
    return collections.Counter(t.strip("\"'.,;:!?()[]{}-_/").lower() for t in unicodedata.normalize("NFKC", text).split())


def _word_f1(gt: str, pred: str) -> float:
    g, p = _words(gt), _words(pred)
    common = sum((g & p).values())
    return 0.0 if not common else 2 * common / (sum(g.values()) + sum(p.values()))


@pytest.fixture(scope="module")
def engines(models_dir: Path) -> dict[str, Any]:
    if not CORPUS.is_dir():
        pytest.skip(f"needs the corpus at {CORPUS}")
    base = engine.EngineSettings("ppocrv6-tiny", models_dir, Path(tempfile.mkdtemp(prefix="pdx")), threads=2)
    return {"off": engine.create(base), "en": engine.create(dataclasses.replace(base, lexicon=("en",)))}


def _page(rel: str) -> np.ndarray:
    lim = images.Limits(max_pixels=200_000_000, max_file_bytes=512 << 20, max_pages=10, max_total_pixels=10**9)
    return images.decode((CORPUS / rel).read_bytes(), lim)[0].bgr


@pytest.mark.slow
@pytest.mark.corpus
def test_a_fax_form_gets_its_misread_words_back(engines: dict[str, Any]) -> None:
    bgr = _page(FAX)
    off, on = engines["off"].recognise(bgr), engines["en"].recognise(bgr)
    text_off, text_on = "\n".join(ln.text for ln in off), "\n".join(ln.text for ln in on)
    for misread, right in (("CONFIDENTLAL", "CONFIDENTIAL"), ("reciplent", "recipient")):
        assert misread in text_off and misread not in text_on and right in text_on
    gt = ground_truth(FAX)
    assert _word_f1(gt, text_on) > _word_f1(gt, text_off) + 0.02
    assert char_f1(gt, text_on) >= char_f1(gt, text_off)
    # same lines, same places, same scores: only letters changed, and the word boxes follow
    assert [(ln.poly, ln.score, len(ln.words)) for ln in on] == [(ln.poly, ln.score, len(ln.words)) for ln in off]
    assert all(" ".join(w.text for w in ln.words).replace(" ", "") == ln.text.replace(" ", "") for ln in on if ln.words)
    # each line says which words it respelled, as read and as written; the others say nothing
    respelled = {pair for ln in on for pair in ln.respelled}
    assert {("CONFIDENTLAL", "CONFIDENTIAL"), ("reciplent", "recipient")} <= respelled
    for ln_on, ln_off in zip(on, off, strict=True):
        assert bool(ln_on.respelled) == (ln_on.text != ln_off.text)
        for read, written in ln_on.respelled:
            assert read in ln_off.text and written in ln_on.text
    assert not any(ln.respelled for ln in off)
    assert engines["en"].info()["lexicon"] == ["en"] and "lexicon" not in engines["off"].info()


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.parametrize("rel", CJK)
def test_chinese_pages_and_line_crops_are_unchanged(engines: dict[str, Any], rel: str) -> None:
    bgr = _page(rel)
    assert engines["en"].recognise(bgr) == engines["off"].recognise(bgr)
