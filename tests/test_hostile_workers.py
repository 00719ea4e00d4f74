"""An inbox shared by people you don't fully trust: workers that stay bounded, say where they hang,
blame the right image, and a crash storm that pauses instead of quarantining everything.

Unit tests first (images, the worker loop, the pool), then the real daemon with the test engine plug-in.
"""

from __future__ import annotations

import subprocess
import sys
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_harness import FAKES, Daemon, cli_env, json_files, toml_config
from imagemaker import POISON_DECODE_SEGV, POISON_HANG, POISON_WHILE_FLAG, plain
from PIL import Image

from ocr_inbox import config
from ocr_inbox.executors import messages as m
from ocr_inbox.executors import worker
from ocr_inbox.executors.local import LocalExecutor, respawn_delay
from ocr_inbox.ledger import Ledger
from ocr_inbox.ocr import images
from ocr_inbox.ocr.engine import EngineSettings
from ocr_inbox.ocr.results import Line
from ocr_inbox.support.errors import BadImage


def tiff(path: Path, pages: int, size: tuple[int, int] = (100, 80)) -> Path:
    frames = [Image.new("RGB", size, (200 - i, 200, 200)) for i in range(pages)]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
    return path


# --- limits per file, from the headers -----------------------------------------------------


def test_total_pixels_of_all_pages_are_refused_before_any_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiff(tmp_path / "t.tif", pages=5).read_bytes()  # 5 pages of 8,000 pixels
    lim = images.Limits(max_pixels=10_000, max_total_pixels=30_000)

    def no_decoding(*args: object, **kw: object) -> None:
        raise AssertionError("a page was decoded")

    monkeypatch.setattr(images, "_frame", no_decoding)
    with pytest.raises(BadImage) as err:
        next(images.frames(data, lim))
    assert err.value.reason == "too_many_pixels" and "5 pages" in err.value.detail
    monkeypatch.undo()
    assert len(images.decode(data, images.Limits(max_pixels=10_000, max_total_pixels=40_000))) == 5


# --- the worker: one page at a time ----------------------------------------------------------


class RecordingEngine:
    """Counts the page arrays still alive each time it is asked to recognise one."""

    def __init__(self) -> None:
        self.seen: list[weakref.ref[np.ndarray]] = []
        self.max_alive = 0

    def info(self) -> dict[str, Any]:
        return {"engine": "recording"}

    def recognise(self, bgr: np.ndarray) -> list[Line]:
        self.seen.append(weakref.ref(bgr))
        self.max_alive = max(self.max_alive, sum(1 for r in self.seen if r() is not None))
        return []


def _worker_config(inbox: Path, limits: images.Limits = images.Limits()) -> worker.WorkerConfig:
    eng = EngineSettings(profile="fake", models_dir=inbox, cache_dir=inbox)
    return worker.WorkerConfig(0, eng, limits, str(inbox), {}, "info", "logfmt")


def test_the_worker_ocrs_pages_one_at_a_time_and_reports_each(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    tiff(inbox / "book.tif", pages=6)
    sent: list[m.WorkerMessage] = []
    eng = RecordingEngine()
    with ThreadPoolExecutor(max_workers=1) as decoder:
        worker._run_batch(m.Batch(1, (m.Job(1, "book.tif"),)), _worker_config(inbox), eng, {}, sent.append, decoder)
    assert len(eng.seen) == 6
    assert eng.max_alive == 1  # page i was dropped before page i+1 was decoded
    assert [(p.page, p.pages) for p in sent if isinstance(p, m.Progress)] == [(i, 6) for i in range(1, 7)]
    (done,) = [d for d in sent if isinstance(d, m.Done)]
    assert len(done.pages) == 6


def test_the_next_image_is_decoded_beside_a_first_attempt_only(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        plain(inbox / name)
    jobs = (m.Job(1, "a.png"), m.Job(2, "b.png"), m.Job(3, "c.png", attempt=2))
    sent: list[m.WorkerMessage] = []
    with ThreadPoolExecutor(max_workers=1) as decoder:
        worker._run_batch(m.Batch(1, jobs), _worker_config(inbox), RecordingEngine(), {}, sent.append, decoder)
    # b is prepared beside a; c (a retry after a crash) is decoded only once b is finished
    assert [x.job_id for x in sent if isinstance(x, m.Decoding)] == [2]
    assert len([d for d in sent if isinstance(d, m.Done)]) == 3


def test_respawn_backoff_is_exponential_and_capped() -> None:
    assert [respawn_delay(n) for n in range(1, 8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


# --- the pool: the right image is blamed ---------------------------------------------------


def _pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalExecutor:
    from ocr_inbox.executors.setup import slots_for, worker_config_factory

    monkeypatch.syspath_prepend(str(FAKES))  # spawned workers get the parent's sys.path
    s = config.from_mapping({
        "paths": {"inbox": str(tmp_path / "in"), "outbox": str(tmp_path / "out"), "state_dir": str(tmp_path / "s")},
        "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 1},
        "pool": {"image_timeout_s": 60},
    })
    return LocalExecutor(slots_for(s)[:1], worker_config_factory(s, tmp_path / "in"), s.pool)


def _until_lost(pool: LocalExecutor) -> tuple[list[m.Event], m.WorkerLost]:
    seen: list[m.Event] = []
    for _ in range(600):  # poll() returns on traffic; the bound only stops a broken test
        seen += pool.poll(1.0)
        lost = [e for e in seen if isinstance(e, m.WorkerLost)]
        if lost:
            return seen, lost[0]
    raise AssertionError(f"no worker lost: {seen}")


def test_a_decoder_crash_is_blamed_on_the_image_being_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox = tmp_path / "in"
    plain(inbox / "a.png")
    plain(inbox / "hang.png", marker=POISON_HANG)
    plain(inbox / "bad.png", marker=POISON_DECODE_SEGV)
    plain(inbox / "z.png")
    pool = _pool(tmp_path, monkeypatch)
    pool.start()
    try:
        while pool.capacity() == 0:
            pool.poll(1.0)
        # The decode thread segfaults on bad.png while the engine is busy with hang.png: both
        # ran, so both are suspects (before, hang.png alone was blamed); z.png was not started.
        pool.submit(m.Batch(1, (m.Job(1, "hang.png"), m.Job(2, "bad.png"), m.Job(3, "z.png"))))
        _, lost = _until_lost(pool)
        assert lost.in_flight == m.Job(1, "hang.png") and lost.decoding == m.Job(2, "bad.png")
        assert lost.unstarted == (m.Job(3, "z.png"),) and "SIGSEGV" in lost.cause
        # A retry runs alone: the crash is blamed on bad.png only, a.png before it is done.
        while pool.capacity() == 0:
            pool.poll(1.0)
        pool.submit(m.Batch(2, (m.Job(4, "a.png", attempt=2), m.Job(5, "bad.png", attempt=2), m.Job(6, "z.png", attempt=2))))
        seen, lost = _until_lost(pool)
        assert lost.suspects == (m.Job(5, "bad.png", attempt=2),)
        assert lost.unstarted == (m.Job(6, "z.png", attempt=2),)
        assert [e.job.rel for e in seen if isinstance(e, m.Done)] == ["a.png"]
    finally:
        pool.stop(5)


# --- the real daemon -------------------------------------------------------------------------


def daemon_config(**sections: dict[str, object]) -> str:
    base: dict[str, dict[str, object]] = {
        "watch": {"settle_seconds": 0.3, "rescan_interval_s": 2},
        "pdf": {"enabled": False},
        "pool": {"output_retry_s": 1.0},
        "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 2},
    }
    return toml_config(base, sections)


def _failures(d: Daemon) -> dict[str, dict[str, Any]]:
    return {f["rel"]: f for f in d.status()["failures"]}


@pytest.mark.slow
def test_stuck_worker_dumps_its_stack_and_a_pixel_bomb_tiff_is_refused(tmp_path: Path, models_dir: Path) -> None:
    cfg = daemon_config(pool={"image_timeout_s": 2, "batch_size": 2},
                        ocr={"max_image_pixels": 10_000, "max_total_pixels": 30_000})
    d = Daemon(tmp_path, models_dir, cfg).start()
    d.ready()
    good = [plain(d.inbox / "f" / f"p{i}.png").name for i in range(6)]
    tiff(d.inbox / "f" / "bomb.tif", pages=5)  # each page 8,000 pixels, 40,000 together
    tiff(d.inbox / "f" / "book.tif", pages=3)  # 24,000 together: fine
    plain(d.inbox / "f" / "p3-hang.png", marker=POISON_HANG)
    d.until(lambda: len(_failures(d)) == 2 and d.status()["totals"]["done"] == len(good) + 1, "all accounted for")
    fails = _failures(d)
    assert fails["f/bomb.tif"]["reason"] == "too_many_pixels"
    assert fails["f/p3-hang.png"]["reason"] == "worker_stuck" and fails["f/p3-hang.png"]["attempts"] == 2
    assert set(json_files(d.outbox)) == {f"f/{g}" for g in good} | {"f/book.tif"}
    assert len(json_files(d.outbox)["f/book.tif"]["pages"]) == 3
    stuck = d.events("worker_stuck")
    assert len(stuck) == 2 and stuck[0]["image"] == "f/p3-hang.png"
    # faulthandler's dump before the kill says where it hung: one record per stuck worker
    dumps = d.events("worker_stacks")
    assert len(dumps) == 2, d.log()
    assert all('fake_engine.py\\", line' in e["stacks"] and "in hang_forever" in e["stacks"] and "in recognise" in e["stacks"] for e in dumps)
    assert all(line.startswith("timestamp=") for line in d.log().splitlines())  # nothing raw
    assert all("stuck: silent" in e["cause"] for e in d.events("worker_lost"))
    assert d.stop() == 0


@pytest.mark.slow
def test_a_crash_storm_pauses_instead_of_quarantining_and_retry_requeues(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "machine-is-broken"
    flag.touch()
    monkeypatch.setenv("FAKE_ENGINE_CRASH_FLAG", str(flag))  # reaches the workers through cli_env()
    cfg = daemon_config(pool={"crash_breaker": 3, "crash_pause_s": 10, "batch_size": 1})
    d = Daemon(tmp_path, models_dir, cfg).start()
    d.ready()
    storm = [plain(d.inbox / "s" / f"x{i}.png", marker=POISON_WHILE_FLAG).name for i in range(5)]
    d.until(lambda: d.events("crash_storm_paused"), "the breaker trips")
    flag.unlink()  # the machine is fine again
    d.wait_notify(lambda msg: "crash storm: dispatch paused" in msg)
    d.until(lambda: d.status()["totals"]["done"] == len(storm), "the storm's images done after the pause")
    # images quarantined before the streak was long enough to be a storm were given back
    assert _failures(d) == {}
    (paused,) = d.events("crash_storm_paused")
    assert paused["images"] == "3"
    assert d.events("crash_storm_over")

    # Without the breaker, crashes quarantine; `ocr-inbox retry` brings them back.
    flag.touch()
    d2_cfg = daemon_config(pool={"crash_breaker": 0, "batch_size": 1})
    d.stop()
    d = Daemon(tmp_path, models_dir, d2_cfg, name="second").start()
    d.ready()
    plain(d.inbox / "a" / "one.png", marker=POISON_WHILE_FLAG)
    plain(d.inbox / "b" / "two.png", marker=POISON_WHILE_FLAG)
    d.until(lambda: set(_failures(d)) == {"a/one.png", "b/two.png"}, "both quarantined")
    assert {f["reason"] for f in _failures(d).values()} == {"worker_crashed"}
    flag.unlink()

    def retry(*args: str) -> str:
        res = subprocess.run(
            [sys.executable, "-m", "ocr_inbox", "retry", "--state-dir", str(d.state), "--config", str(d.config_path),
             "--inbox", str(d.inbox), *args],
            capture_output=True, text=True, env=cli_env(), timeout=60,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert "running daemon" in retry("--reason", "worker_crashed", "a")  # only folder a
    d.until(lambda: "a/one.png" in json_files(d.outbox), "a/one.png done after the retry")
    assert d.events("retry_applied")[0]["images"] == "1"
    assert set(_failures(d)) == {"b/two.png"}
    assert d.stop() == 0
    # no daemon: the command updates the ledger itself
    assert "queued 1" in retry(str(d.inbox / "b" / "two.png"))
    with Ledger.open_readonly(d.state) as ledger:
        row = ledger.get("b/two.png")
        assert row is not None and row.status == "pending" and row.attempts == 0


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["png", "jpg"])  # PIL's decode, and a JPEG's straight into BGR
def test_an_image_past_the_worker_memory_ceiling_fails_alone(tmp_path: Path, models_dir: Path, fmt: str) -> None:
    # 12,000 x 12,000 white RGB: a small file within the pixel limits set here, but its
    # decode needs 0.4-0.9 GB, past a 400 MiB ceiling (RLIMIT_DATA)
    cfg = daemon_config(ocr={"max_image_pixels": 500_000_000}, pool={"worker_memory_mb": 400})
    d = Daemon(tmp_path, models_dir, cfg)
    Image.new("RGB", (12_000, 12_000), (255, 255, 255)).save(d.inbox / f"huge.{fmt}", optimize=True)
    plain(d.inbox / "small.png")
    d.start()
    d.ready()
    d.until(lambda: f"huge.{fmt}" in _failures(d) and "small.png" in json_files(d.outbox), "both accounted for")
    assert _failures(d)[f"huge.{fmt}"]["reason"] == "too_much_memory"
    assert not d.events("worker_lost")  # the worker survived it
    assert d.stop() == 0
