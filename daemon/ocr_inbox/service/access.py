"""Who may read or write a path: the mode bits, POSIX ACLs and the kernel's order of them.

``ocr-inbox doctor`` asks it for the service user (``--user``), who is usually not the
user running doctor: for that user the answer is worked out from the file's owner,
group, mode and access ACL (acl(5)); for the user running doctor the kernel answers
(``os.access``).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ocr_inbox.support.errors import BadArguments


@dataclass(frozen=True)
class Identity:
    """The user whose access is checked; ``is_self``: the user running doctor (the kernel decides)."""

    name: str
    uid: int
    gids: frozenset[int]
    is_self: bool

    @classmethod
    def current(cls) -> Identity:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, frozenset([os.getegid(), *os.getgroups()]), True)

    @classmethod
    def named(cls, name: str) -> Identity:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise BadArguments(f"--user {name}: no such user") from None
        if pw.pw_uid == os.geteuid():
            return cls.current()
        return cls(name, pw.pw_uid, frozenset(os.getgrouplist(name, pw.pw_gid)), False)


R, W, X = 4, 2, 1
#: ACL entry tags (acl(5)); the owner's entry always equals the mode's owner bits
_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK = 0x02, 0x04, 0x08, 0x10


def _acl(path: str) -> list[tuple[int, int, int]] | None:
    """The access ACL's entries (tag, perm, id), None without one (Linux xattr format, acl(5))."""
    try:
        data = os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return None
    if len(data) < 4 or struct.unpack_from("<I", data)[0] != 2:
        return None
    return [(tag, perm, id_) for tag, perm, id_ in struct.iter_unpack("<HHI", data[4 : 4 + (len(data) - 4) // 8 * 8])]


def allowed(st: os.stat_result, acl: list[tuple[int, int, int]] | None, who: Identity, want: int) -> bool:
    """Whether ``who`` gets every bit of ``want`` (R|W|X) on a file with this mode, owner and ACL:
    the kernel's order (acl(5)): owner, named user, any matching group entry, other."""
    if who.uid == 0:
        return True  # CAP_DAC_OVERRIDE (the service user is not root; see the identity check)
    mode = st.st_mode
    if who.uid == st.st_uid:
        return (mode >> 6) & want == want
    if acl is None:
        if st.st_gid in who.gids:
            return (mode >> 3) & want == want
        return mode & want == want
    mask = next((p for tag, p, _ in acl if tag == _ACL_MASK), 7)
    for tag, perm, uid in acl:
        if tag == _ACL_USER and uid == who.uid:
            return perm & mask & want == want
    groups = [
        perm for tag, perm, gid in acl
        if (tag == _ACL_GROUP_OBJ and st.st_gid in who.gids) or (tag == _ACL_GROUP and gid in who.gids)
    ]
    if groups:
        return any(p & mask & want == want for p in groups)
    return mode & want == want


def _can(path: str, want: int, who: Identity) -> bool:
    if who.is_self:
        mode = (os.R_OK if want & R else 0) | (os.W_OK if want & W else 0) | (os.X_OK if want & X else 0)
        return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)
    if want & W and os.statvfs(path).f_flag & os.ST_RDONLY:
        return False
    return allowed(os.stat(path), _acl(path), who, want)


def _describe(path: str) -> str:
    st = os.stat(path)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    ro = ", read-only file system" if os.statvfs(path).f_flag & os.ST_RDONLY else ""
    return f"{path} ({stat.filemode(st.st_mode)} {owner}:{group}{ro})"


def verb(want: int) -> str:
    return {R | X: "read", W | X: "write into", R | W | X: "read and write"}.get(want, "use")


def blocked(path: Path, want: int, who: Identity) -> tuple[str, str, bool] | None:
    """Why ``who`` cannot ``want`` (R|W|X) on ``path``, the folder to fix and whether ``path``
    exists; None when it can. Every folder above needs x; a path that does not exist yet
    is created at start (mkdir -p), so its nearest existing folder needs w and x."""
    real = os.path.realpath(path)
    target = real
    while not os.path.exists(target):
        target = os.path.dirname(target)
    exists = target == real
    for folder in reversed(Path(target).parents):
        if not _can(str(folder), X, who):
            return f"{who.name} cannot enter {_describe(str(folder))}", str(folder), exists
    if not _can(target, want if exists else W | X, who):
        what = f"{verb(want)} {_describe(target)}" if exists else f"create {real} in {_describe(target)}"
        return f"{who.name} cannot {what}", target, exists
    return None
