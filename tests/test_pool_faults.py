"""Worker faults in a one-shot run: crashes are retried once, then quarantined; nothing else is lost.

Uses the fake engine plug-in (fast, deterministic); the pool, workers and CLI are real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from imagemaker import POISON_EXIT, POISON_RAISE, POISON_SEGV, POISON_SIGKILL, plain

pytestmark = [pytest.mark.slow]


def _config(tmp_path: Path, **pool: int) -> Path:
    cfg = tmp_path / "fake.toml"
    lines = ['[ocr]\nengine_plugin = "fake_engine:create"\nworkers_per_device = 2\n', "[pool]\n"]
    lines += [f"{k} = {v}\n" for k, v in pool.items()]
    cfg.write_text("".join(lines))
    return cfg


def test_crashing_images_are_quarantined_and_the_rest_done(tmp_path: Path, models_dir: Path) -> None:
    inbox = tmp_path / "in"
    good = [plain(inbox / "f" / f"good{i}.png", size=(40 + i, 30)) for i in range(12)]
    plain(inbox / "f" / "kill.png", marker=POISON_SIGKILL)
    plain(inbox / "f" / "segv.png", marker=POISON_SEGV)
    plain(inbox / "g" / "exit.png", marker=POISON_EXIT)
    plain(inbox / "g" / "raise.png", marker=POISON_RAISE)
    out = tmp_path / "out"
    res = run_cli("ocr", inbox, out, "--config", _config(tmp_path, batch_size=3), state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 1, res.stderr
    report = json.loads((out / ".ocr-inbox/failures.json").read_text())
    reasons = {f["path"]: f["reason"] for f in report["failures"]}
    assert reasons == {
        "f/kill.png": "worker_crashed",
        "f/segv.png": "worker_crashed",
        "g/exit.png": "worker_crashed",
        "g/raise.png": "engine_error",
    }
    assert report["done"] == len(good)
    for p in good:
        doc = json.loads((out / "f" / (p.name + ".json")).read_text())
        assert doc["pages"][0]["lines"][0]["text"].startswith("fake ")
    # each crashing image was a suspect of two worker deaths (named as the image OCR'd, or as the
    # one decoded beside it: then both were suspects, and the retry ran alone)
    lost = [line for line in res.stderr.splitlines() if "event=worker_lost" in line]
    for name in ("f/kill.png", "f/segv.png", "g/exit.png"):
        assert sum(f"image={name}" in line or f"decoding={name}" in line for line in lost) == 2, name
    assert "killed by SIGSEGV" in res.stderr and "perhaps out of memory" in res.stderr
    # the segfault's stack dump is one record (worker_stacks), the engine's exception one too: nothing raw
    stacks = [line for line in res.stderr.splitlines() if "event=worker_stacks" in line]
    assert len(stacks) == 2 and all("Segmentation fault" in line and "in recognise" in line for line in stacks), res.stderr
    assert all(line.startswith("timestamp=") for line in res.stderr.splitlines()), res.stderr


def test_workers_are_recycled_after_n_images(tmp_path: Path, models_dir: Path) -> None:
    inbox = tmp_path / "in"
    for i in range(10):
        plain(inbox / f"p{i}.png")
    cfg = _config(tmp_path, batch_size=1, max_images_per_worker=2)
    res = run_cli("ocr", inbox, tmp_path / "out", "--config", cfg, state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "out").glob("*.json"))) == 10
    assert "event=worker_recycle" in res.stderr


def test_boot_failure_stops_with_a_clear_error(tmp_path: Path, models_dir: Path) -> None:
    from daemon_harness import cli_env

    plain(tmp_path / "in" / "p.png")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[ocr]\nprofile = "ppocrv6-small"\n')
    empty_models = tmp_path / "no-models"
    res = run_cli("ocr", tmp_path / "in", tmp_path / "out", "--config", cfg, state_dir=tmp_path / "s", models=empty_models)
    assert res.returncode == 4, res.stderr  # engine unavailable
    assert "ocr-inbox models install --profile ppocrv6-small" in res.stderr
    env = cli_env(FAKE_ENGINE_BOOT_FAIL="1")
    res = run_cli(
        "ocr", tmp_path / "in", tmp_path / "out2", "--config", _config(tmp_path), state_dir=tmp_path / "s", models=models_dir, env=env
    )
    assert res.returncode == 7, res.stderr  # workers cannot boot
    assert "could not start" in res.stderr
