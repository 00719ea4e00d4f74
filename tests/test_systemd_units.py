"""The systemd files: verified by systemd's own tools, plus the settings the daemon relies on."""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
UNIT = SYSTEMD / "ocr-inbox.service"
EXEC = "/opt/ocr-inbox/venv/bin/ocr-inbox"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (install systemd to check the unit files)")
    return path


def service_settings() -> dict[str, list[str]]:
    """[Service] key -> every value assigned (systemd allows repeated keys)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # verify insists that ExecStart's binary exists: point only that at /bin/true
    text = UNIT.read_text()
    assert f"ExecStart={EXEC} " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={EXEC} ", "ExecStart=/bin/true "))
    res = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=120
    )
    # unknown keys and bad values are only warnings: any message about our file fails
    messages = [ln for ln in (res.stdout + res.stderr).splitlines() if UNIT.name in ln]
    assert res.returncode == 0 and not messages, res.stdout + res.stderr


def test_unit_is_not_valid_with_a_typo(tmp_path: Path) -> None:
    """The check above would notice a broken unit (so its silence means something)."""
    analyze = tool("systemd-analyze")
    copy = tmp_path / UNIT.name
    copy.write_text(
        UNIT.read_text()
        .replace(f"ExecStart={EXEC} ", "ExecStart=/bin/true ")
        .replace("WatchdogSec=120", "WatchdogSecs=120")
    )
    res = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=120
    )
    assert "WatchdogSecs" in res.stdout + res.stderr


def test_key_settings() -> None:
    s = service_settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "120"
    assert one["KillMode"] == "mixed"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["ExecStart"] == f"{EXEC} run --config ${{OCR_INBOX_CONFIG}} $OCR_INBOX_ARGS"
    assert one["TimeoutStartSec"] == "600"
    assert one["TimeoutStopSec"] == "300"
    assert one["Restart"] == "on-failure"
    assert one["RestartPreventExitStatus"] == "3"
    assert (one["User"], one["Group"]) == ("ocr-inbox", "ocr-inbox")
    assert one["StateDirectory"] == "ocr-inbox"
    assert one["ProtectSystem"] == "strict"
    assert one["PrivateDevices"] == "no"
    assert one["DevicePolicy"] == "closed"
    assert "char-nvidia* rw" in s["DeviceAllow"]
    # globs are not allowed in device paths; systemd would silently match nothing
    assert not any(v.startswith("/dev/") and "*" in v for v in s["DeviceAllow"])
    assert one["RestrictAddressFamilies"] == "AF_UNIX"
    assert one["MemoryDenyWriteExecute"] == "no"
    assert "PYTHONUNBUFFERED=1" in s["Environment"]
    assert one["EnvironmentFile"] == "-/etc/ocr-inbox/ocr-inbox.env"


def test_hardening_directives() -> None:
    s = service_settings()
    one = {k: v[-1] for k, v in s.items()}
    # a deny-list on top of @system-service, which keeps ioctl/mmap (CUDA) and clone/execve (spawn)
    assert s["SystemCallFilter"][0] == "@system-service"
    denied = set(s["SystemCallFilter"][1].removeprefix("~").split())
    assert s["SystemCallFilter"][1].startswith("~")
    assert denied >= {"@privileged", "@mount", "@swap", "@reboot", "@raw-io", "@clock", "@debug", "@obsolete", "@module"}
    assert "@resources" not in denied  # NUMA policies (CUDA, oneDNN), thread pinning (OpenMP, ONNX Runtime)
    assert one["SystemCallErrorNumber"] == "EPERM"  # a call the driver needs fails, not SIGSYS
    assert one["PrivateTmp"] == "yes"
    assert one["UMask"] == "0027"  # JSONs and PDFs 0640, as docs/OPERATIONS.md says
    assert one["NoNewPrivileges"] == "yes" and one["CapabilityBoundingSet"] == ""
    for key in ("MemoryHigh", "MemoryMax"):
        assert re.fullmatch(r"\d+[KMGT]?", one[key]), key
    assert _bytes(one["MemoryHigh"]) < _bytes(one["MemoryMax"])


def test_the_sandbox_closes_network_ipc_shm_homes_and_tasks() -> None:
    """Audit finding: no PrivateNetwork= (AF_UNIX reached the host's abstract sockets), the
    host's /dev/shm, no TasksMax=, ProtectHome=read-only let the service read writers' homes."""
    s = service_settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["PrivateNetwork"] == "yes"
    assert one["PrivateIPC"] == "yes"
    assert any(v.split(":")[0] == "/dev/shm" for v in s["TemporaryFileSystem"])  # multiprocessing's semaphores
    assert one["ProtectHome"] in ("yes", "tmpfs")
    assert 256 <= int(one["TasksMax"]) <= 16384
    for dropin in ("ocr-inbox-metrics.conf", "ocr-inbox-ray.conf"):  # they need the host's network
        assert "\nPrivateNetwork=no\n" in (SYSTEMD / dropin).read_text(), dropin


def _bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def test_unit_waits_for_the_mounts_of_inbox_and_outbox() -> None:
    unit: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line.strip().strip("[]")
        elif section == "Unit" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            unit.setdefault(key, []).append(value)
    paths = set(" ".join(unit["RequiresMountsFor"]).split())
    assert paths == set(service_settings()["ReadWritePaths"]) | set(service_settings()["ReadOnlyPaths"])


def test_security_exposure_is_documented(tmp_path: Path) -> None:
    """``systemd-analyze security --offline``: the figure in docs/SECURITY.md is this one."""
    analyze = tool("systemd-analyze")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(f"ExecStart={EXEC} ", "ExecStart=/bin/true "))
    res = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(copy)], capture_output=True, text=True, timeout=120
    )
    if "--offline" in res.stderr and res.returncode != 0:
        pytest.skip(f"this systemd-analyze has no --offline: {res.stderr.strip()}")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", res.stdout)
    assert m, res.stdout + res.stderr
    docs = (Path(__file__).resolve().parents[1] / "docs" / "SECURITY.md").read_text()
    # systemd 252 says 0.7 (1.2 before the private network, IPC and /dev/shm, 2.7 before the
    # system call filter); other versions weigh a little differently
    assert float(m.group(1)) <= 1.0, res.stdout
    assert "exposure level 0.7" in docs


def test_exit_code_that_prevents_restart_is_bad_config() -> None:
    from ocr_inbox.support.errors import ExitCode

    assert service_settings()["RestartPreventExitStatus"] == [str(int(ExitCode.bad_config))]


def test_env_file_names_what_the_unit_uses() -> None:
    env = {}
    text = (SYSTEMD / "ocr-inbox.env").read_text()
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    assert set(env) >= {"OCR_INBOX_CONFIG", "OCR_INBOX_ARGS"}
    # documented, but unset by default: all GPUs stay visible
    assert "#CUDA_VISIBLE_DEVICES=" in text
    assert env["OCR_INBOX_CONFIG"] == "/etc/ocr-inbox/ocr-inbox.toml"
    used = set(re.findall(r"\$\{?(\w+)", service_settings()["ExecStart"][0]))
    assert used <= set(env)


def test_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_sysusers_dry_run(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers")
    res = subprocess.run(
        [sysusers, "--dry-run", f"--root={tmp_path}", str(SYSTEMD / "ocr-inbox.sysusers")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Creating user 'ocr-inbox'" in out
    assert "Failed" not in out


def test_tmpfiles_create_in_a_scratch_root(tmp_path: Path) -> None:
    tmpfiles = tool("systemd-tmpfiles")
    # the ocr-inbox user exists only once sysusers ran on the host, and only root
    # may chown: own everything by the user running the test
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    lines = []
    for line in (SYSTEMD / "ocr-inbox.tmpfiles").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            fields[3:5] = [user, group]
            line = " ".join(fields)
        lines.append(line)
    conf = tmp_path / "ocr-inbox.conf"
    conf.write_text("\n".join(lines) + "\n")
    root = tmp_path / "root"
    root.mkdir()
    res = subprocess.run(
        [tmpfiles, f"--root={root}", "--create", str(conf)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (root / "srv/ocr-inbox/inbox").is_dir()
    assert (root / "srv/ocr-inbox/outbox").stat().st_mode & 0o7777 == 0o2750
    assert (root / "etc/ocr-inbox").is_dir()


def test_documented_paths_agree() -> None:
    unit = UNIT.read_text()
    tmpfiles = (SYSTEMD / "ocr-inbox.tmpfiles").read_text()
    for path in ("/srv/ocr-inbox/inbox", "/srv/ocr-inbox/outbox"):
        assert path in unit and path in tmpfiles
    assert os.path.basename(EXEC) == "ocr-inbox"


@pytest.mark.parametrize("name", ["ocr-inbox-ray-head.service", "ocr-inbox-ray-worker.service"])
def test_ray_host_units_pass_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    unit = SYSTEMD / name
    # verify insists that ExecStart's binary exists: point it at /bin/true, keep the arguments
    text = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", unit.read_text(), flags=re.M)
    copy = tmp_path / name
    copy.write_text(text)
    res = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=120)
    messages = [ln for ln in (res.stdout + res.stderr).splitlines() if name in ln]
    assert res.returncode == 0 and not messages, res.stdout + res.stderr
    assert "--block" in unit.read_text()  # in the foreground, so systemd supervises ray itself
