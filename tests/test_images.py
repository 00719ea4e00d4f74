"""The one image module (``ocr/images.py``) and the PDF builder on top of it: unit tests, no corpus.

OCR and PDF read an image the same way, so each refusal is checked on both sides.
"""

from __future__ import annotations

import os
from pathlib import Path

import imagemaker
from imagemaker import load
import numpy as np
import pymupdf
import pytest
from PIL import Image

from ocr_inbox.ocr import images
from ocr_inbox.ocr.results import Line, Page
from ocr_inbox.outbox import document, names, pdf
from ocr_inbox.outbox.document import Document, SourceInfo
from ocr_inbox.outbox.pdf import PageSource, SourceChanged, build_pdf
from ocr_inbox.support import atomic, beneath
from ocr_inbox.support.errors import BadImage

LIMITS = images.Limits()
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"


def page_image(path: Path, size: tuple[int, int] = (60, 40), colour: tuple[int, int, int] = (30, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_json(json_file: Path, rel: str, st: os.stat_result, size: tuple[int, int], text: str) -> None:
    w, h = size
    line = Line(text, 0.99, ((2.0, 2.0), (w - 2.0, 2.0), (w - 2.0, h - 2.0), (2.0, h - 2.0)))
    doc = Document(SourceInfo(rel, st.st_size, st.st_mtime_ns, ""), {"profile": "test"}, (Page(0, w, h, (line,)),), 0)
    document.write(json_file, doc)


def source(root: Path, rel: str, json_dir: Path, *, pinned: bool = False) -> PageSource:
    st = (root / rel).stat()
    return PageSource(rel, names.json_path_for(json_dir, rel), st.st_size if pinned else None,
                      st.st_mtime_ns if pinned else None)


def texts(path: Path) -> list[str]:
    with pymupdf.open(path) as doc:
        return ["".join(p.get_text().split()) for p in doc]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(inbox, json dir, out.pdf)"""
    inbox, jsons = tmp_path / "inbox", tmp_path / "json"
    inbox.mkdir()
    jsons.mkdir()
    return inbox, jsons, tmp_path / "out" / "book.pdf"


# --- the format allow-list ---------------------------------------------------


def test_postscript_named_png_is_refused_without_being_decoded(tree, monkeypatch):
    inbox, jsons, out = tree
    (inbox / "x.png").write_bytes(EPS)
    page_image(inbox / "ok.png")

    def no_eps(*args, **kwargs):  # the EPS plugin must never run (it calls Ghostscript)
        raise AssertionError("the EPS plugin was used")

    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", no_eps)
    with pytest.raises(BadImage) as exc:
        load(str(inbox), "x.png", LIMITS)
    assert exc.value.reason == "unsupported_format" and "EPS" in exc.value.detail

    report = build_pdf(inbox, [source(inbox, "x.png", jsons), source(inbox, "ok.png", jsons)], out,
                       title="t", limits=LIMITS)
    assert report.pages == 1
    assert [(i.image, i.reason) for i in report.left_out] == [("x.png", "unsupported_format")]


# --- opening beneath the root ------------------------------------------------


def test_a_symlinked_parent_leading_outside_is_refused(tree, tmp_path):
    inbox, jsons, out = tree
    outside = tmp_path / "outside"
    page_image(outside / "secret.png")
    os.symlink(outside, inbox / "vol")  # the parent folder, not the file, is the link
    page_image(inbox / "mine.png")
    with pytest.raises(BadImage) as exc:
        images.read_file(str(inbox), "vol/secret.png", LIMITS)
    assert exc.value.reason == "outside_inbox"
    with pytest.raises(BadImage) as exc:
        images.read_file(str(inbox), "../outside/secret.png", LIMITS)
    assert exc.value.reason == "outside_inbox"

    pages = [PageSource("vol/secret.png", jsons / "s.json", None, None), source(inbox, "mine.png", jsons)]
    report = build_pdf(inbox, pages, out, title="t", limits=LIMITS)
    assert report.pages == 1
    assert [(i.image, i.reason) for i in report.left_out] == [("vol/secret.png", "outside_inbox")]


def test_the_fallback_without_openat2_refuses_the_same(tree, tmp_path, monkeypatch):
    inbox, _, _ = tree
    page_image(tmp_path / "outside" / "secret.png")
    os.symlink(tmp_path / "outside", inbox / "vol")
    page_image(inbox / "a" / "p.png")
    os.symlink("a/p.png", inbox / "alias.png")

    def no_openat2(dirfd: int, rel: str, flags: int, resolve: int) -> int:
        raise OSError(38, "Function not implemented")  # ENOSYS: an old kernel

    monkeypatch.setattr(beneath, "_openat2", no_openat2)
    with pytest.raises(BadImage) as exc:
        images.read_file(str(inbox), "vol/secret.png", LIMITS)
    assert exc.value.reason == "outside_inbox"
    data, _ = images.read_file(str(inbox), "alias.png", LIMITS)
    assert data == (inbox / "a" / "p.png").read_bytes()


def test_links_inside_the_root_are_read(tree):
    inbox, _, _ = tree
    target = page_image(inbox / "a" / "page.png", (70, 30))
    os.symlink("a/page.png", inbox / "relative.png")
    (inbox / "b").mkdir()
    os.symlink("../a/page.png", inbox / "b" / "up.png")  # ".." that stays inside
    os.symlink(target, inbox / "absolute.png")  # RESOLVE_BENEATH refuses it; it lands inside, so it is read
    os.symlink(inbox / "a", inbox / "folder")
    for rel in ("relative.png", "b/up.png", "absolute.png", "folder/page.png"):
        data, st = images.read_file(str(inbox), rel, LIMITS)
        assert data == target.read_bytes() and st.st_ino == target.stat().st_ino, rel
    assert load(str(inbox), "folder/page.png", LIMITS)[0].bgr.shape == (30, 70, 3)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "vanished"),
        (lambda p: p.write_bytes(b""), "empty_file"),
        (lambda p: p.mkdir(), "not_a_regular_file"),
        (lambda p: os.symlink(p.name, p), "symlink_loop"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 2000), "file_too_large"),
    ],
)
def test_read_file_refusals(tree, make, reason):
    inbox, _, _ = tree
    make(inbox / "x.png")
    with pytest.raises(BadImage) as exc:
        images.read_file(str(inbox), "x.png", images.Limits(max_file_bytes=1000))
    assert exc.value.reason == reason


# --- decoding ------------------------------------------------------------------


def test_16_bit_png_decodes_to_8_bit_bgr(tree):
    inbox, _, _ = tree
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(inbox / "full.png")
    narrow = (1000 + np.arange(256, dtype=np.uint16) * 4).reshape(16, 16)  # a 10-bit scan in 16 bits
    Image.fromarray(narrow).save(inbox / "narrow.png")
    for name, src in (("full.png", ramp), ("narrow.png", narrow)):
        (page,) = load(str(inbox), name, LIMITS)
        assert page.bgr.dtype == np.uint8 and page.bgr.shape == (16, 16, 3)
        want = np.rint((src.astype(np.float64) - src.min()) * 255 / (src.max() - src.min()))
        assert np.abs(page.bgr[:, :, 0].astype(int) - want).max() <= 1, name
        assert (page.bgr[:, :, 0] == page.bgr[:, :, 2]).all()
        assert page.bgr.min() == 0 and page.bgr.max() == 255


def test_frames_flatten_transparency_on_white_and_apply_exif_for_ocr(tree):
    inbox, _, _ = tree
    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90° clockwise
    rgba.save(inbox / "t.png", exif=exif.tobytes(), dpi=(0.5, 0.5))
    (frame,) = images.frames((inbox / "t.png").read_bytes(), LIMITS)
    assert isinstance(frame, images.Frame)
    assert frame.image.mode == "RGB" and frame.orientation == 6 and frame.dpi is None  # < 1 dpi: none
    (page,) = load(str(inbox), "t.png", LIMITS)
    assert page.bgr.shape == (40, 20, 3)  # upright: width and height swapped
    assert tuple(page.bgr[-1, 10]) == (255, 255, 255)  # transparent -> white paper
    assert tuple(page.bgr[0, 10]) == (255, 0, 0)  # the blue left band is now on top (BGR)


def test_a_bad_tiff_frame_fails_ocr_but_only_that_page_of_the_pdf(tree, monkeypatch):
    inbox, jsons, out = tree
    Image.new("L", (30, 30), 255).save(inbox / "b.tif", save_all=True,
                                        append_images=[Image.new("L", (40, 30), 0), Image.new("L", (50, 30), 128)])
    real = images._frame

    def second_is_corrupt(img, data, index, *args, **kwargs):
        if index == 1:
            raise OSError("broken data stream when reading image file")
        return real(img, data, index, *args, **kwargs)

    monkeypatch.setattr(images, "_frame", second_is_corrupt)
    with pytest.raises(BadImage) as exc:
        load(str(inbox), "b.tif", LIMITS)
    assert exc.value.reason == "corrupt"
    report = build_pdf(inbox, [source(inbox, "b.tif", jsons)], out, title="t", limits=LIMITS)
    assert report.pages == 2
    assert [(i.reason, i.frame) for i in report.left_out] == [("corrupt", 1)]
    with pymupdf.open(out) as doc:
        assert [t for _, t, _ in doc.get_toc()] == ["b.tif (1/3)", "b.tif (3/3)"]


def test_pixels_are_checked_from_the_header_on_both_sides(tree):
    inbox, jsons, out = tree
    page_image(inbox / "big.png", (300, 300))
    page_image(inbox / "ok.png")
    small = images.Limits(max_pixels=50_000)
    with pytest.raises(BadImage) as exc:
        load(str(inbox), "big.png", small)
    assert exc.value.reason == "too_many_pixels"
    report = build_pdf(inbox, [source(inbox, n, jsons) for n in ("big.png", "ok.png")], out, title="t", limits=small)
    assert [(i.image, i.reason) for i in report.left_out] == [("big.png", "too_many_pixels")]


# --- the PDF builder's page list --------------------------------------------------


def test_source_changed_since_ocr_stops_the_build_and_publishes_nothing(tree):
    inbox, jsons, out = tree
    for name in ("p1.png", "p2.png"):
        page_image(inbox / name)
    pages = [source(inbox, n, jsons, pinned=True) for n in ("p1.png", "p2.png")]
    st = (inbox / "p2.png").stat()
    os.utime(inbox / "p2.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same size, newer
    with pytest.raises(SourceChanged) as exc:
        build_pdf(inbox, pages, out, title="t", limits=LIMITS)
    assert exc.value.rel == "p2.png"
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == []  # no temp file, no work dir

    page_image(inbox / "p1.png", (61, 40))  # another size
    with pytest.raises(SourceChanged):
        build_pdf(inbox, [pages[0]], out, title="t", limits=LIMITS)
    assert not out.exists()


def test_json_of_another_mtime_gives_an_image_only_page(tree):
    inbox, jsons, out = tree
    for name in ("a.png", "b.png"):
        path = page_image(inbox / name)
        write_json(names.json_path_for(jsons, name), name, path.stat(), (60, 40), f"text {name}")
    st = (inbox / "b.png").stat()
    os.utime(inbox / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5))  # same bytes and size, rewritten
    report = build_pdf(inbox, [source(inbox, n, jsons) for n in ("a.png", "b.png")], out, title="t", limits=LIMITS)
    assert report.pages == 2
    assert [(i.image, i.reason) for i in report.image_only] == [("b.png", "json_stale")]
    assert texts(out) == ["texta.png", ""]


def test_pages_go_in_the_order_given(tree):
    inbox, jsons, out = tree
    for name in ("a.png", "b/c.png", "d.png"):
        path = page_image(inbox / name)
        write_json(names.json_path_for(jsons, name), name, path.stat(), (60, 40), f"page {name}")
    report = build_pdf(inbox, [source(inbox, n, jsons) for n in ("d.png", "b/c.png", "a.png")], out,
                       title="My book", limits=LIMITS)
    assert report.pages == 3 and not report.image_only
    assert texts(out) == ["paged.png", "pageb/c.png", "pagea.png"]
    with pymupdf.open(out) as doc:
        assert [t for _, t, _ in doc.get_toc()] == ["d.png", "c.png", "a.png"]
        assert doc.metadata["title"] == "My book"


def test_keep_previous_puts_the_earlier_pdfs_pages_first(tree):
    inbox, jsons, out = tree
    for name in ("p1.png", "p2.png", "p3.png"):
        path = page_image(inbox / name)
        write_json(names.json_path_for(jsons, name), name, path.stat(), (60, 40), f"page {name}")
    build_pdf(inbox, [source(inbox, n, jsons) for n in ("p1.png", "p2.png")], out, title="t", limits=LIMITS)
    for name in ("p1.png", "p2.png"):  # the inbox deletes processed sources
        (inbox / name).unlink()
    report = build_pdf(inbox, [source(inbox, "p3.png", jsons, pinned=True)], out, title="t", limits=LIMITS,
                       chunk_pages=1, keep_previous=True)
    assert report.pages == 3 and not report.left_out
    assert texts(out) == ["pagep1.png", "pagep2.png", "pagep3.png"]
    with pymupdf.open(out) as doc:
        assert doc.get_toc() == [[1, "p1.png", 1], [1, "p2.png", 2], [1, "p3.png", 3]]
    assert sorted(p.name for p in out.parent.iterdir()) == ["book.pdf"]

    # without keep_previous the PDF holds the given pages only
    report = build_pdf(inbox, [source(inbox, "p3.png", jsons)], out, title="t", limits=LIMITS)
    assert report.pages == 1 and texts(out) == ["pagep3.png"]


def test_keep_previous_reports_an_unreadable_earlier_pdf(tree):
    inbox, jsons, out = tree
    page_image(inbox / "p.png")
    out.parent.mkdir()
    out.write_bytes(b"%PDF-1.7 broken")
    report = build_pdf(inbox, [source(inbox, "p.png", jsons)], out, title="t", limits=LIMITS, keep_previous=True)
    assert report.pages == 1
    assert [(i.image, i.reason) for i in report.left_out] == [("book.pdf", "previous_pdf_unreadable")]


# --- names -------------------------------------------------------------------------


def test_temp_names_belong_to_one_output(tmp_path):
    out = tmp_path / "scans.pdf"
    assert atomic.is_temp_for(out, atomic.temp_path_for(out).name)
    assert not atomic.is_temp_for(out, atomic.temp_path_for(tmp_path / "other-scans.pdf").name)
    assert not atomic.is_temp_for(out, ".ocr-inbox-tmp-1-x-scans.pdf.part")
    assert not atomic.is_temp_for(out, "scans.pdf")
    long_a, long_b = tmp_path / ("L" * 200 + "-a.pdf"), tmp_path / ("L" * 200 + "-b.pdf")
    assert atomic.is_temp_for(long_a, atomic.temp_path_for(long_a).name)
    assert not atomic.is_temp_for(long_a, atomic.temp_path_for(long_b).name)
    assert pdf.work_dir_for is names.work_dir_for


# --- JPEG pages: libjpeg-turbo straight to BGR, the same pixels as PIL's decode ----------


def pil_bgr(data: bytes) -> np.ndarray:
    """The page as PIL decodes it (the path every format but YCbCr/grey JPEG takes)."""
    (frame,) = images.frames(data, LIMITS)
    assert isinstance(frame, images.Frame)
    return images.upright_bgr(frame)


@pytest.fixture
def fast_decodes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per JPEG page the direct decoder was asked for: True when it decoded it."""
    seen: list[bool] = []
    real = images._jpeg_bgr

    def spy(frame: images.Frame) -> np.ndarray | None:
        out = real(frame)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(images, "_jpeg_bgr", spy)
    return seen


def photo(size: tuple[int, int] = (203, 141)) -> Image.Image:
    """Colour gradients and edges, odd sizes: chroma subsampling and the IDCT both show."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 255 // w), (y * 255 // h), ((x ^ y) & 0xFF)], axis=-1).astype(np.uint8)
    arr[h // 3 : h // 2, w // 4 : w // 2] = (10, 200, 40)
    return Image.fromarray(arr, "RGB")


@pytest.mark.parametrize(
    "mode,params",
    [
        ("RGB", {"subsampling": 0}),  # 4:4:4
        ("RGB", {"subsampling": 1}),  # 4:2:2
        ("RGB", {"subsampling": 2}),  # 4:2:0, what scanners and cameras write
        ("RGB", {"progressive": True}),
        ("RGB", {"restart_marker_rows": 1}),
        ("L", {}),
    ],
)
def test_jpeg_pages_decode_to_the_pixels_pil_gives(tmp_path, fast_decodes, mode, params):
    data = imagemaker.save(photo().convert(mode), tmp_path / "p.jpg", "JPEG", quality=90, **params).read_bytes()
    (page,) = images.decode(data, LIMITS)
    assert fast_decodes == [True]
    assert page.bgr.dtype == np.uint8
    assert np.array_equal(page.bgr, pil_bgr(data))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_pages_are_turned_upright_as_pil_turns_them(tmp_path, fast_decodes, orientation):
    data = imagemaker.with_exif_orientation(photo(), tmp_path / "o.jpg", orientation).read_bytes()
    (page,) = images.decode(data, LIMITS)
    assert fast_decodes == [True]
    assert page.bgr.shape == (141, 203, 3)  # upright: the size of the picture as drawn
    assert np.array_equal(page.bgr, pil_bgr(data))


def test_cmyk_jpegs_still_go_through_pil(tmp_path, fast_decodes):
    data = imagemaker.cmyk_jpeg(photo(), tmp_path / "c.jpg").read_bytes()
    (page,) = images.decode(data, LIMITS)
    assert fast_decodes == []
    assert np.array_equal(page.bgr, pil_bgr(data))


def test_a_truncated_jpeg_is_still_refused_as_truncated(tmp_path, fast_decodes, capfd):
    path = imagemaker.truncate(imagemaker.save(photo((600, 400)), tmp_path / "t.jpg", "JPEG", quality=90), keep=0.6)
    with pytest.raises(BadImage) as err:
        images.decode(path.read_bytes(), LIMITS)
    assert err.value.reason == "truncated"
    assert fast_decodes == [False]  # libjpeg-turbo's refusal is not the answer: PIL's is
    assert capfd.readouterr().err == ""


def test_a_corrupt_jpeg_stream_decodes_as_pil_decodes_it_and_prints_nothing(tmp_path, fast_decodes, capfd):
    """Damaged entropy-coded data: PIL decodes what it can, silently; so does a page now."""
    data = bytearray(imagemaker.save(photo((600, 400)), tmp_path / "x.jpg", "JPEG", quality=90).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(range(64))
    (page,) = images.decode(bytes(data), LIMITS)
    assert fast_decodes == [False]
    assert np.array_equal(page.bgr, pil_bgr(bytes(data)))
    assert capfd.readouterr().err == ""


@pytest.mark.corpus
def test_every_corpus_jpeg_decodes_to_the_pixels_pil_gives(fast_decodes):
    from conftest import CORPUS

    jpegs = sorted(CORPUS.rglob("*.jpg"))
    assert jpegs
    for path in jpegs:
        data = path.read_bytes()
        (page,) = images.decode(data, LIMITS)
        assert np.array_equal(page.bgr, pil_bgr(data)), path.name
    assert fast_decodes == [True] * len(jpegs)
