"""The one rule for touching a file of the inbox: open, stat and delete only *beneath* it.

Every open and every delete of an inbox file goes through here (the OCR worker's
and the PDF builder's read, the PDF build's last look, ``delete_processed``):

* :func:`open_beneath` opens ``root/rel`` read-only; symlinks that stay inside
  ``root`` are followed, any component (a parent folder included) that leads
  outside is refused, never opened;
* :func:`stat_beneath` is the fstat of that open (the version of the very file a
  reader would get);
* :func:`unlink_beneath` deletes a file through its parent folder opened beneath
  ``root`` with no symlink in the way at all, after a check on the file itself;
* :func:`rel_beneath` maps a path a person typed to its name in the inbox.

openat2(2) with ``RESOLVE_BENEATH`` lets the kernel enforce it, so a link swapped
into the path between a check and the open cannot redirect it. Where openat2 is
missing (ENOSYS, or EPERM from a seccomp filter) or refuses an absolute link that
lands inside (EXDEV), the path is resolved here and where the opened fd really
is (``/proc/self/fd``) is checked after the open. Refusals are
:class:`~ocr_inbox.support.errors.BadImage` with the reasons the ledger records.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from collections.abc import Callable
from typing import Any

from ocr_inbox.support.errors import BadImage
from ocr_inbox.support.paths import inside
from ocr_inbox.support.reasons import Reason

_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
#: openat2 unusable here (or for this path): fall back to resolving and checking ourselves
_FALLBACK = frozenset({errno.ENOSYS, errno.EPERM, errno.EXDEV, errno.EINVAL, errno.E2BIG})


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


@functools.cache
def _syscall() -> Any:
    fn = ctypes.CDLL(None, use_errno=True).syscall
    fn.restype = ctypes.c_long
    return fn


def _openat2(dirfd: int, rel: str, flags: int, resolve: int) -> int:
    """openat2(2): the kernel refuses every step out of ``dirfd`` (EXDEV) and, with
    ``RESOLVE_NO_SYMLINKS``, every link (ELOOP)."""
    how = _OpenHow(flags, 0, resolve)
    fd = int(
        _syscall()(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(rel)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), rel)
    return fd


def _where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _open_resolved(root: str, rel: str) -> int:
    """Resolve the path ourselves, open the result with O_NOFOLLOW and check where the
    opened file really is: a link swapped meanwhile is caught."""
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, rel))
    if not inside(real_root, target):
        raise BadImage(Reason.outside_inbox, "the path resolves outside the inbox")
    fd = os.open(target, _READ_FLAGS | os.O_NOFOLLOW)
    if not inside(real_root, _where(fd)):
        os.close(fd)
        raise BadImage(Reason.outside_inbox, "the path resolves outside the inbox")
    return fd


def _bad(exc: OSError, missing: str) -> BadImage:
    """An open's OSError as the refusal the ledger records."""
    if isinstance(exc, FileNotFoundError):
        return BadImage(Reason.vanished, missing)
    if isinstance(exc, PermissionError):
        return BadImage(Reason.unreadable, "permission denied")
    if exc.errno == errno.ELOOP:
        return BadImage(Reason.symlink_loop, exc.strerror or str(exc))
    if exc.errno == errno.ENXIO:  # a socket
        return BadImage(Reason.not_a_regular_file, exc.strerror or str(exc))
    return BadImage(Reason.unreadable, exc.strerror or str(exc))


def open_beneath(root: str, rel: str) -> int:
    """Open ``root/rel`` read-only (non-blocking, close-on-exec) only if it stays beneath
    ``root``; links inside are followed. Returns an fd; raises ``BadImage``."""
    try:
        return _openat2_or(root, rel, _READ_FLAGS, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS,
                           lambda: _open_resolved(root, rel))
    except OSError as exc:
        raise _bad(exc, "the file disappeared before it was read") from None


def _openat2_or(root: str, rel: str, flags: int, resolve: int, fallback: Callable[[], int]) -> int:
    """openat2 of ``rel`` relative to ``root`` with ``resolve``; ``fallback()`` where the kernel
    or a seccomp filter has no openat2. Raises OSError, or ``BadImage`` for a missing root."""
    try:
        dirfd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise BadImage(Reason.vanished, f"the inbox {root} cannot be opened: {exc.strerror}") from None
    try:
        return _openat2(dirfd, rel, flags, resolve)
    except OSError as exc:
        if exc.errno not in _FALLBACK:
            raise
    finally:
        os.close(dirfd)
    return fallback()


def stat_beneath(root: str, rel: str) -> os.stat_result:
    """The fstat of ``root/rel`` as :func:`open_beneath` opens it (what a reader would get)."""
    fd = open_beneath(root, rel)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def open_dir_beneath(root: str, rel_dir: str) -> int:
    """An ``O_PATH`` fd of the folder ``root/rel_dir`` reached with no symlink at all
    (for ``*at`` calls: what it holds is then named relative to it). Raises ``BadImage``."""
    if not rel_dir:
        try:
            return os.open(root, _DIR_FLAGS)
        except OSError as exc:
            raise _bad(exc, "the inbox cannot be opened") from None

    def checked_open() -> int:
        fd = os.open(os.path.join(root, rel_dir), _DIR_FLAGS | os.O_NOFOLLOW)
        if not inside(os.path.realpath(root), _where(fd)) or _where(fd) != os.path.join(os.path.realpath(root), rel_dir):
            os.close(fd)  # a symlinked folder on the way, or one outside
            raise BadImage(Reason.outside_inbox, "the folder resolves outside the inbox or through a link")
        return fd

    try:
        return _openat2_or(root, rel_dir, _DIR_FLAGS, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS, checked_open)
    except OSError as exc:
        raise _bad(exc, "its folder disappeared") from None


def unlink_beneath(root: str, rel: str, keep: Callable[[os.stat_result], str | None]) -> str | None:
    """Delete the regular file ``root/rel`` unless ``keep(its lstat)`` says why not; returns
    why it was not deleted, or None. Its folder is opened by :func:`open_dir_beneath` and the
    file named relative to it, so a link swapped into the path cannot redirect the delete."""
    parent, _, name = rel.rpartition("/")
    try:
        fd = open_dir_beneath(root, parent)
    except BadImage as exc:
        return f"cannot open its folder: {exc.detail or exc.reason}"
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file any more"
        why = keep(st)
        if why:
            return why
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        return "already gone"
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(fd)
    return None


def rel_beneath(root: str, path: str) -> str | None:
    """``path`` (absolute, or relative to the working directory) as a name beneath the
    inbox ``root`` (POSIX, "." for the inbox itself), or None when it resolves outside."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if not inside(real_root, real):
        return None
    return os.path.relpath(real, real_root).replace(os.sep, "/")
