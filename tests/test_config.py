"""Configuration errors name the file, the key and the reason; the CLI exits 3."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_config as _load
from conftest import run_cli

from ocr_inbox import config
from ocr_inbox.ocr.devices import parse_device, plan_slots
from ocr_inbox.support.errors import ConfigError, ExitCode


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[ocr]\nworkers = 2\n", "ocr.workers", "unknown key"),
        ("[pool]\nbatch_size = 0\n", "pool.batch_size", "greater than or equal to 1"),
        ('[ocr]\ndevices = ["tpu:0"]\n', "ocr.devices", "'gpu:N'"),
        ('[watch]\nobserver = "magic"\n', "watch.observer", "'auto', 'native' or 'polling'"),
        ("[pdf]\nquiet_seconds = 'soon'\n", "pdf.quiet_seconds", "valid number"),
        ("[ocr\nprofile = 1\n", "(syntax)", "line 1"),
        ("[nonsense]\na = 1\n", "nonsense", "unknown key"),
        ('[ocr]\nrefine_profile = "ppocrv9"\n', "ocr.refine_profile", "unknown model profile; known profiles: "),
        ("[ocr]\nrefine_below = 1.5\n", "ocr.refine_below", "less than or equal to 1"),
        ("[ocr]\nrefine_below = -0.1\n", "ocr.refine_below", "greater than or equal to 0"),
        ('[ocr]\nlexicon = ["xx"]\n', "ocr.lexicon", "no word list 'xx'; known: "),
        ("[ocr]\nlexicon = 3\n", "ocr.lexicon", "list"),
    ],
)
def test_errors_name_file_key_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert err.value.file == str(tmp_path / "c.toml")
    assert err.value.key == key
    assert reason in err.value.reason


def test_defaults_and_diff(tmp_path: Path) -> None:
    s = _load(tmp_path, "")
    assert s.ocr.profile == "ppocrv6-tiny" and s.pdf.quiet_seconds == 60
    t = _load(tmp_path, '[ocr]\nprofile = "ppocrv6-small"\n[pdf]\nquiet_seconds = 5\n')
    assert config.diff(s, t) == {"ocr.profile": ("ppocrv6-tiny", "ppocrv6-small"), "pdf.quiet_seconds": (60.0, 5.0)}


def test_bundled_config_documents_every_default() -> None:
    import tomllib

    path = Path(__file__).parents[1] / "configs" / "ocr-inbox.toml"
    s = config.load(path)
    data = tomllib.loads(path.read_text())
    defaults = config.Settings().model_dump(mode="json")
    for section, keys in defaults.items():
        for key, value in keys.items():
            if section == "paths":
                continue  # the file shows the system service's paths
            if (section, key) == ("pdf", "max_image_pixels"):
                assert key not in data[section]  # deprecated: accepted, ignored, not shown
                continue
            assert data[section][key] == value, f"{section}.{key}"
    assert s.paths.inbox == Path("/srv/ocr-inbox/inbox")


def test_cli_reports_config_error(tmp_path: Path, models_dir: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[pool]\nmax_attempts = 99\n")
    res = run_cli("ocr", tmp_path, tmp_path / "out", "--config", cfg, state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == ExitCode.bad_config
    assert "event=config_invalid" in res.stderr
    assert f"file={cfg}" in res.stderr and "key=pool.max_attempts" in res.stderr
    assert res.stdout == ""


def test_devices_and_worker_layout() -> None:
    assert str(parse_device("GPU:1")) == "gpu:1" and str(parse_device("gpu")) == "gpu:0"
    for bad in ("cpu:0", "cuda:0", "gpu:-1", ""):
        with pytest.raises(ValueError):
            parse_device(bad)
    slots = plan_slots(["gpu:0", "gpu:1"], 4, 0, cpu_count=16)
    assert [str(s.device) for s in slots] == ["gpu:0"] * 4 + ["gpu:1"] * 4
    assert {s.threads for s in slots} == {2}
    # each GPU worker sees only its own card, as device 0
    assert slots[5].child_env("") == {"CUDA_VISIBLE_DEVICES": "1"} and slots[5].local_device == "gpu:0"
    # gpu:N counts within the daemon's own CUDA_VISIBLE_DEVICES, as CUDA does
    assert slots[5].child_env("2,3") == {"CUDA_VISIBLE_DEVICES": "3"}
    assert slots[0].child_env("GPU-abc,GPU-def") == {"CUDA_VISIBLE_DEVICES": "GPU-abc"}
    with pytest.raises(ValueError, match="not among"):
        slots[5].child_env("2")
    cpu = plan_slots(["cpu"], 0, 0, cpu_count=2)
    assert len(cpu) == 2 and cpu[0].threads == 1 and cpu[0].local_device == "cpu"
