"""systemd/install.sh and the docs that show it cannot drift apart (the system tier,
tests/system, runs the script itself in a container; these checks are fast)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "systemd" / "install.sh"
OPERATIONS = (REPO / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
README = (REPO / "README.md").read_text(encoding="utf-8")


def _install_section() -> str:
    return OPERATIONS.split("\n## Install\n", 1)[1].split("\n### ", 1)[0]


def _script_options() -> set[str]:
    return set(re.findall(r"^\s+(--[a-z-]+)\)", SCRIPT.read_text(), re.M))


def test_the_script_parses_and_is_executable() -> None:
    assert SCRIPT.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_docs_run_the_script_with_options_it_has() -> None:
    calls = [ln.strip() for ln in _install_section().splitlines() if ln.strip().startswith("systemd/install.sh")]
    assert any("--wheelhouse" in c and "--model-wheels" in c for c in calls), calls  # the air-gapped variant
    assert any(c.split("#")[0].strip() == "systemd/install.sh" for c in calls), calls  # the online one
    used = {o for c in calls for o in re.findall(r"--[a-z-]+", c.split("#")[0])}
    assert used <= _script_options(), used - _script_options()
    assert "systemd/install.sh" in README.split("## Running as a system service", 1)[1].split("\n## ", 1)[0]


def test_the_system_tier_runs_what_the_docs_show() -> None:
    tier = (REPO / "tests" / "system" / "conftest.py").read_text()
    run = re.findall(r"/src/(systemd/install\.sh[^\"]*)", tier)
    assert run
    for call in run:
        assert set(re.findall(r"--[a-z-]+", call)) <= _script_options()
        assert re.sub(r"/(wheels|model-wheels)", r"\1", call) in _install_section()


def test_the_steps_the_docs_list_are_the_scripts() -> None:
    script, doc = SCRIPT.read_text(), _install_section()
    for cmd in ("/etc/sysusers.d/ocr-inbox.conf", "systemd-sysusers", "/etc/tmpfiles.d/ocr-inbox.conf",
                "systemd-tmpfiles --create", "runuser -u ocr-inbox", "models install", "--no-index",
                "systemctl daemon-reload", "doctor", "python3-venv"):
        assert cmd in script and cmd in doc, cmd
    assert "prefix=/opt/ocr-inbox\n" in script and 'cp -r docs "$prefix/docs"' in script
    assert "/opt/ocr-inbox/docs" in doc
    # minimal servers have no sudo: neither the script nor the install steps use it
    assert not re.search(r"^[^#]*\bsudo\b", script, re.M)
    assert "sudo -u" not in OPERATIONS


def test_the_units_documentation_is_what_the_script_installs() -> None:
    unit = (REPO / "systemd" / "ocr-inbox.service").read_text()
    docs = re.findall(r"^Documentation=(.*)$", unit, re.M)
    assert docs
    for url in " ".join(docs).split():
        path = url.removeprefix("file://")
        assert path.startswith("/opt/ocr-inbox/docs/"), url  # the script copies docs/ there
        assert (REPO / "docs" / path.removeprefix("/opt/ocr-inbox/docs/")).is_file(), url


def test_it_refuses_to_run_as_another_user_and_explains_its_options() -> None:
    usage = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert _script_options() - {"--help"} <= set(re.findall(r"--[a-z-]+", usage))
    bad = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
    nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(SCRIPT)],
                            capture_output=True, text=True, cwd="/")
    assert nobody.returncode == 1 and "run as root" in nobody.stderr
