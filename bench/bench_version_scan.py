"""What the source version (size, mtime, ctime, inode) costs intake's scans. Not a test.

In process, no OCR: ``--files`` one-byte images in 1,000-file folders, all recorded
done in a ledger; then the CPU time of a rescan that finds nothing changed (the
common case, every ``watch.rescan_interval_s``), and of the first scan after an
upgrade from a ledger without ctime/inode (simulated by clearing them: that scan
fills them in, with no OCR). Run it on two checkouts (PYTHONPATH) to compare.

    PYTHONPATH=daemon python bench/bench_version_scan.py [--files 100000] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from ocr_inbox.config import WatchSettings
from ocr_inbox.inbox.intake import Intake
from ocr_inbox.ledger import Ledger


def cpu(fn: object) -> float:
    t0 = time.process_time()
    fn()  # type: ignore[operator]
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-version-"))
    inbox = work / "inbox"
    if not inbox.exists():
        for i in range(args.files):
            folder = inbox / f"f{i // 1000:04d}"
            if i % 1000 == 0:
                folder.mkdir(parents=True)
            (folder / f"p{i:06d}.png").write_bytes(b"x")
    shutil.rmtree(work / "state", ignore_errors=True)
    led = Ledger.open(work / "state")
    intake = Intake(inbox, work / "out", led, WatchSettings(settle_seconds=0, rescan_interval_s=0), watch=False)
    intake.full_scan()
    while intake.settling:
        intake.step()
    c = led.connection
    c.execute("BEGIN")
    c.execute("UPDATE images SET status = 'done', done_at = 1")
    c.execute("COMMIT")
    rescans = [cpu(intake.full_scan) for _ in range(5)]
    print(f"rescan, nothing changed, {args.files} files: {min(rescans):.2f} s CPU (best of 5)")
    columns = {r[1] for r in c.execute("PRAGMA table_info(images)")}
    if {"ctime_ns", "ino"} <= columns:
        c.execute("BEGIN")
        c.execute("UPDATE images SET ctime_ns = NULL, ino = NULL")
        c.execute("COMMIT")
        first = cpu(intake.full_scan)
        pending = c.execute("SELECT count(*) FROM images WHERE status = 'pending'").fetchone()[0]
        print(f"first scan after the upgrade (fills ctime/inode): {first:.2f} s CPU; images queued: {pending}")
    led.close()
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
