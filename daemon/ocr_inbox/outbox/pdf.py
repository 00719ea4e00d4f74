"""Searchable PDF of a list of images: each image as it is, the OCR text invisible on top.

Recipe (:func:`build_pdf`; the ``pdf`` command, ``commands/pdf.py``, lists a folder first):

1. the caller gives the pages in order (:class:`PageSource`: image path beneath
   the root, its JSON, the version that was OCR'd), all at once or as a stream
   that yields each page once it is OCR'd (the build then overlaps OCR; a page
   OCR'd before the pages ahead of it may come made ready by :func:`prepare`,
   which is step 2 up to adding the page);
2. per image: read it beneath the root and decode it with ``ocr/images.py``,
   the same code and limits as OCR; a file that is not the version OCR'd
   stops the build (:class:`SourceChanged`): its size, mtime, ctime or inode
   differ from the ledger's, or, whatever the format, its bytes do not have
   the SHA-256 its JSON records (pixels are never paired with another
   version's text). A JPEG with the right hash was decoded in full by OCR: its
   header is checked, it is not decoded again; store each frame as it is (JPEG
   bytes unchanged, other formats losslessly as PNG-predicted Flate), read its
   JSON, and add a page with the picture and the invisible text layer
   (``textlayer.py``);
3. every ``chunk_pages`` pages, save the pages so far as a chunk PDF in a work
   directory and drop them from memory (with ``keep_previous`` the existing
   output is the first chunk);
4. merge the chunks into a temp file beside the output by *incremental
   appends*: open the temp file, append one chunk, ``saveIncr``, close. Each
   append writes only the new chunk's objects, and reopening leaves the earlier
   image streams on disk, so peak memory is about one chunk however many
   pages (see docs/BENCHMARKS.md);
5. add title, producer and one outline entry per page, then publish the temp
   file atomically over the output.

Each chunk carries its own copy of the glyphless font (about 3 KB), shared by
that chunk's pages: the price of merging without holding earlier chunks.

Nothing is dropped silently: an image without usable OCR becomes an image-only
page, an image that cannot be decoded is left out, and both are logged and
listed in the returned :class:`PdfReport`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any

import pymupdf
import structlog
from PIL import Image

from ocr_inbox import __version__
from ocr_inbox.ocr import images, orientation
from ocr_inbox.ocr.results import Page
from ocr_inbox.outbox import document, font, names, textlayer
from ocr_inbox.outbox.names import work_dir_for
from ocr_inbox.outbox.pdfobj import new_stream
from ocr_inbox.support import atomic, paths
from ocr_inbox.support.atomic import is_temp_for
from ocr_inbox.support.errors import BadArguments, BadImage, OutputError
from ocr_inbox.support.paths import JSON_SUFFIX
from ocr_inbox.support.reasons import Reason
from ocr_inbox.support.version import Change, SourceVersion

__all__ = [
    "DEFAULT_DPI", "PageIssue", "assumed_dpi", "PageSource", "PdfImage", "PdfReport", "PreparedImage", "SourceChanged",
    "build_pdf", "pdf_image", "prepare", "work_dir_for",
]

IMAGE_SUFFIXES = paths.IMAGE_SUFFIXES
#: kept for importers; an image whose file gives no (usable) resolution gets ``assumed_dpi``
DEFAULT_DPI = 300.0
#: an image without a resolution is taken for a scanned sheet: its long side is A4's (297 mm)
ASSUMED_LONG_SIDE_IN = 297 / 25.4
#: ... unless that is coarser than a screen's: a small picture is not blown up to a sheet
MIN_ASSUMED_DPI = 72.0
#: PDF viewers limit a page side to 14,400 pt (200 inches)
MAX_PAGE_PT = 14_400.0
#: what a failed PDF write raises (MuPDF's errors are not OSErrors)
_WRITE_ERRORS = (OSError, RuntimeError, pymupdf.mupdf.FzErrorBase)

_log = structlog.get_logger(__name__)
#: a SHA-256 as the JSON records it
_HEX64 = re.compile("[0-9a-f]{64}")


@dataclass(frozen=True)
class PageSource:
    """One image to put in the PDF, in the order given."""

    rel: str  # image path relative to the root (POSIX), e.g. "vol1/p1.jpg"
    json: Path  # its JSON document
    size: int | None  # the version that was OCR'd; None: take the file as it is now
    mtime_ns: int | None
    #: the rest of the version OCR'd (None: not known, judged by size and mtime)
    ctime_ns: int | None = None
    ino: int | None = None


class SourceChanged(OutputError):
    """An image on disk is not the version that was OCR'd: build again after its new OCR.

    An ``OutputError`` so that callers that retry a failed output later do so.
    """

    def __init__(self, rel: str, detail: str = "") -> None:
        self.rel = rel
        super().__init__(f"{rel} changed since it was OCR'd" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class PageIssue:
    """An image (or one frame of it) that lacks text or was left out, and why."""

    image: str  # the image's path relative to the root (a folder build: its file name)
    reason: str  # stable code, e.g. json_missing, corrupt, too_many_pixels
    frame: int | None = None  # TIFF frame; None: the whole file
    detail: str = ""


@dataclass(frozen=True)
class PdfReport:
    path: Path
    pages: int
    #: pages that went in without a text layer (no / unreadable / mismatched JSON)
    image_only: tuple[PageIssue, ...]
    #: images (or frames) that could not be decoded and are not in the PDF
    left_out: tuple[PageIssue, ...]


# --- images: a decoded frame as a PDF image XObject ---------------------------


@dataclass(frozen=True)
class PdfImage:
    """One page's picture as a PDF image XObject, and how it is shown.

    ``orientation`` is the EXIF orientation (1-8), ``rotation`` the turn (degrees
    clockwise, after EXIF) OCR applied to read a page fed sideways or upside down
    (the JSON's ``pages[].rotation``): the stored pixels are turned by the page's
    content matrix, never re-encoded, so the page shows upright and the text layer,
    laid out in upright coordinates, runs left to right on it.
    """

    xobject: str  # image dictionary without /Length and filters
    data: bytes  # stream data, encoded as ``filters`` say
    #: (key, value) of /Filter and /DecodeParms; () lets MuPDF Flate-compress ``data``
    filters: tuple[tuple[str, str], ...]
    width: int  # stored pixels
    height: int
    orientation: int
    dpi: tuple[float, float]  # of the stored pixels
    rotation: int = 0

    @property
    def turned(self) -> bool:
        return self.orientation >= 5  # orientations 5-8 swap width and height

    @property
    def shown_size(self) -> tuple[int, int]:
        """Pixel size after orientation: the JSON's coordinate space."""
        return (self.height, self.width) if self.turned else (self.width, self.height)

    @property
    def sideways(self) -> bool:
        return self.rotation % 180 == 90

    @property
    def upright_size(self) -> tuple[int, int]:
        """Pixel size as the page is shown: after orientation and OCR's rotation."""
        w, h = self.shown_size
        return (h, w) if self.sideways else (w, h)

    @property
    def page_size(self) -> tuple[float, float]:
        """Page size in points: real size at the image's resolution."""
        (w, h), (dx, dy) = self.upright_size, self.dpi
        if self.turned != self.sideways:
            dx, dy = dy, dx
        wpt, hpt = w * 72.0 / dx, h * 72.0 / dy
        shrink = max(wpt / MAX_PAGE_PT, hpt / MAX_PAGE_PT, 1.0)
        return (wpt / shrink, hpt / shrink)

    def matrix(self) -> tuple[float, float, float, float, float, float]:
        """``cm`` operands mapping the image's unit square onto the page, oriented."""
        w, h = self.width, self.height
        sw, sh = self.upright_size
        pw, ph = self.page_size
        flips: dict[int, Callable[[float, float], tuple[float, float]]] = {
            1: lambda u, v: (u, v),
            2: lambda u, v: (w - u, v),
            3: lambda u, v: (w - u, h - v),
            4: lambda u, v: (u, h - v),
            5: lambda u, v: (v, u),
            6: lambda u, v: (h - v, u),
            7: lambda u, v: (h - v, w - u),
            8: lambda u, v: (v, w - u),
        }
        shown = flips[self.orientation]
        upright = orientation.point_mapper(self.rotation, *self.shown_size, inverse=False)

        def on_page(s: float, t: float) -> tuple[float, float]:
            # unit square (y up, row 0 at the top) -> stored pixel -> shown pixel -> upright -> points
            x, y = upright(shown(s * w, (1 - t) * h))
            return (x * pw / sw, ph - y * ph / sh)

        e, f = on_page(0, 0)
        ax, ay = on_page(1, 0)
        cx, cy = on_page(0, 1)
        return (ax - e, ay - f, cx - e, cy - f, e, f)


def assumed_dpi(width: int, height: int) -> float:
    """The resolution of an image whose file states none: the one at which its long side is
    an A4 sheet's long side (a letter sheet is 0.7 inch shorter), but at least 72 dpi. A
    754 x 1000 scan becomes a 8.8 x 11.7 inch page, a 2480 x 3508 one A4 at 300 dpi."""
    return max(MIN_ASSUMED_DPI, max(width, height) / ASSUMED_LONG_SIDE_IN)


def pdf_image(frame: images.Frame) -> PdfImage:
    """How the PDF stores a decoded frame: a JPEG's own bytes, else lossless pixels."""
    dpi = frame.dpi or (assumed_dpi(frame.width, frame.height),) * 2
    if frame.jpeg is not None:
        return _jpeg_page(frame, frame.jpeg, dpi)
    return _lossless_page(frame.image, frame.orientation, dpi)


def _jpeg_page(frame: images.Frame, jpeg: images.JpegSource, dpi: tuple[float, float]) -> PdfImage:
    """The JPEG file's bytes as a DCTDecode stream (``images.frames`` proved they decode)."""
    spaces = {"L": "/DeviceGray", "RGB": "/DeviceRGB", "CMYK": "/DeviceCMYK"}
    # Adobe CMYK JPEGs store inverted values; PDF readers need the Decode array.
    decode = "/Decode[1 0 1 0 1 0 1 0]" if jpeg.mode == "CMYK" and jpeg.adobe else ""
    xobject = (
        f"<</Type/XObject/Subtype/Image/Width {frame.width}/Height {frame.height}"
        f"/ColorSpace{spaces[jpeg.mode]}/BitsPerComponent 8{decode}>>"
    )
    return PdfImage(xobject, jpeg.data, (("Filter", "/DCTDecode"),), frame.width, frame.height, frame.orientation, dpi)


def _png_chunks(png: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        yield png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length


def _lossless_page(im: Image.Image, orientation: int, dpi: tuple[float, float]) -> PdfImage:
    """Pixels as a Flate stream with PNG predictors: PIL writes a PNG and its
    IDAT data is exactly what PDF's FlateDecode + Predictor 15 reads."""
    if im.mode == "CMYK":  # PNG has no CMYK: plain Flate, compressed on insertion
        xobject = (f"<</Type/XObject/Subtype/Image/Width {im.width}/Height {im.height}"
                   "/ColorSpace/DeviceCMYK/BitsPerComponent 8>>")
        return PdfImage(xobject, im.tobytes(), (), im.width, im.height, orientation, dpi)
    buf = BytesIO()
    im.save(buf, "PNG", compress_level=6)
    chunks = list(_png_chunks(buf.getvalue()))
    ihdr = next(data for kind, data in chunks if kind == b"IHDR")
    width, height, bits, colour_type = struct.unpack(">IIBB", ihdr[:10])
    idat = b"".join(data for kind, data in chunks if kind == b"IDAT")
    if colour_type == 3:
        palette = next(data for kind, data in chunks if kind == b"PLTE")
        space, colours = f"[/Indexed/DeviceRGB {len(palette) // 3 - 1}<{palette.hex()}>]", 1
    else:
        space, colours = {0: ("/DeviceGray", 1), 2: ("/DeviceRGB", 3)}[colour_type]
    xobject = (
        f"<</Type/XObject/Subtype/Image/Width {width}/Height {height}"
        f"/ColorSpace{space}/BitsPerComponent {bits}>>"
    )
    filters = (
        ("Filter", "/FlateDecode"),
        ("DecodeParms", f"<</Predictor 15/Colors {colours}/BitsPerComponent {bits}/Columns {width}>>"),
    )
    return PdfImage(xobject, idat, filters, width, height, orientation, dpi)


# --- PDF assembly -------------------------------------------------------------

@dataclass(frozen=True)
class _PageParts:
    """One page made ready to add: the picture, its invisible text (content stream), its outline title."""

    image: PdfImage
    text: bytes  # b"": no text layer
    title: str


@dataclass(frozen=True)
class _PdfPageParts:
    """A page of a PDF from the inbox, added as it is (its text layer, if any, added to it
    already: :func:`add_text_layer`); ``doc`` stays open while the page is added."""

    doc: pymupdf.Document
    index: int
    title: str


#: the text layer's font on a PDF page from the inbox: a name no producer uses
SOURCE_FONT = "OcrInboxGlyphLess"


def _shown_to_user(page: pymupdf.Page) -> pymupdf.Matrix:
    """Points of the page as shown (y up, origin bottom-left: the text layer's space) to its
    user space: its /Rotate undone and its crop box placed. (PyMuPDF's transformation_matrix
    leaves the crop box out on a turned page.)"""
    crop, media = page.cropbox, page.mediabox
    m: pymupdf.Matrix = (
        pymupdf.Matrix(1, 0, 0, -1, 0, page.rect.height)
        * page.derotation_matrix
        * pymupdf.Matrix(1, 0, 0, -1, crop.x0, media.y1 - crop.y0)
    )
    return m


def _own_resources(doc: pymupdf.Document, page_xref: int) -> None:
    """Give the page its own /Resources when it inherits them (a font added must not be
    the only resource it has)."""
    if doc.xref_get_key(page_xref, "Resources")[0] != "null":
        return
    node = page_xref
    while True:
        kind, parent = doc.xref_get_key(node, "Parent")
        if kind != "xref":
            doc.xref_set_key(page_xref, "Resources", "<<>>")
            return
        node = int(parent.split()[0])
        kind, value = doc.xref_get_key(node, "Resources")
        if kind != "null":
            doc.xref_set_key(page_xref, "Resources", value)
            return


def _add_font(doc: pymupdf.Document, page_xref: int, font_xref: int) -> None:
    """Put the font under :data:`SOURCE_FONT` into the page's /Resources /Font, each of which
    may be a dictionary of its own or an indirect object shared with other pages."""
    _own_resources(doc, page_xref)
    holder, path = page_xref, "Resources"
    kind, value = doc.xref_get_key(holder, path)
    if kind == "xref":
        holder, path = int(value.split()[0]), ""
    font_key = f"{path}/Font" if path else "Font"
    kind, value = doc.xref_get_key(holder, font_key)
    if kind == "xref":
        doc.xref_set_key(int(value.split()[0]), SOURCE_FONT, f"{font_xref} 0 R")
    elif kind == "dict":
        doc.xref_set_key(holder, f"{font_key}/{SOURCE_FONT}", f"{font_xref} 0 R")
    else:
        doc.xref_set_key(holder, font_key, f"<</{SOURCE_FONT} {font_xref} 0 R>>")


def add_text_layer(doc: pymupdf.Document, index: int, text_page: Page, font_xref: int) -> None:
    """Add ``text_page``'s lines as invisible text to page ``index`` of a PDF from the inbox.

    Its content is kept byte for byte: the page's streams are bracketed by a new ``q`` and
    ``Q`` (whatever state they leave does not reach the text) and one stream of text is
    appended; the glyphless font goes into its resources under :data:`SOURCE_FONT`. The
    JSON page's pixels are mapped onto the page as shown (its /Rotate and crop box)."""
    page = doc[index]
    rect = page.rect
    tf = textlayer.PixelToPoint.fit(text_page.width, text_page.height, rect.width, rect.height)
    ops = textlayer.text_layer(text_page, tf, SOURCE_FONT)
    if not ops.strip():
        return
    m = _shown_to_user(page)
    cm = " ".join(textlayer.num(v, 6) for v in (m.a, m.b, m.c, m.d, m.e, m.f))
    _add_font(doc, page.xref, font_xref)
    before = new_stream(doc, "<<>>", b"q\n")
    after = new_stream(doc, "<<>>", b"\nQ\nq " + cm.encode() + b" cm\n" + ops + b"\nQ\n")
    contents = [before, *page.get_contents(), after]
    doc.xref_set_key(page.xref, "Contents", "[" + " ".join(f"{x} 0 R" for x in contents) + "]")


def _text_ops(image: PdfImage, text_page: Page | None) -> bytes:
    if text_page is None:
        return b""
    width, height = image.page_size
    tf = textlayer.PixelToPoint.fit(text_page.width, text_page.height, width, height)
    return textlayer.text_layer(text_page, tf, "F0")


class _ChunkWriter:
    """Pages go into an in-memory document saved as a chunk PDF every ``size`` pages."""

    def __init__(self, work_dir: Path, size: int) -> None:
        self.work_dir, self.size = work_dir, size
        self.chunks: list[Path] = []
        self.doc: pymupdf.Document | None = None
        self.font_xref = 0
        #: pages in all chunks, written or not
        self.pages = 0

    def add(self, page: _PageParts | _PdfPageParts) -> None:
        if self.doc is None:
            self.doc, self.font_xref = pymupdf.open(), 0
        if isinstance(page, _PdfPageParts):
            # the page with its objects as they are (pictures, fonts, text), its text layer in
            self.doc.insert_pdf(page.doc, from_page=page.index, to_page=page.index, links=False, annots=True)
            self.pages += 1
            if self.doc.page_count >= self.size:
                self.flush()
            return
        doc, image = self.doc, page.image
        width, height = image.page_size
        doc.new_page(width=width, height=height)
        self.pages += 1
        page_xref = doc.page_xref(doc.page_count - 1)

        image_xref = new_stream(doc, image.xobject, image.data, image.filters)
        cm = " ".join(textlayer.num(v, 4) for v in image.matrix())
        contents = [new_stream(doc, "<<>>", f"q {cm} cm /Im0 Do Q\n".encode())]
        fonts = ""
        if page.text:
            if not self.font_xref:
                self.font_xref = font.add_font(doc)
            contents.append(new_stream(doc, "<<>>", page.text))
            fonts = f"/Font<</F0 {self.font_xref} 0 R>>"
        resources = f"<</XObject<</Im0 {image_xref} 0 R>>{fonts}>>"
        kind, ref = doc.xref_get_key(page_xref, "Resources")
        if kind == "xref":  # fill the page's own empty resources object
            doc.update_object(int(ref.split()[0]), resources)
        else:
            doc.xref_set_key(page_xref, "Resources", resources)
        doc.xref_set_key(page_xref, "Contents", "[" + " ".join(f"{x} 0 R" for x in contents) + "]")
        if doc.page_count >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.doc is None:
            return
        path = self.work_dir / f"chunk-{len(self.chunks):05d}.pdf"
        try:
            self.doc.save(path)
        except _WRITE_ERRORS as exc:
            raise OutputError(f"cannot write the PDF chunk {path}: {exc}") from exc
        finally:
            self.close()
        self.chunks.append(path)

    def close(self) -> None:
        if self.doc is not None:
            self.doc.close()
            self.doc = None


def _merge(chunks: Sequence[Path], dest: Path, title: str, toc: list[list[Any]]) -> None:
    """Append chunk after chunk to ``dest`` with incremental saves (flat memory)."""
    shutil.move(chunks[0], dest)  # a rename: the work dir is beside the output
    for chunk in chunks[1:]:
        with pymupdf.open(dest) as out, pymupdf.open(chunk) as src:
            out.insert_pdf(src)
            out.saveIncr()
        chunk.unlink()
    with pymupdf.open(dest) as out:
        now = pymupdf.get_pdf_now()
        out.set_metadata(
            {
                "title": title,
                "producer": f"ocr-inbox {__version__}",
                "creator": "ocr-inbox",
                "creationDate": now,
                "modDate": now,
            }
        )
        out.set_toc(toc)
        out.saveIncr()


# --- work area ----------------------------------------------------------------


@contextlib.contextmanager
def _work_area(work_dir: Path, out_pdf: Path, log: Any) -> Iterator[Path]:
    """An exclusive, empty work directory; leftovers of a crashed build are swept first.

    The directory's flock says a build of this output is running, so a second
    one fails fast instead of deleting the first one's files.
    """
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise OutputError(f"cannot create the work directory {work_dir}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutputError(f"another build of {out_pdf} is running ({work_dir} is locked)") from exc
        stale = [p for p in work_dir.iterdir()]
        stale += [p for p in out_pdf.parent.iterdir() if is_temp_for(out_pdf, p.name)]
        for p in stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if stale:
            log.info("pdf_leftovers_swept", files=[str(p) for p in stale])
        try:
            yield work_dir
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
    finally:
        os.close(fd)


# --- the builder --------------------------------------------------------------


def build_pdf(
    root: Path,
    pages: Iterable[PageSource | PreparedImage],
    out_pdf: Path,
    *,
    title: str,
    limits: images.Limits,
    chunk_pages: int = 50,
    work_dir: Path | None = None,
    keep_previous: bool = False,
    log: Any = None,
) -> PdfReport:
    """Build one searchable PDF of ``pages``, in the order given, over ``out_pdf``.

    Each image is opened beneath ``root`` (``images.read_file``: links leaving
    ``root`` are refused) and decoded by ``images.frames`` with ``limits``, as
    for OCR. A page given with its version (``size`` not None) whose file has
    another (size, mtime, ctime, inode), or whose bytes do not have the SHA-256
    its JSON records, raises :class:`SourceChanged` and nothing is published.
    An image that cannot be read or decoded is left out; one without a JSON
    that matches it (size and mtime, and the SHA-256 when the page was given
    without its version) goes in image-only; both are reported.

    ``pages`` may be a generator that waits for pages still being OCR'd: each
    page is added as it comes, and nothing is published before it ends (an
    exception from it ends the build with nothing published).

    ``keep_previous``: an existing ``out_pdf``'s pages (and outline) come first,
    so a late page extends the PDF of a folder whose sources are gone.
    Work files go to ``<work_dir or out_pdf's dir>/`` + ``names.work_dir_for``,
    removed afterwards; ``out_pdf`` is replaced atomically, and only by a
    complete PDF.

    Raises ``BadArguments`` for no pages, none decodable, a bad ``chunk_pages``
    or an output that is a directory; ``OutputError`` when the output cannot
    be written.
    """
    log = log or _log
    root, out_pdf = Path(root), Path(out_pdf)
    if out_pdf.is_dir():
        raise BadArguments(f"output is a directory: {out_pdf}")
    if chunk_pages < 1:
        raise BadArguments(f"chunk_pages must be at least 1, not {chunk_pages}")
    if isinstance(pages, Sized) and not pages and not (keep_previous and out_pdf.exists()):
        raise BadArguments(f"no images for {out_pdf}")
    try:
        out_pdf.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_pdf.parent}: {exc}") from exc
    work = work_dir_for(out_pdf, work_dir)

    count = {"images": len(pages)} if isinstance(pages, Sized) else {"streamed": True}
    log.info("pdf_build_started", root=str(root), out=str(out_pdf), **count)
    issues = _Issues(log)
    toc: list[list[Any]] = []
    with _work_area(work, out_pdf, log):
        writer = _ChunkWriter(work, chunk_pages)
        if keep_previous and out_pdf.exists():
            _take_previous(writer, out_pdf, toc, issues)
        try:
            for item in pages:
                if isinstance(item, PreparedImage):
                    issues.replay(item.issues)
                    parts: Iterable[_PageParts | _PdfPageParts] = item.pages
                else:
                    parts = _image_pages(root, item, limits, issues)
                for page in parts:
                    writer.add(page)
                    toc.append([1, page.title, writer.pages])
            writer.flush()
        finally:
            writer.close()
        if writer.pages == 0:
            raise BadArguments(f"no decodable images for {out_pdf}")
        tmp = atomic.temp_path_for(out_pdf)
        try:
            _merge(writer.chunks, tmp, title, toc)
            atomic.publish(tmp, out_pdf)
        except _WRITE_ERRORS as exc:
            raise OutputError(f"cannot write {out_pdf}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    report = PdfReport(out_pdf, writer.pages, tuple(issues.image_only), tuple(issues.left_out))
    log.info("pdf_built", out=str(out_pdf), pages=report.pages,
             image_only=len(report.image_only), left_out=len(report.left_out))
    return report


class _Issues:
    """What went in without text, and what was left out: logged (unless ``log`` is None:
    recorded ahead, by :func:`prepare`, and logged when replayed) and kept for the report."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.image_only: list[PageIssue] = []
        self.left_out: list[PageIssue] = []

    def without_text(self, issue: PageIssue) -> None:
        self.image_only.append(issue)
        if self.log is not None:
            self.log.warning("pdf_page_without_text", image=issue.image, frame=issue.frame,
                             reason=issue.reason, detail=issue.detail)

    def leave_out(self, issue: PageIssue) -> None:
        self.left_out.append(issue)
        if self.log is not None:
            self.log.warning("pdf_image_left_out", image=issue.image, frame=issue.frame,
                             reason=issue.reason, detail=issue.detail)

    def replay(self, recorded: _Issues) -> None:
        for issue in recorded.left_out:
            self.leave_out(issue)
        for issue in recorded.image_only:
            self.without_text(issue)


def _take_previous(writer: _ChunkWriter, out_pdf: Path, toc: list[list[Any]], issues: _Issues) -> None:
    """The existing output as the first chunk, its outline kept; an unreadable one is reported."""
    copy = writer.work_dir / "previous.pdf"
    try:
        shutil.copyfile(out_pdf, copy)
        with pymupdf.open(copy) as doc:
            if doc.needs_pass or not doc.is_pdf:
                raise ValueError("not a readable PDF")
            pages, outline = doc.page_count, doc.get_toc(simple=True)
    except (OSError, ValueError, RuntimeError, pymupdf.mupdf.FzErrorBase) as exc:
        copy.unlink(missing_ok=True)
        issues.leave_out(PageIssue(out_pdf.name, "previous_pdf_unreadable", None, f"{type(exc).__name__}: {exc}"))
        return
    if pages:
        writer.chunks.append(copy)
        writer.pages += pages
        toc.extend(outline)


@dataclass(frozen=True)
class PreparedImage:
    """An image made ready to add before its turn (:func:`prepare`); its issues are logged when added."""

    src: PageSource
    pages: tuple[_PageParts, ...]
    issues: _Issues


def prepare(root: Path, src: PageSource, limits: images.Limits) -> PreparedImage | None:
    """Everything :func:`build_pdf` does for one image but adding it: read it beneath ``root``,
    check it is the version OCR'd (else :class:`SourceChanged`), decode it, lay out its text.

    For a page OCR'd before the pages ahead of it: a streaming build makes it ready
    while it waits for them. None for a file of several frames: those are done frame
    by frame in their turn, so memory stays at about a chunk.
    """
    if src.rel.lower().endswith(".pdf"):
        return None  # a PDF's pages are added from the open file, in their turn
    issues = _Issues(None)
    pages: list[_PageParts] = []
    for page in _image_pages(Path(root), src, limits, issues):
        if pages or isinstance(page, _PdfPageParts):
            return None
        pages.append(page)
    return PreparedImage(src, tuple(pages), issues)


def _image_pages(root: Path, src: PageSource, limits: images.Limits, issues: _Issues) -> Iterator[_PageParts | _PdfPageParts]:
    """Every frame of one image file as a page made ready, one at a time; record what goes in
    without text or not at all."""
    name = src.rel.rsplit("/", 1)[-1]
    try:
        data, st = images.read_file(str(root), src.rel, limits)
    except BadImage as exc:
        issues.leave_out(PageIssue(src.rel, exc.reason, None, exc.detail))
        return
    if src.size is not None and src.mtime_ns is not None:
        ocrd = SourceVersion(src.size, src.mtime_ns, src.ctime_ns, src.ino)
        now = SourceVersion.of(st)
        if now.against(ocrd) not in (Change.same, Change.fill):
            raise SourceChanged(src.rel, f"{now.describe()}; OCR'd {ocrd.describe()}")
    if images.is_pdf(data):
        yield from _pdf_source_pages(root, src, data, st, limits, issues)
        return
    text_pages, sha256, reason, detail = _checked_json_pages(src, data, st)
    # OCR decoded these very bytes (checked just now): the check decode would only repeat it
    # (80 % of a page's build)
    decoded = sha256 is not None
    try:
        for frame in images.frames(data, limits, draft_jpeg=True, decoded_before=decoded):
            multi = frame.count > 1
            frame_no = frame.index if multi else None
            if isinstance(frame, images.BadFrame):
                issues.leave_out(PageIssue(src.rel, frame.error.reason, frame_no, frame.error.detail))
                continue
            try:
                image = pdf_image(frame)
            except (OSError, ValueError) as exc:  # PIL's PNG writer
                issues.leave_out(PageIssue(src.rel, Reason.corrupt, frame_no, str(exc)))
                continue
            text_page = _text_page(src.rel, frame_no, frame.index, image, text_pages, reason, detail, issues)
            if text_page is not None and text_page.rotation:
                # shown as OCR read it; the JSON's boxes are the stored image's: turn them too
                image = replace(image, rotation=text_page.rotation)
                text_page = orientation.upright_page(text_page)
            title = f"{name} ({frame.index + 1}/{frame.count})" if multi else name
            yield _PageParts(image, _text_ops(image, text_page), title)
    except BadImage as exc:  # the file as a whole
        issues.leave_out(PageIssue(src.rel, exc.reason, None, exc.detail))


def _copy_in_the_way(root: Path, src: PageSource, copy: Path) -> bool:
    """True when the copy's name is its folder's PDF (``mail/mail.pdf``): the folder's PDF
    wins (it holds the same pages, with their text), the copy is not written."""
    outbox = Path(str(src.json)[: -len(src.rel + JSON_SUFFIX)] or ".")
    folder = src.rel.rsplit("/", 1)[0] if "/" in src.rel else ""
    return names.pdf_path_for(outbox, root, folder) == copy


def _pdf_source_pages(
    root: Path, src: PageSource, data: bytes, st: os.stat_result, limits: images.Limits, issues: _Issues
) -> Iterator[_PdfPageParts]:
    """The pages of a PDF from the inbox, each with the text layer of its OCR'd JSON page;
    and, when its JSON is current, its searchable copy published beside the JSON.

    The copy starts as the very bytes OCR read, in a temp file beside it; the text layers
    are added to its pages and saved as an incremental update appended to those bytes
    (a full save, streams kept as they are, when MuPDF had to repair the file), so
    everything the PDF held (pictures, vector text, fonts, outline) stays as it was. A
    page whose JSON page is its own text (``source`` pdf_text) gets no layer; a page OCR
    read turned (``rotation``) gets its /Rotate turned too, so it shows upright."""
    name = src.rel.rsplit("/", 1)[-1]
    text_pages, _sha256, reason, detail = _checked_json_pages(src, data, st)
    copy = names.searchable_copy_path(src.json)
    write_copy = not reason and not _copy_in_the_way(root, src, copy)
    tmp, full = atomic.temp_path_for(copy), atomic.temp_path_for(copy)
    try:
        tmp.write_bytes(data)
        try:
            doc = images.open_pdf(data, limits, path=str(tmp))
        except BadImage as exc:
            issues.leave_out(PageIssue(src.rel, exc.reason, None, exc.detail))
            return
        with doc:
            font_xref = 0
            count = doc.page_count
            for i in range(count):
                text_page = text_pages[i] if i < len(text_pages) else None
                if text_page is None:
                    why = reason or "json_page_missing"
                    issues.without_text(PageIssue(src.rel, why, i, detail or f"the JSON has {len(text_pages)} page(s)"))
                elif text_page.source != "pdf_text":
                    if text_page.lines:
                        font_xref = font_xref or font.add_font(doc)
                        add_text_layer(doc, i, text_page, font_xref)
                    if text_page.rotation:
                        # OCR read it turned: shown upright from now on (/Rotate; content and
                        # text layer, already in place, turn with it)
                        doc[i].set_rotation((doc[i].rotation + text_page.rotation) % 360)
                yield _PdfPageParts(doc, i, f"{name} ({i + 1}/{count})" if count > 1 else name)
            incremental = doc.can_save_incrementally()
            if write_copy:
                if incremental:
                    doc.saveIncr()
                else:
                    doc.save(full)
        if write_copy:
            if not incremental:
                os.replace(full, tmp)
            atomic.publish(tmp, copy)
    except _WRITE_ERRORS as exc:
        raise OutputError(f"cannot write the searchable copy {copy}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        full.unlink(missing_ok=True)


def _text_page(
    rel: str,
    frame_no: int | None,
    index: int,
    image: PdfImage,
    pages: tuple[Page, ...],
    reason: str,
    detail: str,
    issues: _Issues,
) -> Page | None:
    """The JSON page for frame ``index`` if it fits the image, else None (reported)."""
    text_page = pages[index] if index < len(pages) else None
    if text_page is None and not reason:
        reason, detail = "json_page_missing", f"the JSON has {len(pages)} page(s)"
    elif text_page is not None and (text_page.width, text_page.height) != image.shown_size:
        w, h = image.shown_size
        reason, detail = "json_size_mismatch", f"JSON {text_page.width}x{text_page.height} != image {w}x{h}"
        text_page = None
    if text_page is None:
        issues.without_text(PageIssue(rel, reason, frame_no, detail))
    return text_page


def _checked_json_pages(
    src: PageSource, data: bytes, st: os.stat_result
) -> tuple[tuple[Page, ...], str | None, str, str]:
    """``_json_pages``, and the bytes read checked against the SHA-256 the JSON records, for
    every format: a page given with the version OCR'd whose bytes are another's (rewritten
    with its size and mtime put back) raises :class:`SourceChanged` (its new OCR is awaited);
    one taken as it is now (the ``pdf`` command) goes in without text (``json_stale``)."""
    text_pages, sha256, reason, detail = _json_pages(src.json, st)
    if sha256 is None or not _HEX64.fullmatch(sha256):
        # none recorded (a JSON not written by OCR, which always records one): nothing to prove
        return text_pages, None, reason, detail
    if hashlib.sha256(data).hexdigest() != sha256:
        if src.size is not None:
            raise SourceChanged(src.rel, "its bytes do not have the SHA-256 its JSON records")
        return (), None, "json_stale", "the JSON records another SHA-256"
    return text_pages, sha256, reason, detail


def _json_pages(json_file: Path, st: os.stat_result) -> tuple[tuple[Page, ...], str | None, str, str]:
    """The JSON's pages and the SHA-256 it records if it describes the file opened (``st``),
    else ((), None) with the reason why not."""
    try:
        doc = document.read(json_file)
    except FileNotFoundError:
        return (), None, "json_missing", str(json_file)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return (), None, "json_unreadable", f"{type(exc).__name__}: {exc}"
    if (doc.source.size, doc.source.mtime_ns) != (st.st_size, st.st_mtime_ns):
        return (), None, "json_stale", (
            f"JSON of size {doc.source.size}, mtime_ns {doc.source.mtime_ns}; "
            f"the file has {st.st_size}, {st.st_mtime_ns}"
        )
    return doc.pages, doc.source.sha256, "", ""
