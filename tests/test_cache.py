"""PaddleX temp files are purged once old enough; nothing else is touched."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ocr_inbox.support import cache


def test_purge_removes_only_old_temp_entries(tmp_path: Path) -> None:
    temp = tmp_path / "paddlex" / "temp"
    (temp / "olddir").mkdir(parents=True)
    (temp / "olddir" / "x.png").write_bytes(b"x")
    (temp / "old.jpg").write_bytes(b"x")
    (temp / "new.jpg").write_bytes(b"x")
    (tmp_path / "paddlex" / "locks").mkdir()
    (tmp_path / "paddlex" / "locks" / "keep.lock").write_bytes(b"")
    hour_ago = time.time() - 3600
    for p in (temp / "olddir", temp / "old.jpg"):
        os.utime(p, (hour_ago, hour_ago))
    assert cache.purge_temp(tmp_path / "paddlex", older_than_s=300) == 2
    assert sorted(p.name for p in temp.iterdir()) == ["new.jpg"]
    assert (tmp_path / "paddlex" / "locks" / "keep.lock").exists()
    assert cache.purge_temp(tmp_path / "nothing", 0) == 0
