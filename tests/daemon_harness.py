"""Run the real ``ocr-inbox run`` process for tests, with a real NOTIFY_SOCKET.

Waiting is always on a condition (a notify message, a log event, a file, the
ledger's state) with a generous deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAKES = Path(__file__).resolve().parent / "fakes"
DEADLINE_S = 240.0


def toml_config(base: dict[str, dict[str, object]], sections: dict[str, dict[str, object]]) -> str:
    """A test configuration in TOML: ``base`` (section -> key -> value) updated by ``sections``."""
    merged = {name: dict(values) for name, values in base.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()) for name, values in merged.items()
    )


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for an ``ocr-inbox`` child: none of our own systemd
    variables leak in, the test engine plug-in is importable, and no configuration
    file is read unless a test passes --config (not the one `make` writes into the venv)."""
    env = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID", "OCR_INBOX_STATE_DIR"):
        env.pop(k, None)
    env["OCR_INBOX_CONFIG"] = os.devnull  # an empty file: defaults
    env["PYTHONPATH"] = os.pathsep.join([str(FAKES), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


#: a user the service user is not, who owns the files "someone else" drops (nobody)
OTHER_UID = 65534
#: what root gives up to be bound by file modes like the packaged service's own user
_DAC_CAPS = "-dac_override,-dac_read_search"


def service_user_prefix() -> list[str] | str:
    """The command prefix that runs the daemon bound by file modes, like the unit's
    unprivileged ``User=``; a string says why that cannot be done here.

    As root: root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (``setpriv``, dropped
    from the bounding set, so its workers have them neither) may read only what the mode
    bits give root as a user: files of another user (``OTHER_UID``) with mode 0600 or a
    folder with 0700 are closed to it, exactly as to the service user. Not another uid:
    the test's interpreter may live where only root may enter (a venv over /root/.pyenv),
    and the workers are spawned with it. As anyone else: the test user is already unprivileged.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return "running as root and setpriv(1) is missing: file modes do not bind root"
    return [setpriv, f"--inh-caps={_DAC_CAPS}", f"--bounding-set={_DAC_CAPS}", "--"]


class Daemon:
    #: every daemon a test started: conftest's ``no_daemon_left`` kills those a failed test left running
    started: list[Daemon] = []

    def __init__(
        self, root: Path, models: Path, config: str = "", watchdog_usec: int = 0, name: str = "daemon",
        prefix: list[str] | None = None,
    ) -> None:
        """``prefix``: run the daemon's command under it (``service_user_prefix()``)."""
        self.root = root
        self.prefix = list(prefix or [])
        self.inbox = root / "inbox"
        self.outbox = root / "outbox"
        self.state = root / "state"
        self.models = models
        self.config_path = root / "ocr-inbox.toml"
        self.inbox.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists() or config:
            self.config_path.write_text(config)
        self.log_path = root / f"{name}.log"
        self.watchdog_usec = watchdog_usec
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None
        self.t_start = 0.0  # time.monotonic() at start() and at READY=1
        self.t_ready: float | None = None

    # ------------------------------------------------------------------ process

    def start(self, *extra: str, new_session: bool = False) -> Daemon:
        """``new_session``: the daemon leads a session of its own, as under systemd (its
        processes can then be told apart from the test's: ``session_processes``)."""
        sock_path = self.root / f"notify-{time.monotonic_ns()}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock_path))
        self._sock.settimeout(0.2)
        env = cli_env(NOTIFY_SOCKET=str(sock_path))
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        cmd = [
            *self.prefix, sys.executable, "-m", "ocr_inbox", "run",
            "--config", str(self.config_path),
            "--inbox", str(self.inbox), "--outbox", str(self.outbox),
            "--state-dir", str(self.state), "--models-dir", str(self.models),
            "--log-format", "logfmt", *extra,
        ]
        self._log = open(self.log_path, "ab")
        self.stdout_path = self.root / "stdout.txt"
        self._stdout = open(self.stdout_path, "ab")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._stdout, stderr=self._log, env=env, start_new_session=new_session)
        Daemon.started.append(self)
        self._reader = threading.Thread(target=self._read_notify, daemon=True)
        self._reader.start()
        return self

    def _read_notify(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                if self.proc is None or self.proc.poll() is not None:
                    return
                continue
            except OSError:
                return
            msg = data.decode()
            with self._cond:
                self.messages.append(msg)
                if self.t_ready is None and "READY=1" in msg.split("\n"):
                    self.t_ready = time.monotonic()
                self._cond.notify_all()

    def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        self._reader.join(timeout=5)
        self._sock.close()
        self._log.close()
        self._stdout.close()
        return rc

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        self.signal(signal.SIGTERM)
        return self.wait_exit()

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait_exit()

    # ------------------------------------------------------------------ waiting

    def wait_notify(self, pred: Callable[[str], bool], timeout: float = DEADLINE_S, start: int = 0) -> int:
        """Index of the first notify message from ``start`` that satisfies ``pred``."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.messages)):
                    if pred(self.messages[i]):
                        return i
                left = end - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no such notify message; got {self.messages[-10:]}\n{self.log()[-3000:]}")
                self._cond.wait(min(left, 0.5))

    def ready(self, timeout: float = DEADLINE_S) -> int:
        return self.wait_notify(lambda msg: "READY=1" in msg.split("\n"), timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str) -> list[dict[str, str]]:
        out = []
        for line in self.log().splitlines():
            if f"event={name} " in line + " ":
                out.append(dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)))
        return out

    def until(self, cond: Callable[[], Any], what: str, timeout: float = DEADLINE_S, tick: float = 0.2) -> Any:
        """Re-check ``cond`` whenever the daemon reports (a notify message) until it holds."""
        end = time.monotonic() + timeout
        while True:
            got = cond()
            if got:
                return got
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}) before: {what}\n{self.log()[-4000:]}")
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for: {what}\n{self.log()[-4000:]}")
            with self._cond:
                self._cond.wait(tick)

    def status(self, timeout: float = 60) -> dict[str, Any]:
        res = subprocess.run(
            [sys.executable, "-m", "ocr_inbox", "status", "--json", "--state-dir", str(self.state), "--config", str(self.config_path)],
            capture_output=True, text=True, env=cli_env(), timeout=timeout,
        )
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def pids(self, event: str = "worker_spawned") -> list[int]:
        return [int(e["pid"]) for e in self.events(event)]

    def metrics_address(self) -> str:
        """Where the daemon serves its metrics (``[metrics] listen``, port 0: the one it took)."""
        (ev,) = self.events("metrics_serving")
        return ev["address"].strip('"')

    def metrics(self) -> Samples:
        """A scrape of the daemon's ``/metrics``, parsed with prometheus_client's parser."""
        return scrape(self.metrics_address())


#: (sample name, sorted labels) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> tuple[Samples, dict[str, Any]]:
    """Every sample of a Prometheus text exposition, and its families by name (help text, type)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    families = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name] = fam
        for sample in fam.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, families


def scrape(address: str) -> Samples:
    import urllib.request

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as res:
        assert res.status == 200
        assert res.headers["Content-Type"].startswith("text/plain")
        return parse_metrics(res.read().decode())[0]


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``name``'s non-zero samples, summed by the value of ``label``."""
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name and v:
            key = dict(labels)[label]
            out[key] = out.get(key, 0.0) + v
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def session_processes(sid: int) -> dict[int, str]:
    """Every live process of session ``sid`` (pid -> command line): what systemd would still
    find in a service's cgroup, and kill, once its main process has exited."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(") ", 1)[1].split()
            if int(fields[3]) != sid or fields[0] == "Z":  # (state, ppid, pgrp, session, ...)
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                out[int(entry)] = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return out


def json_files(outbox: Path) -> dict[str, dict[str, Any]]:
    """Every per-image JSON in the outbox, parsed (a half-written one fails here)."""
    out = {}
    for p in outbox.rglob("*.json"):
        if ".ocr-inbox" in p.parts:
            continue
        out[p.relative_to(outbox).as_posix()[: -len(".json")]] = json.loads(p.read_text(encoding="utf-8"))
    return out


def temp_files(*roots: Path) -> list[Path]:
    return [p for r in roots for p in r.rglob(".ocr-inbox-tmp-*")]


def slow_copy(src: Path, dest: Path, chunk: int = 8192, pause_s: float = 0.02) -> None:
    """Write ``dest`` the way a slow network copy does: small chunks with pauses."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    with open(dest, "wb") as fh:
        for i in range(0, len(data), chunk):
            fh.write(data[i : i + chunk])
            fh.flush()
            time.sleep(pause_s)  # the writer's pace, not synchronisation
