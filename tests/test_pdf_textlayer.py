"""The text layer's geometry, its font and the page order, without image folders."""

from __future__ import annotations

import io
import itertools
import math

import pymupdf
import pytest
from fontTools.ttLib import TTFont

from ocr_inbox.ocr.results import Line, Page, Word
from ocr_inbox.outbox import font
from ocr_inbox.outbox.order import page_order
from ocr_inbox.outbox.textlayer import PixelToPoint, line_frame, reading_order, text_layer, word_runs

W, H = 600, 400  # page pixels; the test pages are 1 px = 1 pt


def box_line(text: str, box: tuple[float, float, float, float], words: tuple[Word, ...] = ()) -> Line:
    x0, y0, x1, y1 = box
    return Line(text, 0.9, ((x0, y0), (x1, y0), (x1, y1), (x0, y1)), words)


def rotated_line(text: str, centre: tuple[float, float], length: float, height: float, degrees: float) -> Line:
    """A line turned ``degrees`` counter-clockwise as seen on the page (pixel y runs down)."""
    a = math.radians(degrees)
    ux, uy = math.cos(a), -math.sin(a)  # along the text, in pixels
    vx, vy = math.sin(a), math.cos(a)  # from the top edge down to the bottom edge
    cx, cy = centre

    def p(s: float, t: float) -> tuple[float, float]:
        return (cx + s * ux + t * vx, cy + s * uy + t * vy)

    hl, hh = length / 2, height / 2
    return Line(text, 0.9, (p(-hl, -hh), p(hl, -hh), p(hl, hh), p(-hl, hh)))


def pdf_of(lines: list[Line]) -> pymupdf.Document:
    """A one-page PDF with just the text layer of ``lines``."""
    doc = pymupdf.open()
    doc.new_page(width=W, height=H)
    font_xref = font.add_font(doc)
    stream = text_layer(Page(0, W, H, tuple(lines)), PixelToPoint.fit(W, H, W, H))
    xref = doc.get_new_xref()
    doc.update_object(xref, "<<>>")
    doc.update_stream(xref, stream)
    page_xref = doc.page_xref(0)
    doc.xref_set_key(page_xref, "Resources", f"<</Font<</F0 {font_xref} 0 R>>>>")
    doc.xref_set_key(page_xref, "Contents", f"[{xref} 0 R]")
    return doc


def tf() -> PixelToPoint:
    return PixelToPoint.fit(W, H, W, H)


def test_pixel_to_point_flips_y_and_scales():
    t = PixelToPoint.fit(2480, 3508, 595.2, 841.92)
    assert t((0, 0)) == pytest.approx((0, 841.92))
    assert t((2480, 3508)) == pytest.approx((595.2, 0))
    assert t((1240, 1754)) == pytest.approx((297.6, 420.96))


def test_latin_words_get_spaces_that_fill_the_gaps():
    ln = box_line("Hello world", (10, 10, 200, 40), (Word("Hello", (10, 10, 90, 40)), Word("world", (110, 10, 200, 40))))
    runs = word_runs(ln, line_frame(ln, tf()), tf())
    assert [(r.text, r.start, r.end) for r in runs] == [("Hello", 0, 80), (" ", 80, 100), ("world", 100, 190)]


def test_cjk_characters_get_no_invented_spaces():
    chars = "纾困申请表"
    words = tuple(Word(c, (100 + 60 * i, 10, 150 + 60 * i, 60)) for i, c in enumerate(chars))
    ln = box_line(chars, (100, 10, 390, 60), words)
    runs = word_runs(ln, line_frame(ln, tf()), tf())
    assert [r.text for r in runs] == list(chars)
    # each character reaches the next one, so no extractor sees a gap for a space
    assert all(a.end == b.start for a, b in itertools.pairwise(runs))
    with pdf_of([ln]) as doc:
        assert doc[0].get_text().strip() == chars
        (hit,) = doc[0].search_for("申请")
        assert hit.x0 == pytest.approx(220, abs=0.5) and hit.x1 == pytest.approx(340, abs=0.5)


def test_mixed_latin_and_cjk_follow_the_line_text():
    ln = box_line("Maribyrnong市政府", (262, 156, 573, 197), (
        Word("Maribyrnong", (275, 156, 462, 197)), Word("市", (465, 156, 507, 197)),
        Word("政", (507, 156, 548, 197)), Word("府", (541, 156, 573, 197))))
    with pdf_of([ln]) as doc:
        assert doc[0].get_text().strip() == "Maribyrnong市政府"


def test_punctuation_words_with_spaces_keep_the_line_text():
    # as PaddleX returns them: ". " and " '" are words, spaces are part of them
    ln = box_line("ATT. GEN. Dec 10 '98", (100, 80, 400, 100), (
        Word("ATT", (106, 85, 123, 99)), Word(". ", (125, 85, 132, 99)), Word("GEN", (139, 85, 156, 99)),
        Word(". ", (156, 85, 163, 99)), Word("Dec", (200, 85, 238, 99)), Word("10", (247, 85, 256, 99)),
        Word(" '", (261, 85, 270, 99)), Word("98", (273, 85, 281, 99))))
    with pdf_of([ln]) as doc:
        assert doc[0].get_text().strip() == "ATT. GEN. Dec 10 '98"
        (hit,) = doc[0].search_for("GEN")
        assert hit.x0 == pytest.approx(139, abs=0.5) and hit.x1 == pytest.approx(156, abs=0.5)


def test_words_that_do_not_spell_the_line_get_guessed_separators():
    ln = box_line("x", (0, 0, 300, 30), (Word("foo", (0, 0, 50, 30)), Word("bar", (60, 0, 110, 30)),
                                         Word("中", (120, 0, 150, 30)), Word("文", (150, 0, 180, 30))))
    runs = word_runs(ln, line_frame(ln, tf()), tf())
    assert "".join(r.text for r in runs) == "foo bar中文"


def test_line_without_words_spans_its_polygon():
    ln = box_line("whole line here", (50, 100, 350, 130))
    with pdf_of([ln]) as doc:
        (hit,) = doc[0].search_for("whole line here")
        assert (hit.x0, hit.y0, hit.x1, hit.y1) == pytest.approx((50, 100, 350, 130), abs=0.5)


@pytest.mark.parametrize("degrees", [0, 12, 30, -20, 90, 180])
def test_rotated_lines_follow_their_polygon(degrees):
    ln = rotated_line("rotated text", (300, 200), 240, 30, degrees)
    with pdf_of([ln]) as doc:
        page = doc[0]
        assert page.get_text().strip() == "rotated text"
        (line,) = [ln for b in page.get_text("dict")["blocks"] for ln in b["lines"]]
        a = math.radians(degrees)
        assert line["dir"] == pytest.approx((math.cos(a), -math.sin(a)), abs=1e-3)
        (quad,) = page.search_for("rotated text", quads=True)
        expected = [pymupdf.Point(*p) for p in ln.poly]  # tl, tr, br, bl
        for got, want in zip([quad.ul, quad.ur, quad.lr, quad.ll], expected):
            assert abs(got - want) < 1.0


def test_skewed_polygon_shears_the_text():
    ln = Line("skewed", 0.9, ((110, 50), (310, 50), (300, 80), (100, 80)))
    stream = text_layer(Page(0, W, H, (ln,)), tf()).decode()
    tm = next(line for line in stream.splitlines() if line.endswith("Tm")).split()
    assert (float(tm[0]), float(tm[1])) == pytest.approx((1, 0))
    assert float(tm[2]) == pytest.approx(10 / 30, abs=1e-3)  # up follows the slanted side
    with pdf_of([ln]) as doc:
        assert doc[0].get_text().strip() == "skewed"


def test_tall_narrow_box_is_read_as_vertical_text():
    # PaddleX gives an upright box for text printed down the margin
    ln = Line("82092117", 0.9, ((329, 167), (356, 168), (354, 279), (326, 279)),
              (Word("82092117", (329, 170, 356, 275)),))
    with pdf_of([ln]) as doc:
        page = doc[0]
        assert page.get_text().strip() == "82092117"
        (line,) = [ln for b in page.get_text("dict")["blocks"] for ln in b["lines"]]
        assert line["dir"] == pytest.approx((0, 1), abs=0.05)  # runs down the page
        (hit,) = page.search_for("82092117")
        assert hit.y1 - hit.y0 > 90 and hit.x1 - hit.x0 < 35


def test_text_is_invisible_and_an_empty_page_has_no_stream():
    assert text_layer(Page(0, W, H, ()), tf()) == b""
    assert text_layer(Page(0, W, H, (box_line("  ", (0, 0, 10, 10)),)), tf()) == b""
    stream = text_layer(Page(0, W, H, (box_line("hi", (0, 0, 50, 20)),)), tf()).decode()
    assert stream.startswith("BT\n3 Tr\n") and stream.endswith("ET\n")
    with pdf_of([box_line("hi there", (10, 10, 300, 60))]) as doc:
        pix = doc[0].get_pixmap()
        assert set(pix.samples) == {255}


def _texts(lines: list[Line]) -> list[str]:
    return [ln.text for ln in reading_order(lines)]


def test_reading_order_same_row_left_to_right():
    # PaddleX listed the right-hand line first because its top is 10 px higher
    lines = [box_line("right", (1960, 145, 2181, 190)), box_line("left", (262, 156, 573, 197)),
             box_line("below", (1068, 298, 1346, 357))]
    assert _texts(lines) == ["left", "right", "below"]


def test_reading_order_columns_top_to_bottom_then_left_to_right():
    title = box_line("title", (100, 20, 1100, 60))
    left = [box_line(f"L{i}", (100, 100 + 40 * i, 560, 130 + 40 * i)) for i in range(5)]
    right = [box_line(f"R{i}", (640, 100 + 40 * i, 1100, 130 + 40 * i)) for i in range(5)]
    footer = box_line("footer", (100, 400, 1100, 430))
    shuffled = [right[2], footer, left[4], title, *right[:2], *left[:4], *right[3:]]
    assert _texts(shuffled) == ["title", *[f"L{i}" for i in range(5)], *[f"R{i}" for i in range(5)], "footer"]


def test_reading_order_form_rows_stay_rows():
    # label / value pairs: short fields with a wide gap are rows, not columns
    rows = []
    for i in range(4):
        rows += [box_line(f"label{i}", (100, 100 + 40 * i, 200, 125 + 40 * i)),
                 box_line(f"value{i}", (600, 100 + 40 * i, 700, 125 + 40 * i))]
    assert _texts(list(reversed(rows))) == [ln.text for ln in rows]


def test_font_program_and_cmap():
    ttf = TTFont(io.BytesIO(font.ttf_bytes()))
    assert ttf.getGlyphOrder() == [".notdef", "blank"]
    assert ttf["hmtx"]["blank"] == (font.GLYPH_ADVANCE, 0)
    assert font.ttf_bytes() is font.ttf_bytes()  # generated once per process
    cmap = font.to_unicode_cmap().decode()
    assert "<4E00> <4EFF> <4E00>" in cmap and "<D800>" not in cmap
    assert all(int(n) <= 100 for n in [ln.split()[0] for ln in cmap.splitlines() if ln.endswith("beginbfrange")])
    assert len(font.cid_to_gid_map()) == 2 * 65536


def test_non_bmp_characters_become_replacement_characters():
    assert font.encode_text("A中") == "0041" + "4E2D"
    assert font.encode_text("x\U0001F600") == "0078FFFD"
    with pdf_of([box_line("smile \U0001F600 ok", (10, 10, 300, 40))]) as doc:
        assert doc[0].get_text().strip() == "smile \ufffd ok"


def test_one_font_object_per_document():
    with pdf_of([box_line("one", (10, 10, 100, 40))]) as doc:
        fonts = doc.get_page_fonts(0)
        assert [(f[3], f[2], f[5]) for f in fonts] == [("GlyphLessFont", "Type0", "Identity-H")]


def test_page_order_natural_with_prefixes_first_and_stable():
    names = ["p10.jpg", "p2.jpg", "p1.jpg", "P1.5.jpg", "scan.png", "cover.jpg", "Cover2.jpg", "back.jpg", "a.jpg"]
    assert page_order(names) == ["a.jpg", "back.jpg", "cover.jpg", "Cover2.jpg", "p1.jpg", "P1.5.jpg",
                                 "p2.jpg", "p10.jpg", "scan.png"]
    assert page_order(names, ["cover", "back"]) == ["cover.jpg", "Cover2.jpg", "back.jpg", "a.jpg", "p1.jpg",
                                                    "P1.5.jpg", "p2.jpg", "p10.jpg", "scan.png"]
    assert page_order(["b.JPG", "B.jpg", "a.png"]) == ["a.png", "b.JPG", "B.jpg"]  # ties keep input order
    assert page_order(["B.jpg", "b.JPG"]) == ["B.jpg", "b.JPG"]
