"""Searchable PDF of an image folder: each image as it is, the OCR text invisible on top.

Recipe (:func:`build_folder_pdf`):

1. list the folder's images in page order (``order.py``);
2. per image: check and load it (JPEG bytes kept as they are, other formats
   stored losslessly as PNG-predicted Flate), read its JSON, add one page per
   image frame with the picture and the invisible text layer (``textlayer.py``);
3. every ``chunk_pages`` pages, save the pages so far as a chunk PDF in a work
   directory and drop them from memory;
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
import math
import os
import re
import shutil
import struct
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pymupdf
import structlog
from PIL import Image

from ocr_inbox import __version__, atomic
from ocr_inbox.config import DEFAULT_IGNORE
from ocr_inbox.errors import BadArguments, OutputError
from ocr_inbox.inbox import scan
from ocr_inbox.ocr import results
from ocr_inbox.outbox import document, font, order, textlayer

IMAGE_SUFFIXES = scan.IMAGE_SUFFIXES
DEFAULT_DPI = 300.0
DEFAULT_MAX_PIXELS = 200_000_000
#: PDF viewers limit a page side to 14,400 pt (200 inches)
MAX_PAGE_PT = 14_400.0
#: work directories are temp names too, so the daemon's start-up sweep clears a crashed build's
WORK_PREFIX = atomic.TMP_PREFIX + "pdf-"
#: what a failed PDF write raises (MuPDF's errors are not OSErrors)
_WRITE_ERRORS = (OSError, RuntimeError, pymupdf.mupdf.FzErrorBase)

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PageIssue:
    """An image (or one frame of it) that lacks text or was left out, and why."""

    image: str  # file name in the image folder
    reason: str  # stable code, e.g. json_missing, undecodable, too_many_pixels
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


# --- images -------------------------------------------------------------------


class _Undecodable(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = reason, detail
        super().__init__(reason)


@dataclass(frozen=True)
class PageImage:
    """One page's picture as a PDF image XObject, and how it is shown.

    ``orientation`` is the EXIF orientation (1-8): the stored pixels are
    turned by the page's content matrix, never re-encoded.
    """

    xobject: str  # image dictionary without /Length and filters
    data: bytes  # stream data, encoded as ``filters`` say
    #: (key, value) of /Filter and /DecodeParms; () lets MuPDF Flate-compress ``data``
    filters: tuple[tuple[str, str], ...]
    width: int  # stored pixels
    height: int
    orientation: int
    dpi: tuple[float, float]  # of the stored pixels

    @property
    def turned(self) -> bool:
        return self.orientation >= 5  # orientations 5-8 swap width and height

    @property
    def shown_size(self) -> tuple[int, int]:
        """Pixel size after orientation: the JSON's coordinate space."""
        return (self.height, self.width) if self.turned else (self.width, self.height)

    @property
    def page_size(self) -> tuple[float, float]:
        """Page size in points: real size at the image's resolution."""
        (w, h), (dx, dy) = self.shown_size, self.dpi
        if self.turned:
            dx, dy = dy, dx
        wpt, hpt = w * 72.0 / dx, h * 72.0 / dy
        shrink = max(wpt / MAX_PAGE_PT, hpt / MAX_PAGE_PT, 1.0)
        return (wpt / shrink, hpt / shrink)

    def matrix(self) -> tuple[float, float, float, float, float, float]:
        """``cm`` operands mapping the image's unit square onto the page, oriented."""
        w, h = self.width, self.height
        sw, sh = self.shown_size
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

        def on_page(s: float, t: float) -> tuple[float, float]:
            # unit square (y up, row 0 at the top) -> stored pixel -> shown pixel -> points
            x, y = shown(s * w, (1 - t) * h)
            return (x * pw / sw, ph - y * ph / sh)

        e, f = on_page(0, 0)
        ax, ay = on_page(1, 0)
        cx, cy = on_page(0, 1)
        return (ax - e, ay - f, cx - e, cy - f, e, f)


def _dpi(info: Mapping[Any, Any]) -> tuple[float, float]:
    try:
        dx, dy = (float(v) for v in info["dpi"])
    except (KeyError, TypeError, ValueError):
        return (DEFAULT_DPI, DEFAULT_DPI)
    if not (math.isfinite(dx) and math.isfinite(dy) and dx >= 1 and dy >= 1):
        return (DEFAULT_DPI, DEFAULT_DPI)
    return (dx, dy)


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the page
        return 1
    return value if 1 <= value <= 8 else 1


def _jpeg_page(data: bytes, im: Image.Image) -> PageImage:
    """The JPEG file's bytes as a DCTDecode stream, after proving they decode."""
    spaces = {"L": "/DeviceGray", "RGB": "/DeviceRGB", "CMYK": "/DeviceCMYK"}
    if im.mode not in spaces:
        raise _Undecodable("unsupported_jpeg", im.mode)
    width, height, orientation, dpi = im.width, im.height, _orientation(im), _dpi(im.info)
    # Adobe CMYK JPEGs store inverted values; PDF readers need the Decode array.
    decode = "/Decode[1 0 1 0 1 0 1 0]" if im.mode == "CMYK" and "adobe" in im.info else ""
    # Decoding at 1/8 scale (DCT scaling) still reads every entropy-coded byte.
    im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
    im.load()
    xobject = (
        f"<</Type/XObject/Subtype/Image/Width {width}/Height {height}"
        f"/ColorSpace{spaces[im.mode]}/BitsPerComponent 8{decode}>>"
    )
    return PageImage(xobject, data, (("Filter", "/DCTDecode"),), width, height, orientation, dpi)


def _flatten(im: Image.Image) -> Image.Image:
    """Modes PNG/PDF can store as they are; transparency composited on white (as shown on paper)."""
    if im.mode in ("1", "L", "RGB", "I;16") or (im.mode == "P" and "transparency" not in im.info):
        return im
    if im.mode in ("LA", "La"):
        bg = Image.new("L", im.size, 255)
        bg.paste(im.convert("L"), mask=im.getchannel("A"))
        return bg
    if im.mode in ("RGBA", "RGBa", "PA", "P"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return bg
    return im.convert("RGB")


def _png_chunks(png: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        yield png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length


def _lossless_page(im: Image.Image, orientation: int, dpi: tuple[float, float]) -> PageImage:
    """Pixels as a Flate stream with PNG predictors: PIL writes a PNG and its
    IDAT data is exactly what PDF's FlateDecode + Predictor 15 reads."""
    if im.mode == "CMYK":  # PNG has no CMYK: plain Flate, compressed on insertion
        xobject = (f"<</Type/XObject/Subtype/Image/Width {im.width}/Height {im.height}"
                   "/ColorSpace/DeviceCMYK/BitsPerComponent 8>>")
        return PageImage(xobject, im.tobytes(), (), im.width, im.height, orientation, dpi)
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
    return PageImage(xobject, idat, filters, width, height, orientation, dpi)


def load_images(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[PageImage | _Undecodable]:
    """The pages of one image file: one per TIFF frame, else one.

    Holds an ``_Undecodable`` in place of a frame that fails, and raises it
    when the file as a whole cannot be opened. The pixel count is checked
    from the header, before anything is decoded.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Undecodable("unreadable", str(exc)) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise _Undecodable("too_many_pixels", str(exc)) from exc
        except Exception as exc:  # PIL raises many types for bad files
            raise _Undecodable("undecodable", f"{type(exc).__name__}: {exc}") from exc
        pages: list[PageImage | _Undecodable] = []
        with im:
            frames = getattr(im, "n_frames", 1) if im.format == "TIFF" else 1
            for i in range(frames):
                try:
                    im.seek(i)
                    if im.width * im.height > max_pixels:
                        raise _Undecodable("too_many_pixels", f"{im.width}x{im.height} > {max_pixels}")
                    if im.format in ("JPEG", "MPO"):
                        pages.append(_jpeg_page(data, im))
                    else:
                        orientation, dpi = _orientation(im), _dpi(im.info)
                        im.load()
                        pages.append(_lossless_page(_flatten(im), orientation, dpi))
                except _Undecodable as exc:
                    pages.append(exc)
                except Exception as exc:  # noqa: BLE001 - PIL raises any type for corrupt data
                    pages.append(_Undecodable("undecodable", f"{type(exc).__name__}: {exc}"))
    return pages


# --- text ---------------------------------------------------------------------


def _json_pages(json_file: Path, image: Path) -> tuple[tuple[results.Page, ...], str, str]:
    """The JSON's pages, or () with the reason and detail why it can't be used."""
    try:
        doc = document.read(json_file)
    except FileNotFoundError:
        return (), "json_missing", str(json_file)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return (), "json_unreadable", f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError):
        if doc.source.size != image.stat().st_size:
            return (), "json_stale", f"source size {doc.source.size} != {image.stat().st_size}"
    return doc.pages, "", ""


# --- PDF assembly -------------------------------------------------------------


def _new_stream(doc: pymupdf.Document, obj: str, data: bytes, filters: Sequence[tuple[str, str]] = ()) -> int:
    """A new stream object; without ``filters`` MuPDF Flate-compresses ``data``."""
    xref: int = doc.get_new_xref()
    doc.update_object(xref, obj)
    doc.update_stream(xref, data, compress=not filters)
    # Storing encoded data makes MuPDF drop /Filter and /DecodeParms: set them after.
    for key, value in filters:
        doc.xref_set_key(xref, key, value)
    return xref


def _num(v: float) -> str:
    s = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


class _ChunkWriter:
    """Pages go into an in-memory document saved as a chunk PDF every ``size`` pages."""

    def __init__(self, work_dir: Path, size: int) -> None:
        self.work_dir, self.size = work_dir, size
        self.chunks: list[Path] = []
        self.doc: pymupdf.Document | None = None
        self.font_xref = 0

    def add(self, image: PageImage, text_page: results.Page | None) -> None:
        if self.doc is None:
            self.doc, self.font_xref = pymupdf.open(), 0
        doc = self.doc
        width, height = image.page_size
        doc.new_page(width=width, height=height)
        page_xref = doc.page_xref(doc.page_count - 1)

        image_xref = _new_stream(doc, image.xobject, image.data, image.filters)
        cm = " ".join(_num(v) for v in image.matrix())
        contents = [_new_stream(doc, "<<>>", f"q {cm} cm /Im0 Do Q\n".encode())]
        fonts = ""
        if text_page is not None:
            tf = textlayer.PixelToPoint.fit(text_page.width, text_page.height, width, height)
            text = textlayer.text_layer(text_page, tf, "F0")
            if text:
                if not self.font_xref:
                    self.font_xref = font.add_font(doc)
                contents.append(_new_stream(doc, "<<>>", text))
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
    shutil.copyfile(chunks[0], dest)
    chunks[0].unlink()
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


def _temp_name_pattern(dest: Path) -> re.Pattern[str]:
    # atomic.temp_path_for: <prefix><pid>-<ns>-<stem>.part
    return re.compile(rf"{re.escape(atomic.TMP_PREFIX)}\d+-\d+-{re.escape(atomic.temp_stem(dest))}\.part")


def work_dir_for(out_pdf: Path, parent: Path | None = None) -> Path:
    """The build's work directory: one per output (it is the build's lock), its name
    kept short so that a long output name cannot push it past NAME_MAX."""
    return (parent or out_pdf.parent) / f"{WORK_PREFIX}{atomic.temp_stem(out_pdf)}-work"


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
        pattern = _temp_name_pattern(out_pdf)
        stale += [p for p in out_pdf.parent.iterdir() if pattern.fullmatch(p.name)]
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


def list_images(image_dir: Path, first_prefixes: Sequence[str] = (), root: Path | None = None) -> list[str]:
    """Image file names directly in ``image_dir`` in page order.

    A file becomes a page only if the inbox scanner would accept it (same
    rules: ignore patterns, no symlink leading outside ``root`` — default
    ``image_dir``, the daemon passes the inbox —, no fifo, no loop, no name the
    outbox can't mirror), so the PDF holds exactly the images that were OCR'd.
    """
    real_dir = os.path.realpath(image_dir)
    real_root = os.path.realpath(root or image_dir)
    if not scan.inside(real_root, real_dir):
        real_root = real_dir
    rel_dir = os.path.relpath(real_dir, real_root)
    prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
    names = sorted(
        name
        for name in os.listdir(image_dir)
        if isinstance(scan.classify(real_root, prefix + name, DEFAULT_IGNORE), scan.Candidate)
    )
    return order.page_order(names, first_prefixes)


def build_folder_pdf(
    image_dir: Path,
    json_dir: Path,
    out_pdf: Path,
    *,
    chunk_pages: int = 50,
    first_prefixes: Sequence[str] = (),
    work_dir: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    root: Path | None = None,
    log: Any = None,
) -> PdfReport:
    """Build one searchable PDF from the images directly in ``image_dir``.

    ``json_dir`` holds ``<image file name>.json`` per image (docs/JSON.md).
    Work files go to ``<work_dir or out_pdf's dir>/.ocr-inbox-tmp-pdf-<out name>-work``
    (a long name shortened by ``atomic.fit_name``),
    which is removed afterwards. ``max_pixels`` caps an image's pixel count
    (checked before decoding; PIL's own process-wide limit applies as well).
    Symlinks resolving outside ``root`` (default ``image_dir``; the daemon
    passes the inbox) are never followed.
    ``out_pdf`` is replaced atomically, and only by a complete PDF.

    Raises ``BadArguments`` for missing directories, a folder without
    (decodable) images or a bad ``chunk_pages``; ``OutputError`` when the
    output cannot be written.
    """
    log = log or _log
    image_dir, json_dir, out_pdf = Path(image_dir), Path(json_dir), Path(out_pdf)
    if not image_dir.is_dir():
        raise BadArguments(f"image folder not found: {image_dir}")
    if not json_dir.is_dir():
        raise BadArguments(f"JSON folder not found: {json_dir}")
    if out_pdf.is_dir():
        raise BadArguments(f"output is a directory: {out_pdf}")
    if chunk_pages < 1:
        raise BadArguments(f"chunk_pages must be at least 1, not {chunk_pages}")
    try:
        names = list_images(image_dir, first_prefixes, root)
    except OSError as exc:
        raise BadArguments(f"cannot list {image_dir}: {exc}") from exc
    if not names:
        raise BadArguments(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {image_dir}")
    try:
        out_pdf.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_pdf.parent}: {exc}") from exc
    work = work_dir_for(out_pdf, work_dir)

    log.info("pdf_build_started", image_dir=str(image_dir), images=len(names), out=str(out_pdf))
    image_only: list[PageIssue] = []
    left_out: list[PageIssue] = []
    toc: list[list[Any]] = []
    with _work_area(work, out_pdf, log):
        writer = _ChunkWriter(work, chunk_pages)
        try:
            for name in names:
                _add_image(writer, image_dir / name, json_dir / (name + document.JSON_SUFFIX),
                           max_pixels, toc, image_only, left_out, log)
            writer.flush()
        finally:
            writer.close()
        if not toc:
            raise BadArguments(f"no decodable images in {image_dir}")
        tmp = atomic.temp_path_for(out_pdf)
        try:
            _merge(writer.chunks, tmp, image_dir.resolve().name, toc)
            atomic.publish(tmp, out_pdf)
        except _WRITE_ERRORS as exc:
            raise OutputError(f"cannot write {out_pdf}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    report = PdfReport(out_pdf, len(toc), tuple(image_only), tuple(left_out))
    log.info("pdf_built", out=str(out_pdf), pages=report.pages,
             image_only=len(report.image_only), left_out=len(report.left_out))
    return report


def _add_image(
    writer: _ChunkWriter,
    image: Path,
    json_file: Path,
    max_pixels: int,
    toc: list[list[Any]],
    image_only: list[PageIssue],
    left_out: list[PageIssue],
    log: Any,
) -> None:
    """Add every page of one image file; record what went in without text or not at all."""
    name = image.name
    try:
        frames = load_images(image, max_pixels)
    except _Undecodable as exc:
        left_out.append(PageIssue(name, exc.reason, None, exc.detail))
        log.warning("pdf_image_left_out", image=name, reason=exc.reason, detail=exc.detail)
        return
    pages, reason, detail = _json_pages(json_file, image)
    multi = len(frames) > 1
    for i, frame in enumerate(frames):
        frame_no = i if multi else None
        if isinstance(frame, _Undecodable):
            left_out.append(PageIssue(name, frame.reason, frame_no, frame.detail))
            log.warning("pdf_image_left_out", image=name, frame=frame_no, reason=frame.reason, detail=frame.detail)
            continue
        text_page = pages[i] if i < len(pages) else None
        why, why_detail = reason, detail
        if text_page is None and not why:
            why, why_detail = "json_page_missing", f"the JSON has {len(pages)} page(s)"
        elif text_page is not None and (text_page.width, text_page.height) != frame.shown_size:
            why = "json_size_mismatch"
            why_detail = f"JSON {text_page.width}x{text_page.height} != image {frame.shown_size[0]}x{frame.shown_size[1]}"
            text_page = None
        if text_page is None:
            image_only.append(PageIssue(name, why, frame_no, why_detail))
            log.warning("pdf_page_without_text", image=name, frame=frame_no, reason=why, detail=why_detail)
        writer.add(frame, text_page)
        toc.append([1, f"{name} ({i + 1}/{len(frames)})" if multi else name, len(toc) + 1])
