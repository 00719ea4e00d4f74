"""Scale benchmark of the daemon's watcher, ledger and scheduler (not OCR).

Not a test: it prints figures. Generates ``--files`` tiny PNGs in ``--folders``
folders, runs the REAL daemon (``python -m ocr_inbox run``) with the fake engine
plug-in (``tests/fakes/fake_engine.py``) and a real NOTIFY_SOCKET, and reports:

1. start-up to READY, the start-up scan (``scan_done``), peak / steady RSS of
   the main process, time until every image is done, images/s;
2. how fast a new file is noticed (creation -> ledger row -> JSON) with inotify;
3. a restart with everything done: READY, scan time, nothing redone;
4. the same latency with ``observer = "polling"`` and the idle CPU it costs;
5. the inotify watch limit exhausted (``fs.inotify.max_user_watches`` lowered,
   restored in a ``finally``): no watch at all, and too few watches for the
   tree; the daemon must fall back to polling (``watch_fallback_polling``) and
   still notice new files.

    python bench/bench_scale.py [--files 100000] [--folders 1000] [--keep] [--work DIR]
                                [--skip-limit] [--skip-polling]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from daemon_run import DaemonRun, clean_up  # noqa: E402

WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")

# A valid 24x16 grey PNG (the fake engine decodes it and writes one line).
def tiny_png() -> bytes:
    import io

    from PIL import Image, ImageDraw

    im = Image.new("L", (48, 16), 255)
    ImageDraw.Draw(im).text((2, 2), "ab12", fill=0)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def generate(inbox: Path, files: int, folders: int, data: bytes) -> float:
    """``files`` copies of ``data`` spread over ``folders`` folders; returns seconds."""
    t0 = time.perf_counter()
    per = -(-files // folders)
    n = 0
    for f in range(folders):
        d = inbox / f"folder{f:04d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per):
            if n >= files:
                break
            fd = os.open(d / f"page{i:04d}.png", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)
            n += 1
    return time.perf_counter() - t0


# -- helpers ------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def config(observer: str = "auto", poll_interval_s: float = 5.0, settle: float = 3.0, extra: str = "") -> str:
    return f"""
[ocr]
engine_plugin = "fake_engine:create"
[pool]
max_images_per_worker = 2000
[watch]
observer = "{observer}"
poll_interval_s = {poll_interval_s}
settle_seconds = {settle}
[pdf]
enabled = false
[log]
level = "info"
{extra}
"""


def new_file_latency(d: DaemonRun, data: bytes, folder: str, tag: str, trials: int = 3, timeout: float = 120) -> list[dict[str, float]]:
    """Create a file; time until its ledger row exists and until its JSON exists."""
    out = []
    for k in range(trials):
        rel = f"{folder}/new-{tag}-{k}.png"
        src = d.inbox / rel
        dest = d.outbox / (rel + ".json")
        src.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        src.write_bytes(data)
        seen = None
        while True:
            now = time.monotonic()
            if seen is None and d.ledger_row(rel) is not None:
                seen = now - t0
            if dest.exists():
                out.append({"ledger_s": seen if seen is not None else now - t0, "json_s": now - t0})
                break
            if now - t0 > timeout:
                out.append({"ledger_s": float("nan") if seen is None else seen, "json_s": float("nan")})
                break
            time.sleep(0.02)
    return out


def fmt_latency(rows: list[dict[str, float]]) -> str:
    led = [r["ledger_s"] for r in rows]
    js = [r["json_s"] for r in rows]
    return (
        f"ledger row after {', '.join(f'{x:.2f}' for x in led)} s; JSON after {', '.join(f'{x:.2f}' for x in js)} s"
        f" (median {statistics.median(js):.2f} s)"
    )


def idle_cpu(d: DaemonRun, seconds: float = 20.0) -> float:
    """CPU share of one core used by the idle main process over ``seconds``."""
    c0, t0 = d.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (d.cpu_seconds() - c0) / (time.monotonic() - t0)


def root_watches() -> int:
    """inotify watches held by processes of this user (what max_user_watches limits)."""
    uid, n = os.getuid(), 0
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if p.stat().st_uid != uid:
                continue
            for fd in (p / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == "anon_inode:inotify":
                        n += sum(1 for ln in (p / "fdinfo" / fd.name).read_text().splitlines() if ln.startswith("inotify wd:"))
        except OSError:
            continue
    return n


def watched_inodes(pid: int) -> set[int]:
    """Inode numbers of the directories ``pid``'s inotify instances watch (from /proc/PID/fdinfo)."""
    out: set[int] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == "anon_inode:inotify":
                for ln in Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().splitlines():
                    m = re.search(r"inotify wd:\S+ ino:([0-9a-f]+)", ln)
                    if m:
                        out.add(int(m.group(1), 16))
    return out


@contextlib.contextmanager
def watch_limit(value: int):
    """Lower fs.inotify.max_user_watches; always restored. Yields the old value (None: not permitted)."""
    try:
        old = int(WATCHES.read_text())
        WATCHES.write_text(str(value))
    except OSError as exc:
        print(f"  cannot set {WATCHES}: {exc}")
        yield None
        return
    try:
        yield old
    finally:
        WATCHES.write_text(str(old))
        print(f"  restored max_user_watches = {int(WATCHES.read_text())}")


def summary_rss(samples: list[dict[str, Any]], t_from: float, t_to: float) -> tuple[int, int]:
    window = [s["rss"] for s in samples if t_from <= s["t"] <= t_to]
    return (max(window) if window else 0, int(statistics.median(window)) if window else 0)


# -- the benchmark ------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--folders", type=int, default=1000)
    ap.add_argument("--work", type=Path, help="work directory (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--skip-polling", action="store_true")
    ap.add_argument("--skip-limit", action="store_true")
    ap.add_argument("--poll-interval", type=float, default=5.0)
    args = ap.parse_args()

    root = args.work or Path(tempfile.mkdtemp(prefix="ocr-inbox-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"# bench_scale: {args.files} files in {args.folders} folders, fake engine; {machine()}")
    print(f"# work dir {root}; load average at start {loadavg()}")
    data = tiny_png()
    runs: list[DaemonRun] = []
    try:
        gen_s = generate(root / "inbox", args.files, args.folders, data)
        print(f"generated {args.files} PNGs of {len(data)} bytes in {gen_s:.1f} s")

        # 1. fresh start, everything to do --------------------------------------------------
        print("\n## 1. fresh start (inotify)")
        d = DaemonRun(root, config(), "run1-fresh")
        runs.append(d)
        d.start()
        ready_s = d.ready_s()
        scan = d.event("scan_done")
        print(f"READY after {ready_s:.2f} s; start-up scan {scan['seconds']} s (files={scan['files']}, new={scan['new_or_changed']})")
        print(f"load average {loadavg()}")
        t_ready = time.monotonic()
        first_done: float | None = None

        def progress() -> bool:
            nonlocal first_done
            n = d.done()
            if n and first_done is None:
                first_done = time.monotonic()
            return n >= args.files

        last_print = 0.0

        def progress_print() -> bool:
            nonlocal last_print
            ok = progress()
            if time.monotonic() - last_print > 30:
                last_print = time.monotonic()
                print(f"  t={time.monotonic() - d.t_start:6.0f} s  {d.status_text()}  main RSS {mb(d.ps.memory_info().rss)}  load {loadavg()}", flush=True)
            return ok

        d.until(progress_print, f"{args.files} done", timeout=3600, tick=0.5)
        t_all = time.monotonic()
        st = d.status(timeout=300)["totals"]
        assert st["done"] == args.files, st
        span = t_all - (first_done or t_ready)
        print(f"all {args.files} done {t_all - d.t_start:.1f} s after start ({t_all - t_ready:.1f} s after READY);"
              f" first image done {((first_done or t_ready) - t_ready):.1f} s after READY")
        print(f"pipeline rate {args.files / span:.0f} images/s (first done -> last done), "
              f"{args.files / (t_all - t_ready):.0f} images/s (READY -> last done)")
        print(f"status --json totals: {st}")
        print(f"load average {loadavg()}")
        rescans = d.events("scan_done")[1:]
        if rescans:
            print("periodic rescans during the run: " + ", ".join(f"{e['seconds']} s (new={e['new_or_changed']})" for e in rescans))
        recycles = len(d.events("worker_recycle"))
        time.sleep(15)  # steady state, idle
        t_end = time.monotonic() - d.t_start
        peak, _ = summary_rss(d.samples, 0, t_end)
        peak_scan, _ = summary_rss(d.samples, 0, ready_s + 1)
        _, steady = summary_rss(d.samples, t_end - 12, t_end)
        print(f"main RSS: peak {mb(peak)} (until READY {mb(peak_scan)}), steady after the run {mb(steady)}; worker recycles {recycles}")
        kid_peak = max((max(s["kids"].values()) for s in d.samples if s["kids"]), default=0)
        print(f"worker RSS peak {mb(kid_peak)}")
        print(f"idle CPU of the main process (inotify, {args.files} files): {idle_cpu(d, 10) * 100:.1f} % of a core")

        print("\n## 2. new file noticed (inotify)")
        print("  " + fmt_latency(new_file_latency(d, data, "folder0500", "inotify")))
        rc, stop_s = d.stop_timed()
        print(f"stopped: rc={rc} in {stop_s:.1f} s")

        # 3. restart, all done ----------------------------------------------------------------
        print("\n## 3. restart with everything done (inotify)")
        d = DaemonRun(root, config(), "run2-restart")
        runs.append(d)
        d.start()
        ready_s = d.ready_s()
        scan = d.event("scan_done")
        time.sleep(8)  # longer than settle_seconds: anything queued by the scan would run now
        redone = len(d.events("image_done"))
        st = d.status(timeout=300)["totals"]
        print(f"READY after {ready_s:.2f} s; start-up scan {scan['seconds']} s (files={scan['files']}, new={scan['new_or_changed']}); "
              f"images redone: {redone}; totals {st}")
        peak, _ = summary_rss(d.samples, 0, time.monotonic() - d.t_start)
        print(f"main RSS peak {mb(peak)}; load average {loadavg()}")
        rc, stop_s = d.stop_timed()

        # 4. polling --------------------------------------------------------------------------
        if not args.skip_polling:
            print(f"\n## 4. observer = \"polling\" (poll_interval_s = {args.poll_interval})")
            d = DaemonRun(root, config("polling", args.poll_interval), "run3-polling")
            runs.append(d)
            d.start()
            ready_s = d.ready_s()
            time.sleep(args.poll_interval * 2)
            print(f"READY after {ready_s:.2f} s; watcher {d.event('ready').get('watcher')}")
            print("  " + fmt_latency(new_file_latency(d, data, "folder0501", "polling", timeout=args.poll_interval * 6 + 30)))
            print(f"idle CPU of the main process (polling {args.files} files every {args.poll_interval} s): {idle_cpu(d, 20) * 100:.1f} % of a core")
            peak, _ = summary_rss(d.samples, 0, time.monotonic() - d.t_start)
            print(f"main RSS peak {mb(peak)}; load average {loadavg()}")
            d.stop()

        # 5. inotify watch limit ---------------------------------------------------------------
        if not args.skip_limit:
            used = root_watches()
            print(f"\n## 5. inotify watch limit (this user holds {used} watches now; max_user_watches {WATCHES.read_text().strip()})")
            for label, limit in (("no watch left", max(1, used)), ("too few watches for the tree", used + args.folders // 2)):
                print(f"### {label}: max_user_watches = {limit} ({args.folders + 1} folders to watch)")
                tag = "exhausted" if label.startswith("no") else "partial"
                d = DaemonRun(root, config(poll_interval_s=args.poll_interval), f"run4-limit-{tag}")
                runs.append(d)
                with watch_limit(limit) as old:
                    if old is None:
                        break
                    d.start()
                    d.until(lambda: d.events("watch_started"), "watch_started", 600)
                # the limit is back to normal here: a watcher that started on too few watches stays so
                ready_s = d.ready_s()
                fb = d.events("watch_fallback_polling")
                print(f"  READY after {ready_s:.2f} s; watcher kind: {d.event('ready').get('watcher')}; "
                      f"watch_fallback_polling logged: {len(fb)} {fb[0] if fb else ''}")
                watched = watched_inodes(d.proc.pid)
                dirs = sorted(p for p in d.inbox.iterdir() if p.is_dir())
                unwatched = [p for p in dirs if p.stat().st_ino not in watched]
                print(f"  inotify watches held by the daemon: {len(watched)}; folders without a watch: {len(unwatched)} of {len(dirs)}")
                target = (unwatched or dirs)[-1].name
                print(f"  new file in {target}{' (no inotify watch)' if unwatched else ''}: " + fmt_latency(
                    new_file_latency(d, data, target, tag, trials=1, timeout=args.poll_interval * 6 + 30)))
                d.stop()
            print("### watches run out while running: a new folder cannot be watched")
            d = DaemonRun(root, config(poll_interval_s=args.poll_interval), "run4-limit-runtime")
            runs.append(d)
            d.start()
            ready_s = d.ready_s()
            print(f"  READY after {ready_s:.2f} s; watcher kind: {d.event('ready').get('watcher')}")
            used = root_watches()
            with watch_limit(used) as old:
                if old is not None:
                    print(f"  max_user_watches = {used} (all in use)")
                    t0 = time.monotonic()
                    (d.inbox / "late-folder").mkdir()
                    fb = d.event("watch_fallback_polling", timeout=60)
                    print(f"  watch_fallback_polling after {time.monotonic() - t0:.2f} s: {fb.get('reason')}")
            print("  new file in late-folder, created after the fallback: " + fmt_latency(
                new_file_latency(d, data, "late-folder", "runtime", trials=1, timeout=args.poll_interval * 6 + 30)))
            d.stop()
        return 0
    finally:
        clean_up(root, args.keep, runs)


if __name__ == "__main__":
    sys.exit(main())
