"""A quarantined file that is deleted leaves ``status``, however the daemon learns of it.

The rule of what leaves the inbox is the ledger's (``ledger.store.leaves``): the
watcher's delete event and the start-up scan apply the same one. It once differed:
a failed image deleted while the daemon was down stayed a failure in ``status`` for
ever. The real daemon, the test engine plug-in, truncated PNGs as the failures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_harness import Daemon, toml_config
from imagemaker import plain, truncate
from PIL import Image

from ocr_inbox.ledger import ImageStatus, Ledger

pytestmark = [pytest.mark.slow]

#: the test engine; no periodic rescan, so only the start-up scan can find a delete made while down
CONFIG = toml_config(
    {
        "watch": {"settle_seconds": 0.3, "rescan_interval_s": 0},
        "pdf": {"enabled": False},
        "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 1},
    },
    {},
)


def _truncated_png(path: Path) -> Path:
    """A PNG cut off in its pixel data (noise compresses badly: the cut lands in IDAT)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise((200, 150), 64).save(path, "PNG")
    return truncate(path, keep=0.6)


def _status(state: Path, rel: str) -> ImageStatus | None:
    with Ledger.open_readonly(state, verify=False) as ledger:
        row = ledger.get(rel)
        return row.status if row else None


def _failures(d: Daemon) -> dict[str, str]:
    return {f["rel"]: f["reason"] for f in d.status()["failures"]}


def test_a_quarantined_file_deleted_while_watched_or_while_down_leaves_status(tmp_path: Path, models_dir: Path) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    _truncated_png(inbox / "box/watched.png")
    _truncated_png(inbox / "box/down.png")
    plain(inbox / "box/good.png")

    d = Daemon(tmp_path, models_dir, CONFIG).start()
    d.ready()
    d.until(lambda: _status(state, "box/watched.png") == _status(state, "box/down.png") == ImageStatus.failed
            and (tmp_path / "outbox/box/good.png.json").exists(), "both truncated PNGs quarantined, the good one done")
    assert _failures(d) == {"box/watched.png": "truncated", "box/down.png": "truncated"}

    # deleted while watched: the watcher's event
    (inbox / "box/watched.png").unlink()
    d.until(lambda: _status(state, "box/watched.png") == ImageStatus.gone, "the watched delete marked gone")
    assert _failures(d) == {"box/down.png": "truncated"}
    assert d.stop() == 0

    # deleted while the daemon was down: the start-up scan
    (inbox / "box/down.png").unlink()
    d2 = Daemon(tmp_path, models_dir, name="daemon2").start()
    d2.ready()
    d2.until(lambda: d2.events("scan_done"), "the start-up scan")
    assert d2.events("scan_done")[0]["gone"] == "1"
    assert _status(state, "box/down.png") == ImageStatus.gone
    assert _failures(d2) == {}
    assert _status(state, "box/good.png") == ImageStatus.done
    assert d2.stop() == 0
