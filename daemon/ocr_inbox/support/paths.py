"""Rules about inbox paths that every layer shares: which names are taken, which are
ignored, what is inside what, which folder an image belongs to. Pure functions on
names; nothing here touches the file system but ``check_layout``'s realpath.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

#: the file types taken (by name, case-insensitive); README.md lists them. Any other file
#: is skipped and reported once (``Skipped``): a .txt, a .docx. A PDF is a source like a
#: multi-page image (its pages without text are OCR'd: ``ocr/images.py``)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pdf"})
#: the longest file name (bytes) Linux file systems take; an image's JSON is ``<name>.json``
NAME_MAX = 255
JSON_SUFFIX = ".json"
#: folder levels below the inbox that are walked (``[watch] max_depth``)
DEFAULT_MAX_DEPTH = 64


def accepted_types() -> str:
    """The suffixes taken, for messages: ".bmp .jpeg .jpg ..."."""
    return " ".join(sorted(IMAGE_SUFFIXES))


def utf8_ok(rel: str) -> bool:
    """False for a name with bytes that are not UTF-8 (``os`` gives them as lone surrogates)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_rel(rel: str) -> str:
    """``rel`` as text that can be stored and logged: undecodable bytes become ``\\xNN``."""
    return rel if utf8_ok(rel) else os.fsencode(rel).decode("utf-8", "backslashreplace")


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def is_ignored(rel: str, patterns: Sequence[str]) -> bool:
    """True when any path component matches an ignore pattern (``fnmatch.fnmatchcase`` rules)."""
    if not patterns:
        return False
    match = _ignore_matcher(tuple(patterns))
    return any(match(part) for part in rel.split("/"))


@functools.lru_cache(maxsize=32)
def _ignore_matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    # One regex for all patterns: a scan of 100,000 files called fnmatchcase
    # 3.6 million times (18 default patterns x 2 path components).
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


def inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_layout(inbox: Path, *others: tuple[str, Path]) -> str | None:
    """Refuse an outbox/state dir inside the inbox or the reverse; returns the problem."""
    ib = os.path.realpath(inbox)
    for name, p in others:
        rp = os.path.realpath(p)
        if inside(ib, rp):
            return f"the {name} ({p}) is inside the inbox ({inbox}); outputs would be read back as inputs"
        if inside(rp, ib):
            return f"the inbox ({inbox}) is inside the {name} ({p})"
    return None


def depth_of(rel_dir: str) -> int:
    """Folder levels of ``rel_dir`` below the inbox ('' is the inbox itself: 0)."""
    return rel_dir.count("/") + 1 if rel_dir else 0


def folder_of(rel: str) -> str:
    """The inbox folder an image belongs to ('' for the inbox itself)."""
    return rel.rsplit("/", 1)[0] if "/" in rel else ""
