"""``[inbox] delete_processed``: the only code that modifies the inbox.

A source is deleted only when it is still exactly the version that was OCR'd
(and put in its folder's PDF): a newer file under the same name is never lost.
The parent directory is opened without following links and checked to be
beneath the inbox, and the file is unlinked relative to it, so a link swapped
into the path cannot redirect the delete outside the inbox.
"""

from __future__ import annotations

import os
import stat

from ocr_inbox.support.paths import inside


def delete_source(root: str, rel: str, size: int, mtime_ns: int) -> str | None:
    """Delete ``rel`` beneath ``root`` if it is the version (size, mtime); returns why not, or None."""
    parent, _, name = rel.rpartition("/")
    try:
        fd = os.open(os.path.join(root, parent), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open its folder: {exc.strerror or exc}"
    try:
        if not inside(root, os.readlink(f"/proc/self/fd/{fd}")):
            return "its folder resolves outside the inbox"
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return "the file changed since it was OCR'd"
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        return "already gone"
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(fd)
    return None
