"""`ocr-inbox doctor`: each check says OK / WARN / FAIL with a fix; the real CLI for what a
user runs, the checks themselves against a made-up /proc, /dev and unit (no root needed)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from daemon_harness import cli_env

from ocr_inbox import config
from ocr_inbox.commands import doctor
from ocr_inbox.commands.doctor import Check, Host, Level
from ocr_inbox.service import access
from ocr_inbox.service.access import Identity, R, W, X

ME = Identity.current()
#: someone else, in none of the test files' groups
STRANGER = Identity("stranger", os.geteuid() + 4242, frozenset({os.getegid() + 4242}), False)


def _layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    inbox, outbox, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    (inbox / "a" / "b").mkdir(parents=True)
    outbox.mkdir()
    return inbox, outbox, state


def _by_name(checks: list[dict[str, str]] | list[Check]) -> dict[str, dict[str, str]]:
    rows = [c if isinstance(c, dict) else {"name": c.name, "level": str(c.level), "detail": c.detail, "fix": c.fix} for c in checks]
    return {r["name"]: r for r in rows}


def _doctor(tmp_path: Path, *extra: str | Path, models: Path) -> subprocess.CompletedProcess[str]:
    inbox, outbox, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    return run_cli("doctor", "--inbox", inbox, "--outbox", outbox, *extra, state_dir=state, models=models)


def test_missing_model_fails_naming_it_and_the_install_command(tmp_path: Path) -> None:
    _layout(tmp_path)
    empty = tmp_path / "no-models"
    res = _doctor(tmp_path, models=empty)
    assert res.returncode == 1, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("FAIL") and " models " in ln)
    assert "ppocrv6-tiny" in line and str(empty / "ppocrv6-tiny") in line
    fix = res.stdout.splitlines()[res.stdout.splitlines().index(line) + 1]
    assert fix.split("fix: ")[1] == f"ocr-inbox models install --profile ppocrv6-tiny --models-dir {empty}"
    assert res.stdout.splitlines()[-1].startswith("doctor: ") and "1 FAIL" in res.stdout.splitlines()[-1]


def test_a_missing_cascade_recognizer_fails_naming_it(tmp_path: Path, models_dir: Path) -> None:
    _layout(tmp_path)
    only_tiny = tmp_path / "models"
    only_tiny.mkdir()
    (only_tiny / "ppocrv6-tiny").symlink_to(models_dir / "ppocrv6-tiny")
    (only_tiny / "orientation").symlink_to(models_dir / "orientation")  # the page-orientation classifier
    checks = _by_name(doctor.check_models(config.Settings(paths={"models_dir": only_tiny})))
    assert checks["models"]["level"] == "FAIL"
    assert "'ppocrv6-small' (the cascade's recognizer)" in checks["models"]["detail"]
    assert checks["models"]["fix"] == f"ocr-inbox models install --profile ppocrv6-small --models-dir {only_tiny}"
    off = config.Settings(paths={"models_dir": only_tiny}, ocr={"refine_below": 0})
    assert _by_name(doctor.check_models(off))["models"]["level"] == "OK"


def test_healthy_setup_is_ok_and_json_parses(tmp_path: Path, models_dir: Path) -> None:
    _layout(tmp_path)
    res = _doctor(tmp_path, "--json", models=models_dir)
    report = json.loads(res.stdout)
    checks = _by_name(report["checks"])
    assert res.returncode == 0 and report["ok"] is True, res.stdout
    for name in ("models", "device", "inotify watches", "inotify instances", "inbox", "outbox", "state", "models dir", "space: outbox"):
        assert checks[name]["level"] == "OK", checks[name]
    assert checks["state"]["detail"].endswith("(created at start)")
    assert checks["paths"]["detail"].endswith(f"models_dir {models_dir} (--models-dir)")
    assert {c["level"] for c in report["checks"]} <= {"OK", "WARN"}


def test_config_errors_are_reported_as_everywhere(tmp_path: Path, models_dir: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[watch]\nmax_depth = 0\n")
    res = _doctor(tmp_path, "--config", bad, models=models_dir)
    assert res.returncode == 3
    assert f"file={bad}" in res.stderr and "key=watch.max_depth" in res.stderr and "reason=" in res.stderr


def test_an_onnx_profile_never_imports_paddle(tmp_path: Path) -> None:
    inbox, outbox, state = _layout(tmp_path)
    code = (
        "import sys; from ocr_inbox import config; from ocr_inbox.commands import doctor; from ocr_inbox.service import access; "
        f"s = config.resolve(None, {{'paths': {{'inbox': {str(inbox)!r}, 'outbox': {str(outbox)!r}, 'state_dir': {str(state)!r}}}}}); "
        "doctor.run_checks(s, access.Identity.current(), {}); print('paddle' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert res.stdout.strip() == "False", res.stderr


# -- inotify against a made-up /proc ---------------------------------------------------


def _proc(tmp_path: Path, watches: int, instances: int = 128) -> Path:
    limits = tmp_path / "proc" / "sys" / "fs" / "inotify"
    limits.mkdir(parents=True)
    (limits / "max_user_watches").write_text(f"{watches}\n")
    (limits / "max_user_instances").write_text(f"{instances}\n")
    return tmp_path / "proc"


def _settings(inbox: Path, outbox: Path, state: Path, **watch: object) -> config.Settings:
    return config.from_mapping({"paths": {"inbox": inbox, "outbox": outbox, "state_dir": state}, "watch": watch})


def test_low_inotify_limit_warns_with_the_sysctl_line(tmp_path: Path) -> None:
    inbox, outbox, state = _layout(tmp_path)
    for i in range(20):
        (inbox / f"f{i}").mkdir()
    host = Host(proc=_proc(tmp_path, watches=16, instances=0))
    checks = _by_name(doctor.check_inotify(_settings(inbox, outbox, state), ME, host))
    w = checks["inotify watches"]
    assert w["level"] == "WARN" and "23 folders" in w["detail"] and "max_user_watches = 16" in w["detail"]
    assert w["fix"].startswith("sysctl -w fs.inotify.max_user_watches=524288 && echo fs.inotify.max_user_watches=524288 >> /etc/sysctl.d/")
    assert checks["inotify instances"]["level"] == "WARN" and "sysctl -w fs.inotify.max_user_instances=" in checks["inotify instances"]["fix"]
    # with observer = native the daemon would refuse to start: FAIL
    native = _by_name(doctor.check_inotify(_settings(inbox, outbox, state, observer="native"), ME, host))
    assert native["inotify watches"]["level"] == "FAIL"
    # polling needs no watches at all
    assert doctor.check_inotify(_settings(inbox, outbox, state, observer="polling"), ME, host)[0].level is Level.OK


def test_folders_are_counted_as_the_watcher_watches_them(tmp_path: Path) -> None:
    inbox, outbox, state = _layout(tmp_path)
    deep = inbox.joinpath(*[f"d{i}" for i in range(10)])
    deep.mkdir(parents=True)
    (inbox / ".hidden").mkdir()  # ignored by intake, still watched
    (inbox / "link").symlink_to(inbox / "a")  # never watched
    host = Host(proc=_proc(tmp_path, watches=1000))
    # the inbox, a, a/b, .hidden, d0..d2: three levels down
    got = _by_name(doctor.check_inotify(_settings(inbox, outbox, state, max_depth=3), ME, host))
    assert got["inotify watches"]["detail"].startswith("7 folders to watch (max_depth 3)")
    got = _by_name(doctor.check_inotify(_settings(inbox, outbox, state, max_depth=64), ME, host))
    assert got["inotify watches"]["detail"].startswith("14 folders")
    # close to the limit: a warning before the tree outgrows it
    tight = _by_name(doctor.check_inotify(_settings(inbox, outbox, state), ME, Host(proc=_proc(tmp_path / "t", watches=15))))
    assert tight["inotify watches"]["level"] == "WARN" and "little room" in tight["inotify watches"]["detail"]


# -- permissions for another user --------------------------------------------------------


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder every user can reach (pytest's own tmp_path is 0700): under the system's temp dir."""
    d = Path(tempfile.mkdtemp(prefix="doctor-"))
    if any(not (p.stat().st_mode & 0o001) for p in d.parents):
        pytest.skip(f"{d.parent} cannot be entered by other users")
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_permissions_are_judged_for_the_service_user(open_tmp: Path) -> None:
    tmp_path = open_tmp
    inbox, outbox, state = _layout(tmp_path)
    s = _settings(inbox, outbox, state)
    tmp_path.chmod(0o755)
    outbox.chmod(0o755)
    checks = _by_name(doctor.check_permissions(s, STRANGER))
    assert checks["inbox"]["level"] == "OK"
    assert checks["outbox"]["level"] == "FAIL" and f"stranger cannot write into {outbox}" in checks["outbox"]["detail"]
    assert checks["outbox"]["fix"] == f"chown stranger {outbox}  (or: setfacl -m u:stranger:rwx {outbox})"
    assert checks["state"]["level"] == "FAIL" and checks["state"]["fix"] == f"install -d -o stranger {state}"
    inbox.chmod(0o700)
    checks = _by_name(doctor.check_permissions(s, STRANGER))
    assert checks["inbox"]["level"] == "FAIL" and "setfacl -R -m u:stranger:rX" in checks["inbox"]["fix"]
    # the owner's group, with group rights: fine
    member = Identity("member", STRANGER.uid + 1, frozenset({inbox.stat().st_gid}), False)
    inbox.chmod(0o750)
    outbox.chmod(0o770)
    tmp_path.chmod(0o775)
    checks = _by_name(doctor.check_permissions(s, member))
    assert [checks[n]["level"] for n in ("inbox", "outbox", "state")] == ["OK", "OK", "OK"]
    # an ACL (what `setfacl -m u:stranger:rx` writes) lets the stranger read a 0700 inbox
    inbox.chmod(0o700)
    entries = [(0x01, 7, -1), (0x02, 5, STRANGER.uid), (0x04, 0, -1), (0x10, 5, -1), (0x20, 0, -1)]
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident & 0xFFFFFFFF) for tag, perm, ident in entries)
    try:
        os.setxattr(inbox, "system.posix_acl_access", blob)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs here: {exc}")
    assert _by_name(doctor.check_permissions(s, STRANGER))["inbox"]["level"] == "OK"
    assert _by_name(doctor.check_permissions(s, member))["inbox"]["level"] == "FAIL"  # g::--- now
    # a folder above that cannot be entered
    tmp_path.chmod(0o700)
    assert "cannot enter" in _by_name(doctor.check_permissions(s, member))["inbox"]["detail"]
    tmp_path.chmod(0o755)


def test_acl_entries_decide_like_the_kernel() -> None:
    st = os.stat_result((0o40750, 0, 0, 1, 1000, 100, 0, 0, 0, 0))  # drwxr-x--- 1000:100, group bits = the mask
    alice = Identity("alice", 2000, frozenset({2000}), False)
    acl = [(0x01, 7, 0), (0x02, 5, 2000), (0x04, 5, 0), (0x10, 5, 0), (0x20, 0, 0)]  # u::rwx u:alice:r-x g::r-x m::r-x o::---
    assert access.allowed(st, acl, alice, R | X) and not access.allowed(st, acl, alice, W | X)
    rw_masked = [(0x01, 7, 0), (0x02, 7, 2000), (0x04, 5, 0), (0x10, 5, 0), (0x20, 0, 0)]  # u:alice:rwx, mask r-x
    assert not access.allowed(st, rw_masked, alice, W)
    assert not access.allowed(st, None, alice, R)  # no ACL: other gets nothing
    staff = Identity("bob", 3000, frozenset({3000, 100}), False)
    assert access.allowed(st, None, staff, R | X) and not access.allowed(st, None, staff, W)


# -- devices and the unit ---------------------------------------------------------------------


def test_a_gpu_without_a_driver_fails(tmp_path: Path) -> None:
    inbox, outbox, state = _layout(tmp_path)
    s = config.from_mapping({"paths": {"inbox": inbox, "outbox": outbox, "state_dir": state}, "ocr": {"devices": ["cpu", "gpu:0"]}})
    (tmp_path / "dev").mkdir()
    checks = doctor.check_devices(s, Host(dev=tmp_path / "dev"))
    assert [c.level for c in checks] == [Level.OK, Level.FAIL]
    assert "NVIDIA driver is not loaded" in checks[1].detail and 'ocr.devices = ["cpu"]' in checks[1].fix


def test_installed_unit_is_compared_with_the_shipped_one(tmp_path: Path) -> None:
    shipped = doctor.shipped_unit()
    assert shipped.read_text() == (Path(__file__).resolve().parents[1] / "systemd" / "ocr-inbox.service").read_text()
    unit = tmp_path / "ocr-inbox.service"
    assert "not installed" in doctor.check_unit(Host(unit=unit)).detail
    shutil.copy(shipped, unit)
    assert doctor.check_unit(Host(unit=unit)).level is Level.OK
    unit.write_text(shipped.read_text().replace("ReadWritePaths=/srv/ocr-inbox/outbox", "ReadWritePaths=/data/out"))
    (tmp_path / "ocr-inbox.service.d").mkdir()
    (tmp_path / "ocr-inbox.service.d" / "paths.conf").write_text("[Service]\n")
    got = doctor.check_unit(Host(unit=unit))
    assert got.level is Level.WARN
    assert "2 line(s): -ReadWritePaths=/srv/ocr-inbox/outbox; +ReadWritePaths=/data/out; drop-ins: paths.conf" in got.detail
    assert "systemctl edit ocr-inbox" in got.fix and str(shipped) in got.fix


def test_low_free_space_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, outbox, state = _layout(tmp_path)
    real = os.statvfs

    def nearly_full(path: str | Path) -> os.statvfs_result:
        v = real(path)
        return os.statvfs_result((v.f_bsize, 4096, v.f_blocks, 10, 10, v.f_files, v.f_ffree, v.f_favail, v.f_flag, v.f_namemax))

    monkeypatch.setattr(os, "statvfs", nearly_full)
    checks = doctor.check_space(_settings(inbox, outbox, state))
    assert checks[0].level is Level.FAIL and "disk_full" in checks[0].detail and "df -h" in checks[0].fix


def test_an_outbox_inside_the_inbox_fails(tmp_path: Path) -> None:
    inbox, _, state = _layout(tmp_path)
    checks = _by_name(doctor.check_permissions(_settings(inbox, inbox / "ocr", state), ME))
    assert checks["layout"]["level"] == "FAIL" and "inside the inbox" in checks["layout"]["detail"]


def test_the_ray_token_file_must_be_the_service_users_own(tmp_path: Path) -> None:
    """Audit finding: the token file's mode was not checked. Whoever reads it joins the
    cluster, and a node is as trusted as the service user."""
    token = tmp_path / "ray-token"
    token.write_text("secret")
    s = config.from_mapping({"executor": {"kind": "ray", "address": "10.0.0.5:6379", "token_file": str(token)}})
    me = Identity.current()

    def check() -> Check:
        [c] = [c for c in doctor.run_checks(s, me, {}, Host(unit=tmp_path / "none")) if c.name == "ray token"]
        return c

    token.chmod(0o600)
    assert check().level is Level.OK
    token.chmod(0o640)
    c = check()
    assert c.level is Level.FAIL and "mode 0640" in c.detail and c.fix == f"chown {me.name} {token} && chmod 0400 {token}"
    token.chmod(0o400)
    os.chown(token, 65534, -1)  # someone else's
    c = check()
    assert c.level is Level.FAIL and "owned by" in c.detail and "not by" in c.detail
    assert config.from_mapping({}).executor.kind == "local"
    assert not [c for c in doctor.run_checks(config.from_mapping({}), me, {}, Host(unit=tmp_path / "none")) if c.name == "ray token"]
