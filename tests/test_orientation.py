"""Pages fed sideways or upside down: classified, read upright, boxes kept on the stored image.

Unit tests of the geometry (a box mapped back lands on the same pixels of the stored
image), the classifier's label direction on real corpus pages turned by this test,
and one real run of `ocr-inbox ocr` and `ocr-inbox pdf` on turned corpus pages.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image

from conftest import CORPUS, char_f1, ground_truth, run_cli
from ocr_inbox import config
from ocr_inbox.ocr import models, orientation
from ocr_inbox.ocr.results import Line, Page, Word
from ocr_inbox.outbox import document

ROTATIONS = (0, 90, 180, 270)
#: a portrait page without a DPI and a landscape one with 200 dpi
TURNED_PAGES = ("funsd/82092117.png", "tesseract_test/phototest.tif")


def _pixels_box(a: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(a)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


@pytest.mark.parametrize("rotation", ROTATIONS)
def test_a_box_read_upright_lands_on_the_same_pixels_of_the_stored_image(rotation: int) -> None:
    upright = np.zeros((60, 100), np.uint8)  # 100 wide, 60 high
    upright[10:20, 30:70] = 1  # the "line": x 30-70, y 10-20
    # the stored image is the upright one turned back; the engine turns it by `rotation`
    stored = orientation.rotate(upright, (360 - rotation) % 360)
    assert np.array_equal(orientation.rotate(stored, rotation), upright)
    line = Line("text", 0.9, ((30, 10), (70, 10), (70, 20), (30, 20)), (Word("text", (30, 10, 70, 20)),))
    (back,) = orientation.to_stored([line], rotation, stored.shape[1], stored.shape[0])
    assert back.words[0].box == _pixels_box(stored)
    xs, ys = [p[0] for p in back.poly], [p[1] for p in back.poly]
    assert (min(xs), min(ys), max(xs), max(ys)) == _pixels_box(stored)
    # the first corner is still the text's top-left: the pixel beside it inside the box is ink
    x0, y0 = back.poly[0]
    inside = (int(x0) - (1 if x0 == max(xs) else 0), int(y0) - (1 if y0 == max(ys) else 0))
    assert stored[inside[1], inside[0]] == 1
    # and the PDF's upright page gets the upright coordinates back
    page = Page(0, stored.shape[1], stored.shape[0], (back,), (200.0, 100.0), rotation)
    up = orientation.upright_page(page)
    assert (up.width, up.height, up.rotation) == (100, 60, 0)
    assert up.lines[0].poly == line.poly and up.lines[0].words == line.words
    assert up.dpi == ((200.0, 100.0) if rotation % 180 == 0 else (100.0, 200.0))


def test_the_json_says_the_rotation_and_an_upright_page_is_unchanged(tmp_path: Path) -> None:
    line = Line("a", 0.9, ((1, 2), (3, 2), (3, 4), (1, 4)))
    src = document.SourceInfo("a.png", 1, 2, "0" * 64)
    pages = (Page(0, 10, 20, (line,), None, 90), Page(1, 10, 20, (line,)))
    document.write(tmp_path / "a.json", document.Document(src, {}, pages, 5))
    raw = json.loads((tmp_path / "a.json").read_text())
    assert raw["schema"] == 4
    assert raw["pages"][0]["rotation"] == 90 and "rotation" not in raw["pages"][1]
    assert document.read(tmp_path / "a.json").pages == pages


def test_the_setting_decides_whether_the_classifier_is_needed() -> None:
    on = config.OcrSettings()
    assert on.orientation and "orient" in on.models_needed()[0][1]
    off = config.OcrSettings(orientation=False)
    assert off.models_needed()[0] == ("ppocrv6-tiny", ("det", "rec"))


@pytest.mark.corpus
def test_the_classifier_says_how_to_turn_real_pages_upright(models_dir: Path) -> None:
    clf = orientation.PageOrientation(models.orientation_model(models_dir))
    for rel in (*TURNED_PAGES, "xfund_zh/zh_val_0.jpg", "ocrmypdf_linn/linn.png"):
        with Image.open(CORPUS / rel) as im:
            page = np.asarray(im.convert("RGB"))[:, :, ::-1].copy()
        for turned_by in ROTATIONS:  # clockwise, as a scanner would feed it
            upright, rotation = clf.upright(orientation.rotate(page, turned_by))
            assert rotation == (360 - turned_by) % 360, (rel, turned_by)
            assert np.array_equal(upright, page)


def _turned_inbox(inbox: Path) -> None:
    for rel in TURNED_PAGES:
        with Image.open(CORPUS / rel) as im:
            dpi = im.info.get("dpi")
            for turned_by in ROTATIONS:
                # PIL's ROTATE_n turns counter-clockwise
                out = im if turned_by == 0 else im.transpose(getattr(Image.Transpose, f"ROTATE_{360 - turned_by}"))
                dest = inbox / "turned" / f"{Path(rel).stem}_cw{turned_by}.png"
                dest.parent.mkdir(parents=True, exist_ok=True)
                out.save(dest, dpi=dpi) if dpi else out.save(dest)


def _centre(poly: list[list[float]]) -> tuple[float, float]:
    return (sum(p[0] for p in poly) / 4, sum(p[1] for p in poly) / 4)


@pytest.mark.slow
@pytest.mark.corpus
def test_turned_pages_read_like_upright_ones_in_the_json_and_the_folder_pdf(tmp_path: Path, models_dir: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    _turned_inbox(inbox)
    res = run_cli("ocr", inbox, outbox, "--no-progress", state_dir=tmp_path / "state", models=models_dir)
    assert res.returncode == 0, res.stderr

    for rel in TURNED_PAGES:
        stem = Path(rel).stem
        docs = {r: json.loads((outbox / "turned" / f"{stem}_cw{r}.png.json").read_text()) for r in ROTATIONS}
        base = docs[0]["pages"][0]
        assert "rotation" not in base
        f1_upright = char_f1(ground_truth(rel), "\n".join(ln["text"] for ln in base["lines"]))
        by_text = {ln["text"]: _centre(ln["poly"]) for ln in base["lines"]}
        for turned_by in (90, 180, 270):
            page = docs[turned_by]["pages"][0]
            assert page["rotation"] == (360 - turned_by) % 360
            with Image.open(inbox / "turned" / f"{stem}_cw{turned_by}.png") as im:
                assert (page["width"], page["height"]) == im.size  # the stored image's space
            text = "\n".join(ln["text"] for ln in page["lines"])
            assert char_f1(ground_truth(rel), text) >= f1_upright - 0.01, (rel, turned_by)
            # every box is the stored image's: turned upright it lands where the upright page's is
            up = orientation.point_mapper(page["rotation"], page["width"], page["height"], inverse=False)
            matched = 0
            for ln in page["lines"]:
                assert all(0 <= x <= page["width"] and 0 <= y <= page["height"] for x, y in ln["poly"])
                for w in ln.get("words", ()):
                    x0, y0, x1, y1 = w["box"]
                    assert 0 <= x0 <= x1 <= page["width"] and 0 <= y0 <= y1 <= page["height"]
                if ln["text"] in by_text:
                    cx, cy = up(_centre(ln["poly"]))
                    bx, by = by_text[ln["text"]]
                    assert abs(cx - bx) <= 3 and abs(cy - by) <= 3, (rel, turned_by, ln["text"])
                    matched += 1
            assert matched >= len(base["lines"]) * 0.8

    pdf = tmp_path / "turned.pdf"
    res = run_cli("pdf", inbox / "turned", outbox / "turned", pdf, state_dir=tmp_path / "state", models=models_dir)
    assert res.returncode == 0, res.stderr
    with pymupdf.open(pdf) as doc:
        assert doc.page_count == 8
        for pno, page in enumerate(doc):
            rel = TURNED_PAGES[0] if pno < 4 else TURNED_PAGES[1]  # files in name order
            with Image.open(CORPUS / rel) as im:
                portrait = im.height > im.width
            rect = page.rect
            assert (rect.height > rect.width) == portrait, pno
            lines = [ln for b in page.get_text("dict")["blocks"] for ln in b.get("lines", ())]
            # text runs left to right (the FUNSD form has a few truly slanted or vertical lines)
            across = [ln for ln in lines if abs(ln["dir"][0] - 1) < 0.01 and abs(ln["dir"][1]) < 0.02]
            assert lines and len(across) >= 0.9 * len(lines), pno
            words = page.get_text("words")
            grown = rect + (-1, -1, 1, 1)
            assert words and all(grown.contains(pymupdf.Rect(w[:4])) for w in words), pno
            # the text lies on the words: a word sits at the same place on every turn of a page
            if pno % 4:
                upright_words = doc[pno - pno % 4].get_text("words")
                counts = collections.Counter(w[4] for w in upright_words)
                first = {w[4]: (w[0] / rect.width, w[1] / rect.height) for w in upright_words if counts[w[4]] == 1}
                same = [(w, first[w[4]]) for w in words if w[4] in first]
                assert len(same) >= len(first) * 0.5
                close = [1 for w, (fx, fy) in same if abs(w[0] / rect.width - fx) < 0.01 and abs(w[1] / rect.height - fy) < 0.01]
                assert len(close) >= len(same) * 0.9, pno
        # search hits land on the word in the picture's upright place, on every turn of phototest
        hits = [doc[p].search_for("quick") for p in range(4, 8)]
        assert all(hits) and max(h[0].y0 for h in hits) - min(h[0].y0 for h in hits) < 3
