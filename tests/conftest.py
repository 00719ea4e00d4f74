"""Shared fixtures: the real corpus, the real models, the real CLI."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import cli_env

from ocr_inbox import config

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
#: read as every command reads it (an empty value is unset); else where `make` installs them
MODELS = config.env_path(config.ENV_MODELS_DIR) or REPO / ".models"

#: corpus pages every real-inference test may use (English and Chinese)
PAGES = ("tesseract_test/phototest.tif", "xfund_zh/zh_val_0.jpg", "funsd/82092117.png")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ../shared/corpus the pure unit tests still run; the corpus tests are skipped
    with the reason, except in CI (CI=true), where a missing corpus is an error."""
    if CORPUS.is_dir():
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"the corpus is missing: {CORPUS} (../shared/corpus beside the checkout)")
    skip = pytest.mark.skip(reason=f"needs the corpus at {CORPUS}")
    for item in items:
        if "corpus" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Offline model dirs (``make test`` prepares them; install here if run directly)."""
    from ocr_inbox.ocr import models, profiles

    for name in ("ppocrv6-tiny", "ppocrv6-small"):  # the default profile and the cascade's
        prof = profiles.get(name)
        if models.missing_files(MODELS, prof):
            models.install(MODELS, prof)
    return MODELS


def run_cli(*args: str | Path, state_dir: Path, models: Path, env: dict[str, str] | None = None, timeout: float = 600):
    """Run the real ``ocr-inbox`` command in a subprocess."""
    cmd = [sys.executable, "-m", "ocr_inbox", *map(str, args)]
    if args and args[0] not in ("pdf",):
        cmd += ["--state-dir", str(state_dir), "--models-dir", str(models), "--log-format", "logfmt"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or cli_env(), timeout=timeout)


def copy_pages(dest: Path, pages: tuple[str, ...] = PAGES) -> Path:
    for rel in pages:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CORPUS / rel, dest / rel)
    return dest


def load_config(tmp_path: Path, text: str) -> Any:
    """``text`` as a config file in ``tmp_path``, loaded (and validated) as the daemon does."""
    from ocr_inbox import config

    f = tmp_path / "c.toml"
    f.write_text(text)
    return config.load(f)


def ground_truth(rel: str) -> str:
    stem = os.path.splitext(rel)[0]
    return (CORPUS / f"{stem}.gt.txt").read_text(encoding="utf-8")


def char_f1(gt: str, pred: str) -> float:
    """Order-insensitive F1 over non-whitespace characters after NFKC (the corpus README's metric)."""

    def chars(s: str) -> collections.Counter[str]:
        return collections.Counter(c for c in unicodedata.normalize("NFKC", s) if not c.isspace())

    g, p = chars(gt), chars(pred)
    common = sum((g & p).values())
    if not common:
        return 0.0
    prec, rec = common / sum(p.values()), common / sum(g.values())
    return 2 * prec * rec / (prec + rec)


@pytest.fixture(scope="session")
def corpus_ocr(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> tuple[Path, Path]:
    """Chosen corpus pages copied to ``inbox/<set>/<file>`` and OCR'd for real into ``outbox``."""
    if not CORPUS.is_dir():
        pytest.skip(f"needs the corpus at {CORPUS}")
    root = tmp_path_factory.mktemp("corpus_ocr")
    inbox = copy_pages(root / "inbox")
    outbox = root / "outbox"
    res = run_cli("ocr", inbox, outbox, "--no-progress", state_dir=root / "state", models=models_dir)
    assert res.returncode == 0, res.stderr
    return inbox, outbox


@pytest.fixture(autouse=True)
def no_daemon_left() -> Iterator[None]:
    """A test that fails half-way leaves no daemon (and its workers) running into the next ones."""
    from daemon_harness import Daemon

    before = len(Daemon.started)  # (daemons of module-scoped fixtures were started before this)
    yield
    while len(Daemon.started) > before:
        d = Daemon.started.pop()
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()  # its workers and PDF child die with it (PR_SET_PDEATHSIG)
            d.proc.wait(timeout=30)
