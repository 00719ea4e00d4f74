"""``[inbox] delete_processed``: the only code that modifies the inbox.

A source is deleted only when it is still exactly the version that was OCR'd
(and put in its folder's PDF): a newer file under the same name is never lost,
nor one whose ctime or inode say it may have been rewritten with its size and
mtime put back. The delete goes through ``support/beneath.py``: the parent
folder is opened beneath the inbox with no symlink on the way and the file
unlinked relative to it, so a link swapped into the path cannot redirect it.
"""

from __future__ import annotations

import os

from ocr_inbox.support.beneath import unlink_beneath
from ocr_inbox.support.version import Change, SourceVersion


def delete_source(
    root: str, rel: str, size: int, mtime_ns: int, *, ctime_ns: int | None = None, ino: int | None = None
) -> str | None:
    """Delete ``rel`` beneath ``root`` if it is the version OCR'd; returns why not, or None."""
    ocrd = SourceVersion(size, mtime_ns, ctime_ns, ino)

    def keep(st: os.stat_result) -> str | None:
        change = SourceVersion.of(st).against(ocrd)
        if change is Change.changed:
            return "the file changed since it was OCR'd"
        if change is Change.suspect:
            return "its ctime or inode changed since it was OCR'd (rewritten, or only chmod'ed: kept to be safe)"
        return None

    return unlink_beneath(root, rel, keep)
