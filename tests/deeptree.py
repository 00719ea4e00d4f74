"""Deep folder trees for tests, made and removed without recursion.

``os.makedirs`` and ``shutil.rmtree`` recurse once per level, and so does pytest's
clean-up of old temp dirs: a deep tree left behind breaks later test sessions.
"""

from __future__ import annotations

import os
from pathlib import Path


def nested(top: Path, levels: int, name: str = "d") -> Path:
    """``top/name/name/...``, ``levels`` deep, each made relative to its parent's fd (no
    recursion, and no path longer than PATH_MAX); returns the bottom folder."""
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
    finally:
        os.close(fd)
    return top.joinpath(*([name] * levels))


def remove_tree(top: Path) -> None:
    """``shutil.rmtree`` with a stack instead of recursion."""
    folders, stack = [], [str(top)]
    while stack:
        d = stack.pop()
        folders.append(d)
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    os.unlink(e.path)
    for d in reversed(folders):
        os.rmdir(d)
