"""Which files have stopped changing: the idea of paperless-ngx's FileStabilityTracker.

Pure bookkeeping, no I/O and no clock of its own: the caller stats the files
(on each watcher event and each tick, see ``tracked``) and passes the time in.
A file is settled when a look at least ``settle_s`` after its last change
found the same (size, mtime, and ctime when given): a file still being written changes on every look
and is never returned, and a file nobody looked at again is never assumed done.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    ctime_ns: int | None
    #: when (size, mtime, ctime) last changed, or when first seen
    since: float
    #: the last look, changed or not
    checked: float


class StabilityTracker:
    def __init__(self) -> None:
        self._files: dict[str, _Seen] = {}

    def seen(self, rel: str, size: int, mtime_ns: int, now: float, *, ctime_ns: int | None = None) -> None:
        """Record a look at ``rel``; a different size, mtime or ctime restarts its clock (the
        ctime: a rewrite that puts the mtime back is a change too)."""
        entry = self._files.get(rel)
        if entry is None or (entry.size, entry.mtime_ns, entry.ctime_ns) != (size, mtime_ns, ctime_ns):
            self._files[rel] = _Seen(size, mtime_ns, ctime_ns, now, now)
        else:
            entry.checked = max(entry.checked, now)

    def settled(self, now: float, settle_s: float) -> list[str]:
        """Files confirmed unchanged for ``settle_s`` by ``now``, in name order; they are forgotten.

        Each settled file is returned once: the caller records it (the ledger
        notices a later change by its size and mtime).
        """
        ready = sorted(rel for rel, e in self._files.items() if min(e.checked, now) - e.since >= settle_s)
        for rel in ready:
            del self._files[rel]
        return ready

    def due(self, now: float, settle_s: float) -> list[str]:
        """The tracked files whose next look can settle them: unchanged for ``settle_s`` by ``now``.

        Looking at the others sooner decides nothing (a change found then only
        restarts a clock that has not run out), so a caller may stat just these
        on each tick instead of everything ``tracked()``: with 100,000 files
        found by a start-up scan that is one stat per file instead of one per
        tick. A change is then noticed at the due look and its clock restarts
        from there: later, never sooner, than a look on every tick would.
        """
        return [rel for rel, e in self._files.items() if now - e.since >= settle_s]

    def forget(self, rel: str) -> None:
        """Stop tracking ``rel`` (deleted, ignored, refused)."""
        self._files.pop(rel, None)

    def tracked(self) -> list[str]:
        """Files still settling: stat these on each tick, they may change without an event."""
        return list(self._files)

    def __contains__(self, rel: object) -> bool:
        return rel in self._files

    def __len__(self) -> int:
        return len(self._files)
