"""PaddleX's cache: its temp files are removed only when a process exits.

A worker that runs for months must purge them itself. Only ``<cache>/temp`` is
touched, never model files (they live in the models directory, elsewhere).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def purge_temp(cache_dir: Path, older_than_s: float) -> int:
    """Remove entries of ``cache_dir/temp`` older than ``older_than_s``; returns how many."""
    temp = cache_dir / "temp"
    if not temp.is_dir():
        return 0
    now, n = time.time(), 0
    for entry in temp.iterdir():
        try:
            if now - entry.lstat().st_mtime < older_than_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
            n += 1
        except FileNotFoundError:
            continue
    return n


def paddlex_cache_dir(cache_root: Path) -> Path:
    """Where the workers point PaddleX's cache (``<paths.cache_dir>/paddlex``)."""
    return cache_root / "paddlex"
