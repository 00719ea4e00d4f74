"""The installed unit's file-system sandbox, as ``ocr-inbox doctor`` reads it (``sandbox.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ocr_inbox import config
from ocr_inbox.commands import doctor
from ocr_inbox.commands.doctor import Host, Level
from ocr_inbox.service import sandbox
from ocr_inbox.service.sandbox import HIDDEN, RO, RW

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "systemd" / "ocr-inbox.service"


def test_the_unit_and_its_drop_ins_merge_as_systemd_merges_them() -> None:
    box = sandbox.read([
        "[Unit]\nReadWritePaths=/not/service/section\n[Service]\nProtectSystem=strict\n"
        "ReadWritePaths=/srv/out /srv/spool\nReadOnlyPaths=-/srv/in\nStateDirectory=ocr-inbox\n",
        "[Service]\nReadWritePaths=\nReadWritePaths=\"/data/out put\" \\\n  /data/more\n# ReadWritePaths=/commented\n",
    ])
    assert box.protect_system == "strict"
    assert box.read_write == ("/data/out put", "/data/more")  # the empty assignment reset the list
    assert box.read_only == ("-/srv/in",) and box.state == ("ocr-inbox",)


def test_which_rule_applies_to_a_path() -> None:
    box = sandbox.Sandbox(
        protect_system="strict", protect_home="read-only", private_tmp=True,
        read_write=("/srv/out", "/home/scans/out", "/mnt/hidden/out"), read_only=("/srv/out/archive",),
        inaccessible=("/mnt/hidden",), state=("ocr-inbox",), cache=("ocr-inbox",),
    )
    assert box.access(Path("/srv/in")) == RO  # strict: everything else read-only
    assert box.access(Path("/srv/out/2026")) == RW
    assert box.access(Path("/srv/out/archive/x")) == RO  # the deepest rule wins
    assert box.access(Path("/home/scans/in")) == RO and box.access(Path("/home/scans/out")) == RW
    assert box.access(Path("/mnt/hidden/out")) == HIDDEN  # nothing beneath a hidden path opens again
    assert box.access(Path("/tmp/outbox")) == HIDDEN  # PrivateTmp: the host's /tmp is not the service's
    assert box.access(Path("/var/lib/ocr-inbox/models")) == RW and box.access(Path("/var/cache/ocr-inbox")) == RW
    assert sandbox.Sandbox(protect_home="yes", read_write=("/home/a",)).access(Path("/home/a/out")) == HIDDEN
    assert sandbox.Sandbox().access(Path("/anything")) == RW  # no sandbox


def test_a_listed_path_that_does_not_exist_is_named(tmp_path: Path) -> None:
    box = sandbox.Sandbox(read_write=(str(tmp_path), str(tmp_path / "gone"), f"-{tmp_path / 'optional'}"), read_only=("%h/x",))
    assert box.missing() == [str(tmp_path / "gone")]


def _settings(inbox: Path, outbox: Path, state: Path) -> config.Settings:
    return config.resolve(None, {"paths": {"inbox": str(inbox), "outbox": str(outbox), "state_dir": str(state)}})


def test_doctor_says_what_the_shipped_unit_does_not_let_the_service_do(tmp_path: Path) -> None:
    unit = tmp_path / "system" / "ocr-inbox.service"
    unit.parent.mkdir()
    shutil.copy(SHIPPED, unit)
    inbox, outbox, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    for d in (inbox, outbox, state):
        d.mkdir()
    s, host = _settings(inbox, outbox, state), Host(unit=unit)
    sources = {"state_dir": "--state-dir"}
    assert doctor.check_sandbox(s, Host(unit=tmp_path / "none.service"), sources) == []  # not installed: nothing to say

    # as shipped: its example paths do not exist here, and these (under /tmp) are not the service's
    checks = doctor.check_sandbox(s, host, sources)
    assert all(c.level is Level.FAIL for c in checks)
    details = "\n".join(c.detail for c in checks)
    assert "/srv/ocr-inbox/outbox" in details and "226/NAMESPACE" in details
    assert f"cannot see the outbox {outbox}" in details and "PrivateTmp=" in details

    # the drop-in the unit's comments ask for, but forgetting the outbox
    dropin = unit.parent / "ocr-inbox.service.d" / "paths.conf"
    dropin.parent.mkdir()
    dropin.write_text(f"[Service]\nPrivateTmp=no\nReadWritePaths=\nReadWritePaths={state}\nReadOnlyPaths=\nReadOnlyPaths={inbox}\n")
    (fail,) = doctor.check_sandbox(s, host, sources)
    assert fail.level is Level.FAIL and f"the outbox {outbox} read-only" in fail.detail
    assert fail.fix.endswith(f"ReadWritePaths={outbox}")

    dropin.write_text(dropin.read_text().replace(f"ReadWritePaths={state}", f"ReadWritePaths={state} {outbox}"))
    (ok,) = doctor.check_sandbox(s, host, sources)
    assert ok.level is Level.OK and "inbox, outbox, state dir" in ok.detail

    # a state dir left to its default is the unit's StateDirectory= under systemd: not asked for
    (ok,) = doctor.check_sandbox(s, host, {"state_dir": "default: the XDG state home"})
    assert ok.level is Level.OK and "state dir" not in ok.detail
    # with delete_processed the inbox must be writable too
    deleting = config.resolve(None, {"paths": {"inbox": str(inbox), "outbox": str(outbox), "state_dir": str(state)},
                                     "inbox": {"delete_processed": True}})
    (fail,) = doctor.check_sandbox(deleting, host, sources)
    assert f"the inbox {inbox} read-only" in fail.detail


def test_homes_are_hidden_unless_bound_in() -> None:
    """The shipped unit hides /home (ProtectHome=tmpfs: the writers' homes are none of the
    service's business); an inbox there is reached only through a bind mount, which doctor
    understands as systemd does."""
    shipped = sandbox.read([SHIPPED.read_text()])
    assert shipped.protect_home in ("yes", "tmpfs")
    assert shipped.access(Path("/home/alice/.ssh/id_ed25519")) == HIDDEN
    assert shipped.access(Path("/root/secrets")) == HIDDEN
    assert shipped.access(Path("/dev/shm/sem.mp-x")) == HIDDEN  # a /dev/shm of its own
    dropin = "[Service]\nBindReadOnlyPaths=/home/scans/inbox\nBindPaths=-/home/scans/outbox\nReadOnlyPaths=/home/scans/other\n"
    bound = sandbox.read([SHIPPED.read_text(), dropin])
    assert bound.access(Path("/home/scans/inbox/a/1.png")) == RO
    assert bound.access(Path("/home/scans/outbox/a")) == RW
    assert bound.access(Path("/home/scans/other")) == HIDDEN  # ReadOnlyPaths= does not reopen an empty /home
    assert bound.access(Path("/home/alice")) == HIDDEN
    # beneath an inaccessible path no bind opens it again
    assert sandbox.Sandbox(protect_home="yes", bind_read_only=("/home/a",)).access(Path("/home/a/in")) == HIDDEN
    assert sandbox.Sandbox(protect_home="tmpfs", bind=("/srv/x:/home/a/out:rbind",)).access(Path("/home/a/out")) == RW
