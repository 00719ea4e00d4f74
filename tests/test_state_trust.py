"""The state directory as a trust boundary (issue 21, findings 1-5 and 8).

The service user is simulated by an unprivileged uid (``OWNER``) that owns the
state dir, a reader by another uid in its group; root's commands run as the test
(root) does, through the real CLI. "The daemon" is a stand-in run as ``OWNER``
that holds the ledger and applies retry requests with the daemon's own code
(``Dispatch.take_requests``), so each finding is seen from both sides.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from daemon_harness import cli_env

from ocr_inbox import config
from ocr_inbox.ledger import Ledger, store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs commands as root and as other uids")

OWNER = 64123  # the service user (no passwd entry needed)
READER = 64124  # a member of the service's group

#: the daemon stand-in: the ledger held by OWNER, one image failed, retry requests applied
#: with the daemon's code in a pass whenever requests/ changes; prints "ready" and then
#: "applied N" per request applied
STAND_IN = textwrap.dedent("""
    import os, sys, time
    os.umask(0o027)  # the unit's UMask=
    from ocr_inbox.core import dispatch
    from ocr_inbox.support import logs
    logs.configure("info", "logfmt")  # to stderr: stdout is this stand-in's answer
    from ocr_inbox.config import PoolSettings
    from ocr_inbox.ledger import Ledger
    state = sys.argv[1]
    from pathlib import Path
    ledger = Ledger.open(Path(state))
    if ledger.get("a/bad.png") is None:
        ledger.observe("a/bad.png", 10, 1, 1.0)
        ledger.claim(1, 2.0)
        ledger.failed("a/bad.png", "corrupt", "", 3.0, retry=False)
    prepare = getattr(dispatch, "prepare_requests", None)
    if prepare is not None:
        prepare(Path(state))
    d = dispatch.Dispatch(ledger, Path(state), PoolSettings())
    if sys.argv[2:] == ["once"]:
        sys.exit(0)
    if sys.argv[2:] == ["hold"]:  # only holds the ledger (the lock): applies nothing
        print("ready", flush=True)
        sys.stdin.read()
        sys.exit(0)
    # a pass whenever something arrives in requests/ (the daemon's own loop passes on a tick)
    import threading
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    arrived = threading.Event()
    class Arrivals(FileSystemEventHandler):
        def on_any_event(self, event):
            arrived.set()
    watcher = Observer()
    watcher.schedule(Arrivals(), os.path.join(state, "requests"))
    watcher.start()
    print("ready", flush=True)  # requests from now on wake a pass
    while True:
        arrived.clear()  # before the pass: what arrives during it wakes the next one
        n = d.take_requests()
        if n:
            print("applied", n, flush=True)
            ledger.claim(1, time.time())  # it fails again at once: the poison image
            ledger.failed("a/bad.png", "corrupt", "", time.time(), retry=False)
        arrived.wait()
""")


def as_user(uid: int, *cmd: str, groups: str = "", **kw: object) -> subprocess.CompletedProcess[str]:
    who = ["setpriv", f"--reuid={uid}", f"--regid={OWNER}", f"--groups={groups}" if groups else "--clear-groups"]
    return subprocess.run([*who, *cmd], capture_output=True, text=True, env=cli_env(), timeout=120, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture
def var() -> Iterator[Path]:
    """A world-traversable folder (pytest's tmp_path is root's 0700) whose ``var/`` the owner may write."""
    top = Path(tempfile.mkdtemp(prefix="ocr-inbox-trust-"))
    top.chmod(0o755)
    v = top / "var"
    v.mkdir()
    os.chown(v, OWNER, OWNER)
    yield v
    shutil.rmtree(top)


def made_by_owner(var: Path) -> Path:
    """The state dir as the service makes it: a ledger with one failed image, nothing running."""
    state = var / "state"
    res = as_user(OWNER, sys.executable, "-c", STAND_IN, str(state), "once")
    assert res.returncode == 0, res.stderr
    return state


def stand_in(state: Path, *mode: str) -> subprocess.Popen[str]:
    """The daemon stand-in running as OWNER on ``state``, once it is ready."""
    p = subprocess.Popen(
        ["setpriv", f"--reuid={OWNER}", f"--regid={OWNER}", "--clear-groups", sys.executable, "-c", STAND_IN,
         str(state), *mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture
def daemon(var: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """The daemon stand-in running as OWNER on var/state, applying requests."""
    p = stand_in(var / "state")
    yield var / "state", p
    p.kill()
    p.communicate()


def ocr_inbox(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI, as root (the test)."""
    return subprocess.run(
        [sys.executable, "-m", "ocr_inbox", *args, "--state-dir", str(state), "--log-format", "logfmt"],
        capture_output=True, text=True, env=cli_env(), timeout=timeout,
    )


def owners(state: Path) -> set[int]:
    return {p.lstat().st_uid for p in [state, *state.rglob("*")]}


# -- 1: root's CLI follows a link at the lock file ----------------------------------------


@pytest.mark.parametrize("command", [["retry"], ["index", "rebuild", "--no-progress"]])
def test_root_never_writes_through_a_link_at_the_lock(var: Path, command: list[str]) -> None:
    state = made_by_owner(var)
    victim = var.parent / "root-only.conf"
    victim.write_text("secret = 1\n")
    victim.chmod(0o600)
    (state / store.LOCK_NAME).unlink()
    (state / store.LOCK_NAME).symlink_to(victim)
    os.lchown(state / store.LOCK_NAME, OWNER, OWNER)
    res = ocr_inbox(state, *command)
    assert victim.read_text() == "secret = 1\n", res.stderr
    assert res.returncode != 0 and "ocr-inbox.lock" in res.stderr


def test_root_retry_on_a_fresh_state_dir_creates_nothing_the_daemon_cannot_use(var: Path) -> None:
    state = var / "state"
    state.mkdir(mode=0o700)
    os.chown(state, OWNER, OWNER)  # systemd's StateDirectory=, before the first start
    res = ocr_inbox(state, "retry")
    assert res.returncode != 0 and "no ledger" in res.stderr
    assert owners(state) == {OWNER}


# -- 2: `sudo ocr-inbox retry` against the running daemon ----------------------------------


def test_root_retry_against_the_running_daemon_is_applied_once(daemon: tuple[Path, subprocess.Popen[str]]) -> None:
    state, stand_in = daemon
    res = ocr_inbox(state, "retry", "--reason", "corrupt")
    assert res.returncode == 0, res.stderr
    assert stand_in.stdout is not None
    assert stand_in.stdout.readline().split() == ["applied", "1"]
    assert "the running daemon queued 1 failed image(s) again" in res.stdout
    requests = state / "requests"
    # the daemon's own channel; the request is gone, so the poison image stays quarantined
    assert owners(state) == {OWNER}
    assert stat.S_IMODE(requests.stat().st_mode) == 0o700
    assert [p.name for p in requests.iterdir() if p.name.endswith(".json")] == []


def test_root_retry_never_writes_through_a_link_at_requests(var: Path) -> None:
    state = var / "state"
    holder = stand_in(state, "hold")  # the daemon runs: root's retry would write a request
    elsewhere = var.parent / "etc-cron.d"
    elsewhere.mkdir()
    shutil.rmtree(state / "requests", ignore_errors=True)
    (state / "requests").symlink_to(elsewhere)
    os.lchown(state / "requests", OWNER, OWNER)
    res = ocr_inbox(state, "retry", timeout=60)
    holder.kill()
    holder.communicate()
    assert list(elsewhere.iterdir()) == []
    assert res.returncode != 0 and "requests" in res.stderr


# -- 3: a retry naming ~450+ paths -----------------------------------------------------------


def test_retry_of_thousands_of_paths(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        for i in range(3):
            ledger.observe(f"f{i}/x.png", 10, 1, 1.0)
        for row in ledger.claim(3, 2.0):
            ledger.failed(row.rel, "corrupt", "", 3.0, retry=False)
        paths = [f"f{i}" for i in range(3000)]  # a shell glob over a big inbox
        assert ledger.requeue_failed(4.0, ["corrupt"], paths) == 3


def test_a_failing_request_is_set_aside_and_the_loop_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ocr_inbox.core import dispatch

    with Ledger.open(tmp_path) as ledger:
        prepare = getattr(dispatch, "prepare_requests", None)
        if prepare is not None:
            prepare(tmp_path)
        d = dispatch.Dispatch(ledger, tmp_path, config.PoolSettings())
        dispatch.request_retry(tmp_path, [], ["a"])

        def too_large(*args: object) -> int:
            raise sqlite3.OperationalError("Expression tree is too large (maximum depth 1000)")

        monkeypatch.setattr(ledger, "requeue_failed", too_large)
        with structlog.testing.capture_logs() as logs:
            assert d.take_requests() == 0  # no exception: fill(), the PDFs and the watchdog run
        assert [e["error"] for e in logs if e["event"] == "retry_request_rejected"] == [
            "Expression tree is too large (maximum depth 1000)"
        ]
        left = sorted(p.name for p in (tmp_path / "requests").iterdir())
        assert [n for n in left if n.endswith(".json") and not n.startswith(".rejected-")] == []
        monkeypatch.undo()
        assert d.take_requests() == 0  # set aside: not applied again on every pass


# -- 4: readers can block restarts and fill the state disk --------------------------------


def test_a_reader_in_the_group_cannot_take_the_lock_or_open_the_ledger(var: Path) -> None:
    state = made_by_owner(var)
    probe = textwrap.dedent("""
        import fcntl, sqlite3, sys
        out = []
        try:
            fd = open(sys.argv[1] + "/ocr-inbox.lock")
            fcntl.flock(fd, fcntl.LOCK_SH)
            out.append("locked")
        except OSError:
            out.append("no lock")
        try:
            sqlite3.connect("file:" + sys.argv[1] + "/ledger.sqlite3?mode=ro", uri=True).execute("BEGIN").fetchall()
            out.append("reading")
        except sqlite3.Error:
            out.append("no ledger")
        print(" ".join(out))
    """)
    res = as_user(READER, sys.executable, "-c", probe, str(state), groups=str(OWNER))
    assert res.stdout.split() == ["no", "lock", "no", "ledger"], res.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / store.LOCK_NAME).stat().st_mode) == 0o600


def test_the_wal_shrinks_back_once_a_long_reader_lets_go(tmp_path: Path) -> None:
    limit = getattr(store, "WAL_SIZE_LIMIT", 16 << 20)
    wal = tmp_path / (store.DB_NAME + "-wal")
    with Ledger.open(tmp_path) as ledger:
        reader = sqlite3.connect(f"file:{tmp_path / store.DB_NAME}?mode=ro", uri=True, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM images").fetchone()  # holds its snapshot
        i = 0
        while wal.stat().st_size <= 2 * limit:  # no checkpoint can pass the reader
            ledger.observe(f"grow/{i:06}-{'x' * 200}.png", 10, 1, float(i))
            i += 1
        grown = wal.stat().st_size
        reader.execute("COMMIT")
        reader.close()
        for j in range(2000):  # the next automatic checkpoints complete and the WAL restarts
            ledger.observe(f"after/{j:06}.png", 10, 1, float(i + j))
        assert wal.stat().st_size <= limit, f"the WAL grew to {grown} bytes and stayed at {wal.stat().st_size}"


# -- 5: the ledger never forgets ------------------------------------------------------------


def test_gone_images_are_forgotten_after_the_retention(tmp_path: Path) -> None:
    s = config.Settings()
    assert s.ledger.gone_retention_days == 30 and s.ledger.max_gone_images == 20_000
    deep = "/".join(["d" * 200] * 10)
    with Ledger.open(tmp_path) as ledger:
        for i in range(500):
            ledger.observe(f"{deep}/{i:04}-{'n' * 200}.png", 10, 1, 1.0)
            ledger.gone(f"{deep}/{i:04}-{'n' * 200}.png", 2.0)
        ledger.observe("recent/p.png", 10, 1, 50.0)
        ledger.gone("recent/p.png", 100.0)
        ledger.observe("here/p.png", 10, 1, 1.0)
        assert ledger.prune_gone(before=90.0, keep_at_most=100_000) == 500
        c = ledger.connection
        assert [r[0] for r in c.execute("SELECT rel FROM images ORDER BY rel")] == ["here/p.png", "recent/p.png"]
        assert [r[0] for r in c.execute("SELECT folder FROM folders ORDER BY folder")] == ["here", "recent"]
        assert ledger.prune_gone(before=0.0, keep_at_most=0) == 1  # the count bound
        assert ledger.observe("recent/p.png", 10, 1, 200.0).queued  # it came back: queued as new


@pytest.mark.slow
def test_the_daemon_forgets_long_gone_images_at_start(tmp_path: Path, models_dir: Path) -> None:
    from daemon_harness import Daemon, toml_config

    deep = "/".join(["d" * 200] * 10)
    with Ledger.open(tmp_path / "state") as ledger:  # a year-old ledger of names created and deleted
        for i in range(300):
            ledger.observe(f"{deep}/{i:04}-{'n' * 200}.png", 10, 1, 1.0)
            ledger.gone(f"{deep}/{i:04}-{'n' * 200}.png", 2.0)
    cfg = toml_config({"pdf": {"enabled": False}, "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 1}}, {})
    d = Daemon(tmp_path, models_dir, cfg).start()
    d.ready()
    d.until(lambda: d.events("ledger_pruned"), "the ledger pruned")
    assert d.events("ledger_pruned")[0]["gone_images"] == "300"
    assert d.stop() == 0
    with Ledger.open_readonly(tmp_path / "state") as ledger:
        assert ledger.connection.execute("SELECT count(*) FROM images").fetchone()[0] == 0
        assert ledger.connection.execute("SELECT count(*) FROM folders").fetchone()[0] == 0


# -- 8: root's reads follow links too --------------------------------------------------------


def test_root_status_never_prints_a_file_linked_as_live_json(var: Path) -> None:
    state = made_by_owner(var)
    secret = var.parent / "root-only.json"
    secret.write_text(json.dumps({"password": "TOP-SECRET"}))
    secret.chmod(0o600)
    (state / "live.json").symlink_to(secret)
    os.lchown(state / "live.json", OWNER, OWNER)
    res = ocr_inbox(state, "status", "--json")
    assert "TOP-SECRET" not in res.stdout + res.stderr
    assert "live.json" in res.stderr


def test_a_fifo_as_the_lock_does_not_hang_the_cli(var: Path) -> None:
    state = made_by_owner(var)
    (state / store.LOCK_NAME).unlink()
    os.mkfifo(state / store.LOCK_NAME)
    os.chown(state / store.LOCK_NAME, OWNER, OWNER)
    started = time.monotonic()
    try:
        res = ocr_inbox(state, "status", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"status hung on the FIFO for {time.monotonic() - started:.0f} s")
    assert res.returncode != 0 and "ocr-inbox.lock is not a regular file" in res.stderr


# -- issue 20: retry --reason ---------------------------------------------------------------


def test_retry_refuses_an_unknown_reason_and_lists_the_real_ones(tmp_path: Path) -> None:
    res = ocr_inbox(tmp_path, "retry", "--reason", "worker_crash")
    assert res.returncode == 2 and "worker_crashed" in res.stderr and "corrupt" in res.stderr
    helped = subprocess.run([sys.executable, "-m", "ocr_inbox", "retry", "--help"], capture_output=True, text=True,
                            env=cli_env())
    assert "worker_stuck" in helped.stdout and "engine_error" in helped.stdout


def test_retry_says_how_many_it_queued_directly(var: Path) -> None:
    state = made_by_owner(var)
    res = ocr_inbox(state, "retry", "--reason", "corrupt")
    assert res.returncode == 0 and "queued 1 failed image(s) again" in res.stdout, res.stderr
    assert owners(state) == {OWNER}


# -- the real daemon: retries through it, of any size (2 and 3 end to end) -------------------
# (as root: a daemon started as another uid here needs an interpreter that uid may run; the
# uid side of the request channel is covered by the stand-in above)


@pytest.mark.slow
def test_the_real_daemon_applies_each_retry_once_whatever_its_size(tmp_path: Path, models_dir: Path) -> None:
    from daemon_harness import Daemon, json_files, toml_config
    from imagemaker import plain

    cfg = toml_config({
        "watch": {"settle_seconds": 0.3, "rescan_interval_s": 2},
        "pdf": {"enabled": False},
        "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 1},
    }, {})
    d = Daemon(tmp_path, models_dir, cfg).start()
    d.ready()
    (d.inbox / "a").mkdir()
    (d.inbox / "a" / "poison.png").write_bytes(b"not an image at all")
    d.until(lambda: {f["rel"] for f in d.status()["failures"]} == {"a/poison.png"}, "the poison image quarantined")

    def retry(*args: str) -> str:
        res = ocr_inbox(d.state, "retry", "--config", str(d.config_path), "--inbox", str(d.inbox), *args)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def failures_of_poison() -> int:
        return sum(e.get("path") == "a/poison.png" for e in d.events("image_quarantined") + d.events("image_failed"))

    first = failures_of_poison()
    assert "the running daemon queued 1 failed image(s) again" in retry("a")
    d.until(lambda: failures_of_poison() == first + 1, "the poison image failed again after the retry")
    # thousands of paths (a shell glob): applied like any other, and the loop goes on
    many = [f"a/{i:05}.png" for i in range(3000)]
    assert "the running daemon queued 1 failed image(s) again" in retry(*many, "a/poison.png")
    plain(d.inbox / "b" / "after.png")
    d.until(lambda: "b/after.png" in json_files(d.outbox), "an image dropped after the big retry is done")
    d.until(lambda: failures_of_poison() == first + 2, "the poison image failed once more")
    assert [e["images"] for e in d.events("retry_applied")] == ["1", "1"]  # each request once, never again
    assert [p.name for p in (d.state / "requests").iterdir()] == []
    assert d.stop() == 0
