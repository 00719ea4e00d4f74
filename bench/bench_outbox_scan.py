"""What the outbox checks cost the scans: the start-up scan and the periodic rescan of the
REAL daemon over an inbox of ``--files`` images that are all done, each with its JSON in
the outbox, and ``--folders`` folder PDFs published (nothing to OCR: the scans' own time).

Not a test: it prints figures. The ledger is built in process by the same intake the
daemon runs (a new ledger over an existing outbox adopts each JSON), the folder PDFs are
recorded as published; then ``ocr-inbox run`` (fake engine plug-in, PDFs off) starts, and
its ``scan_done`` records give the start-up scan and ``--rescans`` periodic rescans
(``[watch] rescan_interval_s = --interval``). Run it against another checkout (a base
commit) with ``PYTHONPATH=OTHER/daemon``: the daemon and the ledger code are that tree's.

    PYTHONPATH=daemon nice python bench/bench_outbox_scan.py [--files 100000] [--folders 1000]
                                                             [--rescans 3] [--interval 20]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import loadavg, tiny_png  # noqa: E402
from common import machine  # noqa: E402
from daemon_run import DaemonRun, clean_up  # noqa: E402

import ocr_inbox  # noqa: E402
from ocr_inbox.config import WatchSettings  # noqa: E402
from ocr_inbox.inbox.intake import Intake  # noqa: E402
from ocr_inbox.ledger import Ledger  # noqa: E402
from ocr_inbox.outbox import names  # noqa: E402


def generate(root: Path, files: int, folders: int) -> tuple[float, list[str]]:
    """``files`` PNGs over ``folders`` folders, each with a JSON of its version in the outbox."""
    t0 = time.perf_counter()
    data = tiny_png()
    inbox, outbox = root / "inbox", root / "outbox"
    per = -(-files // folders)
    made: list[str] = []
    for f in range(folders):
        (inbox / f"folder{f:04d}").mkdir(parents=True, exist_ok=True)
        (outbox / f"folder{f:04d}").mkdir(parents=True, exist_ok=True)
        for i in range(min(per, files - len(made))):
            rel = f"folder{f:04d}/page{i:04d}.png"
            (inbox / rel).write_bytes(data)
            st = (inbox / rel).stat()
            doc = {"schema": 4, "source": {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": "0" * 64},
                   "engine": {"engine": "fake"}, "pages": [{"index": 0, "width": 48, "height": 16, "lines": []}],
                   "elapsed_ms": 1}
            (outbox / (rel + ".json")).write_text(json.dumps(doc))
            made.append(rel)
    return time.perf_counter() - t0, [f"folder{f:04d}" for f in range(folders)]


def populate(root: Path, folders: list[str]) -> float:
    """The ledger built by intake (every JSON adopted) and each folder's PDF recorded as published."""
    t0 = time.perf_counter()
    inbox, outbox = root / "inbox", root / "outbox"
    with Ledger.open(root / "state") as ledger:
        intake = Intake(inbox, outbox, ledger, WatchSettings(settle_seconds=0, rescan_interval_s=0), watch=False)
        intake.start()
        while intake.settling:
            intake.step()
        records_written = "written" in inspect.signature(ledger.pdf_done).parameters
        for folder in folders:
            out = names.pdf_path_for(outbox, inbox, folder)
            out.write_bytes(b"%PDF-1.7 a stand-in for the folder's PDF")
            ledger.pdf_started(folder)
            if records_written:
                ledger.pdf_done(folder, 1, time.time(), written=names.written(out))  # type: ignore[call-arg]
            else:
                ledger.pdf_done(folder, 1, time.time())
    return time.perf_counter() - t0


def config(interval: float) -> str:
    return f"""
[ocr]
engine_plugin = "fake_engine:create"
[watch]
settle_seconds = 3
rescan_interval_s = {interval}
[pdf]
enabled = false
[log]
level = "info"
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--folders", type=int, default=1000)
    ap.add_argument("--rescans", type=int, default=3)
    ap.add_argument("--interval", type=float, default=20.0)
    ap.add_argument("--work", type=Path, help="work directory (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    root = args.work or Path(tempfile.mkdtemp(prefix="ocr-inbox-outbox-scan-"))
    root.mkdir(parents=True, exist_ok=True)
    code = Path(ocr_inbox.__file__).resolve().parents[1]
    print(f"# bench_outbox_scan: {args.files} done images in {args.folders} folders; code {code}; {machine()}")
    print(f"# load average at start {loadavg()}")
    runs: list[DaemonRun] = []
    try:
        gen_s, folders = generate(root, args.files, args.folders)
        print(f"generated {args.files} PNGs and their JSONs in {gen_s:.1f} s")
        pop_s = populate(root, folders)
        print(f"ledger built (JSONs adopted, {len(folders)} PDFs recorded) in {pop_s:.1f} s; load {loadavg()}")

        d = DaemonRun(root, config(args.interval), "run")
        runs.append(d)
        d.start()
        ready_s = d.ready_s()
        d.until(lambda: len(d.events("scan_done")) > args.rescans, f"{args.rescans} rescans",
                timeout=args.interval * (args.rescans + 2) + 600, tick=1.0)
        scans = d.events("scan_done")
        start, rescans = scans[0], scans[1 : args.rescans + 1]
        redone, repaired = len(d.events("image_done")), len(d.events("output_repaired"))
        print(f"READY after {ready_s:.2f} s; start-up scan {start['seconds']} s (files={start['files']}, "
              f"new={start['new_or_changed']}, repaired={start.get('repaired', '-')})")
        secs = [float(e["seconds"]) for e in rescans]
        print(f"periodic rescans: {', '.join(f'{s:.2f}' for s in secs)} s (median {statistics.median(secs):.2f} s)")
        print(f"images OCR'd again: {redone}; outputs repaired: {repaired}; load average {loadavg()}")
        rc, _ = d.stop_timed()
        print(f"stopped: rc={rc}")
        return 0
    finally:
        clean_up(root, args.keep, runs)


if __name__ == "__main__":
    sys.exit(main())
