"""The one way into the state directory: no links followed, only the owner's regular files.

The state directory belongs to the service user, the uid that decodes untrusted
images. Whatever that uid can do, a decoder exploit can do, including swapping a
file of the state dir for a link, a FIFO or a directory. Root's commands
(``retry``, ``index rebuild``, ``status``) read and write the same files, so a
file opened there by name could be any file on the host. Every open in the
state dir therefore goes through this module:

- names are opened relative to a descriptor of the directory itself, with
  ``O_NOFOLLOW`` (a link is refused, never followed) and ``O_NONBLOCK`` (a FIFO
  cannot hang the opener), and then ``fstat``'d: only a regular file (or a
  directory, for ``requests/``) owned by the state dir's owner is used;
- a command run by another user acts as the owner or not at all
  (``act_as_owner``): root switches to the owner for the whole command (so
  nothing it creates is unusable by the daemon, and any link the owner planted
  leads only where the owner could go anyway); anyone else is refused with
  the command to run instead.

SQLite opens the ledger (and its -wal/-shm) by name itself; ``check_file`` looks
at them first, and since only the owner's uid ever opens them (root switched),
a link swapped in between the check and the open gains nothing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

import structlog

from ocr_inbox.support.errors import StateError

log = structlog.get_logger(__name__)

#: the state dir and what the daemon makes in it: the owner's alone (readers use status/search)
DIR_MODE = 0o700
FILE_MODE = 0o600
#: a file read whole (live.json, run.json, a retry request) is never bigger than this
MAX_READ = 16 << 20


def owner(state_dir: Path) -> int | None:
    """The uid owning ``state_dir``, or None when it does not exist yet."""
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot use the state directory {state_dir}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"the state directory {state_dir} is not a directory")
    return st.st_uid


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def act_as_owner(state_dir: Path, command: str, *, reader: bool = False) -> None:
    """Make this process the state dir's owner for ``command``, or refuse.

    Nothing to do when it is already the owner (or the state dir does not exist
    yet: whoever creates it owns it). Root switches, for good, to the owner's
    uid, group and supplementary groups: a command does its reads and writes
    there as the daemon would. Another user is refused with what to run instead,
    unless the command is a ``reader`` (status, search): it reads what its own
    permissions let it, through the checked opens of this module.
    """
    uid = owner(state_dir)
    me = os.geteuid()
    if uid is None or uid == me:
        return
    name = owner_name(uid)
    if me != 0:
        if reader:
            return
        raise StateError(
            f"the state directory {state_dir} belongs to {name}, not to this user: run it as root "
            f"(root acts as {name}), or as root `runuser -u {name} -- ocr-inbox {command} …`"
        )
    try:
        entry = pwd.getpwuid(uid)
        gid = entry.pw_gid
        os.initgroups(entry.pw_name, gid)
    except KeyError:  # a uid without a passwd entry (DynamicUser=, a test): its dir's group
        gid = os.stat(state_dir).st_gid
        os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    log.debug("acting_as_state_owner", user=name, uid=uid, command=command)


@contextlib.contextmanager
def directory(state_dir: Path, sub: str = "", *, create: bool = False) -> Iterator[int]:
    """A descriptor of ``state_dir`` (or of its subdirectory ``sub``, never a link, made
    ``DIR_MODE`` when ``create``), checked to be a directory of the state dir's owner."""
    try:
        top = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"cannot use the state directory {state_dir}: {exc.strerror or exc}") from None
    fd = top
    try:
        uid = os.fstat(top).st_uid
        if sub:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(sub, DIR_MODE, dir_fd=top)
            try:
                fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
            except OSError as exc:
                raise _refusal(state_dir / sub, exc) from None
            st = os.fstat(fd)
            if st.st_uid != uid:
                raise StateError(_not_owners(state_dir / sub, st, uid))
        yield fd
    finally:
        if fd != top:
            os.close(fd)
        os.close(top)


def open_file(dir_fd: int, name: str, flags: int, where: Path, mode: int = FILE_MODE) -> int:
    """``name`` in the directory ``dir_fd`` opened with ``flags``, never through a link
    and never a FIFO, device or directory; raises StateError naming ``where``. The
    caller closes the descriptor. FileNotFoundError passes through (absent is normal)."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _refusal(where / name, exc) from None
    try:
        st = os.fstat(fd)
        owner_uid = os.fstat(dir_fd).st_uid
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{where / name} is not a regular file: move it away (the daemon makes it again)")
        if st.st_uid != owner_uid:
            raise StateError(_not_owners(where / name, st, owner_uid))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(state_dir: Path, name: str, sub: str = "") -> bytes:
    """A whole small file of the state dir (``MAX_READ`` at most)."""
    with directory(state_dir, sub) as d:
        fd = open_file(d, name, os.O_RDONLY, state_dir / sub if sub else state_dir)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_READ + 1)
        finally:
            os.close(fd)
    if len(data) > MAX_READ:
        raise StateError(f"{state_dir / sub / name} is larger than {MAX_READ >> 20} MB")
    return data


def check_file(state_dir: Path, name: str) -> bool:
    """Whether ``name`` exists, after checking it is a regular file of the owner (StateError if not)."""
    with directory(state_dir) as d:
        try:
            fd = open_file(d, name, os.O_RDONLY, state_dir)
        except FileNotFoundError:
            return False
        os.close(fd)
    return True


def write_replace(dir_fd: int, name: str, data: bytes, where: Path, *, durable: bool = False) -> None:
    """Replace ``name`` whole through the fixed temp name ``.NAME.tmp`` (created anew, so a
    link there is never written through); ``durable``: fsync'd before the rename, and after."""
    tmp = f".{name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    fd = open_file(dir_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, where)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    if durable:
        os.fsync(dir_fd)


def _refusal(path: Path, exc: OSError) -> StateError:
    import errno

    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return StateError(f"{path} is a link or not what it should be: refused (move it away)")
    return StateError(f"cannot open {path}: {exc.strerror or exc}")


def _not_owners(path: Path, st: os.stat_result, uid: int) -> str:
    return (
        f"{path} belongs to {owner_name(st.st_uid)}, not to the state directory's owner "
        f"{owner_name(uid)}: refused (chown it, or move it away)"
    )
