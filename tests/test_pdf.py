"""The searchable folder PDF, as users see it: text, search, pixels, order, failures.

Real pages come from the ``corpus_ocr`` fixture (tests/conftest.py): corpus
images OCR'd by the real engine.
"""

from __future__ import annotations

import collections
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image, ImageOps, JpegImagePlugin
from structlog.testing import capture_logs

import ocr_inbox
from ocr_inbox.commands import pdf as pdf_command
from ocr_inbox.config import DEFAULT_IGNORE
from ocr_inbox.ocr.images import Limits as image_limits
from ocr_inbox.ocr.results import Line, Page, Word
from ocr_inbox.outbox import document, names, pdf
from ocr_inbox.outbox.document import Document, SourceInfo
from ocr_inbox.outbox.textlayer import reading_order
from ocr_inbox.support import atomic
from ocr_inbox.support.errors import BadArguments, OutputError

#: the folder command as the CLI runs it: with the configured (here: default) ignore patterns
build_folder_pdf = functools.partial(pdf_command.build_folder_pdf, ignore=DEFAULT_IGNORE)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PAGES = ("tesseract_test/phototest.tif", "xfund_zh/zh_val_0.jpg", "funsd/82092117.png")


# --- helpers ------------------------------------------------------------------


def squash(text: str) -> str:
    return "".join(text.split())


def upright_line(text: str, box: tuple[float, float, float, float], words: bool = True) -> Line:
    """A line with one word box per space-separated word, spread evenly over ``box``."""
    x0, y0, x1, y1 = box
    poly = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
    if not words:
        return Line(text, 0.99, poly)
    parts = text.split()
    step = (x1 - x0) / len(parts)
    ws = tuple(Word(p, (x0 + i * step, y0, x0 + (i + 0.8) * step, y1)) for i, p in enumerate(parts))
    return Line(text, 0.99, poly, ws)


def write_json(json_dir: Path, image: Path, pages: list[tuple[int, int, tuple[Line, ...]]]) -> Path:
    """The JSON contract file for ``image`` with these (width, height, lines) pages."""
    doc = Document(
        source=SourceInfo(image.name, image.stat().st_size, image.stat().st_mtime_ns, ""),
        engine={"profile": "test"},
        pages=tuple(Page(i, w, h, lines) for i, (w, h, lines) in enumerate(pages)),
        elapsed_ms=0,
    )
    dest = names.json_path_for(json_dir, image.name)
    document.write(dest, doc)
    return dest


def make_page(folder: Path, json_dir: Path | None, name: str, text: str | None = None, **save: object) -> Path:
    """A 200x100 white page with a dark bar, and (with ``text``) its JSON."""
    im = Image.new("RGB", (200, 100), "white")
    im.paste((20, 20, 20), (10, 10, 190, 30))
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **save)
    if json_dir is not None and text is not None:
        write_json(json_dir, path, [(200, 100, (upright_line(text, (10, 10, 190, 30)),))])
    return path


def toc_titles(pdf_path: Path) -> list[str]:
    with pymupdf.open(pdf_path) as doc:
        return [title for _lvl, title, _page in doc.get_toc()]


def page_texts(pdf_path: Path) -> list[str]:
    with pymupdf.open(pdf_path) as doc:
        return [p.get_text() for p in doc]


def iou(a: pymupdf.Rect, b: pymupdf.Rect) -> float:
    inter = pymupdf.Rect(a) & b
    if inter.is_empty:
        return 0.0
    ia = inter.width * inter.height
    return ia / (a.width * a.height + b.width * b.height - ia)


def px_to_page(page: pymupdf.Page, jpage: Page, box: tuple[float, float, float, float]) -> pymupdf.Rect:
    """A pixel box of the JSON page in MuPDF's page space (top-left origin, points)."""
    sx, sy = page.rect.width / jpage.width, page.rect.height / jpage.height
    return pymupdf.Rect(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def drop_text_layer(doc: pymupdf.Document) -> None:
    """Keep only each page's first content stream (the image drawing)."""
    for pno in range(doc.page_count):
        xref = doc.page_xref(pno)
        kind, value = doc.xref_get_key(xref, "Contents")
        assert kind == "array"
        first = value.strip("[]").split()[:3]
        doc.xref_set_key(xref, "Contents", "[" + " ".join(first) + "]")


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(images, json, out.pdf) paths under tmp_path."""
    images, jsons = tmp_path / "My Scans", tmp_path / "json"
    images.mkdir()
    jsons.mkdir()
    return images, jsons, tmp_path / "out" / "scans.pdf"


# --- real corpus pages, real engine JSON -------------------------------------


@pytest.fixture(scope="session")
def corpus_pdfs(corpus_ocr: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder PDF per corpus set (each folder holds one chosen page)."""
    inbox, outbox = corpus_ocr
    out = tmp_path_factory.mktemp("corpus_pdfs")
    pdfs = {}
    for rel in PAGES:
        subset = rel.split("/")[0]
        report = build_folder_pdf(inbox / subset, outbox / subset, out / f"{subset}.pdf")
        assert report.pages == 1 and not report.image_only and not report.left_out
        pdfs[rel] = report.path
    return pdfs


def json_page(corpus_ocr: tuple[Path, Path], rel: str) -> Page:
    return document.read(corpus_ocr[1] / (rel + ".json")).pages[0]


@pytest.mark.parametrize("rel", PAGES)
def test_pymupdf_extracts_the_json_text_in_reading_order(corpus_pdfs, corpus_ocr, rel):
    jpage = json_page(corpus_ocr, rel)
    with pymupdf.open(corpus_pdfs[rel]) as doc:
        extracted = doc[0].get_text()
    expected = "".join(ln.text for ln in reading_order(jpage.lines))
    assert squash(extracted) == squash(expected)


@pytest.mark.skipif(not shutil.which("pdftotext"), reason="poppler's pdftotext is not installed")
@pytest.mark.parametrize("rel", PAGES)
def test_pdftotext_extracts_the_json_text(corpus_pdfs, corpus_ocr, rel):
    jpage = json_page(corpus_ocr, rel)
    res = subprocess.run(["pdftotext", "-enc", "UTF-8", str(corpus_pdfs[rel]), "-"], check=False, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # poppler orders by its own layout analysis: compare the characters, not their order
    assert collections.Counter(squash(res.stdout)) == collections.Counter(squash(jpage.text))


@pytest.mark.parametrize(
    ("rel", "phrases"),
    [
        ("tesseract_test/phototest.tif", ["quick brown dog jumped over the", "of file format"]),
        ("xfund_zh/zh_val_0.jpg", ["纾困申请表", "仅限业主自住物业", "市政府隐私声明"]),
        ("funsd/82092117.png", ["Attorney General", "Betty D. Montgomery", "George Baroody"]),
    ],
)
def test_text_contains_ground_truth_phrases(corpus_pdfs, rel, phrases):
    gt = (CORPUS / rel).with_suffix(".gt.txt").read_text(encoding="utf-8")
    text = page_texts(corpus_pdfs[rel])[0]
    for phrase in phrases:
        assert squash(phrase) in squash(gt)  # the phrase is real ground truth
        assert phrase in text


@pytest.mark.parametrize(
    ("rel", "needle"),
    [("xfund_zh/zh_val_0.jpg", "纾困申请表"), ("xfund_zh/zh_val_0.jpg", "隐私声明"),
     ("tesseract_test/phototest.tif", "jumped"), ("funsd/82092117.png", "Baroody")],
)
def test_search_hits_cover_the_json_box(corpus_pdfs, corpus_ocr, rel, needle):
    jpage = json_page(corpus_ocr, rel)
    with pymupdf.open(corpus_pdfs[rel]) as doc:
        page = doc[0]
        hits = page.search_for(needle)
        assert hits, f"{needle!r} not found"
        # the JSON boxes holding the needle: a word box, else the line box for CJK runs
        boxes = []
        for ln in jpage.lines:
            if needle not in ln.text:
                continue
            chars = [w for w in ln.words if w.text.strip() and w.text.strip() in needle]
            words = [w.box for w in ln.words if needle in w.text] or [
                (min(w.box[0] for w in chars), min(w.box[1] for w in chars),
                 max(w.box[2] for w in chars), max(w.box[3] for w in chars))
            ]
            boxes += [px_to_page(page, jpage, b) for b in words]
        assert len(boxes) == len(hits)
        for hit in hits:
            assert max(iou(hit, box) for box in boxes) > 0.6


@pytest.mark.parametrize("rel", PAGES)
def test_text_layer_changes_no_pixel(corpus_pdfs, rel):
    with pymupdf.open(corpus_pdfs[rel]) as doc:
        assert doc[0].get_text().strip()
        with_text = doc[0].get_pixmap(dpi=100).samples
        drop_text_layer(doc)
        assert not doc[0].get_text().strip()
        assert doc[0].get_pixmap(dpi=100).samples == with_text


def test_real_pages_are_checked_by_qpdf_and_fonts_embedded(corpus_pdfs):
    qpdf, pdffonts = shutil.which("qpdf"), shutil.which("pdffonts")
    if not qpdf or not pdffonts:
        pytest.skip("qpdf or poppler's pdffonts is not installed")
    for path in corpus_pdfs.values():
        res = subprocess.run([qpdf, "--check", str(path)], check=False, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "No syntax or stream encoding errors" in res.stdout
        res = subprocess.run([pdffonts, str(path)], check=False, capture_output=True, text=True)
        rows = res.stdout.splitlines()[2:]
        assert rows, "the text layer has no font"
        for row in rows:  # name type encoding emb sub uni object ID
            assert row.split()[-5] == "yes", row


def test_real_page_sizes_metadata_and_jpeg_passthrough(corpus_pdfs):
    with pymupdf.open(corpus_pdfs["xfund_zh/zh_val_0.jpg"]) as doc:
        # 2480x3508 px at 300 dpi: A4
        assert doc[0].rect.width == pytest.approx(2480 * 72 / 300, abs=0.01)
        assert doc[0].rect.height == pytest.approx(3508 * 72 / 300, abs=0.01)
        assert doc.metadata["title"] == "xfund_zh"
        assert doc.metadata["producer"] == f"ocr-inbox {ocr_inbox.__version__}"
        assert doc.get_toc() == [[1, "zh_val_0.jpg", 1]]
        (xref,) = [img[0] for img in doc.get_page_images(0)]
        assert doc.xref_get_key(xref, "Filter") == ("name", "/DCTDecode")
        assert doc.xref_stream_raw(xref) == (CORPUS / "xfund_zh/zh_val_0.jpg").read_bytes()
    with pymupdf.open(corpus_pdfs["tesseract_test/phototest.tif"]) as doc:
        assert doc[0].rect.width == pytest.approx(640 * 72 / 200, abs=0.01)  # the TIFF says 200 dpi
        (xref,) = [img[0] for img in doc.get_page_images(0)]
        assert doc.xref_get_key(xref, "BitsPerComponent") == ("int", "1")  # bilevel stays 1-bit


# --- synthetic folders: order, failures, chunks, images ------------------------


def test_pages_in_natural_order_with_prefixes_first(folder):
    images, jsons, out = folder
    for name in ["p10.jpg", "p2.png", "P1.jpg", "cover.webp", "back.bmp", "index.tiff", ".hidden.jpg"]:
        make_page(images, jsons, name, text=f"page {name}")
    (images / "notes.txt").write_text("not an image")
    (images / "sub.jpg").mkdir()  # a folder is no image
    report = build_folder_pdf(images, jsons, out, first_prefixes=["cover", "index"])
    titles = ["cover.webp", "index.tiff", "back.bmp", "P1.jpg", "p2.png", "p10.jpg"]
    assert toc_titles(out) == titles
    assert report.pages == 6
    assert [squash(t) for t in page_texts(out)] == [squash(f"page {t}") for t in titles]


def test_missing_and_bad_json_give_image_only_pages(folder):
    images, jsons, out = folder
    make_page(images, jsons, "a.jpg", text="alpha text")
    make_page(images, None, "b.jpg")
    make_page(images, None, "c.jpg")
    (jsons / "c.jpg.json").write_text("{not json", encoding="utf-8")
    d = make_page(images, None, "d.png")
    write_json(jsons, d, [(100, 50, ())])  # the JSON is of another image size
    with capture_logs() as logs:
        report = build_folder_pdf(images, jsons, out)
    assert report.pages == 4
    assert {(i.image, i.reason) for i in report.image_only} == {
        ("b.jpg", "json_missing"), ("c.jpg", "json_unreadable"), ("d.png", "json_size_mismatch")}
    assert not report.left_out
    assert [squash(t) for t in page_texts(out)] == ["alphatext", "", "", ""]
    warned = {(e["image"], e["reason"]) for e in logs if e["event"] == "pdf_page_without_text"}
    assert warned == {(i.image, i.reason) for i in report.image_only}


def test_undecodable_and_oversized_images_are_left_out_and_reported(folder):
    images, jsons, out = folder
    make_page(images, jsons, "1.jpg", text="good page")
    (images / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    truncated = make_page(images, None, "3.jpg").read_bytes()
    (images / "3.jpg").write_bytes(truncated[: len(truncated) // 2])
    Image.new("L", (300, 300), 255).save(images / "4.png")  # 90,000 px > the cap below
    with capture_logs() as logs:
        report = build_folder_pdf(images, jsons, out, limits=image_limits(max_pixels=50_000))
    assert report.pages == 1
    reasons = {i.image: i.reason for i in report.left_out}
    assert reasons == {"2.jpg": "corrupt", "3.jpg": "truncated", "4.png": "too_many_pixels"}
    assert all(i.detail for i in report.left_out)
    assert {e["image"] for e in logs if e["event"] == "pdf_image_left_out"} == set(reasons)
    assert toc_titles(out) == ["1.jpg"]


def test_a_jpeg_its_ocr_decoded_is_embedded_without_decoding_it_again(folder, monkeypatch):
    """The SHA-256 in a JPEG's JSON says OCR decoded these very bytes in full: the build reads
    its header and embeds it. A JPEG without that proof is decoded (1/8 scale) as before."""
    images, jsons, out = folder
    proven = make_page(images, jsons, "1.jpg", text="proven page")
    make_page(images, jsons, "2.jpg", text="other page")  # its JSON records another hash
    json_1 = names.json_path_for(jsons, "1.jpg")
    doc = json.loads(json_1.read_text())
    doc["source"]["sha256"] = hashlib.sha256(proven.read_bytes()).hexdigest()
    json_1.write_text(json.dumps(doc))
    decoded = []
    load = JpegImagePlugin.JpegImageFile.load
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", lambda im: decoded.append(im) or load(im))
    report = build_folder_pdf(images, jsons, out)
    assert report.pages == 2 and not report.image_only and not report.left_out
    assert [squash(t) for t in page_texts(out)] == ["provenpage", "otherpage"]
    assert len(decoded) == 1  # 2.jpg only
    with pymupdf.open(out) as pdf_doc:  # embedded as it is, either way
        assert [pdf_doc.extract_image(pdf_doc[i].get_images()[0][0])["ext"] for i in range(2)] == ["jpeg", "jpeg"]


def test_two_chunk_build_keeps_every_page_and_cleans_up(folder):
    images, jsons, out = folder
    for i in range(1, 6):
        make_page(images, jsons, f"scan{i}.jpg", text=f"text of page {i}")
    report = build_folder_pdf(images, jsons, out, chunk_pages=3)
    assert report.pages == 5
    assert [squash(t) for t in page_texts(out)] == [f"textofpage{i}" for i in range(1, 6)]
    assert toc_titles(out) == [f"scan{i}.jpg" for i in range(1, 6)]
    with pymupdf.open(out) as doc:
        assert doc.metadata["title"] == "My Scans"
        assert doc[4].search_for("page 5")
    assert sorted(p.name for p in out.parent.iterdir()) == ["scans.pdf"]  # no work dir, no temp file
    if shutil.which("qpdf"):
        res = subprocess.run(["qpdf", "--check", str(out)], check=False, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


def _exif_jpeg(path: Path, orientation: int) -> Image.Image:
    """A 90x60 JPEG with four coloured quadrants and an EXIF orientation; returns it as shown."""
    im = Image.new("RGB", (90, 60))
    for (x, y), colour in zip([(0, 0), (45, 0), (0, 30), (45, 30)],
                              [(255, 0, 0), (0, 160, 0), (0, 0, 255), (255, 220, 0)]):
        im.paste(colour, (x, y, x + 45, y + 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", quality=95, exif=exif.tobytes(), dpi=(72, 72))
    with Image.open(path) as saved:
        return ImageOps.exif_transpose(saved).convert("RGB")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_without_reencoding(folder, orientation):
    images, jsons, out = folder
    path = images / "photo.jpg"
    shown = _exif_jpeg(path, orientation)
    # the JSON is in the coordinates of the image as shown (docs/JSON.md)
    write_json(jsons, path, [(shown.width, shown.height, (upright_line("quadrant", (5, 5, 40, 25)),))])
    report = build_folder_pdf(images, jsons, out)
    assert not report.image_only
    with pymupdf.open(out) as doc:
        page = doc[0]
        assert (page.rect.width, page.rect.height) == (shown.width, shown.height)  # 72 dpi: 1 px = 1 pt
        (xref,) = [img[0] for img in doc.get_page_images(0)]
        assert doc.xref_stream_raw(xref) == path.read_bytes()
        pix = page.get_pixmap(dpi=72)
        rendered = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        for x, y in [(10, 10), (shown.width - 10, 10), (10, shown.height - 10), (shown.width - 10, shown.height - 10)]:
            got, want = rendered.getpixel((x, y)), shown.getpixel((x, y))
            assert max(abs(a - b) for a, b in zip(got, want)) < 40, (x, y, got, want)
        (hit,) = page.search_for("quadrant")
        assert iou(hit, pymupdf.Rect(5, 5, 5 + 35 * 0.8, 25)) > 0.6


def test_multipage_tiff_gives_a_page_per_frame(folder):
    images, jsons, out = folder
    frames = [Image.new("L", (120 + 40 * i, 80), 255) for i in range(3)]
    path = images / "book.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:], dpi=(100, 100))
    write_json(jsons, path, [(120 + 40 * i, 80, (upright_line(f"frame {i + 1}", (5, 5, 100, 30)),)) for i in range(2)])
    report = build_folder_pdf(images, jsons, out)
    assert report.pages == 3
    # the JSON has two pages only: the third frame goes in without text, reported
    assert [(i.image, i.frame, i.reason) for i in report.image_only] == [("book.tif", 2, "json_page_missing")]
    assert [squash(t) for t in page_texts(out)] == ["frame1", "frame2", ""]
    assert toc_titles(out) == ["book.tif (1/3)", "book.tif (2/3)", "book.tif (3/3)"]
    with pymupdf.open(out) as doc:
        assert [p.rect.width for p in doc] == pytest.approx([120 * 0.72, 160 * 0.72, 200 * 0.72], abs=0.01)


def test_an_image_without_a_dpi_becomes_a_sheet_sized_page(folder):
    """A scan whose file states no resolution is taken for a sheet: its long side is A4's
    (not 300 dpi, which made a 754 x 1000 letter scan a 2.5 x 3.3 inch page); a small
    picture stays at 72 dpi instead of being blown up; a stated resolution is kept."""
    images, jsons, out = folder
    Image.new("L", (754, 1000), 255).save(images / "a_scan.png")  # no pHYs
    Image.new("L", (3000, 2000), 255).save(images / "b_landscape.png")
    Image.new("L", (300, 200), 255).save(images / "c_small.png")
    Image.new("L", (754, 1000), 255).save(images / "d_stated.png", dpi=(100, 100))
    build_folder_pdf(images, jsons, out)
    a4_long = 297 / 25.4 * 72
    with pymupdf.open(out) as doc:
        sizes = [(p.rect.width, p.rect.height) for p in doc]
    assert sizes[0] == pytest.approx((754 / 1000 * a4_long, a4_long), abs=0.01)  # 8.8 x 11.7 in
    assert sizes[1] == pytest.approx((a4_long, 2000 / 3000 * a4_long), abs=0.01)
    assert sizes[2] == pytest.approx((300, 200), abs=0.01)  # 72 dpi: 1 px = 1 pt
    assert sizes[3] == pytest.approx((754 * 0.72, 1000 * 0.72), abs=0.01)
    assert pdf.assumed_dpi(2480, 3508) == pytest.approx(300, abs=0.1)  # an A4 scan at 300 dpi


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "P", "RGBA", "LA", "I;16"])
@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_lossless_formats_render_pixel_exact(folder, mode, fmt):
    images, jsons, out = folder
    base = Image.radial_gradient("L").resize((64, 48)).convert("RGB")
    base.paste((200, 30, 30), (5, 5, 30, 20))
    sixteen = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype("<u2")
    im = {"1": lambda: base.convert("1"), "P": lambda: base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
          "I;16": lambda: Image.frombytes("I;16", base.size, sixteen.tobytes())}.get(mode, lambda: base.convert(mode))()
    if mode in ("RGBA", "LA"):
        im.putalpha(Image.linear_gradient("L").resize(im.size))
    path = images / f"img.{fmt}"
    try:
        im.save(path, dpi=(72, 72))
    except OSError:
        pytest.skip(f"PIL cannot write {mode} as {fmt}")
    with Image.open(path) as saved:
        stored_mode = saved.mode
        saved.load()
        if stored_mode in ("RGBA", "LA"):
            white = Image.new("RGBA", saved.size, "white")
            expected = Image.alpha_composite(white, saved.convert("RGBA")).convert("RGB")
        elif stored_mode.startswith("I;16"):
            expected = base.convert("L").convert("RGB")  # 16-bit samples v * 257
        else:
            expected = saved.convert("RGB")
    report = build_folder_pdf(images, jsons, out)
    assert [i.reason for i in report.image_only] == ["json_missing"]
    with pymupdf.open(out) as doc:
        pix = doc[0].get_pixmap(dpi=72)
        (xref,) = [img[0] for img in doc.get_page_images(0)]
        if stored_mode == "1":
            assert doc.xref_get_key(xref, "BitsPerComponent") == ("int", "1")
    rendered = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    assert rendered.size == im.size
    diff = max(abs(a - b) for a, b in zip(rendered.tobytes(), expected.tobytes()))
    assert diff <= 2  # alpha compositing rounds differently; everything else is exact


def test_existing_pdf_survives_a_failed_build_and_is_replaced_by_a_good_one(folder, monkeypatch):
    images, jsons, out = folder
    make_page(images, jsons, "a.jpg", text="first version")
    build_folder_pdf(images, jsons, out)
    before = out.read_bytes()

    def broken_merge(*args, **kwargs):
        Path(args[1]).write_bytes(b"%PDF-1.7 half written")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pdf, "_merge", broken_merge)
    with pytest.raises(OutputError, match="No space left"):
        build_folder_pdf(images, jsons, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["scans.pdf"]
    monkeypatch.undo()

    make_page(images, jsons, "a.jpg", text="second version")
    build_folder_pdf(images, jsons, out)
    assert squash(page_texts(out)[0]) == "secondversion"


def test_leftovers_of_a_crashed_build_are_swept(folder):
    images, jsons, out = folder
    make_page(images, jsons, "a.jpg", text="hello")
    out.parent.mkdir()
    work = names.work_dir_for(out)
    work.mkdir()
    (work / "chunk-00000.pdf").write_bytes(b"%PDF stale")
    (work / "junk").mkdir()
    stale_tmp = out.parent / ".ocr-inbox-tmp-999999-123-scans.pdf.part"
    stale_tmp.write_bytes(b"%PDF stale")
    other_tmp = out.parent / ".ocr-inbox-tmp-999999-123-other-scans.pdf.part"  # another output's
    other_tmp.write_bytes(b"keep")
    with capture_logs() as logs:
        build_folder_pdf(images, jsons, out)
    assert sorted(p.name for p in out.parent.iterdir()) == [other_tmp.name, "scans.pdf"]
    assert any(e["event"] == "pdf_leftovers_swept" for e in logs)


def test_a_long_outputs_leftover_temp_is_swept_but_not_its_neighbours(folder):
    images, jsons, _ = folder
    make_page(images, jsons, "a.jpg", text="hello")
    out = folder[2].with_name("L" * 200 + "-one.pdf")
    neighbour = folder[2].with_name("L" * 200 + "-two.pdf")  # same first 64 bytes
    out.parent.mkdir()
    stale_tmp, other_tmp = atomic.temp_path_for(out), atomic.temp_path_for(neighbour)
    stale_tmp.write_bytes(b"%PDF stale")
    other_tmp.write_bytes(b"keep")
    build_folder_pdf(images, jsons, out)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([other_tmp.name, out.name])


def test_startup_sweep_clears_a_killed_builds_work_dir_but_not_a_running_one(tmp_path):
    # What the daemon does at start for the whole outbox: a build killed with -9 left its chunks.
    killed = names.work_dir_for(tmp_path / "vol1" / "vol1.pdf")
    running = names.work_dir_for(tmp_path / "vol2" / "vol2.pdf")
    for work in (killed, running):
        work.mkdir(parents=True)
        (work / "chunk-00000.pdf").write_bytes(b"%PDF half")
    (tmp_path / "vol1" / "vol1.pdf").write_bytes(b"%PDF the published one")
    fd = os.open(running, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert atomic.sweep_temp_files(tmp_path) == 1
    finally:
        os.close(fd)
    assert not killed.exists()
    assert (running / "chunk-00000.pdf").exists()
    assert (tmp_path / "vol1" / "vol1.pdf").read_bytes() == b"%PDF the published one"


def test_work_dir_name_stays_short_and_one_per_output(tmp_path):
    long_a, long_b = tmp_path / ("A" * 250 + ".pdf"), tmp_path / ("A" * 250 + "B.pdf")
    assert all(len(os.fsencode(names.work_dir_for(p).name)) < 120 for p in (long_a, long_b))
    assert names.work_dir_for(long_a) != names.work_dir_for(long_b)  # the work dir is the build's lock


def test_given_work_dir_holds_the_chunks_and_is_left_clean(folder, tmp_path):
    images, jsons, out = folder
    for i in range(3):
        make_page(images, jsons, f"{i}.png", text=f"page {i}")
    work_parent = tmp_path / "scratch"
    work_parent.mkdir()
    (work_parent / "users-file").write_text("mine")
    report = build_folder_pdf(images, jsons, out, chunk_pages=1, work_dir=work_parent)
    assert report.pages == 3
    assert sorted(p.name for p in work_parent.iterdir()) == ["users-file"]


def test_a_second_build_of_the_same_output_fails_fast(folder):
    images, jsons, out = folder
    make_page(images, jsons, "a.jpg", text="hello")
    work = names.work_dir_for(out)
    work.mkdir(parents=True)
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another build"):
            build_folder_pdf(images, jsons, out)
    finally:
        os.close(fd)
    assert not out.exists()


def test_argument_errors(folder, tmp_path):
    images, jsons, out = folder
    with pytest.raises(BadArguments, match="image folder not found"):
        build_folder_pdf(tmp_path / "nope", jsons, out)
    with pytest.raises(BadArguments, match="JSON folder not found"):
        build_folder_pdf(images, tmp_path / "nope", out)
    (images / ".hidden.jpg").write_bytes(b"x")
    (images / "readme.txt").write_text("x")
    with pytest.raises(BadArguments, match="no images"):
        build_folder_pdf(images, jsons, out)
    (images / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(BadArguments, match="no decodable images"):
        build_folder_pdf(images, jsons, out)
    make_page(images, jsons, "good.jpg", text="ok")
    with pytest.raises(BadArguments, match="is a directory"):
        build_folder_pdf(images, jsons, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        build_folder_pdf(images, jsons, blocker / "out.pdf")
    with pytest.raises(BadArguments, match="chunk_pages"):
        build_folder_pdf(images, jsons, out, chunk_pages=0)
    assert not out.exists()


def test_report_is_json_friendly(folder):
    images, jsons, out = folder
    make_page(images, jsons, "a.jpg", text="hello")
    make_page(images, None, "b.jpg")
    report = build_folder_pdf(images, jsons, out)
    assert report.path == out and report.pages == 2
    issue = report.image_only[0]
    json.dumps({"image": issue.image, "reason": issue.reason, "frame": issue.frame, "detail": issue.detail})
    with pytest.raises(AttributeError):
        report.pages = 3  # type: ignore[misc]
