"""The host's own OS booted as a throwaway container, systemd as PID 1 (systemd-nspawn).

``--volatile=yes`` gives the container a fresh tmpfs as ``/`` with only the host's
``/usr`` in it (read-only): /opt, /srv, /var, /home start empty, as on a fresh
server. ``/etc`` is a writable copy of the host's. Commands run inside through
``nsenter`` into the container's init (no machined needed on the host, whose PID 1
need not be systemd); files are read from the host through ``/proc/<init>/root``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: a clean login-like environment inside: nothing of the test's own (venv, PYTHONPATH, pip config)
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"]


#: a wait re-checks its condition at each new line of the machine (its console while it boots,
#: then its journal), and at the latest this often: a change with no line of its own (a count in
#: ``status``, a unit's state) is still seen
RECHECK_S = 2.0


class Lines:
    """A child's output read line by line by a thread (and copied to ``sink``): ``wait``
    returns as soon as a line arrives after the ``seen`` count, so a condition is checked
    again when something happened in the machine, not on a clock."""

    def __init__(self, proc: subprocess.Popen[bytes], sink: Path | None = None) -> None:
        self.proc = proc
        self.count = 0
        self.ended = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(sink,), daemon=True).start()

    def _read(self, sink: Path | None) -> None:
        assert self.proc.stdout is not None
        with open(sink, "ab") if sink is not None else contextlib.nullcontext() as out:
            for line in self.proc.stdout:
                if out is not None:
                    out.write(line)
                    out.flush()
                with self._cond:
                    self.count += 1
                    self._cond.notify_all()
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.count != seen or self.ended, timeout)


#: the lines of the machine booted last (``Machine.boot``): what ``wait_for`` wakes on
_lines: Lines | None = None


def wait_for(what: str, check: Callable[[], T], timeout: float, lines: Lines | None = None) -> T:
    """Check ``check`` whenever the machine writes a line (``RECHECK_S`` at the latest) until it
    returns something true; fail naming ``what`` after ``timeout`` s."""
    wake = lines or _lines
    assert wake is not None, "no machine booted: nothing to wait on"
    deadline = time.monotonic() + timeout
    while True:
        seen = wake.count
        got = check()
        if got:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        wake.wait(seen, min(left, RECHECK_S))


def missing_prerequisites() -> str | None:
    """Why this host cannot boot the test container (None: it can)."""
    if os.geteuid() != 0:
        return "the system tests boot a container with systemd-nspawn: run them as root"
    for tool, pkg in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"), ("rsync", "rsync"), ("setfacl", "acl")):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install {pkg}"
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
        return "/usr/bin/python3 has no venv module (the install needs it): apt-get install python3-venv"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "no systemd in /usr to boot (/usr/lib/systemd/systemd)"
    return None


class Machine:
    """One booted container. ``binds``: container path -> host path, bound read-only."""

    def __init__(self, workdir: Path, binds: dict[str, Path], name: str = "ocr-inbox-test") -> None:
        self.workdir, self.binds, self.name = workdir, binds, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.init = 0
        self.log = workdir / "nspawn.log"

    def boot(self, timeout: float = 120) -> float:
        """Boot; returns the seconds until ``systemctl is-system-running`` settled."""
        etc = self.workdir / "etc"
        subprocess.run(["cp", "-a", "/etc", str(etc)], check=True)
        # a stock server: no host mounts to replay, no pip configuration of this build host
        (etc / "fstab").write_text("")
        for p in ("pip.conf", "xdg/pip"):
            shutil.rmtree(etc / p, ignore_errors=True) if (etc / p).is_dir() else (etc / p).unlink(missing_ok=True)
        # no network in here (--private-network): waiting for it would hold the boot for minutes
        for unit in ("systemd-networkd-wait-online.service", "NetworkManager-wait-online.service"):
            (etc / "systemd/system" / unit).unlink(missing_ok=True)
            (etc / "systemd/system" / unit).symlink_to("/dev/null")
        cmd = [
            "systemd-nspawn", "-D", "/", "--volatile=yes", f"--bind={etc}:/etc", f"--machine={self.name}",
            # the host's PID 1 need not be systemd: no machined to register with, no scope to create
            "--register=no", "--keep-unit", "--console=pipe",
            # air-gapped: only loopback (the install must need no network)
            "--private-network",
            *(f"--bind-ro={host}:{inside}" for inside, host in self.binds.items()),
            "--boot",
        ]
        start = time.monotonic()
        self.log.write_bytes(b"")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        console = Lines(self.proc, sink=self.log)  # nspawn's and the booting systemd's lines

        def init_pid() -> int:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.log_tail()}")
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            for kid in kids:  # nspawn's own helper child first, then the container's init once it is exec'd
                try:
                    if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                        return int(kid)
                except OSError:
                    continue  # gone meanwhile
            return 0

        self.init = wait_for("the container's init", init_pid, timeout, console)
        res = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout)
        state = res.stdout.strip()
        if state not in ("running", "degraded"):
            raise AssertionError(f"the container did not boot: {state!r}\n{self.log_tail()}")
        # from now on every wait wakes on the machine's journal (it ends with the machine)
        follow = ["nsenter", "-t", str(self.init), "-a", "journalctl", "--follow", "--lines=0", "--output=cat"]
        global _lines
        _lines = Lines(subprocess.Popen(follow, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE))
        return time.monotonic() - start

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def sh(
        self, script: str, *, user: str | None = None, check: bool = True, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with bash inside the container, as root or as ``user`` (runuser)."""
        argv = ["bash", "-c", script]
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        cmd = ["nsenter", "-t", str(self.init), "-a", "env", "-i", "-C", "/", *ENV, *argv]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise AssertionError(f"{script!r} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    def path(self, inside: str) -> Path:
        """A path inside the container, as the host sees it."""
        return Path(f"/proc/{self.init}/root") / inside.lstrip("/")

    def poweroff(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


_PAIR = re.compile(r'([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line: str) -> dict[str, str]:
    """``event=x key="a b"`` -> {"event": "x", "key": "a b"} (structlog's logfmt quoting)."""
    out = {}
    for k, v in _PAIR.findall(line):
        out[k] = v[1:-1].replace('\\"', '"').replace("\\\\", "\\") if v.startswith('"') else v
    return out


class Journal:
    """``journalctl -u UNIT`` inside the machine, read incrementally; records in order."""

    def __init__(self, machine: Machine, unit: str) -> None:
        self.m, self.unit = machine, unit
        self.records: list[dict[str, Any]] = []
        self._cursor = ""

    def update(self) -> list[dict[str, Any]]:
        after = f" --after-cursor={shlex.quote(self._cursor)}" if self._cursor else ""
        out = self.m.sh(f"journalctl -u {self.unit} -o json --no-pager{after}").stdout
        for line in out.splitlines():
            rec = json.loads(line)
            msg = rec.get("MESSAGE", "")
            if isinstance(msg, list):  # journald's form for a message that is not UTF-8
                msg = bytes(msg).decode("utf-8", "replace")
            rec["MESSAGE"] = msg or ""
            self.records.append(rec)
            self._cursor = rec["__CURSOR"]
        return self.records

    def mark(self) -> int:
        """A position: records after it are ``since(mark)``."""
        return len(self.update())

    @staticmethod
    def from_service(rec: dict[str, Any]) -> bool:
        """Written by the service's processes (not systemd's messages about the unit)."""
        return rec.get("_SYSTEMD_UNIT") == "ocr-inbox.service" and rec.get("SYSLOG_IDENTIFIER") != "systemd"

    def events(self, name: str, since: int = 0, **match: str) -> list[dict[str, str]]:
        """The service's records ``event=name`` (parsed) after ``since`` whose fields equal ``match``."""
        self.update()
        found = []
        for rec in self.records[since:]:
            if not self.from_service(rec) or not rec["MESSAGE"].startswith(f"event={name}"):
                continue
            fields = logfmt(rec["MESSAGE"])
            if fields.get("event") == name and all(fields.get(k) == v for k, v in match.items()):
                fields["PRIORITY"] = rec.get("PRIORITY", "")
                found.append(fields)
        return found

    def lines(self, since: int = 0) -> list[str]:
        self.update()
        return [r["MESSAGE"] for r in self.records[since:]]
