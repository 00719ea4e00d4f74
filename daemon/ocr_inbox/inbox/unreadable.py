"""Folders and files the service user may not read yet: why, the fix, and when to look again.

``cp -a``, ``rsync -a``, ``mv`` across file systems and sync clients create a folder
with its final, often restrictive mode first and open it up after copying; a writer
with ``umask 077`` leaves files only its owner may read. Such a path is kept here
(``Blocked``) and looked at again when its permissions change (the watcher's
attribute events on it or a folder above it) and on a backoff (``[watch]
unreadable_retry_s``) for file systems where inotify does not see the change (NFS).

``diagnose`` says what the service user lacks, on which path, and how to fix it: the
service user's group and the mode to add, and ``ocr-inbox doctor --user`` to check.
Pure bookkeeping apart from ``diagnose``: the caller passes the time in.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import stat
from dataclasses import dataclass

#: the first look again after this long, then twice as long each time up to the cap
FIRST_RETRY_S = 1.0


@dataclass(frozen=True)
class Problem:
    """What the service user lacks (``missing``) and the command that gives it (``fix``)."""

    missing: str
    fix: str


def _name(table: str, ident: int) -> str:
    try:
        return pwd.getpwuid(ident).pw_name if table == "user" else grp.getgrgid(ident).gr_name
    except KeyError:
        return str(ident)


def service_identity() -> tuple[str, str]:
    """This process's user and group names (the unit's ``User=``/``Group=``)."""
    return _name("user", os.geteuid()), _name("group", os.getegid())


def diagnose(root: str, rel: str, *, folder: bool) -> Problem | None:
    """Why this process may not read ``rel`` under ``root`` (a folder must be listed and
    entered: r and x; a file read: r; every folder above entered: x); None when it may."""
    user, group = service_identity()
    parts = [p for p in rel.split("/") if p]
    path = root
    # every folder on the way, the inbox itself first, needs x
    for part in parts[:-1] if parts else []:
        if not os.access(path, os.X_OK):
            return _problem(root, path, "x", user, group)
        path = os.path.join(path, part)
    if parts and not os.access(path, os.X_OK):
        return _problem(root, path, "x", user, group)
    target = os.path.join(root, *parts) if parts else root
    need, bits = (os.R_OK | os.X_OK, "rx") if folder else (os.R_OK, "r")
    try:
        if os.access(target, need):
            return None
    except OSError:
        return None
    return _problem(root, target, bits, user, group)


def _problem(root: str, path: str, bits: str, user: str, group: str) -> Problem:
    shown = os.path.relpath(path, root)
    shown = "the inbox" if shown == "." else shown
    try:
        st = os.stat(path)
    except OSError as exc:  # a folder above may not be entered either: say what is known
        return Problem(
            f"{user} cannot {'enter' if bits == 'x' else 'read'} {shown}: {exc.strerror or exc}",
            f"check with: ocr-inbox doctor --user {user}",
        )
    owner, owner_group = _name("user", st.st_uid), _name("group", st.st_gid)
    what = {"x": "enter (x) the folder", "rx": "list and enter (r-x) the folder", "r": "read (r) the file"}[bits]
    missing = f"{user} may not {what} {shown} ({stat.filemode(st.st_mode)} {owner}:{owner_group})"
    q = shlex.quote(path)
    if st.st_uid == os.geteuid():  # its own file, closed to itself (chmod 0)
        fix = f"chmod u+{bits} {q}"
    else:
        chmod = f"chmod g+{bits} {q}"
        fix = chmod if owner_group == group else f"chgrp {shlex.quote(group)} {q} && {chmod}"
        fix += f" (or chmod o+{bits})"
    return Problem(missing, f"{fix}; check with: ocr-inbox doctor --user {user}")


@dataclass
class Entry:
    rel: str
    #: "folder" or "file"
    kind: str
    problem: Problem
    since: float
    #: the next look on the backoff (monotonic); inf: only events and rescans
    next_try: float
    delay: float = FIRST_RETRY_S
    #: said in the journal already
    reported: bool = False

    def as_dict(self, wall_since: float) -> dict[str, object]:
        return {
            "path": self.rel, "kind": self.kind, "missing": self.problem.missing, "fix": self.problem.fix,
            "since": wall_since,
        }


class Blocked:
    """The paths waiting for read access, with their backoff."""

    def __init__(self, cap_s: float) -> None:
        #: the longest wait between two looks; 0: look only on events and rescans
        self.cap_s = cap_s
        self._entries: dict[str, Entry] = {}
        #: wall time each entry was first blocked (for status)
        self._wall: dict[str, float] = {}

    def add(self, rel: str, kind: str, problem: Problem, now: float, wall: float) -> bool:
        """Record (or keep) ``rel`` as blocked; True when it is new (report it then, once)."""
        e = self._entries.get(rel)
        if e is not None:
            e.problem = problem
            e.kind = kind
            return False
        self._entries[rel] = Entry(rel, kind, problem, now, self._first_try(now))
        self._wall[rel] = wall
        return True

    def _first_try(self, now: float) -> float:
        return now + min(FIRST_RETRY_S, self.cap_s) if self.cap_s > 0 else float("inf")

    def tried(self, rel: str, now: float) -> None:
        """Looked at again and still blocked: the next look after twice the wait (up to the cap)."""
        e = self._entries.get(rel)
        if e is None:
            return
        if self.cap_s <= 0:
            e.next_try = float("inf")
            return
        e.delay = min(e.delay * 2, self.cap_s)
        e.next_try = now + e.delay

    def remove(self, rel: str) -> Entry | None:
        self._wall.pop(rel, None)
        return self._entries.pop(rel, None)

    def unreported(self, now: float, after_s: float) -> list[Entry]:
        """Entries blocked for ``after_s`` and not reported yet (a copy that opens its folder
        up within seconds is not worth a warning)."""
        return [e for e in self._entries.values() if not e.reported and now - e.since >= after_s]

    def due(self, now: float) -> list[str]:
        """The paths whose next look on the backoff has come."""
        return [rel for rel, e in self._entries.items() if e.next_try <= now]

    def at_or_under(self, rel: str) -> list[str]:
        """Blocked paths that are ``rel`` or below it ('' is the whole inbox): a change of
        ``rel``'s permissions may have opened them up."""
        if not rel:
            return list(self._entries)
        prefix = rel + "/"
        return [r for r in self._entries if r == rel or r.startswith(prefix)]

    def forget_under(self, rel: str) -> None:
        """``rel`` and everything below it left the inbox."""
        for r in self.at_or_under(rel):
            self.remove(r)

    def get(self, rel: str) -> Entry | None:
        return self._entries.get(rel)

    def __contains__(self, rel: object) -> bool:
        return rel in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def view(self, limit: int = 100) -> list[dict[str, object]]:
        """The entries for ``status``: folders first, then by path; at most ``limit``."""
        rows = sorted(self._entries.values(), key=lambda e: (e.kind != "folder", e.rel))[:limit]
        return [e.as_dict(self._wall.get(e.rel, 0.0)) for e in rows]
