"""PDFs dropped into the inbox: scanned pages OCR'd, born-digital pages keep their text,
hostile PDFs refused with a reason.

The PDFs are made here with PyMuPDF from corpus pages (a scanner's PDF: one picture a
page), with insert_text (a born-digital one), and broken on purpose (encrypted,
truncated, a JavaScript open action, 10,000 pages).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pymupdf
import pytest
from conftest import CORPUS, char_f1, ground_truth, run_cli
from daemon_harness import Daemon
from PIL import Image

from ocr_inbox.ocr import images
from ocr_inbox.support.errors import BadImage
from ocr_inbox.support.reasons import ADVICE, advice

#: pages of the scanned PDF, in order: (corpus page, its resolution)
SCANNED = (("tesseract_test/phototest.tif", 200), ("funsd/82092117.png", 100))
BORN_DIGITAL_TEXT = ("Quarterly report on inbox throughput", "Second line of born digital text")


def scanned_pdf() -> bytes:
    """What a scanner writes: each page one picture, no text."""
    with pymupdf.open() as doc:
        for rel, dpi in SCANNED:
            with Image.open(CORPUS / rel) as im:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, "PNG")
                page = doc.new_page(width=im.width * 72 / dpi, height=im.height * 72 / dpi)
            page.insert_image(page.rect, stream=buf.getvalue())
        return bytes(doc.tobytes(garbage=3, deflate=True))


def born_digital_pdf() -> bytes:
    with pymupdf.open() as doc:
        page = doc.new_page()  # A4-ish (595 x 842 pt)
        for i, text in enumerate(BORN_DIGITAL_TEXT):
            page.insert_text((72, 100 + 30 * i), text, fontsize=14)
        return bytes(doc.tobytes())


def encrypted_pdf() -> bytes:
    with pymupdf.open(stream=born_digital_pdf(), filetype="pdf") as doc:
        return bytes(doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner"))


def javascript_pdf() -> bytes:
    with pymupdf.open(stream=born_digital_pdf(), filetype="pdf") as doc:
        js = doc.get_new_xref()
        doc.update_object(js, "<</S/JavaScript/JS(app.alert\\('ran'\\); this.submitForm\\('http://example.invalid'\\);)>>")
        doc.xref_set_key(doc.pdf_catalog(), "OpenAction", f"{js} 0 R")
        return bytes(doc.tobytes())


def many_pages_pdf(n: int = 10_000) -> bytes:
    with pymupdf.open() as doc:
        for _ in range(n):
            doc.new_page(width=200, height=200)
        return bytes(doc.tobytes())


def truncated_pdf() -> bytes:
    data = scanned_pdf()
    return data[: len(data) // 2]


def _reason(data: bytes, limits: images.Limits = images.Limits()) -> str:
    with pytest.raises(BadImage) as info:
        list(images.pages(data, limits))
    assert info.value.reason in ADVICE
    return info.value.reason


# --- the image module: unit tests, no OCR ---------------------------------------------------


@pytest.mark.corpus
def test_a_scanned_pdf_gives_its_pages_rendered_in_order_at_a_stated_resolution() -> None:
    pages = images.decode(scanned_pdf(), images.Limits())
    assert [p.index for p in pages] == [0, 1] and all(isinstance(p, images.PageImage) for p in pages)
    for p, (rel, dpi) in zip(pages, SCANNED, strict=True):
        assert isinstance(p, images.PageImage) and p.count == 2 and p.dpi is not None
        with Image.open(CORPUS / rel) as im:
            # 300 dpi: the page (its picture at `dpi`) has 300/dpi times the picture's pixels
            assert abs(p.width - im.width * 300 / dpi) <= 1 and abs(p.height - im.height * 300 / dpi) <= 1
        assert p.dpi == pytest.approx((300, 300), abs=0.5)
        assert p.bgr.shape == (p.height, p.width, 3)


def test_a_born_digital_page_keeps_its_own_text_and_is_not_rendered() -> None:
    (page,) = images.decode(born_digital_pdf(), images.Limits())
    assert isinstance(page, images.TextPage)
    assert [ln.text for ln in page.lines] == list(BORN_DIGITAL_TEXT)
    assert page.dpi == pytest.approx((300, 300), abs=0.5)
    assert abs(page.width - 595 * 300 / 72) <= 1 and abs(page.height - 842 * 300 / 72) <= 1
    first = page.lines[0].words[0]
    assert first.text == "Quarterly" and first.box[0] == pytest.approx(72 * 300 / 72, abs=2)
    # the setting to OCR such pages too: it is rendered
    (redo,) = images.decode(born_digital_pdf(), images.Limits(pdf_ocr_pages_with_text=True))
    assert isinstance(redo, images.PageImage) and redo.bgr.shape[:2] == (page.height, page.width)


def test_hostile_pdfs_are_refused_each_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    thick = many_pages_pdf()

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("a page was rendered or read")

    with monkeypatch.context() as m:  # refused by its page count: no page is rendered or read
        m.setattr(pymupdf.Page, "get_pixmap", never)
        m.setattr(pymupdf.Page, "get_text", never)
        assert _reason(thick, images.Limits(max_pages=2000)) == "too_many_pages"
        assert _reason(encrypted_pdf()) == "pdf_encrypted"
        assert _reason(javascript_pdf()) == "pdf_javascript"
    assert _reason(encrypted_pdf()) == "pdf_encrypted"
    assert _reason(javascript_pdf()) == "pdf_javascript"
    assert _reason(b"%PDF-1.7\n" + b"\x00garbage" * 100) == "pdf_broken"
    # a page too large to read at 50 dpi within the pixel limit
    with pymupdf.open() as doc:
        doc.new_page(width=14_400, height=14_400)
        assert _reason(bytes(doc.tobytes()), images.Limits(max_pixels=1_000_000)) == "too_many_pixels"


@pytest.mark.corpus
def test_a_truncated_pdf_is_refused_as_broken() -> None:
    assert _reason(truncated_pdf()) == "pdf_broken"


def test_a_huge_page_is_rendered_within_the_pixel_limit() -> None:
    with pymupdf.open() as doc:
        doc.new_page(width=2000, height=2000)  # 27.8 inches square: 69 M pixels at 300 dpi
        data = bytes(doc.tobytes())
    (page,) = images.decode(data, images.Limits(max_pixels=10_000_000))
    assert isinstance(page, images.PageImage) and page.width * page.height <= 10_000_000
    assert page.dpi is not None and page.dpi[0] < 300


# --- the real command: OCR'd for real -------------------------------------------------------

HOSTILE = {
    "encrypted.pdf": (encrypted_pdf, "pdf_encrypted"),
    "truncated.pdf": (truncated_pdf, "pdf_broken"),
    "script.pdf": (javascript_pdf, "pdf_javascript"),
    "thick.pdf": (many_pages_pdf, "too_many_pages"),
}


def _inbox(inbox: Path, hostile: bool = True) -> None:
    (inbox / "mail").mkdir(parents=True)
    (inbox / "mail" / "scans.pdf").write_bytes(scanned_pdf())
    (inbox / "mail" / "digital.pdf").write_bytes(born_digital_pdf())
    if hostile:
        (inbox / "bad").mkdir()
        for name, (make, _reason) in HOSTILE.items():
            (inbox / "bad" / name).write_bytes(make())


def _check_scanned_json(doc: dict) -> None:
    assert [p["index"] for p in doc["pages"]] == [0, 1]
    for page, (rel, _dpi) in zip(doc["pages"], SCANNED, strict=True):
        assert "source" not in page  # OCR'd
        assert page["dpi"] == pytest.approx([300, 300], abs=0.5)
        text = "\n".join(ln["text"] for ln in page["lines"])
        assert char_f1(ground_truth(rel), text) >= 0.9, rel
        for ln in page["lines"]:
            assert all(-2 <= x <= page["width"] + 2 and -2 <= y <= page["height"] + 2 for x, y in ln["poly"])


def _check_digital_json(doc: dict) -> None:
    (page,) = doc["pages"]
    assert page["source"] == "pdf_text"
    assert [ln["text"] for ln in page["lines"]] == list(BORN_DIGITAL_TEXT)
    assert all(ln["score"] == 1.0 for ln in page["lines"])


def _page_images(doc: pymupdf.Document, i: int) -> list[bytes]:
    return [doc.xref_stream_raw(img[0]) for img in doc.get_page_images(i)]


def _check_searchable_copy(original: bytes, copy: Path, doc_json: dict) -> None:
    """The copy is the original bytes with the text layer appended: pictures untouched, the
    OCR'd words on the right pages."""
    data = copy.read_bytes()
    assert data.startswith(original) and len(data) > len(original)  # an incremental update
    with pymupdf.open(stream=original, filetype="pdf") as before, pymupdf.open(copy) as after:
        assert after.page_count == before.page_count == len(SCANNED)
        for i, (rel, _dpi) in enumerate(SCANNED):
            assert _page_images(after, i) == _page_images(before, i) and _page_images(after, i)
            assert after[i].rect == before[i].rect
            assert before[i].get_text().strip() == ""
            assert char_f1(ground_truth(rel), after[i].get_text()) >= 0.9, rel
        # a search hit lands where OCR saw the word on the rendered page (px * 72 / dpi)
        page = doc_json["pages"][0]
        words = [w for ln in page["lines"] for w in ln.get("words", ()) if w["text"].startswith("quick")]
        sx, sy = (72 / v for v in page["dpi"])
        wants = sorted((w["box"][1] * sy, w["box"][0] * sx, w["box"][3] * sy) for w in words)
        hits = sorted((h.y0, h.x0, h.y1) for h in after[0].search_for("quick"))
        assert wants and len(hits) == len(wants)
        for (hy0, hx0, hy1), (wy0, wx0, wy1) in zip(hits, wants, strict=True):
            assert abs(hx0 - wx0) < 2 and abs(hy0 - wy0) < 3 and abs(hy1 - wy1) < 3, (hits, wants)


@pytest.mark.slow
@pytest.mark.corpus
def test_the_ocr_command_reads_pdfs_and_refuses_hostile_ones_with_reasons(tmp_path: Path, models_dir: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    _inbox(inbox)
    res = run_cli("ocr", inbox, outbox, "--no-progress", "--pdf", state_dir=tmp_path / "state", models=models_dir)
    scans = json.loads((outbox / "mail" / "scans.pdf.json").read_text())
    _check_scanned_json(scans)
    _check_digital_json(json.loads((outbox / "mail" / "digital.pdf.json").read_text()))
    report = json.loads((outbox / ".ocr-inbox" / "failures.json").read_text())
    assert {f["path"]: f["reason"] for f in report["failures"]} == {f"bad/{n}": r for n, (_m, r) in HOSTILE.items()}, res.stderr
    assert report["done"] == 2 and not list((outbox / "bad").glob("*.json"))

    # the searchable copy of the scanned PDF; the born-digital one keeps its own text only
    _check_searchable_copy((inbox / "mail" / "scans.pdf").read_bytes(), outbox / "mail" / "scans.pdf", scans)
    assert (outbox / "mail" / "digital.pdf").read_bytes().startswith((inbox / "mail" / "digital.pdf").read_bytes())
    with pymupdf.open(outbox / "mail" / "digital.pdf") as doc:
        assert doc[0].get_text().split("\n")[:2] == list(BORN_DIGITAL_TEXT)
        assert not [f for f in doc.get_page_fonts(0) if "GlyphLess" in f[3]]
    # the folder's PDF holds every page, in order, with the same text
    with pymupdf.open(outbox / "mail" / "mail.pdf") as doc:
        assert [t for _l, t, _p in doc.get_toc()] == ["digital.pdf", "scans.pdf (1/2)", "scans.pdf (2/2)"]
        assert doc[0].get_text().split("\n")[:2] == list(BORN_DIGITAL_TEXT)
        for i, (rel, _dpi) in enumerate(SCANNED, start=1):
            assert char_f1(ground_truth(rel), doc[i].get_text()) >= 0.9, rel
    assert not list((outbox / "bad").glob("*.pdf"))  # no copy of a refused PDF


@pytest.mark.slow
@pytest.mark.corpus
def test_the_daemon_takes_pdfs_dropped_into_its_inbox(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, "[watch]\nsettle_seconds = 0.5\n[pdf]\nquiet_seconds = 1\n").start()
    d.ready()
    staging = tmp_path / "staging"
    _inbox(staging)
    for folder in ("mail", "bad"):  # dropped whole, as a scanner's share or a copy does
        os.rename(staging / folder, d.inbox / folder)
    copy, folder_pdf = d.outbox / "mail" / "scans.pdf", d.outbox / "mail" / "mail.pdf"
    d.until(lambda: copy.exists() and folder_pdf.exists(), "the searchable copy and the folder's PDF")
    failures = d.until(lambda: f if len(f := d.status()["failures"]) == len(HOSTILE) else None, "the refusals in status")
    assert {f["rel"]: f["reason"] for f in failures} == {f"bad/{n}": r for n, (_m, r) in HOSTILE.items()}
    assert all(f["advice"] == advice(f["reason"]) and f["detail"] for f in failures)  # what to do about each
    scans = json.loads((d.outbox / "mail" / "scans.pdf.json").read_text())
    _check_scanned_json(scans)
    _check_digital_json(json.loads((d.outbox / "mail" / "digital.pdf.json").read_text()))
    _check_searchable_copy((d.inbox / "mail" / "scans.pdf").read_bytes(), copy, scans)
    with pymupdf.open(folder_pdf) as doc:
        assert doc.page_count == 3
    # PDFs are opened in the workers and the PDF child only: MuPDF never loaded in the daemon itself
    assert d.proc is not None
    assert "mupdf" not in Path(f"/proc/{d.proc.pid}/maps").read_text().lower()
    assert d.stop() == 0


# --- the text layer on a PDF's own pages: geometry, no OCR ------------------------------------


def _turned_pdf(rotate: int) -> bytes:
    """A scanner's page shown turned (/Rotate) and cropped: a grey picture, no text."""
    with pymupdf.open() as doc:
        page = doc.new_page(width=600, height=400)
        buf = io.BytesIO()
        Image.new("L", (600, 400), 200).save(buf, "PNG")
        page.insert_image(page.rect, stream=buf.getvalue())
        doc.xref_set_key(page.xref, "CropBox", "[50 20 550 370]")
        doc.xref_set_key(page.xref, "Rotate", str(rotate))
        return bytes(doc.tobytes())


@pytest.mark.parametrize("rotate", (0, 90, 180, 270))
def test_the_text_layer_lands_on_the_words_of_a_turned_and_cropped_pdf_page(tmp_path: Path, rotate: int) -> None:
    from ocr_inbox.commands import pdf as pdf_command
    from ocr_inbox.ocr.results import Line, Page, Word
    from ocr_inbox.outbox import document

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    outbox.mkdir()
    src = inbox / "turned.pdf"
    data = _turned_pdf(rotate)
    src.write_bytes(data)
    (rendered,) = images.decode(data, images.Limits())
    assert isinstance(rendered, images.PageImage) and rendered.dpi is not None
    # what OCR would have read on the rendered page: two words, in its pixels
    box = (0.2 * rendered.width, 0.3 * rendered.height, 0.6 * rendered.width, 0.3 * rendered.height + 60)
    mid = (box[0] + box[2]) / 2
    line = Line("hello world", 0.99, ((box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3])),
                (Word("hello", (box[0], box[1], mid - 20, box[3])), Word("world", (mid + 20, box[1], box[2], box[3]))))
    st = src.stat()
    doc = document.Document(document.SourceInfo("turned.pdf", st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest()),
                            {"profile": "test"}, (Page(0, rendered.width, rendered.height, (line,), rendered.dpi),), 0)
    document.write(outbox / "turned.pdf.json", doc)
    pdf_command.build_folder_pdf(inbox, outbox, outbox / "in.pdf")

    sx, sy = 72 / rendered.dpi[0], 72 / rendered.dpi[1]
    want = pymupdf.Rect(box[0] * sx, box[1] * sy, (mid - 20) * sx, box[3] * sy)
    for path in (outbox / "turned.pdf", outbox / "in.pdf"):
        with pymupdf.open(path) as out:
            page = out[0]
            assert (page.rotation, page.rect) == (rotate, pymupdf.Rect(0, 0, *((350, 500) if rotate % 180 else (500, 350))))
            words = {w[4]: pymupdf.Rect(w[:4]) * page.rotation_matrix for w in page.get_text("words")}  # as shown
            assert set(words) == {"hello", "world"}, path
            got = words["hello"]
            assert abs(got.x0 - want.x0) < 1 and abs(got.x1 - want.x1) < 1, (path, got, want)
            assert abs(got.y0 - want.y0) < 3 and abs(got.y1 - want.y1) < 3, (path, got, want)
            # and reads left to right as shown (MuPDF gives the direction on the page before /Rotate)
            turn = page.rotation_matrix
            turn.e = turn.f = 0
            (text_line,) = [ln for b in page.get_text("dict")["blocks"] for ln in b.get("lines", ())]
            shown_dir = pymupdf.Point(text_line["dir"]) * turn
            assert (shown_dir.x, shown_dir.y) == pytest.approx((1, 0), abs=1e-3), path


@pytest.mark.parametrize("rotate", (0, 90, 180, 270))
def test_a_turned_born_digital_page_gives_its_words_where_the_rendered_page_shows_them(rotate: int) -> None:
    with pymupdf.open(stream=born_digital_pdf(), filetype="pdf") as doc:
        doc[0].set_rotation(rotate)
        data = bytes(doc.tobytes())
    (kept,) = images.decode(data, images.Limits())
    (shown,) = images.decode(data, images.Limits(pdf_ocr_pages_with_text=True))
    assert isinstance(kept, images.TextPage) and isinstance(shown, images.PageImage)
    assert (kept.width, kept.height) == (shown.width, shown.height) and kept.dpi == shown.dpi
    ink = shown.bgr.min(axis=2) < 128
    inside = 0
    for line in kept.lines:
        for w in line.words:
            x0, y0, x1, y1 = (round(v) for v in w.box)
            assert ink[y0:y1, x0:x1].mean() > 0.05, (rotate, w)  # the word's glyphs are in its box
            inside += int(ink[y0:y1, x0:x1].sum())
    assert inside >= 0.95 * ink.sum()  # and no ink is elsewhere
    # the line's polygon starts at the text's top-left as read: poly[0] -> poly[1] runs along it
    (x0, y0), (x1, y1) = kept.lines[0].poly[:2]
    assert {0: x1 > x0, 90: y1 > y0, 180: x1 < x0, 270: y1 < y0}[rotate]


def test_a_pdf_page_ocr_read_turned_shows_upright_with_its_words_on_them(tmp_path: Path) -> None:
    from ocr_inbox.commands import pdf as pdf_command
    from ocr_inbox.ocr import orientation
    from ocr_inbox.ocr.results import Line, Page, Word
    from ocr_inbox.outbox import document

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    outbox.mkdir()
    data = _turned_pdf(0)  # a landscape page whose text runs down it: read turned 90 clockwise
    (inbox / "side.pdf").write_bytes(data)
    (rendered,) = images.decode(data, images.Limits())
    assert isinstance(rendered, images.PageImage) and rendered.dpi is not None
    w, h = rendered.width, rendered.height
    # the line as OCR reads it upright, mapped back onto the page as rendered (the JSON's space)
    up_w, up_h = h, w
    upright = (0.2 * up_w, 0.3 * up_h, 0.6 * up_w, 0.3 * up_h + 60)
    mid = (upright[0] + upright[2]) / 2
    line = Line("hello world", 0.99, ((upright[0], upright[1]), (upright[2], upright[1]), (upright[2], upright[3]), (upright[0], upright[3])),
                (Word("hello", (upright[0], upright[1], mid - 20, upright[3])), Word("world", (mid + 20, upright[1], upright[2], upright[3]))))
    stored = orientation.to_stored([line], 90, w, h)[0]
    st = (inbox / "side.pdf").stat()
    doc = document.Document(document.SourceInfo("side.pdf", st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest()),
                            {"profile": "test"}, (Page(0, w, h, (stored,), rendered.dpi, rotation=90),), 0)
    document.write(outbox / "side.pdf.json", doc)
    pdf_command.build_folder_pdf(inbox, outbox, outbox / "in.pdf")
    sx, sy = 72 / rendered.dpi[1], 72 / rendered.dpi[0]  # (upright: the axes swap)
    for path in (outbox / "side.pdf", outbox / "in.pdf"):
        with pymupdf.open(path) as out:
            page = out[0]
            assert page.rotation == 90 and page.rect.width < page.rect.height  # shown upright
            words = {wd[4]: pymupdf.Rect(wd[:4]) * page.rotation_matrix for wd in page.get_text("words")}
            got = words["hello"]
            assert abs(got.x0 - upright[0] * sx) < 1.5 and abs(got.y0 - upright[1] * sy) < 3, (path, got)


def test_the_scan_takes_a_pdf_like_an_image(tmp_path: Path) -> None:
    from ocr_inbox.inbox import scan
    from ocr_inbox.support import paths

    (tmp_path / "a.PDF").write_bytes(born_digital_pdf())
    (tmp_path / "b.odt").write_bytes(b"PK")
    assert isinstance(scan.classify(str(tmp_path), "a.PDF", ()), scan.Candidate)
    assert isinstance(scan.classify(str(tmp_path), "b.odt", ()), scan.Skipped)
    assert ".pdf" in paths.accepted_types().split()
