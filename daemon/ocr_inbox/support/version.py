"""A source file's version: what says "this is still the file that was OCR'd".

Size and mtime are what a writer sets: a copy that preserves times
(``cp --preserve``, rsync), a re-scan to the same name of the same size with
its mtime put back, or a file system with 2-second mtimes (FAT, SMB) leaves
both as they were while the pixels changed. The kernel sets the other two on
every change and no writer can choose them: the inode's ctime (any write, and
any ``utime`` that puts an mtime back) and the inode number (a file replaced by
a rename, or deleted and written again). A ``chmod``/``chown``, a hard link or
a ``mv`` within the file system changes them too without touching a byte, so
a difference there is only a *suspicion*: it is settled by the content's
SHA-256, and the same hash costs no OCR (``inbox/intake.py``).

Ledgers from before these fields (schema 3) hold no ctime or inode: such a
recorded version is ``partial`` and is judged by size and mtime, once; the
first look fills it in (``Change.fill``).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass


class Change(enum.Enum):
    """What a new look at a file says against the recorded version."""

    same = "same"  # every field equal: nothing happened
    #: the recorded version lacks ctime/inode (an older ledger); size and mtime are equal:
    #: record the new fields, nothing else
    fill = "fill"
    #: size and mtime equal, ctime or inode not: confirm by content hash before any OCR
    suspect = "suspect"
    changed = "changed"  # size or mtime differ: a new version


@dataclass(frozen=True)
class SourceVersion:
    size: int
    mtime_ns: int
    #: None: recorded before these were kept (see the module doc)
    ctime_ns: int | None = None
    ino: int | None = None

    @classmethod
    def of(cls, st: os.stat_result) -> SourceVersion:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    @property
    def partial(self) -> bool:
        return self.ctime_ns is None or self.ino is None

    def against(self, recorded: SourceVersion) -> Change:
        """This (a new look) compared with ``recorded``."""
        if (self.size, self.mtime_ns) != (recorded.size, recorded.mtime_ns):
            return Change.changed
        if recorded.partial:
            return Change.same if self.partial else Change.fill
        if self.partial or (self.ctime_ns, self.ino) == (recorded.ctime_ns, recorded.ino):
            return Change.same
        return Change.suspect

    def same_bytes_claimed(self, other: SourceVersion) -> bool:
        """Size and mtime equal: what a JSON (which records only those and the hash) can be matched by."""
        return (self.size, self.mtime_ns) == (other.size, other.mtime_ns)

    def describe(self) -> str:
        extra = "" if self.partial else f", ctime_ns {self.ctime_ns}, inode {self.ino}"
        return f"size {self.size}, mtime_ns {self.mtime_ns}{extra}"
