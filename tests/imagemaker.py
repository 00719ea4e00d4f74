"""Small synthetic images for fault and format tests (real pages come from the corpus)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from PIL import Image

from ocr_inbox.ocr import images

POISON_SIGKILL, POISON_SEGV, POISON_EXIT, POISON_RAISE = 1, 2, 3, 4
#: hangs in the engine; segfaults the decoder; SIGKILL while $FAKE_ENGINE_CRASH_FLAG exists
POISON_HANG, POISON_DECODE_SEGV, POISON_WHILE_FLAG = 5, 6, 7


def plain(path: Path, size: tuple[int, int] = (64, 48), marker: int = 200, fmt: str | None = None) -> Path:
    """A light image whose top-left pixel is (marker, marker, marker)."""
    img = Image.new("RGB", size, (230, 230, 230))
    img.putpixel((0, 0), (marker, marker, marker))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def png_with_declared_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims ``width`` x ``height`` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- real text, many formats
#
# The bad-input battery (tests/test_bad_input.py) needs small pages with real text in
# every format the inbox accepts. They are cut from a corpus page at test time (the
# corpus stays outside the repository) and written with PIL.

#: crops of tesseract_test/phototest.tif (640x480, bilevel) and the words each one shows
PHOTOTEST = "tesseract_test/phototest.tif"
CROPS: dict[str, tuple[tuple[int, int, int, int], str]] = {
    # three lines: wider than tall, so a 90° turn shows in the page size
    "lot": ((24, 82, 632, 190), "12 point text"),
    "quick": ((24, 188, 600, 224), "quick brown dog"),
    "lazy": ((24, 222, 600, 258), "lazy fox"),
    "format": ((24, 150, 300, 190), "file format"),
}

#: EXIF orientation -> the transpose that turns the stored pixels upright (PIL's exif_transpose)
EXIF_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
}


def text_crop(corpus: Path, which: str = "lot", scale: float = 1.0) -> Image.Image:
    """A grayscale crop of a real corpus page that reads ``CROPS[which][1]``."""
    box, _ = CROPS[which]
    with Image.open(corpus / PHOTOTEST) as page:
        img = page.convert("L").crop(box)
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    return img


def save(img: Image.Image, path: Path, fmt: str | None = None, **params: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **params)
    return path


def with_exif_orientation(upright: Image.Image, path: Path, orientation: int) -> Path:
    """A JPEG whose stored pixels, turned by EXIF ``orientation`` (1-8), show ``upright``."""
    stored = upright
    if orientation in EXIF_UPRIGHT:
        fix = EXIF_UPRIGHT[orientation]
        stored = upright.transpose(_INVERSE.get(fix, fix))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(stored.convert("RGB"), path, "JPEG", quality=92, exif=exif.tobytes())


def png16(img: Image.Image, path: Path) -> Path:
    """A 16-bit grayscale PNG (values spread over 0..65535)."""
    import numpy as np

    arr = np.asarray(img.convert("L"), dtype=np.uint16) * 257
    return save(Image.fromarray(arr.astype("<u2")), path, "PNG")


def cmyk_jpeg(img: Image.Image, path: Path) -> Path:
    return save(img.convert("RGB").convert("CMYK"), path, "JPEG", quality=92)


def palette_png_with_transparency(img: Image.Image, path: Path) -> Path:
    """A palette PNG: ink is entry 0, paper entry 1; both are black, paper is transparent (tRNS).

    Only compositing the transparency on white paper shows the text.
    """
    ink = img.convert("L").point(lambda v: 1 if v > 127 else 0)
    pal = Image.frombytes("P", ink.size, ink.tobytes())
    pal.putpalette([0, 0, 0] * 256)
    return save(pal, path, "PNG", transparency=1)


def multipage_tiff(frames: list[Image.Image], path: Path, compression: str = "tiff_lzw") -> Path:
    first, *rest = frames
    return save(first, path, "TIFF", save_all=True, append_images=rest, compression=compression)


def g4_tiff(img: Image.Image, path: Path) -> Path:
    """Bilevel CCITT group 4 TIFF, the way office scanners write them."""
    return save(img.convert("1"), path, "TIFF", compression="group4", dpi=(200, 200))


def truncate(path: Path, keep: float = 0.6) -> Path:
    """Cut ``path`` off after ``keep`` of its bytes, in place (an interrupted copy)."""
    with open(path, "r+b") as fh:
        fh.truncate(int(os.path.getsize(path) * keep))
    return path


def load(root: str, rel: str, limits: images.Limits) -> list[images.PageImage | images.TextPage]:
    """Read ``root/rel`` beneath ``root`` as a worker does and decode every page (tests only)."""
    return images.decode(images.read(root, rel, limits).data, limits)
