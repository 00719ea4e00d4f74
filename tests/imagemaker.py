"""Small synthetic images for fault and format tests (real pages come from the corpus)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from PIL import Image

POISON_SIGKILL, POISON_SEGV, POISON_EXIT, POISON_RAISE = 1, 2, 3, 4


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
