"""Walk the inbox safely: which files are images to OCR, which are refused and why.

Never follows a symlink out of the inbox, never descends symlinked directories
(a loop or a second path to the same files) nor takes a path that goes
through one, refuses fifos, sockets and devices, and skips OS junk by the
ignore patterns. The walk is iterative and stops ``max_depth`` folder levels
below the inbox: a deeper folder is refused once (``too_deep``), whatever
hangs below it. Nothing here opens a file's content.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocr_inbox.support.paths import (
    DEFAULT_MAX_DEPTH,
    JSON_SUFFIX,
    NAME_MAX,
    depth_of,
    folder_of,
    inside,
    is_ignored,
    is_image_name,
    printable_rel,
    utf8_ok,
)
from ocr_inbox.support.reasons import Reason
from ocr_inbox.support.version import SourceVersion

#: errors that mean the service user may not list a folder (not that it vanished)
_DENIED = frozenset({errno.EACCES, errno.EPERM})


@dataclass(frozen=True)
class Candidate:
    """An image file to OCR: ``rel`` as named in the inbox, ``real`` its resolved path."""

    rel: str
    real: str
    size: int
    mtime_ns: int
    ctime_ns: int | None = None
    ino: int | None = None

    @property
    def version(self) -> SourceVersion:
        return SourceVersion(self.size, self.mtime_ns, self.ctime_ns, self.ino)


@dataclass(frozen=True)
class Refused:
    rel: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Skipped:
    """A file that is not an image type we take (``IMAGE_SUFFIXES``): nothing is done with it."""

    rel: str
    #: its suffix, lower case ("" for none)
    suffix: str


@dataclass(frozen=True)
class Unlistable:
    """A folder the service user may not list (or enter): what is in it is unknown until it may."""

    rel: str
    detail: str


def too_deep(rel: str, max_depth: int) -> Refused:
    """The refusal of the folder ``rel`` (``max_depth + 1`` levels down) and all below it."""
    return Refused(
        printable_rel(rel), Reason.too_deep, f"more than {max_depth} folder levels below the inbox ([watch] max_depth)"
    )


def _outside_limits(inbox_real: str, rel_dir: str, max_depth: int) -> Refused | None:
    """Why nothing in the folder ``rel_dir`` may be taken: too deep, or reached through a
    symlinked directory (the refusal names that folder or link); None when it may be walked."""
    parts = rel_dir.split("/") if rel_dir else []
    if len(parts) > max_depth:
        return too_deep("/".join(parts[: max_depth + 1]), max_depth)
    path = inbox_real
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        try:
            linked = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:
            return None  # vanished: the caller finds nothing there
        if linked:
            return Refused(
                printable_rel("/".join(parts[: i + 1])), Reason.directory_symlink, "symlinked directories are not followed"
            )
    return None


def classify(
    inbox_real: str, rel: str, patterns: Sequence[str] = (), max_depth: int = DEFAULT_MAX_DEPTH
) -> Candidate | Refused | Skipped | None:
    """Look at one path relative to the inbox; None means 'not ours' (ignored, missing, not a
    regular file by a name we do not take); ``Skipped``: a file of a type we do not take.

    A symlink to a directory is refused whatever its name (the watcher reports
    it like a file; the walk never descends it). A path below a symlinked
    directory, or in a folder deeper than ``max_depth``, gets that folder's
    refusal instead (the same one the walk records).
    """
    if is_ignored(rel, patterns):
        return None
    problem = _outside_limits(inbox_real, folder_of(rel), max_depth)
    if problem is not None:
        return problem
    return _classify(inbox_real, rel)


def _classify(inbox_real: str, rel: str) -> Candidate | Refused | Skipped | None:
    """``classify`` for a path whose folder is known to be inside the limits and not ignored."""
    name = rel.rsplit("/", 1)[-1]
    path = os.path.join(inbox_real, rel)
    image = is_image_name(name)
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Refused(printable_rel(rel), Reason.unreadable, exc.strerror or str(exc)) if image else None
    if stat.S_ISLNK(lst.st_mode) and os.path.isdir(path):
        return Refused(printable_rel(rel), Reason.directory_symlink, "symlinked directories are not followed")
    if not image:
        if stat.S_ISREG(lst.st_mode):
            return Skipped(printable_rel(rel), os.path.splitext(name)[1].lower())
        return None
    if not utf8_ok(rel):
        # The ledger, the logs and the JSON (source.path) hold text: such a name has no place there.
        return Refused(printable_rel(rel), Reason.name_not_utf8, "the path has bytes that are not UTF-8; rename it")
    json_name = len(os.fsencode(name)) + len(JSON_SUFFIX)
    if json_name > NAME_MAX:
        return Refused(rel, Reason.name_too_long, f"its JSON name would be {json_name} bytes > {NAME_MAX}; shorten it")
    real = path
    if stat.S_ISLNK(lst.st_mode):
        try:
            real = os.path.realpath(path, strict=True)
        except OSError as exc:  # loop or dangling link
            reason = Reason.symlink_loop if "loop" in str(exc).lower() else Reason.broken_symlink
            return Refused(rel, reason, str(exc.strerror or exc))
        if not inside(inbox_real, real):
            return Refused(rel, Reason.symlink_outside_inbox, "the link points outside the inbox; not followed")
    if not stat.S_ISLNK(lst.st_mode):
        st = lst  # not a link: lstat already says it all
    else:
        try:
            st = os.stat(real)
        except OSError as exc:
            return Refused(rel, Reason.unreadable, exc.strerror or str(exc))
    if not stat.S_ISREG(st.st_mode):
        return Refused(rel, Reason.not_a_regular_file, stat.filemode(st.st_mode))
    if not os.access(real, os.R_OK):
        return Refused(rel, Reason.unreadable, "permission denied")
    return Candidate(rel, real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def walk(
    inbox: Path, patterns: Sequence[str] = (), subdir: str = "", max_depth: int = DEFAULT_MAX_DEPTH
) -> Iterator[Candidate | Refused | Skipped | Unlistable]:
    """Every image under ``inbox`` (or the reason it is refused), every other file
    (``Skipped``) and every folder that may not be listed (``Unlistable``), folders in sorted order.

    ``subdir`` limits the walk to one folder of the inbox; paths stay relative
    to (and links are judged against) the inbox itself. Iterative (a tree of
    any depth costs no recursion): a folder ``max_depth + 1`` levels down is
    refused as ``too_deep`` and not entered. A ``subdir`` reached through a
    symlinked directory yields that link's refusal only. A folder that vanished is
    passed over; one the service user may not list is yielded as ``Unlistable``.
    """
    root = os.path.realpath(inbox)
    if subdir:
        subdir = subdir.strip("/")
        if is_ignored(subdir, patterns):
            return
        problem = _outside_limits(root, subdir, max_depth)
        if problem is None and os.path.islink(os.path.join(root, subdir)):
            problem = Refused(printable_rel(subdir), Reason.directory_symlink, "symlinked directories are not followed")
        if problem is not None:
            yield problem
            return
    # (folder path, rel prefix of its entries, its depth); popped in sorted order
    stack = [(os.path.join(root, subdir) if subdir else root, subdir + "/" if subdir else "", depth_of(subdir))]
    while stack:
        dirpath, reldir, depth = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if exc.errno in _DENIED:
                yield Unlistable(printable_rel(reldir.rstrip("/")), exc.strerror or str(exc))
            continue
        subdirs: list[tuple[str, str, int]] = []
        files: list[str] = []
        for entry in entries:
            rel = reldir + entry.name
            if is_ignored(rel, patterns):
                continue
            try:
                is_dir = entry.is_dir()  # follows a link: a link to a folder is refused here
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(rel)
            elif entry.is_symlink():
                yield Refused(printable_rel(rel), Reason.directory_symlink, "symlinked directories are not followed")
            elif depth >= max_depth:
                yield too_deep(rel, max_depth)
            else:
                subdirs.append((entry.path, rel + "/", depth + 1))
        for rel in files:
            got = _classify(root, rel)
            if got is not None:
                yield got
        stack.extend(reversed(subdirs))


def folders(inbox: Path, max_depth: int = DEFAULT_MAX_DEPTH) -> Iterator[str]:
    """The folders the watcher puts an inotify watch on, relative ('' is the inbox): each
    real (not symlinked) folder down to ``max_depth`` levels that can be listed, ignored
    ones included (the watch covers them; intake drops their events). Iterative, like ``walk``."""
    stack = [(os.path.realpath(inbox), "", 0)]
    while stack:
        dirpath, rel, depth = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                subdirs = [e for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue  # vanished or unreadable: inotify cannot watch it either
        yield rel
        if depth < max_depth:
            stack.extend((e.path, f"{rel}/{e.name}" if rel else e.name, depth + 1) for e in subdirs)
