"""Watch the inbox tree; only note which paths were touched and wake the main loop.

The handler runs in watchdog's thread and does nothing else: the supervisor
takes the touched paths, stats them, and decides (settle, scan, mark gone).
Directories are reported too (created, moved in or out, deleted), so the
supervisor can walk a folder moved into the inbox (``scan.walk``) or mark
everything under a vanished one gone (``Ledger.gone_tree``).

Wake-up: a byte on a ``socketpair``; pass ``watcher.waitable`` (the read end)
to ``multiprocessing.connection.wait`` next to the pool's pipes, then ``take_touched()``.

Bounded by ``[watch] max_depth``, like the scan: watchdog's own tree walks
(``os.walk`` when inotify watches are added, a recursive ``DirectorySnapshot``
when polling) recurse once per folder level, so a tree about 1,000 levels deep
raised RecursionError out of ``start()``. The observers here are watchdog's,
with those walks replaced: inotify watches folders down to ``max_depth`` with
an iterative walk, polling lists folders down to ``max_depth`` only and never
follows a symlink (``lstat``), so a link such as ``x/l -> ..`` is reported
once, as a link, and refused by intake. A folder one level deeper is still
reported (created, moved in) so intake can refuse it.

Permissions: a folder the service user may not read gets no inotify watch
(``inotify_add_watch`` fails with EACCES; watchdog would keep a bogus watch
``wd=-1`` and warn about it). Attribute changes (chmod, chgrp, ACLs) are reported
apart (``take_attrib``) so intake can look again at what it could not read, and a
folder that becomes readable gets its watches then, before intake walks it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import structlog
from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import (
    DEFAULT_EMITTER_TIMEOUT,
    DEFAULT_OBSERVER_TIMEOUT,
    BaseObserver,
    EventQueue,
    ObservedWatch,
)
from watchdog.observers.inotify import _INVALID_WD, InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import (
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    Watch,
    WatchDescriptor,
    inotify_add_watch,
)
from watchdog.observers.inotify_move_event_grouper import GroupedInotifyEvent, PathedInotifyEvent
from watchdog.observers.polling import PollingObserverVFS

from ocr_inbox.config import WatchSettings
from ocr_inbox.support.paths import is_ignored

log = structlog.get_logger(__name__)

ObserverMode = Literal["auto", "native", "polling"]

# Opens and reads (our own workers reading images) must not wake anything up,
# and a directory's "modified" only repeats what its entries' events say.
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
    # permissions changed: intake looks again at what it could not read (``take_attrib``)
    FileAttribEvent,
    DirAttribEvent,
]
_ATTRIB = (FileAttribEvent, DirAttribEvent)


class _Recorder(FileSystemEventHandler):
    def __init__(self, watcher: InboxWatcher) -> None:
        super().__init__()
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if type(event) not in _EVENTS:
            return
        w = self._watcher
        if isinstance(event, _ATTRIB):
            rel = w.relative(os.fsdecode(event.src_path))
            if rel is not None or os.fsdecode(event.src_path) == w.root:
                w._touch(rel or "", attrib=True)
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            path = os.fsdecode(path)
            if path == w.root and isinstance(event, (DirDeletedEvent, DirMovedEvent)):
                w._inbox_lost()
                continue
            rel = w.relative(path)
            if rel is not None:
                w._touch(rel)
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            # inotify only: watchdog silently skips a new folder it cannot watch
            # (fs.inotify.max_user_watches reached); notice it here.
            w._check_new_dir(os.fsdecode(getattr(event, "dest_path", "") or event.src_path))


class InboxWatcher:
    def __init__(self, inbox: Path, settings: WatchSettings | None = None) -> None:
        """Uses ``settings``' observer, poll_interval_s and ignore patterns."""
        s = settings if settings is not None else WatchSettings()
        self.root = os.path.realpath(inbox)
        self._mode: ObserverMode = s.observer
        self._poll_interval_s = s.poll_interval_s
        self._ignore = s.ignore_patterns()
        self._max_depth = s.max_depth
        self._lock = threading.Lock()
        self._touched: set[str] = set()
        #: paths whose attributes (mode, owner, ACL) changed; '' is the inbox itself
        self._attrib: set[str] = set()
        self._observer: BaseObserver | None = None
        self._kind = "none"
        self._lost = False
        #: why the native observer no longer covers the whole tree (set by the observer thread)
        self._incomplete: str | None = None
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start watching; "auto" falls back to polling when the native observer cannot start.

        Raises OSError when no observer can start (the inbox is missing, ...).
        """
        if not os.path.isdir(self.root):
            raise FileNotFoundError(errno.ENOENT, "the inbox is not a directory", self.root)
        self._incomplete = None
        if self._mode in ("auto", "native"):
            try:
                self._observer = self._start(NativeObserver(max_depth=self._max_depth))
                self._kind = _kind_of(self._observer)
                # watchdog watches the root or raises, but skips sub-folders it
                # cannot watch without a word: check that the limit did not bite.
                problem = self._coverage_problem()
                if problem is not None:
                    self.stop()
                    raise OSError(errno.ENOSPC, problem)
            except (OSError, RecursionError) as exc:
                # RecursionError: only if a watchdog walk we did not replace recursed on a deep tree
                self.stop()
                if self._mode == "native":
                    if isinstance(exc, RecursionError):
                        raise OSError(errno.ELOOP, f"the native observer failed: {exc}") from exc
                    raise
                log.warning(
                    "watch_fallback_polling",
                    inbox=self.root,
                    reason=(exc.strerror if isinstance(exc, OSError) else None) or str(exc),
                    errno=exc.errno if isinstance(exc, OSError) else None,
                    poll_interval_s=self._poll_interval_s,
                )
        if self._observer is None:
            self._start_polling()
        self._lost = False
        log.info("watch_started", inbox=self.root, kind=self._kind)

    def _start_polling(self) -> None:
        self._observer = self._start(_bounded_polling_observer(self.root, self._max_depth, self._poll_interval_s))
        self._kind = "polling"

    def _coverage_problem(self) -> str | None:
        """After an inotify start: the sub-folders left without a watch, as a reason; None if all are watched.

        Uses ``/proc/self/fdinfo`` (Linux); where that cannot be read, assumes all is well.
        """
        if self._kind != "inotify":
            return None
        missing, total = _unwatched_dirs(self.root, self._max_depth)
        if missing:
            time.sleep(0.2)  # a folder created during the start may be getting its watch right now
            missing, total = _unwatched_dirs(self.root, self._max_depth)
        if not missing:
            return None
        return (
            f"inotify watch limit reached: {len(missing)} of {total} folders could not be watched "
            f"(fs.inotify.max_user_watches = {_max_user_watches()})"
        )

    def _start(self, obs: BaseObserver) -> BaseObserver:
        obs.daemon = True
        obs.schedule(_Recorder(self), self.root, recursive=True, event_filter=_EVENTS)
        try:
            obs.start()
        except BaseException:
            with contextlib.suppress(Exception):
                obs.stop()
            raise
        return obs

    def stop(self) -> None:
        """Stop the observer thread (idempotent); the wake socket stays usable."""
        obs, self._observer = self._observer, None
        if obs is not None:
            obs.stop()
            if obs.is_alive():
                obs.join(timeout=5.0)

    def close(self) -> None:
        self.stop()
        self._rsock.close()
        self._wsock.close()

    def restart(self) -> bool:
        """Start watching again (after the inbox was removed and came back).

        Logs instead of raising: the periodic rescan covers the gap. Returns
        whether watching works again.
        """
        self.stop()
        try:
            self.start()
        except OSError as exc:
            log.warning("watch_restart_failed", inbox=self.root, reason=exc.strerror or str(exc))
            return False
        return True

    @property
    def kind(self) -> str:
        """The observer in use: "inotify" (or the platform's native kind), "polling", "none"."""
        return self._kind

    @property
    def healthy(self) -> bool:
        """False when the inbox was removed or the observer died: call ``restart``."""
        obs = self._observer
        if obs is None or not obs.is_alive() or self._lost:
            return False
        if isinstance(obs, _BoundedInotifyObserver) and not obs.reader_alive:
            return False  # the thread reading inotify events died: nothing more would come
        # an emitter thread that died of an error (not stopped) reports nothing any more
        return all(e.is_alive() or e.stopped_event.is_set() for e in obs.emitters)

    # -- the supervisor's side -----------------------------------------------

    def fileno(self) -> int:
        """Readable when paths were touched since the last ``take_touched``."""
        return self._rsock.fileno()

    @property
    def waitable(self) -> socket.socket:
        """The wake socket itself, for ``multiprocessing.connection.wait`` (typed for it)."""
        return self._rsock

    def take_touched(self) -> set[str]:
        """The touched paths (files and directories, relative, '/'-separated), cleared.

        Also where a native watcher that lost coverage (a new folder over the
        inotify watch limit) is replaced by polling, in "auto" mode.
        """
        if self._incomplete is not None and self._kind == "inotify":
            self._fall_back_at_runtime()
        with self._lock:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while self._rsock.recv(4096):
                    pass
            touched, self._touched = self._touched, set()
        return touched

    def take_attrib(self) -> set[str]:
        """The paths whose permissions (or other attributes) changed since the last call, cleared
        ('' is the inbox itself). Call after ``take_touched``: its wake-up byte covers these too."""
        with self._lock:
            attrib, self._attrib = self._attrib, set()
        return attrib

    def watch_again(self, rel: str) -> None:
        """Intake found the folder ``rel`` readable without an attribute event (NFS, or a
        change inotify missed): give it, and what is below it, inotify watches now, before
        intake walks it. Polling needs nothing: its next listing sees the folder's content."""
        obs = self._observer
        if not isinstance(obs, _BoundedInotifyObserver):
            return
        path = os.fsencode(os.path.join(self.root, rel))
        for emitter in list(obs.emitters):
            group = getattr(emitter, "_inotify", None)
            if isinstance(group, _BoundedWatchGroup):
                group.watch_again(path)

    def _fall_back_at_runtime(self) -> None:
        reason, self._incomplete = self._incomplete, None
        if self._mode != "auto":
            log.error("watch_incomplete", inbox=self.root, reason=reason, note="observer is native; only the periodic rescan sees those folders")
            return
        log.warning(
            "watch_fallback_polling", inbox=self.root, reason=reason, errno=errno.ENOSPC, poll_interval_s=self._poll_interval_s
        )
        self.stop()
        # The supervisor walks every touched folder: files that arrived in the
        # unwatched ones before polling took its first snapshot are found that way.
        missing, _ = _unwatched_dirs(self.root, self._max_depth, watched=set())
        try:
            self._start_polling()
        except OSError as exc:
            self._kind = "none"
            log.error("watch_restart_failed", inbox=self.root, reason=exc.strerror or str(exc))
            return
        log.info("watch_started", inbox=self.root, kind=self._kind)
        for path in missing:
            rel = self.relative(path)
            if rel is not None:
                self._touch(rel)

    # -- the observer thread's side ------------------------------------------

    def relative(self, path: str) -> str | None:
        """``path`` relative to the inbox, '/'-separated; None outside it or ignored."""
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return None
        rel = rel.replace(os.sep, "/")
        if self._ignore and is_ignored(rel, self._ignore):
            return None
        return rel

    def _touch(self, rel: str, *, attrib: bool = False) -> None:
        with self._lock:
            wake = not self._touched and not self._attrib
            (self._attrib if attrib else self._touched).add(rel)
            if wake:  # one byte per batch of touches is enough to wake the loop
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    self._wsock.send(b"\0")

    def _check_new_dir(self, path: str) -> None:
        """Observer thread: a folder appeared; flag the watcher if inotify could not watch it."""
        if self._kind != "inotify" or self._incomplete is not None:
            return
        rel = self.relative(path)
        if rel is not None and rel.count("/") + 1 > self._max_depth:
            return  # not watched on purpose: intake refuses it as too deep
        try:
            ino = os.stat(path, follow_symlinks=False).st_ino
        except OSError:
            return  # gone again
        watched = _watched_inodes()
        if watched is None or ino in watched or not os.path.isdir(path) or os.path.islink(path):
            return
        if not os.access(path, os.R_OK | os.X_OK):
            return  # unreadable: not a watch problem; intake waits for it to open up
        if rel is not None:
            # closed when its watch was tried, open now (cp -a opens it within milliseconds,
            # its attribute event may not be handled yet): try once more before blaming the limit
            self.watch_again(rel)
            watched = _watched_inodes()
            if watched is None or ino in watched:
                return
        self._incomplete = (
            f"inotify watch limit reached: the new folder {self.relative(path) or path} could not be watched "
            f"(fs.inotify.max_user_watches = {_max_user_watches()})"
        )
        with self._lock, contextlib.suppress(BlockingIOError, InterruptedError):
            self._wsock.send(b"\0")

    def _inbox_lost(self) -> None:
        if not self._lost:
            self._lost = True
            log.error("watch_inbox_removed", inbox=self.root)
        with self._lock, contextlib.suppress(BlockingIOError, InterruptedError):
            self._wsock.send(b"\0")


_WATCH_LINE = re.compile(r"^inotify wd:\S+ ino:([0-9a-f]+)", re.MULTILINE)


def _watched_inodes() -> set[int] | None:
    """Inodes watched by this process's inotify instances (``/proc/self/fdinfo``); None if unknown."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    found: set[int] | None = None
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as fh:
                text = fh.read()
        except OSError:
            continue
        found = found if found is not None else set()
        found.update(int(h, 16) for h in _WATCH_LINE.findall(text))
    return found


def _unwatched_dirs(root: str, max_depth: int, watched: set[int] | None = None) -> tuple[list[str], int]:
    """Readable folders under ``root`` down to ``max_depth`` levels (itself included, no
    symlinks) that have no inotify watch, and how many folders there are. ``watched=set()``:
    every folder."""
    if watched is None:
        watched = _watched_inodes()
        if watched is None:
            return [], 0
    missing: list[str] = []
    total = 0
    stack = [(root, 0)]
    while stack:
        d, depth = stack.pop()
        try:
            ino = os.stat(d, follow_symlinks=False).st_ino
            with os.scandir(d) as it:
                subdirs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue  # vanished or unreadable: nothing to watch there
        total += 1
        if ino not in watched:
            missing.append(d)
        if depth < max_depth:
            stack.extend((sub, depth + 1) for sub in subdirs)
    return missing, total


def _max_user_watches() -> str:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def _kind_of(obs: BaseObserver) -> str:
    name = type(obs).__name__.lower()
    for kind in ("inotify", "fsevents", "kqueue", "polling"):
        if kind in name:
            return kind
    return name.removesuffix("observer") or "native"


# -- watchdog's observers, bounded ---------------------------------------------


def _depth_below(root: bytes, path: bytes) -> int:
    """Folder levels of ``path`` below ``root`` (0 for ``root`` itself)."""
    rel = os.path.relpath(path, root)
    return 0 if rel == b"." else rel.count(b"/") + 1


def _bounded_tree(top: bytes, top_depth: int, max_depth: int) -> Iterator[tuple[bytes, int, list[bytes], list[bytes]]]:
    """``os.walk(top)`` without recursion: (folder, its depth, sub-folders, other entries)
    for every folder down to ``max_depth``; links are entries, never descended."""
    stack = [(top, top_depth)]
    while stack:
        d, depth = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue  # vanished, unreadable or a path too long: nothing to watch there
        dirs: list[bytes] = []
        files: list[bytes] = []
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(e.name)
        yield d, depth, dirs, files
        if depth < max_depth:
            stack.extend((os.path.join(d, n), depth + 1) for n in reversed(dirs))


class _InotifyFD(InotifyFD):
    """watchdog's inotify instance, refusing a folder it may not read (EACCES) the way it
    refuses others: watchdog's own returns a watch ``wd=-1`` for it, which warns
    (RuntimeWarning) when a second such folder comes and is never watched again.
    The group below (watchdog's ``_add_callback``) then passes over that folder; it
    gets its watch once an attribute event says it may be readable now."""

    def _get_or_create_watch(self, path: bytes, mask: Mask) -> Watch:
        wd = inotify_add_watch(self._inotify_fd, path, mask)
        if wd == -1:
            err = ctypes.get_errno()
            if err in (errno.EACCES, errno.EPERM):
                raise PermissionError(err, os.strerror(err), os.fsdecode(path))
            InotifyFD._raise_error()
            raise OSError(err, os.strerror(err), os.fsdecode(path))
        watch = self._watch_for_wd.get(WatchDescriptor(wd))
        if watch is None:
            watch = Watch(WatchDescriptor(wd), mask, path)
            self._watch_for_wd[WatchDescriptor(wd)] = watch
        return watch


class _BoundedWatchGroup(InotifyWatchGroup):
    """watchdog's inotify watch group, its two tree walks made iterative and depth-limited."""

    def __init__(self, *args: Any, max_depth: int, **kwargs: Any) -> None:
        self.max_depth = max_depth  # before the dataclass __init__: it adds the watches
        super().__init__(*args, **kwargs)

    def _add_all_callbacks(self, path: bytes) -> None:
        depth = _depth_below(self.path, path)
        if depth > self.max_depth:
            return  # its creation was reported; intake refuses it as too deep
        self._add_callback(path)
        if not self.is_recursive or os.path.islink(path) or not os.path.isdir(path):
            return
        for d, d_depth, dirs, _ in _bounded_tree(path, depth, self.max_depth):
            if d_depth < self.max_depth:
                for name in dirs:
                    self._add_callback(os.path.join(d, name))

    def on_event(self, event: InotifyEvent) -> None:
        # A folder's mode changed (its own watch, or its parent's): if it or a folder
        # below it had no watch (not readable until now), add them before the event is
        # queued, so nothing created in it from here on is missed by intake's walk.
        if event.is_attrib and (event.is_directory or not event.name):
            with self._lock:
                path = self._build_event_source_path(event) if self.is_active else None
            if path is not None:
                self.watch_again(path)
        super().on_event(event)

    def watch_again(self, path: bytes) -> None:
        """Watch ``path`` and the folders below it that have no watch yet (readable now)."""
        with self._lock:
            if self.is_active and self.is_recursive and self._needs_watches(path):
                self._add_all_callbacks(path)

    def _needs_watches(self, path: bytes) -> bool:
        """``path`` (a folder within the depth) or one of its sub-folders has no watch."""
        if _depth_below(self.path, path) > self.max_depth or not os.path.isdir(path) or os.path.islink(path):
            return False
        node = self._find_node_by_path(path)
        if node is None or node.wd == _INVALID_WD:
            return True
        if _depth_below(self.path, path) >= self.max_depth:
            return False
        try:
            with os.scandir(path) as it:
                subdirs = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return False
        return any((c := node.children.get(n)) is None or c.wd == _INVALID_WD for n in subdirs)

    def _recursive_simulate(self, src_path: bytes) -> list[InotifyEvent]:
        # the events for what a new folder already holds (mkdir -p a/b; cp -r), as watchdog does
        events = []
        for d, _, dirs, files in _bounded_tree(src_path, _depth_below(self.path, src_path), self.max_depth):
            wd = self._active_callbacks_by_path.get(d)
            if wd is None:
                continue  # not watched: too deep, or its own IN_CREATE will come
            for name in dirs:
                events.append(InotifyEvent(wd, Mask(InotifyConstants.IN_CREATE | InotifyConstants.IN_ISDIR), 0, name))
            for name in files:
                events.append(InotifyEvent(wd, InotifyConstants.IN_CREATE, 0, name))
        return events


class _BoundedInotifyEmitter(InotifyEmitter):
    def __init__(
        self,
        event_queue: EventQueue,
        watch: ObservedWatch,
        *,
        timeout: float = DEFAULT_EMITTER_TIMEOUT,
        event_filter: list[type[FileSystemEvent]] | None = None,
        inotify_fd: InotifyFD | None = None,
        max_depth: int,
    ) -> None:
        super().__init__(event_queue, watch, timeout=timeout, event_filter=event_filter, inotify_fd=inotify_fd)
        self._max_depth = max_depth

    def build_and_queue_event(self, event: GroupedInotifyEvent, *, full_events: bool = False) -> None:
        """watchdog's, less the synthetic events for a moved folder's content: making them
        walks the folder with ``os.walk`` (recursive, unbounded). The folder's own
        event is enough here: intake walks a moved-in or renamed folder itself."""
        if isinstance(event, PathedInotifyEvent):
            if not (event.ev.is_moved_to and event.ev.is_directory) or full_events:
                super().build_and_queue_event(event, full_events=full_events)
                return
            path = self._decode_path(event.path)
            self.queue_event(DirCreatedEvent(path))
            self.queue_event(DirModifiedEvent(os.path.dirname(path)))
            return
        move_from, move_to = event
        if not move_from.ev.is_directory:
            super().build_and_queue_event(event, full_events=full_events)
            return
        src, dest = self._decode_path(move_from.path), self._decode_path(move_to.path)
        self.queue_event(DirMovedEvent(src, dest))
        self.queue_event(DirModifiedEvent(os.path.dirname(src)))
        self.queue_event(DirModifiedEvent(os.path.dirname(dest)))

    def on_thread_start(self) -> None:
        self._inotify = _BoundedWatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=False,
            max_depth=self._max_depth,
        )


class _BoundedInotifyObserver(BaseObserver):
    """watchdog's ``InotifyObserver`` with ``_BoundedInotifyEmitter``."""

    def __init__(self, *, max_depth: int, timeout: float = DEFAULT_OBSERVER_TIMEOUT) -> None:
        self._inotify_fd = _InotifyFD()
        self._inotify_fd.start()
        super().__init__(_BoundedInotifyEmitter, timeout=timeout, inotify_fd=self._inotify_fd, max_depth=max_depth)

    @property
    def reader_alive(self) -> bool:
        return self._inotify_fd.is_alive()

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._inotify_fd.stop()
        self._inotify_fd.join()


#: the native observer (a name tests can replace)
NativeObserver = _BoundedInotifyObserver

#: a folder that cannot be listed is empty to the poller (watchdog's own rule for ENOENT,
#: ENOTDIR, EINVAL and, below the root, EACCES), so one bad folder cannot stop all polling
_UNLISTABLE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EINVAL, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP})


def _bounded_polling_observer(root: str, max_depth: int, interval_s: float) -> BaseObserver:
    """watchdog's polling observer that lists folders down to ``max_depth`` and never follows
    a link (``lstat``: a link to a folder is an entry, reported when it appears)."""
    root_b = os.fsencode(root)

    def listdir(path: str | None) -> Iterator[os.DirEntry[str]]:
        assert path is not None  # DirectorySnapshot always names the folder
        if _depth_below(root_b, os.fsencode(path)) > max_depth:
            return iter(())
        try:
            with os.scandir(path) as it:
                return iter(list(it))
        except OSError as exc:
            if path == root or exc.errno not in _UNLISTABLE:
                raise  # the inbox itself, or a passing I/O error: watchdog keeps its last snapshot
            return iter(())

    return PollingObserverVFS(stat=os.lstat, listdir=listdir, polling_interval=interval_s)
