"""``ocr-inbox pdf IMAGE_DIR [JSON_DIR] OUT.pdf``: one folder's searchable PDF, from the
folder as it is now (the old PDF script's job). The daemon and ``ocr --pdf`` never list
a folder: they build from the ledger's done images (``core/folder_pdfs.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ocr_inbox.inbox import scan
from ocr_inbox.ocr import images
from ocr_inbox.outbox import order
from ocr_inbox.outbox.pdf import PageSource, PdfReport, build_pdf
from ocr_inbox.support import paths
from ocr_inbox.support.errors import BadArguments
from ocr_inbox.support.paths import IMAGE_SUFFIXES, JSON_SUFFIX


def _folder_root(image_dir: Path, root: Path | None) -> tuple[str, str]:
    """The real root and ``image_dir``'s path beneath it (``""`` or ``"a/b/"``).

    A folder outside ``root`` is its own root.
    """
    real_dir = os.path.realpath(image_dir)
    real_root = os.path.realpath(root or image_dir)
    if not paths.inside(real_root, real_dir):
        real_root = real_dir
    rel_dir = os.path.relpath(real_dir, real_root)
    return real_root, "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"


def list_images(
    image_dir: Path, first_prefixes: Sequence[str] = (), root: Path | None = None, ignore: Sequence[str] = ()
) -> list[str]:
    """Image file names directly in ``image_dir`` in page order.

    A file becomes a page only if the inbox scanner would accept it (same
    rules: ``ignore`` patterns — the caller passes the configured ones —, no
    symlink leading outside ``root`` — default ``image_dir``, the daemon passes
    the inbox —, no fifo, no loop, no name the outbox can't mirror), so the PDF
    holds exactly the images that were OCR'd.
    """
    real_root, prefix = _folder_root(image_dir, root)
    names = sorted(
        name
        for name in os.listdir(image_dir)
        if isinstance(scan.classify(real_root, prefix + name, ignore), scan.Candidate)
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
    limits: images.Limits = images.Limits(),
    root: Path | None = None,
    ignore: Sequence[str] = (),
    log: Any = None,
) -> PdfReport:
    """Build one searchable PDF of the images directly in ``image_dir``, as they are now.

    ``json_dir`` holds ``<image file name>.json`` per image (docs/JSON.md).
    Images are listed by :func:`list_images` (``ignore``: the scanner's ignore
    patterns; none by default) and opened beneath ``root`` (default
    ``image_dir``) under the same ``limits`` as OCR. The rest as :func:`build_pdf`.

    Raises ``BadArguments`` for missing directories, a folder without
    (decodable) images or a bad ``chunk_pages``; ``OutputError`` when the
    output cannot be written.
    """
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
        names = list_images(image_dir, first_prefixes, root, ignore)
    except OSError as exc:
        raise BadArguments(f"cannot list {image_dir}: {exc}") from exc
    if not names:
        raise BadArguments(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {image_dir}")
    real_root, prefix = _folder_root(image_dir, root)
    pages = [PageSource(prefix + name, json_dir / (name + JSON_SUFFIX), None, None) for name in names]
    return build_pdf(
        Path(real_root), pages, out_pdf, title=image_dir.resolve().name,
        limits=limits, chunk_pages=chunk_pages, work_dir=work_dir, log=log,
    )
