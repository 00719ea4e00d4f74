"""Words on skewed lines: each word's polygon in the JSON lands on the word, not on the next line.

Unit tests of the geometry (``ocr.results.word_poly``) on lines built as PaddleX cuts
them, and one real run of `ocr-inbox ocr` on a corpus page skewed 7 degrees.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import CORPUS, run_cli
from PIL import Image
from shapely.geometry import Polygon

from ocr_inbox.ocr import orientation
from ocr_inbox.ocr.results import Line, Word, word_poly
from ocr_inbox.outbox import document


def _skewed_line(x: float, y: float, length: float, height: float, deg: float) -> tuple[tuple[float, float], ...]:
    a = math.radians(deg)
    along, down = (math.cos(a), math.sin(a)), (-math.sin(a), math.cos(a))
    tl = (x, y)
    tr = (x + length * along[0], y + length * along[1])
    br = (tr[0] + height * down[0], tr[1] + height * down[1])
    bl = (x + height * down[0], y + height * down[1])
    return (tl, tr, br, bl)


def _paddlex_word_box(poly: tuple[tuple[float, float], ...], t0: float, t1: float) -> tuple[float, float, float, float]:
    """A word box as PaddleX's ``cal_ocr_word_box`` makes it: the slice [t0, t1] of the
    first edge's x span, from the first corner's y to the third's."""
    x0, x1 = poly[0][0], poly[1][0]
    return (x0 + t0 * (x1 - x0), poly[0][1], x0 + t1 * (x1 - x0), poly[2][1])


def test_a_word_on_a_skewed_line_is_cut_from_the_line_and_stays_off_the_next_line() -> None:
    upper = _skewed_line(100, 100, 1000, 40, 7)
    lower = _skewed_line(100, 150, 1000, 40, 7)  # 10 px of paper between the lines
    spans = ((0.0, 0.3), (0.35, 0.6), (0.65, 1.0))
    for poly in (upper, lower):
        line = Line("a b c", 0.9, poly, tuple(Word(t, _paddlex_word_box(poly, *s)) for t, s in zip("abc", spans, strict=True)))
        for w, (t0, t1) in zip(line.words, spans, strict=True):
            q = word_poly(line, w)
            # the corners are the line's edges cut at the word's share of it
            want0 = (poly[0][0] + t0 * (poly[1][0] - poly[0][0]), poly[0][1] + t0 * (poly[1][1] - poly[0][1]))
            assert math.dist(q[0], want0) < 0.1
            assert math.dist(q[1], (poly[0][0] + t1 * (poly[1][0] - poly[0][0]), poly[0][1] + t1 * (poly[1][1] - poly[0][1]))) < 0.1
            assert Polygon(poly).buffer(0.2).contains(Polygon(q))
    # the axis-aligned boxes of the upper line reach into the lower one; the polygons don't
    lu = Line("w", 0.9, upper, (Word("w", _paddlex_word_box(upper, 0.65, 1.0)),))
    ll = Line("w", 0.9, lower, (Word("w", _paddlex_word_box(lower, 0.65, 1.0)),))
    x0, y0, x1, y1 = lu.words[0].box
    box = Polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    lower_word = Polygon(word_poly(ll, ll.words[0]))
    assert box.intersection(lower_word).area > 0.2 * lower_word.area
    assert Polygon(word_poly(lu, lu.words[0])).intersection(Polygon(word_poly(ll, ll.words[0]))).area < 1


@pytest.mark.parametrize("rotation", (90, 180, 270))
def test_on_a_turned_page_the_polygon_is_the_upright_one_mapped_back(rotation: int) -> None:
    w, h = 1200, 900  # the stored image
    poly = _skewed_line(100, 100, 600, 40, 5)
    line = Line("ab cd", 0.9, poly, (Word("ab", _paddlex_word_box(poly, 0, 0.4)), Word("cd", _paddlex_word_box(poly, 0.55, 1))))
    # the line was read on the page turned upright; the JSON keeps it on the stored image
    stored = orientation.to_stored([line], rotation, w, h)[0]
    back = orientation.point_mapper(rotation, w, h, inverse=True)
    for upright_word, stored_word in zip(line.words, stored.words, strict=True):
        want = [back(p) for p in word_poly(line, upright_word)]
        got = word_poly(stored, stored_word)
        for a, b in zip(got, want, strict=True):
            assert math.dist(a, b) < 1.5, (rotation, got, want)


def test_the_json_gives_each_word_its_polygon_and_reads_back() -> None:
    poly = _skewed_line(10, 10, 200, 20, 7)
    line = Line("ab cd", 0.9, poly, (Word("ab", _paddlex_word_box(poly, 0, 0.4)), Word("cd", _paddlex_word_box(poly, 0.5, 1))))
    from ocr_inbox.ocr.results import Page

    doc = document.Document(document.SourceInfo("a.png", 1, 2, "x"), {}, (Page(0, 300, 100, (line,)),), 5)
    d = doc.to_json()
    words = d["pages"][0]["lines"][0]["words"]
    assert [w["poly"] for w in words] == [[list(p) for p in word_poly(line, w)] for w in line.words]
    once = json.loads(json.dumps(d))
    assert json.loads(json.dumps(document.from_json(once).to_json())) == once  # derived again on writing


def _inside(outer: Polygon, inner: Polygon) -> bool:
    return outer.buffer(1.0).contains(inner)


@pytest.mark.slow
@pytest.mark.corpus
def test_a_page_skewed_7_degrees_gets_word_polygons_on_its_words(tmp_path: Path, models_dir: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    with Image.open(CORPUS / "tesseract_test/phototest.tif") as im:
        # turned 7 degrees counter-clockwise on white, as a crooked sheet in a scanner
        im.convert("RGB").rotate(7, resample=Image.Resampling.BICUBIC, expand=True, fillcolor="white").save(inbox / "skewed.png")
    res = run_cli("ocr", inbox, outbox, "--no-progress", state_dir=tmp_path / "state", models=models_dir)
    assert res.returncode == 0, res.stderr
    page = json.loads((outbox / "skewed.png.json").read_text())["pages"][0]
    lines = [ln for ln in page["lines"] if len(ln.get("words", ())) >= 3]
    assert len(lines) >= 5
    box_overlaps = 0
    for ln in lines:
        line_poly = Polygon(ln["poly"])
        (x0, y0), (x1, y1) = ln["poly"][0], ln["poly"][1]
        along = ((x1 - x0), (y1 - y0))
        assert abs(math.degrees(math.atan2(along[1], along[0])) + 7) < 2.5  # the line lies skewed
        starts = []
        for w in ln["words"]:
            q = Polygon(w["poly"])
            assert q.area > 0 and _inside(line_poly, q), (ln["text"], w)
            starts.append((q.centroid.x - x0) * along[0] + (q.centroid.y - y0) * along[1])
        assert starts == sorted(starts), ln["text"]  # words in order along the line
    # words of different lines share no more than a sliver; their axis-aligned boxes cover
    # much of the next line's words
    for a in lines:
        for b in lines:
            if a is b:
                continue
            for wa in a["words"]:
                pa = Polygon(wa["poly"])
                bx0, by0, bx1, by1 = wa["box"]
                box = Polygon([(bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1)])
                for wb in b["words"]:
                    pb = Polygon(wb["poly"])
                    # at most a sliver: the detector pads line polygons, neighbours touch
                    assert pa.intersection(pb).area <= 0.15 * min(pa.area, pb.area), (a["text"], wa["text"], b["text"], wb["text"])
                    box_overlaps += box.intersection(pb).area > 0.3 * pb.area
    assert box_overlaps >= len(lines)  # the problem the polygons solve is there on this page
