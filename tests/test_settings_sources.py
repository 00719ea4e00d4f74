"""Where every command takes its paths from: flag > environment > configuration file > default,
and the models `make` installs are found by the next command a user types."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import CORPUS, REPO
from daemon_harness import cli_env

from ocr_inbox import config

PAGE = "tesseract_test/phototest.tif"


def _file(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return f


def test_flag_over_environment_over_file_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "no-venv"))  # no installation config here
    cfg = _file(tmp_path, '[paths]\nstate_dir = "/from/file"\nmodels_dir = "/models/file"\n')
    monkeypatch.setenv("STATE_DIRECTORY", "/from/systemd")
    env: dict[str, str] = {}
    s = config.resolve(None, {}, env)
    assert s.paths.state_dir == Path("/from/systemd") and s.paths.resolved_models_dir() == Path("/from/systemd/models")
    s = config.resolve(cfg, {}, env)
    assert s.paths.state_dir == Path("/from/file") and s.paths.resolved_models_dir() == Path("/models/file")
    env |= {"OCR_INBOX_STATE_DIR": "/from/env", "OCR_INBOX_MODELS_DIR": "/models/env"}
    s = config.resolve(cfg, {}, env)
    assert s.paths.state_dir == Path("/from/env") and s.paths.resolved_models_dir() == Path("/models/env")
    s = config.resolve(cfg, {"paths": {"state_dir": Path("/flag"), "models_dir": None}}, env)
    assert s.paths.state_dir == Path("/flag") and s.paths.resolved_models_dir() == Path("/models/env")
    # an empty variable is unset (systemd's Environment=NAME=)
    s = config.resolve(cfg, {}, {"OCR_INBOX_MODELS_DIR": "", "OCR_INBOX_STATE_DIR": ""})
    assert s.paths.state_dir == Path("/from/file") and s.paths.resolved_models_dir() == Path("/models/file")
    assert config.path_sources(cfg, {}, env) == {
        "config": f"{cfg} (--config)", "state_dir": "$OCR_INBOX_STATE_DIR", "models_dir": "$OCR_INBOX_MODELS_DIR",
    }


def test_which_configuration_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "venv"
    monkeypatch.setattr(sys, "prefix", str(venv))
    assert config.find_config(None, {}) == (None, "none")
    site = venv / "etc" / "ocr-inbox" / "ocr-inbox.toml"
    site.parent.mkdir(parents=True)
    site.write_text('[paths]\nmodels_dir = "/site/models"\n')
    assert config.find_config(None, {}) == (site, "the installation's file")
    assert config.resolve(None, {}, {}).paths.resolved_models_dir() == Path("/site/models")
    other = _file(tmp_path, '[paths]\nmodels_dir = "/env/file/models"\n')
    assert config.resolve(None, {}, {"OCR_INBOX_CONFIG": str(other)}).paths.resolved_models_dir() == Path("/env/file/models")
    flagged = tmp_path / "flag.toml"
    flagged.write_text("")
    assert config.find_config(flagged, {"OCR_INBOX_CONFIG": str(other)}) == (flagged, "--config")
    assert config.path_sources(None, {}, {})["models_dir"] == "config file"


def _ocr(python: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    inbox = tmp_path / "in"
    (inbox / PAGE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(CORPUS / PAGE, inbox / PAGE)
    cmd = [python, "-m", "ocr_inbox", "ocr", str(inbox), str(tmp_path / "out"), "--no-progress", "--log-format", "logfmt"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _text(tmp_path: Path) -> str:
    doc = json.loads((tmp_path / "out" / (PAGE + ".json")).read_text(encoding="utf-8"))
    return " ".join(line["text"] for page in doc["pages"] for line in page["lines"])


@pytest.mark.slow
@pytest.mark.corpus
def test_ocr_finds_models_through_the_environment(tmp_path: Path, models_dir: Path) -> None:
    env = cli_env(OCR_INBOX_STATE_DIR=str(tmp_path / "state"))
    env.pop("OCR_INBOX_MODELS_DIR", None)
    res = _ocr(sys.executable, tmp_path / "without", env)
    assert res.returncode == 4, res.stderr  # the default <state_dir>/models is empty
    assert "ocr-inbox models install --profile ppocrv6-tiny" in res.stderr
    res = _ocr(sys.executable, tmp_path / "with", env | {"OCR_INBOX_MODELS_DIR": str(models_dir)})
    assert res.returncode == 0, res.stderr
    assert "quick brown dog" in _text(tmp_path / "with")
    assert (tmp_path / "state" / "runs").is_dir()  # OCR_INBOX_STATE_DIR was the state dir


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_venv_that_make_sets_up_finds_its_models(tmp_path: Path, models_dir: Path) -> None:
    """`make` writes the venv's own configuration; that venv's ocr-inbox then runs with no flags."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    state = tmp_path / "state"
    subprocess.run(
        ["make", "-s", "-C", str(REPO), "site-config", f"VENV={venv}", f"MODELS={models_dir}", f"STATE={state}"],
        check=True, timeout=60,
    )
    env = cli_env()
    for var in ("OCR_INBOX_CONFIG", "OCR_INBOX_MODELS_DIR"):
        env.pop(var)
    # the fresh venv borrows this one's packages (and this checkout's ocr_inbox, first)
    libs = dict.fromkeys([str(REPO / "daemon"), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env["PYTHONPATH"] = os.pathsep.join([*libs, env["PYTHONPATH"]])
    res = _ocr(str(venv / "bin" / "python"), tmp_path, env)
    assert res.returncode == 0, res.stderr
    assert "quick brown dog" in _text(tmp_path)
    assert (state / "runs").is_dir()
