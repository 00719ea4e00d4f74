"""Every output path in one place: JSON documents, folder PDFs, temp files, PDF work dirs.

PDF work directories are temp names (``atomic.TMP_PREFIX``), so the start-up
sweep clears a crashed build's; names that would pass the file system's 255-byte
limit are shortened by ``atomic.fit_name``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ocr_inbox.support.atomic import TMP_PREFIX, fit_name, temp_stem
from ocr_inbox.support.paths import JSON_SUFFIX, NAME_MAX

#: work directories are temp names too, so the daemon's start-up sweep clears a crashed build's
PDF_WORK_PREFIX = TMP_PREFIX + "pdf-"


def written(path: Path) -> tuple[int, int] | None:
    """An output's (size, mtime_ns) as just published, for the ledger (what the scans compare
    it with); None if it cannot be stat'ed (then it is checked for presence only)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def json_path_for(outbox: Path, rel_image: str) -> Path:
    """``scan 7.jpg`` -> ``OUTBOX/<dir>/scan 7.jpg.json`` (a.jpg and a.png never collide)."""
    return outbox / (rel_image + JSON_SUFFIX)


def json_file_for(outbox: str, rel_image: str) -> str:
    """:func:`json_path_for` as a string: the scans ``stat`` one per done image, and a Path
    would cost them more than the stat itself."""
    return os.path.join(outbox, rel_image + JSON_SUFFIX)


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


#: the one-shot run's report: OUTBOX/.ocr-inbox/failures.json (hidden: never mistaken for output)
REPORT_DIR = ".ocr-inbox"


def report_path(outbox: Path) -> Path:
    return outbox / REPORT_DIR / "failures.json"
