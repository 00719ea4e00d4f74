"""What the installed unit's file-system sandbox lets the service read and write.

The shipped unit runs the daemon under ``ProtectSystem=strict``: every path is
read-only to it except ``ReadWritePaths=``, its ``StateDirectory=`` and
``CacheDirectory=`` and a private ``/tmp``; ``ProtectHome=`` makes ``/home``,
``/root`` and ``/run/user`` read-only or hides them, ``InaccessiblePaths=`` hides.
``BindPaths=``/``BindReadOnlyPaths=`` (the source path, bound at the same place)
open a path again, also beneath the empty ``/home`` of ``ProtectHome=tmpfs``;
``TemporaryFileSystem=`` puts an empty file system at a path (the shipped unit's
``/dev/shm``).
An outbox outside what the unit opens is only found out when the first JSON fails
to be written (EROFS); a ``ReadWritePaths=`` entry that does not exist fails the
start (226/NAMESPACE). ``ocr-inbox doctor`` asks this module first.

The unit and its drop-ins are read as systemd merges them (files in order, a list
setting adds up, an empty assignment resets it), for these settings only. Which
rule applies to a path is systemd's: the deepest one above it, except that nothing
beneath a hidden path can be opened again (systemd drops such mounts).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RW, RO, HIDDEN = "rw", "ro", "hidden"
_LISTS = {
    "ReadWritePaths": "read_write", "ReadWriteDirectories": "read_write",
    "ReadOnlyPaths": "read_only", "ReadOnlyDirectories": "read_only",
    "InaccessiblePaths": "inaccessible", "InaccessibleDirectories": "inaccessible",
    "StateDirectory": "state", "CacheDirectory": "cache",
    "BindPaths": "bind", "BindReadOnlyPaths": "bind_read_only",
    "TemporaryFileSystem": "temporary",
}
_FLAGS = ("ProtectSystem", "ProtectHome", "PrivateTmp")
_TRUE = ("1", "yes", "true", "on")


@dataclass(frozen=True)
class Sandbox:
    protect_system: str = "no"  # no, yes, full, strict
    protect_home: str = "no"  # no, yes, read-only, tmpfs
    private_tmp: bool = False
    #: as written (a leading "-": ignored when missing), in order
    read_write: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    inaccessible: tuple[str, ...] = ()
    #: StateDirectory= / CacheDirectory= names, beneath /var/lib and /var/cache
    state: tuple[str, ...] = ()
    cache: tuple[str, ...] = ()
    #: BindPaths= / BindReadOnlyPaths= entries, "SRC[:DEST[:OPTIONS]]" as written
    bind: tuple[str, ...] = ()
    bind_read_only: tuple[str, ...] = ()
    #: TemporaryFileSystem= entries, "PATH[:OPTIONS]"
    temporary: tuple[str, ...] = ()

    @property
    def state_dirs(self) -> list[Path]:
        return [Path("/var/lib") / name for name in self.state]

    def _binds(self) -> Iterable[tuple[str, str]]:
        """Bound paths as (where the service sees them, mode)."""
        for entries, mode in ((self.bind, RW), (self.bind_read_only, RO)):
            for entry in entries:
                src, _, rest = entry.partition(":")
                dest = _path(rest.partition(":")[0]) or _path(src)
                if dest:
                    yield os.path.normpath(dest), mode

    def _rules(self) -> Iterable[tuple[str, str]]:
        system = self.protect_system.lower()
        if system == "strict":
            yield "/", RO
        elif system in ("full", *_TRUE):
            yield from ((p, RO) for p in ("/usr", "/boot", "/efi"))
            if system == "full":
                yield "/etc", RO
        home = self.protect_home.lower()
        if home != "no" and home not in ("0", "false", "off"):
            mode = RO if home == "read-only" else HIDDEN  # yes / tmpfs: empty
            yield from ((p, mode) for p in ("/home", "/root", "/run/user"))
        if self.private_tmp:  # a /tmp of its own: the host's files there are not the service's
            yield from (("/tmp", HIDDEN), ("/var/tmp", HIDDEN))
        for entry in self.temporary:  # an empty file system: nothing of the host's beneath
            path = _path(entry.partition(":")[0])
            if path:
                yield os.path.normpath(path), HIDDEN
        yield from ((str(p), RW) for p in self.state_dirs)
        yield from ((f"/var/cache/{name}", RW) for name in self.cache)
        for entries, mode in ((self.read_write, RW), (self.read_only, RO), (self.inaccessible, HIDDEN)):
            for entry in entries:
                path = _path(entry)
                if path:
                    yield os.path.realpath(path), mode

    def access(self, path: Path) -> str:
        """``rw``, ``ro`` or ``hidden``: what the service gets at ``path`` (symlinks resolved)."""
        real = os.path.realpath(path)
        above = [(prefix, mode) for prefix, mode in self._rules() if _beneath(real, prefix)]
        bound = [(prefix, mode) for prefix, mode in self._binds() if _beneath(real, prefix)]
        if bound and not self._beneath_inaccessible(real):
            # a bind mount shows the path as bound, even in an empty /home (ProtectHome=tmpfs);
            # read-only rules above it still apply beneath (ProtectSystem=strict is "/": ro)
            deepest = max(len(prefix) for prefix, _ in bound)
            mode = RO if any(m == RO for p, m in bound if len(p) == deepest) else RW
            deeper = [(p, m) for p, m in above if len(p) > deepest and m != HIDDEN]
            if deeper:
                top = max(len(p) for p, _ in deeper)
                return RO if any(m == RO for p, m in deeper if len(p) == top) else RW
            return mode
        if any(mode == HIDDEN for _, mode in above):
            return HIDDEN
        if not above:
            return RW
        deepest = max(len(prefix) for prefix, _ in above)
        modes = {mode for prefix, mode in above if len(prefix) == deepest}
        return RO if RO in modes else RW

    def _beneath_inaccessible(self, real: str) -> bool:
        """Beneath what no bind can reopen: InaccessiblePaths=, ProtectHome=yes."""
        hidden = [os.path.realpath(p) for p in map(_path, self.inaccessible) if p]
        if self.protect_home.lower() in _TRUE:
            hidden += ["/home", "/root", "/run/user"]
        return any(_beneath(real, p) for p in hidden)

    def missing(self) -> list[str]:
        """``ReadWritePaths=``/``ReadOnlyPaths=``/``InaccessiblePaths=`` entries that do not
        exist and have no "-": the service would not start (status 226/NAMESPACE)."""
        out = []
        binds = (e.partition(":")[0] for e in (*self.bind, *self.bind_read_only))
        for entry in (*self.read_write, *self.read_only, *self.inaccessible, *binds):
            path = _path(entry)
            if path and not entry.startswith("-") and not os.path.lexists(path):
                out.append(path)
        return out


def _path(entry: str) -> str:
    """The path of a list entry: without its "-" and "+" prefixes; "" for what is not checked
    (specifiers such as %h, relative names)."""
    path = entry.lstrip("-+")
    return path if path.startswith("/") and "%" not in path else ""


def _beneath(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _assignments(text: str) -> Iterable[tuple[str, str]]:
    """``Key=value`` lines of the [Service] section (continuation lines joined)."""
    section, pending = "", ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()


def read(texts: Iterable[str]) -> Sandbox:
    """The sandbox of a unit given as its file's text, then its drop-ins' in order."""
    flags = {"ProtectSystem": "no", "ProtectHome": "no", "PrivateTmp": "no"}
    lists: dict[str, list[str]] = {name: [] for name in set(_LISTS.values())}
    for text in texts:
        for key, value in _assignments(text):
            if key in _FLAGS:
                flags[key] = value or "no"
            elif key in _LISTS:
                target = lists[_LISTS[key]]
                if not value:
                    target.clear()  # an empty assignment resets the list
                else:
                    try:
                        target += shlex.split(value)
                    except ValueError:
                        target += value.split()
    return Sandbox(
        protect_system=flags["ProtectSystem"],
        protect_home=flags["ProtectHome"],
        private_tmp=flags["PrivateTmp"].lower() in _TRUE,
        read_write=tuple(lists["read_write"]),
        read_only=tuple(lists["read_only"]),
        inaccessible=tuple(lists["inaccessible"]),
        state=tuple(lists["state"]),
        cache=tuple(lists["cache"]),
        bind=tuple(lists["bind"]),
        bind_read_only=tuple(lists["bind_read_only"]),
        temporary=tuple(lists["temporary"]),
    )


def dropins(unit: Path) -> list[Path]:
    """The unit's drop-ins beside it, ``<unit>.d/*.conf``, in the order systemd applies them."""
    return sorted((unit.parent / f"{unit.name}.d").glob("*.conf"))


def of_unit(unit: Path) -> Sandbox:
    """The installed unit's sandbox: the file, then its drop-ins."""
    return read(p.read_text(errors="replace") for p in (unit, *dropins(unit)))
