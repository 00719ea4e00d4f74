"""Atomic publication of output files: temp file in the same dir, fsync, rename.

A reader (or a crash) sees either the old file or the complete new one, never
a half-written one. Temp names (files, and the PDF builder's work directories)
start with ``.ocr-inbox-tmp-`` so leftovers from a crash can be recognised and swept.
The temp names are made here too (:func:`temp_path_for`, :func:`fit_name`).

Outputs get the mode a plain ``open()`` would give them, ``0o666`` less the
process umask (``UMask=0027`` in the unit: ``0640``, group-readable), although
``mkstemp`` creates its file ``0600``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

TMP_PREFIX = ".ocr-inbox-tmp-"
_TMP_SUFFIX = ".part"

__all__ = [
    "TMP_PREFIX", "atomic_open", "fit_name", "fsync_dir", "output_mode", "process_umask", "publish", "sweep_temp_files",
    "is_temp_for", "temp_path_for", "temp_stem", "write_bytes", "write_json",
]


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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def process_umask() -> int:
    """The umask, read once per process without changing it (``os.umask`` can only set it,
    and setting it back and forth races with any thread creating a file meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022  # no /proc (or a kernel older than 4.7): the common default


def output_mode() -> int:
    """The mode of a published output: what ``open()`` would create."""
    return 0o666 & ~process_umask()


@contextlib.contextmanager
def atomic_open(dest: Path) -> Iterator[BinaryIO]:
    """Yield a binary temp file next to ``dest``; on success it replaces ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".part", dir=dest.parent)
    try:
        os.fchmod(fd, output_mode())  # mkstemp's 0600 would hide outputs from the group
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_open(dest) as fh:
        fh.write(data)


def write_json(dest: Path, obj: Any) -> None:
    data = json.dumps(obj, ensure_ascii=False, indent=1, allow_nan=False).encode("utf-8")
    write_bytes(dest, data)


def publish(tmp: Path, dest: Path) -> None:
    """fsync a finished temp file and rename it over ``dest``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


#: folder levels below the outbox that the sweep looks into: deeper than any
#: folder the outbox mirrors (``[watch] max_depth`` is at most 256)
SWEEP_MAX_DEPTH = 300


def sweep_temp_files(root: Path, older_than_s: float = 0.0) -> int:
    """Remove temp files and work directories left by a crash under ``root``; returns how many.

    A work directory that a running build holds (flock) is left alone. The
    walk is iterative, never follows a link and stops ``SWEEP_MAX_DEPTH``
    levels down: no outbox tree can make it raise.
    """
    if not root.is_dir():
        return 0
    now = time.time()
    removed = 0
    stack: list[tuple[str, int]] = [(str(root), 0)]
    while stack:
        dirpath, depth = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = list(it)
        except OSError:
            continue  # vanished or unreadable: nothing of ours to sweep there
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if entry.name.startswith(TMP_PREFIX):
                # a work directory is removed whole, never descended
                remove = _remove_unlocked_dir if is_dir else _remove_old_file
                removed += remove(Path(entry.path), now - older_than_s)
            elif is_dir and depth < SWEEP_MAX_DEPTH:
                stack.append((entry.path, depth + 1))
    return removed


def _remove_old_file(path: Path, not_after: float) -> bool:
    try:
        if path.lstat().st_mtime > not_after:
            return False
        path.unlink()
    except OSError:  # gone meanwhile, or not ours to remove
        return False
    return True


def _remove_unlocked_dir(path: Path, not_after: float) -> bool:
    try:
        if path.is_symlink() or path.lstat().st_mtime > not_after:
            return False
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a build is using it
    else:
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)
