"""Decode one image file into upright 8-bit pages, refusing bad input with a reason.

Everything an engine sees passes through here, so the safety limits live here:
file size, pixel count (checked from the header, before any pixel is decoded),
page count, and the formats we accept. Reasons are short stable codes.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ocr_inbox.errors import BadImage

#: formats PIL may identify; anything else is refused even if PIL could read it
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO"})


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 200_000_000
    max_file_bytes: int = 512 << 20
    max_pages: int = 2000


@dataclass(frozen=True)
class PageImage:
    index: int
    bgr: np.ndarray  # H x W x 3, uint8, EXIF orientation applied
    dpi: tuple[float, float] | None

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])


@dataclass(frozen=True)
class LoadedImage:
    data_size: int
    mtime_ns: int
    sha256: str
    pages: list[PageImage]


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _open(path: str, root: str | None) -> int:
    """Open ``path`` read-only without following a link, or, given ``root``, a link that stays inside it.

    With ``root`` the link is resolved, its target opened with O_NOFOLLOW, and the
    opened file's own path (``/proc/self/fd``) checked to be inside ``root``: a link
    swapped meanwhile to point outside is refused, never read.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno != errno.ELOOP or not os.path.islink(path):
            raise
        if root is None:
            raise BadImage("symlink", "a symbolic link: OCR workers open no links") from None
    real_root = os.path.realpath(root)
    fd = os.open(os.path.realpath(path), flags)
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        opened = ""
    if not _inside(real_root, opened):
        os.close(fd)
        raise BadImage("outside_inbox", "the link resolves outside the inbox")
    return fd


def read_file(path: str, limits: Limits, root: str | None = None) -> tuple[bytes, os.stat_result]:
    """Read a regular file in one go (what we hash is what we decode).

    A symbolic link is read only when ``root`` is given and it resolves inside it.
    """
    try:
        fd = _open(path, root)
    except FileNotFoundError:
        raise BadImage("vanished", "the file disappeared before it was read") from None
    except PermissionError:
        raise BadImage("unreadable", "permission denied") from None
    except OSError as exc:
        raise BadImage("unreadable", exc.strerror or str(exc)) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        import stat as _stat

        if not _stat.S_ISREG(st.st_mode):
            raise BadImage("not_a_regular_file")
        if st.st_size == 0:
            raise BadImage("empty_file", "0 bytes")
        if st.st_size > limits.max_file_bytes:
            raise BadImage("file_too_large", f"{st.st_size} bytes > {limits.max_file_bytes}")
        data = fh.read()
    return data, st


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency composited on white like a printed page."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(scaled.astype(np.uint8), "L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        page = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        page.alpha_composite(rgba)
        return page.convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV


def _dpi(img: Image.Image) -> tuple[float, float] | None:
    dpi = img.info.get("dpi")
    try:
        x, y = float(dpi[0]), float(dpi[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return None
    return (x, y) if x > 1 and y > 1 else None


def decode(data: bytes, limits: Limits) -> list[PageImage]:
    """Decode every page of an image file held in memory."""
    # PIL's own bomb check (warning above the limit, error above twice it) must not
    # undercut ours; the explicit check below refuses anything over the limit.
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not_an_image", "the content is not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        # PIL names its own threshold (twice ours); say ours, keep PIL's numbers as the detail
        raise BadImage("too_many_pixels", f"over the limit of {limits.max_pixels} pixels: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage("corrupt", str(exc)) from None
    with img:
        if img.format not in ACCEPTED_FORMATS:
            raise BadImage("unsupported_format", str(img.format))
        w, h = img.size
        if w < 1 or h < 1:
            raise BadImage("corrupt", f"size {w}x{h}")
        if w * h > limits.max_pixels:
            raise BadImage("too_many_pixels", f"{w}x{h} > {limits.max_pixels} pixels")
        n = getattr(img, "n_frames", 1) if img.format == "TIFF" else 1
        if n > limits.max_pages:
            raise BadImage("too_many_pages", f"{n} > {limits.max_pages}")
        pages: list[PageImage] = []
        for i in range(n):
            try:
                img.seek(i)
                fw, fh = img.size
                if fw * fh > limits.max_pixels:
                    raise BadImage("too_many_pixels", f"page {i}: {fw}x{fh}")
                img.load()
                upright = ImageOps.exif_transpose(img) or img
                rgb = _to_rgb(upright)
            except BadImage:
                raise
            except (OSError, ValueError, SyntaxError, EOFError) as exc:
                reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
                raise BadImage(reason, str(exc)) from None
            bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
            pages.append(PageImage(i, bgr, _dpi(img)))
        return pages


def load(root: str, rel: str, limits: Limits) -> LoadedImage:
    """Read and decode ``rel`` beneath ``root`` (the inbox)."""
    import hashlib

    data, st = read_file(os.path.join(root, rel), limits, root)
    pages = decode(data, limits)
    return LoadedImage(len(data), st.st_mtime_ns, hashlib.sha256(data).hexdigest(), pages)
