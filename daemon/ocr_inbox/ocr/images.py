"""The one place an image file is opened and decoded: for the OCR workers and the PDF builder alike.

Both read the same bytes the same way, so the PDF shows exactly what was OCR'd,
and both are held to the same safety rules:

* :func:`read_file` reads a regular, non-empty file within the size limit in one
  go (what we hash is what we decode), opened *beneath* the inbox by
  ``support/beneath.py`` (the one place that opens inbox files);
* :func:`frames` decodes one frame at a time, after checking the format against
  :data:`ACCEPTED_FORMATS` (PIL's other plugins, EPS included, never run), the
  page count, and the pixels of each page and of all pages together, from the
  headers (every TIFF page's size is read by seeking, without decoding pixels).

The OCR side turns frames into upright 8-bit BGR pages one at a time
(:func:`pages`; a worker drops a page before it decodes the next); the PDF
side stores each frame as it is (``outbox/pdf.py``). Refusals are
:class:`~ocr_inbox.support.errors.BadImage` with short stable reasons.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import struct
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ocr_inbox.ocr.results import Line, Word
from ocr_inbox.support.beneath import open_beneath
from ocr_inbox.support.errors import BadImage
from ocr_inbox.support.reasons import Reason
from ocr_inbox.support.version import SourceVersion

#: formats PIL may identify; anything else is refused even if PIL could read it
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO"})
#: JPEG colour spaces a PDF can show from the original bytes (DCTDecode)
JPEG_SPACES = frozenset({"L", "RGB", "CMYK"})

#: what PIL (and a TIFF directory's struct parsing) raises for bytes it cannot decode
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
#: modes a PDF stores as they are; the rest is flattened (see :func:`_flatten`)
_KEPT_MODES = frozenset({"1", "L", "RGB", "CMYK", "I;16"})
#: EXIF orientation -> the transpose that shows the stored pixels upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 200_000_000  # per page
    max_file_bytes: int = 512 << 20
    max_pages: int = 2000
    #: all pages of one file together
    max_total_pixels: int = 1_000_000_000
    #: a PDF page that has text of its own is OCR'd too (else kept: its own text goes in the JSON)
    pdf_ocr_pages_with_text: bool = False


# --- reading beneath a root ---------------------------------------------------------------


def read_file(root: str, rel: str, limits: Limits) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file ``root/rel`` (opened by :func:`open_beneath`) and its fstat."""
    fd = open_beneath(root, rel)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadImage(Reason.not_a_regular_file, stat.filemode(st.st_mode))
        if st.st_size == 0:
            raise BadImage(Reason.empty_file, "0 bytes")
        if st.st_size > limits.max_file_bytes:
            raise BadImage(Reason.file_too_large, f"{st.st_size} bytes > {limits.max_file_bytes}")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        try:
            # read(n) allocates n bytes up front: ask for the size fstat gave, plus one
            # byte to notice growth (not the limit: 512 MiB reserved for every small file)
            data = fh.read(st.st_size + 1)
        except OSError as exc:
            raise BadImage(Reason.unreadable, exc.strerror or str(exc)) from None
    if len(data) != st.st_size:  # still being written, or truncated, after fstat
        raise BadImage(Reason.changed_while_reading, f"{st.st_size} bytes at open, {len(data)}+ read")
    return data, st


# --- decoding -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JpegSource:
    """What a PDF needs to embed a JPEG frame's original bytes (DCTDecode) unchanged."""

    data: bytes  # the whole file
    mode: str  # one of JPEG_SPACES
    adobe: bool  # an Adobe APP14 marker: CMYK samples are stored inverted


@dataclass(frozen=True)
class Frame:
    """One decoded frame (page) of an image file.

    ``image`` is loaded and flattened to a mode a PDF can store (1, L, RGB,
    I;16, P without transparency, CMYK; transparency composited on white);
    it stays valid until the next frame is requested. With ``draft_jpeg`` a
    JPEG's ``image`` is only the 1/8-scale check decode (no decode at all with
    ``decoded_before``: only its header is read) and ``jpeg`` holds the bytes
    to embed. ``width``/``height`` are the stored pixels, before
    ``orientation`` (EXIF 1-8) is applied.
    """

    index: int
    count: int  # frames in the file
    format: str
    width: int
    height: int
    orientation: int
    dpi: tuple[float, float] | None
    image: Image.Image
    jpeg: JpegSource | None = None


@dataclass(frozen=True)
class BadFrame:
    """A frame that could not be decoded; the frames after it may still be fine."""

    index: int
    count: int
    error: BadImage


def _dpi(info: Mapping[Any, Any]) -> tuple[float, float] | None:
    """The file's resolution when it is usable: finite and at least 1 on both axes."""
    try:
        dx, dy = (float(v) for v in info["dpi"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(dx) and math.isfinite(dy) and dx >= 1 and dy >= 1):
        return None
    return (dx, dy)


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the page
        return 1
    return value if 1 <= value <= 8 else 1


def _stretch(im: Image.Image) -> Image.Image:
    """A 16/32-bit or float image as 8-bit L, its range stretched to 0-255.

    float32 keeps the temporary at 4 bytes a pixel (exact for 16-bit samples).
    """
    arr = np.asarray(im, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return Image.new("L", im.size, 0)
    arr = arr - np.float32(lo)  # a copy: asarray may share PIL's buffer
    arr *= np.float32(255.0 / (hi - lo))
    arr += np.float32(0.5)
    return Image.fromarray(arr.astype(np.uint8), "L")


def _flatten(im: Image.Image) -> Image.Image:
    """``im`` in a mode a PDF stores as it is; transparency composited on white, as on paper."""
    mode = im.mode
    if mode in _KEPT_MODES or (mode == "P" and "transparency" not in im.info):
        return im
    if mode in ("I;16B", "I;16L", "I;16N"):
        return im.convert("I;16")
    if mode in ("I", "F"):
        return _stretch(im)
    if mode in ("LA", "La"):
        bg = Image.new("L", im.size, 255)
        bg.paste(im.convert("L"), mask=im.convert("LA").getchannel("A"))
        return bg
    if mode in ("RGBA", "RGBa", "PA", "P"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return bg
    return im.convert("RGB")  # YCbCr, LAB, HSV ...


def _sniff(data: bytes) -> str | None:
    """The name of a format PIL would claim ``data`` for, by its magic bytes only (no plugin runs)."""
    Image.init()
    head = data[:64]
    for name, (_factory, accept) in Image.OPEN.items():
        try:
            if accept and accept(head):
                return str(name)
        except Exception:  # noqa: BLE001, S112 - a plugin's test of foreign bytes
            continue
    return None


def _open(data: bytes, limits: Limits) -> Image.Image:
    # PIL's own bomb check (warning above the limit, error above twice it) must not
    # undercut ours; the explicit checks in frames() refuse anything over the limit.
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    Image.init()
    allowed = [f for f in Image.OPEN if f in ACCEPTED_FORMATS]  # MPO opens through JPEG
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=allowed)
    except UnidentifiedImageError:
        other = _sniff(data)
        if other is not None and other not in ACCEPTED_FORMATS:
            raise BadImage(Reason.unsupported_format, other) from None
        raise BadImage(Reason.not_an_image, "the content is not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        # PIL names its own threshold (twice ours); say ours, keep PIL's numbers as the detail
        raise BadImage(Reason.too_many_pixels, f"over the limit of {limits.max_pixels} pixels: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadImage(Reason.corrupt, str(exc) or type(exc).__name__) from None


def _decode_error(exc: BaseException) -> BadImage:
    text = str(exc) or type(exc).__name__
    return BadImage(Reason.truncated if Reason.truncated in text.lower() else Reason.corrupt, text)


def _frame(
    img: Image.Image, data: bytes, index: int, count: int, limits: Limits, draft_jpeg: bool, decoded_before: bool
) -> Frame:
    img.seek(index)
    w, h = img.size
    if w < 1 or h < 1:
        raise BadImage(Reason.corrupt, f"size {w}x{h}")
    if w * h > limits.max_pixels:  # from the header: nothing decoded yet
        raise BadImage(Reason.too_many_pixels, f"{w}x{h} > {limits.max_pixels} pixels")
    fmt = str(img.format)
    if draft_jpeg and fmt in ("JPEG", "MPO") and img.mode in JPEG_SPACES:
        jpeg = JpegSource(data, img.mode, "adobe" in img.info)
        orientation, dpi = _orientation(img), _dpi(img.info)
        if not decoded_before:
            # Decoding at 1/8 scale (DCT scaling) still reads every entropy-coded byte:
            # it proves the bytes the PDF embeds decode, at a fraction of the cost.
            img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
            img.load()
        return Frame(index, count, fmt, w, h, orientation, dpi, img, jpeg)
    img.load()
    # after load(): a PNG's eXIf chunk may follow its pixel data
    return Frame(index, count, fmt, w, h, _orientation(img), _dpi(img.info), _flatten(img))


def _header_pixels(img: Image.Image, count: int, limits: Limits) -> None:
    """Refuse a file whose pages together exceed ``max_total_pixels``, from the headers only.

    Seeking a TIFF reads that page's directory (its size), not its pixels, so a
    2 MB file claiming thousands of large pages is refused before any decoding.
    """
    total = 0
    for i in range(count):
        if count > 1:
            img.seek(i)
        w, h = img.size
        total += max(0, w) * max(0, h)
        if total > limits.max_total_pixels:
            raise BadImage(
                Reason.too_many_pixels,
                f"the {count} pages hold more than {limits.max_total_pixels} pixels together (page {i + 1} passes it)",
            )
    if count > 1:
        img.seek(0)


def frames(
    data: bytes, limits: Limits, *, draft_jpeg: bool = False, decoded_before: bool = False
) -> Iterator[Frame | BadFrame]:
    """Decode an image file held in memory, one frame at a time (one per TIFF page, else one).

    Raises :class:`BadImage` when the file as a whole is refused (not an image,
    a format outside :data:`ACCEPTED_FORMATS`, too many pages, too many pixels
    on all pages together: checked before the first frame is decoded); a frame
    that fails on its own comes as a :class:`BadFrame`, so a caller may go on
    with the rest (the PDF) or refuse the file (OCR). ``draft_jpeg``: see :class:`Frame`.
    A frame's pixels are released when the next one is requested.
    ``decoded_before``: these very bytes were decoded in full already (the PDF
    builder knows it when their SHA-256 is the one their OCR recorded), so a
    JPEG kept as it is (``draft_jpeg``) is not decoded again: its header is
    checked against the limits as always.
    """
    img = _open(data, limits)
    with img:
        fmt = img.format
        if fmt not in ACCEPTED_FORMATS:  # defence in depth: _open lets only these through
            raise BadImage(Reason.unsupported_format, str(fmt))
        try:
            count = int(getattr(img, "n_frames", 1)) if fmt == "TIFF" else 1
        except _DECODE_ERRORS as exc:
            raise _decode_error(exc) from None
        if count > limits.max_pages:
            raise BadImage(Reason.too_many_pages, f"{count} > {limits.max_pages}")
        try:
            _header_pixels(img, count, limits)
        except _DECODE_ERRORS as exc:
            raise _decode_error(exc) from None
        for i in range(count):
            try:
                frame: Frame | BadFrame = _frame(img, data, i, count, limits, draft_jpeg, decoded_before)
            except BadImage as exc:
                frame = BadFrame(i, count, exc)
            except _DECODE_ERRORS as exc:
                frame = BadFrame(i, count, _decode_error(exc))
            yield frame
            del frame  # not held while the next frame decodes


# --- the OCR side -------------------------------------------------------------------------


@dataclass(frozen=True)
class PageImage:
    index: int
    bgr: np.ndarray  # H x W x 3, uint8, EXIF orientation applied
    dpi: tuple[float, float] | None
    count: int = 1  # pages in the file

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])


@dataclass(frozen=True)
class TextPage:
    """A PDF page that carries text of its own: not rendered and not OCR'd (``[pdf]
    ocr_pages_with_text`` off), its words are the PDF's, in the pixels the page would have
    if it were rendered at ``dpi`` (the coordinate space of the PDF's rendered pages)."""

    index: int
    width: int
    height: int
    dpi: tuple[float, float]
    lines: tuple[Line, ...]
    count: int = 1


@dataclass(frozen=True)
class ImageFile:
    """The bytes of an image file as read (what is hashed is what is decoded) and its version."""

    data: bytes
    version: SourceVersion
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def mtime_ns(self) -> int:
        return self.version.mtime_ns


def upright_bgr(frame: Frame) -> np.ndarray:
    """The frame as the engine sees it: 8-bit BGR, EXIF orientation applied."""
    import cv2  # the engine's own dependency: loaded in a worker already, not in the daemon or the PDF child

    im = frame.image
    if im.mode == "I;16":
        im = _stretch(im)
    if frame.orientation in _UPRIGHT:
        im = im.transpose(_UPRIGHT[frame.orientation])
    if im.mode == "L":  # grey pages (bilevel ones are "1"): the one channel copied to three, no RGB image between
        return cv2.cvtColor(np.asarray(im), cv2.COLOR_GRAY2BGR)
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    # one vectorised pass; numpy's reversed-channel copy took 28 ms of a 300-dpi A4 page's 123
    return cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)


#: EXIF orientation -> the turn of :data:`_UPRIGHT` on an array: (transpose first?, then cv2.flip's
#: code: 1 mirrors left-right, 0 top-bottom, -1 both, None not at all)
_UPRIGHT_ARRAY: dict[int, tuple[bool, int | None]] = {
    2: (False, 1),
    3: (False, -1),
    4: (False, 0),
    5: (True, None),
    6: (True, 1),
    7: (True, -1),
    8: (True, 0),
}


def _upright_array(bgr: np.ndarray, orientation: int) -> np.ndarray:
    import cv2

    transpose, flip = _UPRIGHT_ARRAY.get(orientation, (False, None))
    if transpose:
        bgr = cv2.transpose(bgr)
    return bgr if flip is None else cv2.flip(bgr, flip)


def _jpeg_bgr(frame: Frame) -> np.ndarray | None:
    """A YCbCr or grey JPEG decoded by libjpeg-turbo straight into BGR (simplejpeg), upright.

    Same pixels as PIL's decode (the same library, checked on the corpus and in the
    tests), in one buffer instead of three (PIL's image, its numpy copy, the BGR
    copy): ~55 MiB less at a worker's peak for a 300-dpi A4 page, and 0.62x the time
    (bench/bench_decode.py).
    None when libjpeg-turbo reports anything at all (``strict``: a truncated or
    corrupt stream, never printed to stderr as cv2's decoder would): PIL then decides
    as it always did, refusing truncation and decoding what it can of the rest.
    """
    import simplejpeg

    assert frame.jpeg is not None
    try:
        bgr = simplejpeg.decode_jpeg(frame.jpeg.data, colorspace="BGR", strict=True)
    except ValueError:
        return None
    if bgr.shape[:2] != (frame.height, frame.width):
        return None
    return _upright_array(bgr, frame.orientation)


def _page_bgr(frame: Frame) -> np.ndarray:
    if frame.jpeg is not None and frame.format == "JPEG" and frame.jpeg.mode in ("L", "RGB"):
        bgr = _jpeg_bgr(frame)
        if bgr is not None:
            return bgr
    return upright_bgr(frame)  # PIL loads the frame's pixels here


def pages(data: bytes, limits: Limits) -> Iterator[PageImage | TextPage]:
    """The pages of an image file as upright BGR, decoded one at a time; a bad frame
    raises :class:`BadImage` (OCR refuses the whole file). A PDF's pages are rendered
    (:func:`pdf_pages`); those with text of their own come as :class:`TextPage`.

    Only the page last yielded is held here: drop it before asking for the next,
    and a 1,000-page file needs the memory of one page.
    """
    if is_pdf(data):
        yield from pdf_pages(data, limits)
        return
    # a JPEG frame comes undecoded (its header checked against the limits): _page_bgr decodes it
    for frame in frames(data, limits, draft_jpeg=True, decoded_before=True):
        if isinstance(frame, BadFrame):
            raise frame.error
        try:
            bgr = _page_bgr(frame)
        except _DECODE_ERRORS as exc:
            raise _decode_error(exc) from None
        page = PageImage(frame.index, bgr, frame.dpi, frame.count)
        del frame, bgr
        yield page
        del page


def read(root: str, rel: str, limits: Limits) -> ImageFile:
    """Read ``root/rel`` beneath ``root`` (the inbox): bytes, mtime and hash, nothing decoded."""
    data, st = read_file(root, rel, limits)
    return ImageFile(data, SourceVersion.of(st), hashlib.sha256(data).hexdigest())


def decode(data: bytes, limits: Limits) -> list[PageImage | TextPage]:
    """Every page of an image file as upright BGR, all held at once: the one entry point for
    tests and benchmarks (``read`` then ``decode``); the OCR worker iterates :func:`pages`."""
    return list(pages(data, limits))


# --- PDFs ---------------------------------------------------------------------------------
#
# A PDF is hostile input like an image: it is opened here only, in a worker (or the PDF
# builder's child), from the bytes read beneath the inbox, under the same limits. MuPDF
# never runs a PDF's JavaScript (PyMuPDF has no call that would); a PDF that carries some
# is refused all the same (``pdf_javascript``): no scanner writes one, and its searchable
# copy must not carry a script into the outbox.

#: one thread in MuPDF at a time (:func:`pdf_pages`)
_MUPDF = threading.RLock()
#: the marker a PDF starts with (readers accept it within the first 1,024 bytes)
PDF_MAGIC = b"%PDF-"
#: pages without text are rendered at this resolution for OCR, less when a page would pass
#: ``max_pixels`` at it (a poster-sized page is read at what fits)
PDF_RENDER_DPI = 300.0
#: ... but never coarser than this: a page that needs less is refused (too_many_pixels)
PDF_MIN_DPI = 50.0


def is_pdf(data: bytes) -> bool:
    return PDF_MAGIC in data[:1024]


def _pymupdf() -> Any:
    import pymupdf  # the PDF side's library: not loaded by the daemon's main process

    # MuPDF's messages are collected (and read per page), not printed to stderr
    pymupdf.TOOLS.mupdf_display_errors(False)
    return pymupdf


def _mupdf_messages(mu: Any) -> str:
    return str(mu.TOOLS.mupdf_warnings(reset=True) or "").strip()


def _has_javascript(doc: Any) -> bool:
    """Any object that is a JavaScript action (``/S /JavaScript``) or holds a script (``/JS``):
    document open actions, page and field actions and the /Names JavaScript tree alike."""
    for xref in range(1, doc.xref_length()):
        if doc.xref_get_key(xref, "JS")[0] != "null" or doc.xref_get_key(xref, "S") == ("name", "/JavaScript"):
            return True
    return False


def open_pdf(data: bytes, limits: Limits, path: str | None = None) -> Any:
    """The PDF in ``data`` opened by MuPDF and checked: not encrypted with a password, no
    JavaScript, within ``max_pages`` (counted from its page tree, nothing rendered).
    Raises :class:`BadImage` (``pdf_broken``, ``pdf_encrypted``, ``pdf_javascript``,
    ``too_many_pages``). ``path``: a file of ours holding these very bytes, opened instead
    (so that changes can be saved to it as an incremental update)."""
    mu = _pymupdf()
    _mupdf_messages(mu)
    try:
        doc = mu.open(path, filetype="pdf") if path is not None else mu.open(stream=data, filetype="pdf")
    except (RuntimeError, ValueError) as exc:  # pymupdf.FileDataError is a RuntimeError
        raise BadImage(Reason.pdf_broken, str(exc) or type(exc).__name__) from None
    try:
        if doc.needs_pass:
            raise BadImage(Reason.pdf_encrypted, "it needs a password to be opened")
        count = doc.page_count
        if count < 1:
            raise BadImage(Reason.pdf_broken, "no pages " + (_mupdf_messages(mu) or ""))
        if count > limits.max_pages:
            raise BadImage(Reason.too_many_pages, f"{count} > {limits.max_pages}")
        if _has_javascript(doc):
            raise BadImage(Reason.pdf_javascript, "it carries JavaScript (not run, not taken)")
    except BaseException:
        doc.close()
        raise
    return doc


def render_dpi(width_pt: float, height_pt: float, limits: Limits) -> float:
    """The resolution a page of ``width_pt`` x ``height_pt`` is rendered at: 300 dpi, less
    where that passes ``max_pixels``."""
    area = max(width_pt, 1.0) * max(height_pt, 1.0) / 72.0**2
    return min(PDF_RENDER_DPI, math.sqrt(limits.max_pixels / area) * 0.999)


def _text_lines(page: Any, scale: float) -> tuple[Line, ...]:
    """The page's own words grouped in its lines, in pixels of the page as shown (``scale``
    pixels a point). MuPDF gives text positions on the page *before* its /Rotate: each
    corner is turned with the page, so a line's polygon keeps its reading direction."""
    mu, turn = _pymupdf(), page.rotation_matrix

    def shown(x: float, y: float) -> tuple[float, float]:
        p = mu.Point(x, y) * turn
        return (round(p.x * scale, 2), round(p.y * scale, 2))

    def quad(x0: float, y0: float, x1: float, y1: float) -> tuple[tuple[float, float], ...]:
        return (shown(x0, y0), shown(x1, y0), shown(x1, y1), shown(x0, y1))

    grouped: dict[tuple[int, int], list[tuple[str, tuple[float, float, float, float]]]] = {}
    for x0, y0, x1, y1, text, block, line, _word in page.get_text("words", sort=True):
        grouped.setdefault((block, line), []).append((str(text), (x0, y0, x1, y1)))
    lines = []
    for words in grouped.values():
        out = []
        for text, box in words:
            q = quad(*box)
            xs, ys = [pt[0] for pt in q], [pt[1] for pt in q]
            out.append(Word(text, (min(xs), min(ys), max(xs), max(ys))))
        x0, y0 = min(b[0] for _t, b in words), min(b[1] for _t, b in words)
        x1, y1 = max(b[2] for _t, b in words), max(b[3] for _t, b in words)
        poly = quad(x0, y0, x1, y1)
        lines.append(Line(" ".join(t for t, _b in words), 1.0, (poly[0], poly[1], poly[2], poly[3]), tuple(out)))
    return tuple(lines)


def _pixmap_bgr(pix: Any) -> np.ndarray:
    import cv2

    rgb = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.stride)[:, : pix.width * 3]
    return cv2.cvtColor(rgb.reshape(pix.height, pix.width, 3), cv2.COLOR_RGB2BGR)


def _pdf_page(doc: Any, i: int, count: int, limits: Limits, repaired: bool) -> PageImage | TextPage:
    """Page ``i`` rendered for OCR or with its own text (the caller holds :data:`_MUPDF`)."""
    mu = _pymupdf()
    try:
        page = doc[i]
        rect = page.rect
        scale = render_dpi(rect.width, rect.height, limits) / 72.0
        matrix = mu.Matrix(scale, scale)
        # the pixels MuPDF renders (the page's edges rounded outwards), and the
        # resolution they have: the JSON's coordinates and dpi, rendered or not
        size = (rect * matrix).irect
        shown = (size.width * 72.0 / rect.width, size.height * 72.0 / rect.height)
        item: PageImage | TextPage
        if not limits.pdf_ocr_pages_with_text and page.get_text("text").strip():
            item = TextPage(i, size.width, size.height, shown, _text_lines(page, scale), count)
        else:
            pix = page.get_pixmap(matrix=matrix, colorspace=mu.csRGB, alpha=False)
            item = PageImage(i, _pixmap_bgr(pix), shown, count)
            del pix
        del page
    except (RuntimeError, ValueError) as exc:
        raise BadImage(Reason.pdf_broken, f"page {i + 1}: {exc}") from None
    problems = _mupdf_messages(mu)
    if repaired and problems:
        raise BadImage(Reason.pdf_broken, f"damaged (truncated?); page {i + 1}: {problems.splitlines()[-1]}")
    return item


def pdf_pages(data: bytes, limits: Limits) -> Iterator[PageImage | TextPage]:
    """A PDF's pages one at a time: a page without text of its own rendered (RGB, annotations
    shown, at :func:`render_dpi`) for OCR, a page with text as a :class:`TextPage` (unless
    ``limits.pdf_ocr_pages_with_text``). Coordinates are pixels of the page as shown (its
    /Rotate and crop box applied) at the stated resolution. A damaged file that MuPDF had to
    repair is refused when a page then fails to load (``pdf_broken``: truncated, most often).

    A worker's decode thread opens the next file while the main thread may still render
    this one's pages: every MuPDF call is made under :data:`_MUPDF` (MuPDF's context, and
    its message buffer, are not for two threads at once); none is held across a yield."""
    with _MUPDF:
        doc = open_pdf(data, limits)
    try:
        with _MUPDF:
            count = doc.page_count
            total = 0
            for i in range(count):
                r = doc[i].rect
                dpi = render_dpi(r.width, r.height, limits)
                if dpi < PDF_MIN_DPI:
                    raise BadImage(Reason.too_many_pixels, f"a page of {r.width:.0f} x {r.height:.0f} pt cannot be read at "
                                   f"{PDF_MIN_DPI:.0f} dpi within {limits.max_pixels} pixels")
                total += int(r.width * dpi / 72) * int(r.height * dpi / 72)
            if total > limits.max_total_pixels:
                raise BadImage(Reason.too_many_pixels, f"the {count} pages hold more than {limits.max_total_pixels} pixels together")
            repaired = bool(doc.is_repaired)
            _mupdf_messages(_pymupdf())
        for i in range(count):
            with _MUPDF:
                item = _pdf_page(doc, i, count, limits, repaired)
            yield item
            del item
    finally:
        with _MUPDF:
            doc.close()
