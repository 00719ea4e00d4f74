"""Every output path in one place: JSON documents, folder PDFs, temp files, PDF work dirs.

Temp names (files, and the PDF builder's work directories) start with
:data:`TMP_PREFIX`, so leftovers of a crash are recognised and swept
(``atomic.sweep_temp_files``); names that would pass the file system's
255-byte limit are shortened by :func:`fit_name`.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from ocr_inbox.inbox.scan import NAME_MAX

TMP_PREFIX = ".ocr-inbox-tmp-"
JSON_SUFFIX = ".json"
#: work directories are temp names too, so the daemon's start-up sweep clears a crashed build's
PDF_WORK_PREFIX = TMP_PREFIX + "pdf-"
_TMP_SUFFIX = ".part"


def json_path_for(outbox: Path, rel_image: str) -> Path:
    """``scan 7.jpg`` -> ``OUTBOX/<dir>/scan 7.jpg.json`` (a.jpg and a.png never collide)."""
    return outbox / (rel_image + JSON_SUFFIX)


def searchable_copy_path(json_file: Path) -> Path:
    """A PDF's searchable copy beside its JSON: ``OUTBOX/<dir>/<name>.pdf`` for ``<name>.pdf.json``
    (the inbox's name, mirrored; :func:`json_path_for`'s name fits, so this one does)."""
    return json_file.with_name(json_file.name[: -len(JSON_SUFFIX)])


def pdf_path_for(outbox: Path, inbox: Path, folder: str) -> Path:
    """``OUTBOX/<dir>/<folder name>.pdf``; the inbox's own images give ``OUTBOX/<inbox name>.pdf``.

    A folder name too long for ``.pdf`` to fit in NAME_MAX keeps a prefix and gains
    a hash of the whole name (``<prefix>-<hash>.pdf``), so the PDF can always be written.
    """
    name = folder.rsplit("/", 1)[-1] if folder else inbox.resolve().name
    return outbox / folder / f"{fit_name(name, NAME_MAX - len('.pdf'))}.pdf"


def work_dir_for(out_pdf: Path, parent: Path | None = None) -> Path:
    """A PDF build's work directory: one per output (it is the build's lock), its name
    kept short so that a long output name cannot push it past NAME_MAX."""
    return (parent or out_pdf.parent) / f"{PDF_WORK_PREFIX}{temp_stem(out_pdf)}-work"


def temp_path_for(dest: Path) -> Path:
    """A unique temp path next to ``dest`` for writers that need a path (PDF save):
    ``<TMP_PREFIX><pid>-<ns>-<temp_stem(dest)>.part``.

    A long ``dest`` name is shortened (``fit_name``) so it cannot push the temp
    name past the file system's 255-byte limit, and still names this output only.
    """
    return dest.with_name(f"{TMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-{temp_stem(dest)}{_TMP_SUFFIX}")


def is_temp_for(dest: Path, name: str) -> bool:
    """True when ``name`` is one of :func:`temp_path_for`'s names for ``dest`` (and no other output's)."""
    tail = f"-{temp_stem(dest)}{_TMP_SUFFIX}"
    if not (name.startswith(TMP_PREFIX) and name.endswith(tail)):
        return False
    pid, sep, ns = name[len(TMP_PREFIX) : len(name) - len(tail)].partition("-")
    return bool(sep) and pid.isdigit() and ns.isdigit()


def temp_stem(dest: Path) -> str:
    """The part of ``temp_path_for``'s names that says which output they are for."""
    return fit_name(dest.name, 64)


def fit_name(name: str, max_bytes: int) -> str:
    """``name`` if it fits in ``max_bytes`` (UTF-8); else a prefix plus a hash of the
    whole name, so distinct long names stay distinct."""
    raw = os.fsencode(name)
    if len(raw) <= max_bytes:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:12]
    return raw[: max_bytes - len(digest) - 1].decode("utf-8", "ignore") + "-" + digest


#: the one-shot run's report: OUTBOX/.ocr-inbox/failures.json (hidden: never mistaken for output)
REPORT_DIR = ".ocr-inbox"


def report_path(outbox: Path) -> Path:
    return outbox / REPORT_DIR / "failures.json"
