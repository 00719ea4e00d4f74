"""A real Ray cluster of several nodes on this machine, for tests and the benchmark.

Everything runs inside a fresh network namespace with only loopback (``enter_netns``):
Ray listens on all interfaces, its dashboard agent probes cloud metadata addresses
even with the dashboard off, and it reports usage stats unless told not to. Token
authentication is on (``RAY_AUTH_MODE=token``, the token in a 0600 file). Each node
is ``ray start --block`` in its own session, as the systemd units run it, so a test
kills exactly its own processes (never ``ray stop``, which stops every Ray on the host).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

FAKES = Path(__file__).resolve().parent
REPO = FAKES.parents[1]
CLONE_NEWNET = 0x40000000
HEAD_PORT = 6390


def ray_bin() -> str | None:
    path = Path(sys.executable).parent / "ray"
    return str(path) if path.exists() else shutil.which("ray")


def enter_netns() -> int:
    """Move this thread (and every process it starts from now on) into a new network
    namespace with only loopback, up. Returns a descriptor of the old one (``leave_netns``)."""
    old = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        os.close(old)
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = 0x1 | 0x8 | 0x40  # IFF_UP | IFF_LOOPBACK | IFF_RUNNING
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags))  # SIOCSIFFLAGS
    return old


def leave_netns(old: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.setns(old, CLONE_NEWNET)
    os.close(old)


def only_loopback() -> bool:
    """Every interface this process sees is loopback."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


class Cluster:
    """``ray start --head`` plus ``workers`` more nodes, each with ``gpus`` of the stand-in
    resource ``fake_gpu`` and ``cpus`` CPUs."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, cpus: int = 1, gpus: float = 1.0) -> None:
        self.root = root
        # a short path: Ray's unix sockets live under it (108 bytes at most)
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.token_file = root / "ray-token"
        self.token_file.write_text(secrets.token_hex(16))
        self.token_file.chmod(0o600)
        self.address = f"127.0.0.1:{HEAD_PORT}"
        self.cpus, self.gpus = cpus, gpus
        self.env = dict(os.environ)
        self.env.update(
            RAY_USAGE_STATS_ENABLED="0",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_file),
            PYTHONPATH=os.pathsep.join([str(REPO / "daemon"), str(FAKES), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            **(env or {}),
        )
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.nodes: list[subprocess.Popen[bytes]] = []

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        binary = ray_bin()
        assert binary is not None
        n = len(self.nodes)
        log = open(self.root / f"ray-node-{n}.log", "ab")
        cmd = [
            binary, "start", "--block", *args,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus}",
            "--resources=" + json.dumps({"fake_gpu": self.gpus}),
            "--disable-usage-stats",
            f"--temp-dir={self.temp}",
            f"--dashboard-agent-listen-port={HEAD_PORT + 10 + n}",
            f"--metrics-export-port={HEAD_PORT + 20 + n}",
            f"--runtime-env-agent-port={HEAD_PORT + 30 + n}",
            f"--dashboard-agent-grpc-port={HEAD_PORT + 40 + n}",
        ]  # fmt: skip
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.nodes.append(p)
        return p

    def start(self, workers: int = 1) -> Cluster:
        self._start("--head", f"--port={HEAD_PORT}", "--include-dashboard=false", "--dashboard-host=127.0.0.1")
        for _ in range(workers):
            self.add_node()
        self.wait_nodes(1 + workers)
        return self

    def add_node(self) -> subprocess.Popen[bytes]:
        return self._start(f"--address={self.address}")

    def alive_nodes(self) -> int:
        """Nodes the GCS counts alive (asked through ``ray list nodes``-free means: a driver)."""
        code = "import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR'); print(sum(1 for n in ray.nodes() if n['Alive']))"
        res = subprocess.run([sys.executable, "-c", code, self.address], capture_output=True, text=True, env=self.env, timeout=120)
        return int(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 and res.stdout.strip() else 0

    def wait_nodes(self, n: int, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while self.alive_nodes() < n:
            if time.monotonic() > end:
                raise AssertionError(f"the Ray cluster did not reach {n} nodes\n" + self.logs())
            for p in self.nodes:
                if p.poll() is not None and p is self.nodes[0]:
                    raise AssertionError("the Ray head exited\n" + self.logs())

    def raylet(self, node: int) -> psutil.Process:
        """The raylet of node ``node`` (0 = head)."""
        for child in psutil.Process(self.nodes[node].pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name() == "raylet" or "raylet" in " ".join(child.cmdline()[:1]):
                    return child
        raise AssertionError(f"no raylet under node {node}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.root.glob("ray-node-*.log")))

    def stop(self) -> None:
        """Kill each node's whole session (its raylet, GCS, workers): ours only."""
        for p in reversed(self.nodes):
            procs = []
            with contextlib.suppress(psutil.Error):
                procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            for q in procs:  # anything that left the session
                with contextlib.suppress(psutil.Error):
                    q.kill()
            p.wait(timeout=30)
        self.nodes.clear()
        shutil.rmtree(self.temp, ignore_errors=True)


@contextlib.contextmanager
def cluster(root: Path, workers: int = 1, **kw: object) -> Iterator[Cluster]:
    c = Cluster(root, **kw)  # type: ignore[arg-type]
    try:
        yield c.start(workers)
    finally:
        c.stop()
