"""Prometheus metrics: what an operator scrapes agrees with what the ledger (``ocr-inbox
status``) says. The real daemon serves them; the test engine for the fast paths
(restarts, reload, adoption), real PaddleX on corpus pages end to end."""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import copy_pages
from daemon_harness import Daemon, Samples, by_label, metric, parse_metrics, scrape, toml_config
from imagemaker import POISON_RAISE, POISON_SIGKILL, plain, truncate

from ocr_inbox import config
from ocr_inbox.executors.base import WorkerView
from ocr_inbox.ledger.reports import Stats
from ocr_inbox.service import metrics
from ocr_inbox.support.errors import BadArguments, ConfigError

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = REPO / "configs" / "prometheus"


# ---------------------------------------------------------------------------- helpers


def listening(pid: int) -> list[tuple[str, int]]:
    """TCP sockets listening in the daemon or any of its children."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return [
        (c.laddr.ip, c.laddr.port)
        for p in procs
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def ledger_says(d: Daemon) -> tuple[int, int, dict[str, int]]:
    """Done, failed and failed by reason, from ``ocr-inbox status --json``."""
    st = d.status()
    reasons = collections.Counter(f["reason"] for f in st["failures"])
    return st["totals"]["done"], st["totals"]["failed"], dict(reasons)


def fake_config(**sections: dict[str, object]) -> str:
    base: dict[str, dict[str, object]] = {
        "watch": {"settle_seconds": 0.3, "rescan_interval_s": 2},
        "pdf": {"quiet_seconds": 0.5},
        "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 2},
        "metrics": {"listen": "127.0.0.1:0"},
    }
    return toml_config(base, sections)


def counted(address: str, finished: int) -> Samples | None:
    """A scrape once the counters hold ``finished`` images (done or failed), else None: each
    is counted just after its ledger write, so the ledger may be a moment ahead."""
    s = scrape(address)
    total = metric(s, "ocr_inbox_images_done_total") + sum(by_label(s, "ocr_inbox_images_failed_total", "reason").values())
    return s if total == finished else None


def _finished(d: Daemon, done: int, failed: int) -> bool:
    t = d.status()["totals"]
    return bool((t["done"], t["failed"], t["queued"], t["running"]) == (done, failed, 0, 0))


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9464", "localhost:0", "0.0.0.0:9464", ""])
def test_listen_accepts_host_and_port(listen: str) -> None:
    assert config.from_mapping({"metrics": {"listen": listen}}).metrics.listen == listen


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("9464", "host:port"),
        (":9464", "the host is needed"),
        ("::1:9464", "IPv6 address goes in brackets"),
        ("[::1]9464", "then the port"),
        ("[nope]:9464", "not an IPv6 address"),
        ("127.0.0.1:99999", "from 0 to 65535"),
        ("127.0.0.1:http", "not a number"),
        ("bad host:1", "not a host name"),
    ],
)
def test_bad_listen_names_file_key_and_reason(listen: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"metrics": {"listen": listen}}, "/etc/ocr-inbox/ocr-inbox.toml")
    assert (err.value.file, err.value.key) == ("/etc/ocr-inbox/ocr-inbox.toml", "metrics.listen")
    assert why in err.value.reason


def test_metrics_are_off_by_default() -> None:
    assert config.load(None).metrics.listen == ""
    assert config.load(REPO / "configs" / "ocr-inbox.toml").metrics.listen == ""


# ---------------------------------------------------------------------------- the exposition, in-process


def _populated() -> metrics.Metrics:
    """A ``Metrics`` with every kind of sample present."""
    m = metrics.Metrics()
    m.image_done(1.5)
    m.image_failed("corrupt")
    m.image_adopted()
    m.queue_wait(3.0)
    m.worker_exit("crashed")
    m.worker_rss(0, 400 << 20)
    m.paused("disk_full")
    m.pdf_done(12.0, 40)
    m.pdf_failed("timeout")
    m.workers([WorkerView(0, "host", "cpu", "busy", 100, 7), WorkerView(1, "host", "cpu", "respawning", None, 0)])
    m.ledger(metrics.LedgerState(Stats(5, 2, 40, 3, 1, 0.5, 2), (("corrupt", 2), ("truncated", 1)), 8192, True, False))
    return m


def _exposition(m: metrics.Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


def test_every_metric_has_help_a_unit_in_its_name_and_the_values_recorded() -> None:
    samples, families = parse_metrics(_exposition(_populated()))
    ours = {n: f for n, f in families.items() if n.startswith("ocr_inbox_")}
    assert len(ours) >= 18
    for name, fam in ours.items():
        assert fam.documentation, name
        if fam.type == "histogram":
            assert name.endswith("_seconds"), name
    assert families["ocr_inbox_images_done"].type == "counter"
    assert metric(samples, "ocr_inbox_images_done_total") == 1
    assert by_label(samples, "ocr_inbox_images_failed_total", "reason") == {"corrupt": 1}
    # known reasons are there from the start, at 0: rate() sees their first failure after a restart
    assert ("ocr_inbox_images_failed_total", (("reason", "worker_crashed"),)) in samples
    assert metric(samples, "ocr_inbox_images_adopted_total") == 1
    assert metric(samples, "ocr_inbox_ocr_duration_seconds_sum") == 1.5
    assert metric(samples, "ocr_inbox_queue_wait_seconds_count") == 1
    assert by_label(samples, "ocr_inbox_worker_restarts_total", "cause") == {"crashed": 1}
    assert by_label(samples, "ocr_inbox_dispatch_pauses_total", "reason") == {"disk_full": 1}
    assert metric(samples, "ocr_inbox_pdf_pages_total") == 40
    assert metric(samples, "ocr_inbox_pdf_build_duration_seconds_count") == 1
    assert by_label(samples, "ocr_inbox_pdf_failures_total", "reason") == {"timeout": 1}
    assert by_label(samples, "ocr_inbox_workers", "state") == {"busy": 1, "respawning": 1}
    # memory only for a slot with a process now
    assert by_label(samples, "ocr_inbox_worker_resident_memory_bytes", "slot") == {"0": 400 << 20}
    assert metric(samples, "ocr_inbox_queue_images") == 5
    assert by_label(samples, "ocr_inbox_ledger_images", "status") == {
        "pending": 5, "running": 2, "done": 40, "failed": 3, "gone": 1,
    }
    assert by_label(samples, "ocr_inbox_ledger_failed_images", "reason") == {"corrupt": 2, "truncated": 1}
    assert metric(samples, "ocr_inbox_folders_waiting_for_pdf") == 2
    assert metric(samples, "ocr_inbox_ledger_size_bytes") == 8192
    assert metric(samples, "ocr_inbox_dispatch_paused", cause="output") == 1
    assert metric(samples, "ocr_inbox_dispatch_paused", cause="crash_storm") == 0
    assert metric(samples, "process_resident_memory_bytes") > 0  # the daemon's own


def test_a_worker_gone_from_its_slot_takes_its_memory_figure_with_it() -> None:
    m = metrics.Metrics()
    m.worker_rss(0, 1 << 30)
    m.workers([WorkerView(0, "host", "cpu", "respawning", None, 0)])
    m.workers([WorkerView(0, "host", "cpu", "booting", 4242, 0)])  # the new process has not reported yet
    samples, _ = parse_metrics(_exposition(m))
    assert by_label(samples, "ocr_inbox_worker_resident_memory_bytes", "slot") == {}


def test_serves_on_ipv6_and_stops_listening_after() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    m = _populated()
    try:
        with metrics.serving("[::1]:0", m) as address:
            assert address.startswith("[::1]:")
            assert metric(scrape(address), "ocr_inbox_images_done_total") == 1
    except BadArguments as exc:  # a host without ::1 configured
        pytest.skip(str(exc))
    with pytest.raises(OSError):
        scrape(address)


def test_a_port_in_use_is_an_error_naming_the_setting() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(BadArguments, match=rf"metrics.listen: cannot listen on 127.0.0.1:{port}: .*in use"):
            with metrics.serving(f"127.0.0.1:{port}", metrics.Metrics()):
                pass


def test_nothing_is_served_when_listen_is_empty() -> None:
    with metrics.serving("", metrics.Metrics()) as address:
        assert address == ""


# ---------------------------------------------------------------------------- shipped Prometheus files


def test_alert_rules_and_scrape_job_use_metrics_that_exist() -> None:
    scrape_cfg = yaml.safe_load((PROMETHEUS / "scrape.yml").read_text())
    (job,) = scrape_cfg["scrape_configs"]
    assert job["job_name"] == "ocr-inbox"
    (target,) = job["static_configs"][0]["targets"]
    config.parse_listen(target)  # the same form as [metrics] listen

    rules = yaml.safe_load((PROMETHEUS / "ocr-inbox.rules.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {"OcrInboxStalled", "OcrInboxFailureRateHigh"}
    samples, _ = parse_metrics(_exposition(_populated()))
    exposed = {name for name, _ in samples}
    for name, rule in alerts.items():
        assert rule["for"] and rule["annotations"]["summary"], name
        used = set(re.findall(r"\bocr_inbox_[a-z_]+\b", rule["expr"]))
        assert used, name
        assert used <= exposed, (name, used - exposed)


def test_promtool_accepts_the_shipped_files_and_the_alerts_fire_when_they_should() -> None:
    """Prometheus's own checker on the rules and the scrape job, and its unit tests of the
    alerts (``tests/prometheus/``): stalled only after 15 minutes of history with images
    queued, a failure rate of a third alerts and a tenth does not, and so on."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not installed (.ci/run installs it from Debian's prometheus package)")
        pytest.skip("promtool (Prometheus) is not installed")
    for args in (["check", "rules", PROMETHEUS / "ocr-inbox.rules.yml"],
                 ["check", "config", PROMETHEUS / "scrape.yml"],
                 ["test", "rules", REPO / "tests" / "prometheus" / "ocr-inbox.rules.test.yml"]):
        res = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, f"promtool {args[0]} {args[1]}:\n{res.stdout}{res.stderr}"


# ---------------------------------------------------------------------------- systemd


def test_the_unit_stays_closed_and_the_drop_in_opens_it_to_localhost(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "ocr-inbox.service"
    unit.write_text(
        (REPO / "systemd" / "ocr-inbox.service").read_text().replace("ExecStart=/opt/ocr-inbox/venv/bin/ocr-inbox ", "ExecStart=/bin/true ")
    )

    def security() -> str:
        res = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                             capture_output=True, text=True, timeout=120)
        return res.stdout + res.stderr

    closed = security()
    assert re.search(r"RestrictAddressFamilies=~AF_\(INET\|INET6\)\s+Service cannot allocate Internet sockets", closed)
    assert re.search(r"IPAddressDeny=\s+Service blocks all IP address ranges", closed)
    dropins = tmp_path / "ocr-inbox.service.d"
    dropins.mkdir()
    shutil.copy(REPO / "systemd" / "ocr-inbox-metrics.conf", dropins / "metrics.conf")
    res = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "metrics.conf" not in res.stdout + res.stderr, res.stdout + res.stderr
    opened = security()
    assert re.search(r"Service may allocate Internet sockets", opened)
    assert re.search(r"IP address allow list with only localhost entries", opened)


# ---------------------------------------------------------------------------- the daemon, test engine


@pytest.mark.slow
def test_off_by_default_the_daemon_listens_on_nothing(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, fake_config(metrics={"listen": ""}))
    plain(d.inbox / "f" / "a.png")
    d.start()
    d.ready()
    d.until(lambda: _finished(d, 1, 0), "the image done")
    assert d.proc is not None
    assert listening(d.proc.pid) == []
    assert d.events("metrics_serving") == []
    assert d.stop() == 0


@pytest.mark.slow
def test_a_port_in_use_stops_the_start_naming_metrics_listen(tmp_path: Path, models_dir: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        d = Daemon(tmp_path, models_dir, fake_config(metrics={"listen": f"127.0.0.1:{port}"}))
        d.start()
        assert d.wait_exit() == 2  # ExitCode.bad_args: systemd restarts it (the port may come free)
    (failed,) = d.events("failed")
    assert "metrics.listen" in failed["error"] and "in use" in failed["error"], failed
    assert d.events("worker_spawned") == []  # refused before any model is loaded
    assert not any("READY=1" in m for m in d.messages)


@pytest.mark.slow
def test_counters_match_the_ledger_with_failures_restarts_and_recycling(tmp_path: Path, models_dir: Path) -> None:
    cfg = fake_config(pool={"max_images_per_worker": 2, "batch_size": 2})
    d = Daemon(tmp_path, models_dir, cfg)
    for name in "abcd":
        plain(d.inbox / "ok" / f"{name}.png")
    plain(d.inbox / "bad" / "raise.png", marker=POISON_RAISE)  # engine_error
    plain(d.inbox / "bad" / "kill.png", marker=POISON_SIGKILL)  # kills its worker, twice: worker_crashed
    (d.inbox / "bad" / "empty.png").write_bytes(b"")  # empty_file
    outside = tmp_path / "outside.png"
    plain(outside)
    (d.inbox / "bad" / "link.png").symlink_to(outside)  # refused by intake: symlink_outside_inbox
    d.start()
    d.ready()
    d.until(lambda: _finished(d, 4, 4), "4 done, 4 failed")
    d.until(lambda: d.events("pdf_done"), "the ok folder's PDF")
    address = d.metrics_address()
    assert d.proc is not None
    host, port = address.rsplit(":", 1)
    assert (host, int(port)) in listening(d.proc.pid)

    done, failed, reasons = ledger_says(d)
    assert reasons == {"engine_error": 1, "worker_crashed": 1, "empty_file": 1, "symlink_outside_inbox": 1}
    # worker exits are counted when reaped: wait for the last recycled worker's, then compare
    d.until(lambda: by_label(scrape(address), "ocr_inbox_worker_restarts_total", "cause").get("recycled_max_images", 0)
            == len(d.events("worker_retired")), "every retired worker counted")
    s = d.until(lambda: counted(address, done + failed), "every image counted")
    assert metric(s, "ocr_inbox_images_done_total") == done == 4
    assert by_label(s, "ocr_inbox_images_failed_total", "reason") == reasons
    assert metric(s, "ocr_inbox_ocr_duration_seconds_count") == done
    # every image handed out (the killer twice, and the batch-mates it took down) waited in the queue
    assert metric(s, "ocr_inbox_queue_wait_seconds_count") >= done + 4
    restarts = by_label(s, "ocr_inbox_worker_restarts_total", "cause")
    assert restarts["crashed"] == len(d.events("worker_lost")) == 2
    assert restarts["recycled_max_images"] == len(d.events("worker_retired")) >= 1
    assert metric(s, "ocr_inbox_pdf_pages_total") == 4
    assert metric(s, "ocr_inbox_pdf_build_duration_seconds_count") == 1

    # the ledger's gauges (status tick) and the pool once it is idle
    def settled() -> Samples | None:
        s = scrape(address)
        idle = by_label(s, "ocr_inbox_workers", "state") == {"idle": 2}
        ledger = by_label(s, "ocr_inbox_ledger_images", "status")
        current = ledger == {"done": done, "failed": failed} and metric(s, "ocr_inbox_folders_waiting_for_pdf") == 0
        return s if idle and current else None

    s = d.until(settled, "gauges: 2 idle workers, the ledger's totals, no PDF due")
    assert by_label(s, "ocr_inbox_ledger_failed_images", "reason") == reasons
    assert metric(s, "ocr_inbox_queue_images") == 0
    assert metric(s, "ocr_inbox_ledger_size_bytes") > 0
    assert metric(s, "ocr_inbox_dispatch_paused", cause="output") == 0
    assert metric(s, "process_resident_memory_bytes") > 0

    # SIGHUP with another address: it needs a restart, the running server goes on
    d.config_path.write_text(fake_config(pool={"max_images_per_worker": 2, "batch_size": 2}, metrics={"listen": "127.0.0.1:1"}))
    d.signal(signal.SIGHUP)
    (ev,) = d.until(lambda: d.events("reload_needs_restart"), "the reload")
    assert "metrics.listen" in ev["keys"]
    assert metric(scrape(address), "ocr_inbox_images_done_total") == 4
    assert d.stop() == 0
    with pytest.raises(OSError):
        scrape(address)


@pytest.mark.slow
def test_images_adopted_from_an_existing_outbox_are_counted_apart(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, fake_config())
    for name in "abc":
        plain(d.inbox / "f" / f"{name}.png")
    d.start()
    d.ready()
    d.until(lambda: _finished(d, 3, 0), "3 done")
    assert d.stop() == 0
    shutil.rmtree(d.state)  # a lost ledger: the outbox's JSON describe exactly these files

    again = Daemon(tmp_path, models_dir, name="again")
    again.start()
    again.ready()
    again.until(lambda: _finished(again, 3, 0), "3 done again, from the outbox")
    address = again.metrics_address()

    def gauged() -> Samples | None:
        s = scrape(address)
        return s if metric(s, "ocr_inbox_ledger_images", status="done") == 3 else None

    s = again.until(gauged, "the ledger's gauge")
    # a new process: its counters start at 0, and adopted images are not OCR'd
    assert metric(s, "ocr_inbox_images_adopted_total") == 3
    assert metric(s, "ocr_inbox_images_done_total") == 0
    assert metric(s, "ocr_inbox_ocr_duration_seconds_count") == 0
    assert again.stop() == 0


# ---------------------------------------------------------------------------- end to end, real OCR


@pytest.mark.slow
@pytest.mark.corpus
def test_real_daemon_metrics_agree_with_status(tmp_path: Path, models_dir: Path) -> None:
    base: dict[str, dict[str, object]] = {
        "watch": {"settle_seconds": 0.3},
        "pdf": {"quiet_seconds": 0.5},
        "ocr": {"workers_per_device": 2, "threads_per_worker": 1},
        "metrics": {"listen": "127.0.0.1:0"},
    }
    d = Daemon(tmp_path, models_dir, toml_config(base, {}))
    copy_pages(d.inbox)  # three real pages, one per folder
    bad = d.inbox / "bad"
    bad.mkdir()
    truncate(shutil.copy(d.inbox / "funsd" / "82092117.png", bad / "cut.png"))
    (bad / "notes.jpg").write_text("not a picture\n")
    (bad / "zero.png").write_bytes(b"")
    d.start()
    d.ready()
    d.until(lambda: _finished(d, 3, 3) and len(d.events("pdf_done")) == 3, "3 pages done, 3 failed, 3 PDFs")
    address = d.metrics_address()

    st = d.status()
    done, failed = st["totals"]["done"], st["totals"]["failed"]
    reasons = dict(collections.Counter(f["reason"] for f in st["failures"]))
    assert reasons == {"truncated": 1, "not_an_image": 1, "empty_file": 1}

    def settled() -> Samples | None:
        s = scrape(address)
        idle = by_label(s, "ocr_inbox_workers", "state") == {"idle": 2}
        current = metric(s, "ocr_inbox_ledger_images", status="done") == done
        return s if idle and current and counted(address, done + failed) else None

    s = d.until(settled, "the pool idle, every image counted, the ledger's gauges current")
    assert metric(s, "ocr_inbox_images_done_total") == done == 3
    assert by_label(s, "ocr_inbox_images_failed_total", "reason") == reasons
    assert metric(s, "ocr_inbox_ledger_images", status="failed") == failed
    assert metric(s, "ocr_inbox_ocr_duration_seconds_count") == 3
    assert metric(s, "ocr_inbox_ocr_duration_seconds_sum") > 0
    pdf_pages = sum(f["pdf_pages"] or 0 for f in st["folders"])
    assert metric(s, "ocr_inbox_pdf_pages_total") == pdf_pages == 3
    assert metric(s, "ocr_inbox_pdf_build_duration_seconds_count") == 3
    # the pool as `status` shows it, and the memory of the daemon and of its workers
    workers = d.status()["daemon"]["workers"]
    assert sum(by_label(s, "ocr_inbox_workers", "state").values()) == len(workers) == 2
    assert by_label(s, "ocr_inbox_workers", "device") == {"cpu": 2}
    assert metric(s, "process_resident_memory_bytes") > 0
    rss = by_label(s, "ocr_inbox_worker_resident_memory_bytes", "slot")
    assert rss and set(rss) <= {str(w["slot"]) for w in workers}
    assert all(b > 0 for b in rss.values())
    assert sum(by_label(s, "ocr_inbox_worker_restarts_total", "cause").values()) == 0
    assert d.stop() == 0


def _closed_by_server(conns: list[socket.socket], want: int) -> int:
    """Wait until the server has closed ``want`` of these idle connections (EOF or reset);
    the count closed. The deadline only ends a failing test."""
    import selectors

    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c, selectors.EVENT_READ)
    closed = 0
    while closed < want and (ready := sel.select(timeout=30)):
        for key, _ in ready:
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(1)
            except ConnectionResetError:
                data = b""
            assert data == b"", "the server sent something to a connection that sent nothing"
            sel.unregister(sock)
            closed += 1
    sel.close()
    return closed


def test_idle_connections_cannot_pile_up_threads(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """Finding: 600 idle connections held 602 threads and 607 descriptors. Now: at most
    MAX_CONNECTIONS are held (more are closed as accepted), each only until its timeout,
    and a scrape works again after."""
    import threading

    monkeypatch.setattr(metrics, "CONNECTION_TIMEOUT_S", 1.0)
    n = metrics.MAX_CONNECTIONS * 5
    with metrics.serving("127.0.0.1:0", _populated()) as address:
        host, port = address.rsplit(":", 1)
        before = threading.active_count()
        conns = [socket.create_connection((host, int(port))) for _ in range(n)]
        try:
            # the ones over the cap are closed as they are accepted ...
            assert _closed_by_server(conns, n - metrics.MAX_CONNECTIONS) >= n - metrics.MAX_CONNECTIONS
            assert threading.active_count() <= before + metrics.MAX_CONNECTIONS
            # ... and the held ones once they were silent for the timeout
            assert _closed_by_server(conns, n) == n
        finally:
            for c in conns:
                c.close()
        assert metric(scrape(address), "ocr_inbox_images_done_total") == 1
    assert "Traceback" not in capfd.readouterr().err  # a timed-out client is not an error to print
