"""``[executor] kind = "ray"``: a real two-node Ray cluster on this machine.

The whole module runs in its own network namespace with only loopback (Ray
listens on all interfaces, its agent probes cloud metadata addresses), with token
authentication on and usage stats off (``fakes/ray_cluster.py``). Both nodes carry
one unit of the custom resource ``fake_gpu``, standing in for a GPU, and one CPU:
one actor per node, so placement across nodes is real. The fake engine serves the
scheduling and fault cases; one case runs real inference (same JSON as local).
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS, PAGES, copy_pages, run_cli
from daemon_harness import Daemon, by_label, cli_env, json_files, metric, scrape
from imagemaker import POISON_SIGKILL, plain

sys.path.insert(0, str(Path(__file__).resolve().parent / "fakes"))
import ray_cluster  # noqa: E402

pytestmark = [pytest.mark.slow]

if ray_cluster.ray_bin() is None:
    pytest.skip("Ray is not installed (pip install 'ocr-inbox[ray]'; `make test` installs it)", allow_module_level=True)

#: the seconds an image "costs" the fake engine: long enough to kill a node mid-run
DELAY_S = "0.3"


#: the daemon's Prometheus metrics, on a free port
METRICS = '[metrics]\nlisten = "127.0.0.1:0"\n'


def ray_config(cluster: ray_cluster.Cluster, fake: bool = True, ocr: dict[str, object] | None = None,
               pool: dict[str, object] | None = None, **executor: object) -> str:
    ex: dict[str, object] = {
        "kind": "ray",
        "address": cluster.address,
        "token_file": str(cluster.token_file),
        "workers_per_gpu": 1,
        "cpus_per_worker": 1,
        "gpu_resource": "fake_gpu",
        "connect_timeout_s": 60,
    }
    ex.update(executor)
    sections: dict[str, dict[str, object]] = {
        "watch": {"settle_seconds": 0.3, "rescan_interval_s": 2},
        "pdf": {"quiet_seconds": 0.5},
        "pool": {"output_retry_s": 1.0, "batch_size": 3, **(pool or {})},
        "executor": ex,
    }
    if fake:
        sections["ocr"] = {"engine_plugin": "fake_engine:create", **(ocr or {})}
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()) for name, values in sections.items()
    )


@pytest.fixture(scope="module")
def netns() -> Iterator[None]:
    try:
        old = ray_cluster.enter_netns()
    except OSError as exc:
        pytest.skip(f"cannot make a loopback-only network namespace for Ray (needs root): {exc}")
    try:
        assert ray_cluster.only_loopback()
        yield
    finally:
        ray_cluster.leave_netns(old)


@pytest.fixture(scope="module")
def cluster(netns: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ray_cluster.Cluster]:
    root = tmp_path_factory.mktemp("ray")
    c = ray_cluster.Cluster(root, env={"FAKE_ENGINE_DELAY_S": DELAY_S})
    try:
        yield c.start(workers=1)
    finally:
        c.stop()


def _images(inbox: Path, n: int, folders: int = 2) -> list[str]:
    rels = [f"f{i % folders}/p{i:02d}.png" for i in range(n)]
    for i, rel in enumerate(rels):
        plain(inbox / rel, size=(64 + i, 48))
    return rels


def _done_once(d: Daemon, rels: list[str]) -> None:
    """Every image has its JSON, and each was recorded done exactly once."""
    assert sorted(json_files(d.outbox)) == sorted(rels)
    counts = collections.Counter(e["path"] for e in d.events("image_done"))
    assert counts == {rel: 1 for rel in rels}, counts


def _same_json(a: dict[str, Any], b: dict[str, Any]) -> None:
    for doc in (a, b):
        doc.pop("elapsed_ms", None)
    assert a == b


@pytest.mark.corpus
def test_same_json_as_the_local_pool(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path) -> None:
    """Real inference on corpus pages: the JSONs and the PDF text match the local executor's."""
    if not CORPUS.is_dir():
        pytest.skip(f"needs the corpus at {CORPUS}")
    pages = PAGES[:2]
    inbox = copy_pages(tmp_path / "inbox", pages)
    outs = {}
    for kind in ("local", "ray"):
        cfg = tmp_path / f"{kind}.toml"
        cfg.write_text(ray_config(cluster, fake=False) if kind == "ray" else "")
        out = tmp_path / f"out-{kind}"
        res = run_cli("ocr", inbox, out, "--pdf", "--no-progress", "--config", cfg, state_dir=tmp_path / f"s-{kind}", models=models_dir)
        assert res.returncode == 0, res.stderr[-3000:]
        outs[kind] = out
    local, ray = json_files(outs["local"]), json_files(outs["ray"])
    assert sorted(local) == sorted(ray) == sorted(pages)
    for rel in pages:
        _same_json(local[rel], ray[rel])
    for pdf in outs["local"].rglob("*.pdf"):
        import pymupdf

        other = outs["ray"] / pdf.relative_to(outs["local"])
        with pymupdf.open(pdf) as a, pymupdf.open(other) as b:
            assert [p.get_text() for p in a] == [p.get_text() for p in b]


def test_wrong_token_names_the_setting(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path) -> None:
    bad = tmp_path / "wrong-token"
    bad.write_text("0" * 32)
    bad.chmod(0o600)
    cfg = tmp_path / "c.toml"
    cfg.write_text(ray_config(cluster, token_file=str(bad)))
    plain(tmp_path / "in" / "a.png")
    res = run_cli("ocr", tmp_path / "in", tmp_path / "out", "--config", cfg, state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 4, res.stderr[-3000:]
    assert "executor.token_file" in res.stderr, res.stderr[-3000:]
    assert not (tmp_path / "out" / "a.png.json").exists()


def test_a_token_file_others_may_read_is_refused_at_start(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path) -> None:
    """Audit finding: the token file's mode was not checked. The right token, readable by
    the group: the run refuses to start (exit 4), naming the setting, the mode and the fix."""
    token = tmp_path / "token"
    token.write_text(cluster.token_file.read_text())
    token.chmod(0o644)
    cfg = tmp_path / "c.toml"
    cfg.write_text(ray_config(cluster, token_file=str(token)))
    plain(tmp_path / "in" / "a.png")
    res = run_cli("ocr", tmp_path / "in", tmp_path / "out", "--config", cfg, state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 4, res.stderr[-3000:]
    assert f"executor.token_file: {token} has mode 0644" in res.stderr and "chmod 0400" in res.stderr, res.stderr[-3000:]
    assert not (tmp_path / "out" / "a.png.json").exists()


def test_a_node_killed_mid_run_loses_nothing(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path) -> None:
    """SIGKILL of the worker node's raylet while it OCRs: its batch is retried on the head's
    actor; every image is done exactly once; a node that joins gets an actor."""
    rels = _images(tmp_path / "inbox", 24)
    d = Daemon(tmp_path, models_dir, ray_config(cluster)).start()
    d.ready()
    d.until(lambda: len(d.events("worker_ready")) >= 2, "an actor ready on each node")
    nodes = {e["node"] for e in d.events("worker_ready")}
    assert len(nodes) == 2, nodes
    # `ocr-inbox status` shows the actors per node
    live = d.until(lambda: v if len((v := d.status()["daemon"])["workers"]) == 2 else None, "both actors in the live view")
    assert live["executor"] == "ray" and {w["node"] for w in live["workers"]} == nodes
    assert {w["device"] for w in live["workers"]} == {"fake_gpu x 1"}
    human = run_cli("status", state_dir=d.state, models=models_dir).stdout
    assert "workers per node" in human and all(n.split("/")[0] in human for n in nodes), human
    d.until(lambda: len(d.events("image_done")) >= 4, "work under way on the cluster")
    cluster.raylet(1).send_signal(signal.SIGKILL)
    d.until(lambda: d.events("worker_lost"), "the dead node's actor reported lost")
    d.until(lambda: d.status()["totals"]["done"] == len(rels), "every image done after the node died")
    _done_once(d, rels)
    assert d.status()["failures"] == []
    # the lost node comes back as a new one: it gets an actor, and it works
    cluster.nodes.pop(1).wait(timeout=60)
    cluster.add_node()
    ready_before = len(d.events("worker_ready"))
    d.until(lambda: len(d.events("worker_ready")) > ready_before, "an actor on the node that joined")
    assert d.stop() == 0


#: the cluster's nodes have no "GPU" resource: with the default workers_per_gpu = 3 no actor fits
UNPLACEABLE = {"gpu_resource": "GPU", "workers_per_gpu": 3}


def test_a_cluster_where_no_actor_fits_is_named_at_once_and_ocr_gives_up(
    cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path,
) -> None:
    """Issue 20: CPU-only nodes with the default workers_per_gpu = 3 made `ocr` wait forever
    without a word after ray_cluster_connected. Now a warning names the setting at once, and
    the run gives up after executor.connect_timeout_s (exit 4), like for a lost cluster."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(ray_config(cluster, **UNPLACEABLE, connect_timeout_s=3))
    plain(tmp_path / "in" / "a.png")
    res = run_cli("ocr", tmp_path / "in", tmp_path / "out", "--no-progress", "--config", cfg,
                  state_dir=tmp_path / "s", models=models_dir, timeout=120)
    assert res.returncode == 4, res.stderr[-3000:]
    warning = next(ln for ln in res.stderr.splitlines() if "event=ray_no_actor_placeable" in ln)
    # (how many nodes Ray counts depends on the tests before: one killed a node and added another)
    assert re.search(r"nodes=[1-9]", warning) and "executor.workers_per_gpu = 3" in warning and "'GPU'" in warning, warning
    assert "executor.workers_per_gpu = 0" in warning  # the fix for CPU-only nodes
    assert "no OCR actor can be placed" in res.stderr and "executor.connect_timeout_s = 3" in res.stderr, res.stderr[-3000:]
    assert not (tmp_path / "out" / "a.png.json").exists()


def test_the_daemon_says_in_status_why_no_actor_fits(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path) -> None:
    plain(tmp_path / "inbox" / "a.png")
    d = Daemon(tmp_path, models_dir, ray_config(cluster, cpus_per_worker=4, workers_per_gpu=0)).start()
    d.ready()
    [warning] = d.until(lambda: d.events("ray_no_actor_placeable"), "the placement warning")
    assert "executor.cpus_per_worker = 4" in warning["reason"] and "the most: 1" in warning["reason"], warning
    note = d.until(lambda: n if "no OCR actor" in (n := d.status()["daemon"].get("note", "")) else None, "status's note")
    assert "executor.cpus_per_worker = 4" in note
    human = run_cli("status", state_dir=d.state, models=models_dir).stdout
    assert "no OCR actor can be placed" in human, human
    assert d.stop() == 0


def test_daemon_kill9_with_work_on_the_cluster(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path) -> None:
    rels = _images(tmp_path / "inbox", 16)
    d = Daemon(tmp_path, models_dir, ray_config(cluster), name="first").start()
    d.ready()
    d.until(lambda: len(d.events("image_done")) >= 2 and d.status()["totals"]["running"] > 0, "batches on the cluster")
    d.kill9()
    d = Daemon(tmp_path, models_dir, name="second").start()
    d.ready()
    d.until(lambda: d.status()["totals"]["done"] == len(rels), "every image done after the restart")
    assert sorted(json_files(d.outbox)) == sorted(rels)
    assert d.status()["failures"] == []
    assert d.stop() == 0


def test_poison_image_quarantined_across_nodes(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path) -> None:
    """An image that kills its actor is retried (elsewhere or on a new actor), then quarantined;
    the others are done; the metrics count it as the ledger does."""
    rels = _images(tmp_path / "inbox", 6)
    plain(tmp_path / "inbox" / "f0" / "poison.png", marker=POISON_SIGKILL)
    d = Daemon(tmp_path, models_dir, ray_config(cluster) + METRICS).start()
    d.ready()
    d.until(lambda: d.status()["totals"]["done"] == len(rels) and d.status()["failures"], "the good ones done, the poison failed")
    failures = d.status()["failures"]
    assert [(f["rel"], f["reason"]) for f in failures] == [("f0/poison.png", "worker_crashed")]
    assert len([e for e in d.events("worker_lost") if e.get("image") == "f0/poison.png"]) == 2

    def counted() -> dict[Any, float] | None:
        s = d.metrics()
        finished = metric(s, "ocr_inbox_images_done_total") + sum(by_label(s, "ocr_inbox_images_failed_total", "reason").values())
        return s if finished == len(rels) + 1 else None

    s = d.until(counted, "the metrics count every image finished")
    assert metric(s, "ocr_inbox_images_done_total") == len(rels)
    assert by_label(s, "ocr_inbox_images_failed_total", "reason") == {"worker_crashed": 1}
    assert by_label(s, "ocr_inbox_worker_restarts_total", "cause")["crashed"] == len(d.events("worker_lost"))
    assert d.stop() == 0


def test_cluster_stopped_and_started_under_a_running_daemon(
    cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path
) -> None:
    """The daemon keeps watching while the cluster is gone, says so, and resumes by itself."""
    rels = _images(tmp_path / "inbox", 4)
    d = Daemon(tmp_path, models_dir, ray_config(cluster) + METRICS).start()
    d.ready()
    d.until(lambda: d.status()["totals"]["done"] == len(rels), "the first images done")
    cluster.stop()
    d.until(lambda: d.events("ray_cluster_unreachable"), "the daemon noticed the cluster is gone")
    d.wait_notify(lambda msg: "ray cluster unreachable" in msg)
    # the metrics count every actor the daemon had as ended (lost with the cluster, or its node first)
    added = len(d.events("ray_actor_added"))
    d.until(lambda: sum(by_label(d.metrics(), "ocr_inbox_worker_restarts_total", "cause").values()) == added > 0,
            "every actor counted as ended")
    assert set(by_label(d.metrics(), "ocr_inbox_worker_restarts_total", "cause")) <= {"cluster_lost", "actor_gone", "crashed"}
    late = _images(tmp_path / "late", 3)  # arrives while the cluster is down
    for rel in late:
        (d.inbox / "late" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp_path / "late" / rel, d.inbox / "late" / rel)
    d.until(lambda: d.status()["totals"]["queued"] == len(late), "new images queued while the cluster is down")
    cluster.start(workers=1)
    d.until(lambda: d.events("ray_cluster_back"), "the daemon reconnected by itself")
    d.until(lambda: d.status()["totals"]["done"] == len(rels) + len(late), "the late images done")
    assert d.stop() == 0


def test_a_oneshot_run_gives_up_on_a_lost_cluster_and_resumes(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path) -> None:
    """`ocr-inbox ocr` on Ray, the cluster stopped mid-run: once it has been away for
    executor.connect_timeout_s the run exits with status 4 naming the setting, keeping what it
    finished; with the cluster back, a rerun does the rest and nothing twice."""
    inbox, out, state = tmp_path / "inbox", tmp_path / "out", tmp_path / "state"
    rels = _images(inbox, 60)
    cfg = tmp_path / "ray.toml"
    cfg.write_text(ray_config(cluster, connect_timeout_s=10))
    cmd = [sys.executable, "-m", "ocr_inbox", "ocr", str(inbox), str(out), "--no-progress", "--config", str(cfg),
           "--state-dir", str(state), "--models-dir", str(models_dir), "--log-format", "logfmt"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env())
    lines: list[str] = []
    first_done = threading.Event()

    def read_log() -> None:  # the run's log, line by line as it writes it (and the pipe never fills)
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "event=image_done" in line:
                first_done.set()
        first_done.set()  # the run ended: the wait below ends too

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        assert first_done.wait(timeout=180), "no image done within 180 s"
        assert proc.poll() is None, "".join(lines)[-3000:]
        cluster.stop()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=60)
    text = "".join(lines)
    assert code == 4, text[-3000:]
    assert "executor.connect_timeout_s = 10" in text and "ray cluster unreachable" in text
    first = set(json_files(out))
    assert 0 < len(first) < len(rels)
    cluster.start(workers=1)
    res = run_cli("ocr", inbox, out, "--no-progress", "--config", cfg, state_dir=state, models=models_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(json_files(out)) == sorted(rels)
    second = set(re.findall(r"event=image_done path=(\S+)", res.stderr))
    assert second == set(rels) - first


def test_reload_replaces_the_actors_in_place(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path) -> None:
    """A reload that changes [ocr] under Ray: the actors hold every share of the cluster, so
    the running ones finish their batches and stop before the new ones are placed (booting
    them beside would never fit); nothing is lost, nothing done twice."""
    rels = _images(tmp_path / "inbox", 12)
    d = Daemon(tmp_path, models_dir, ray_config(cluster)).start()
    d.ready()
    d.until(lambda: len(d.events("image_done")) >= 2, "work under way on the cluster")
    d.config_path.write_text(ray_config(cluster, ocr={"min_score": 0.01}))
    d.signal(signal.SIGHUP)
    d.until(lambda: d.events("workers_switched") or d.events("reload_rejected"), "the reload applied")
    assert not d.events("reload_rejected"), d.log()[-3000:]
    assert [e["mode"] for e in d.events("workers_restarting")] == ["in_place"]
    late = [f"late/{rel}" for rel in _images(tmp_path / "late", 4)]  # for the new actors
    for rel in late:
        (d.inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp_path / rel, d.inbox / rel)
    d.until(lambda: d.status()["totals"]["done"] == len(rels) + len(late), "every image done")
    _done_once(d, rels + late)
    assert d.status()["failures"] == []
    assert d.stop() == 0


@pytest.mark.parametrize(("limit", "reason"), [({"max_images_per_worker": 3}, "max_images"), ({"max_worker_rss_mb": 1}, "max_rss")])
def test_actors_are_recycled_between_batches(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path,
                                             limit: dict[str, object], reason: str) -> None:
    """``pool.max_images_per_worker`` / ``max_worker_rss_mb`` under Ray: an actor past the limit
    after its batch is replaced by a fresh one on its node, which goes on with the work;
    nothing is lost or done twice, nothing is blamed, and the metrics count each one."""
    rels = _images(tmp_path / "inbox", 15)
    d = Daemon(tmp_path, models_dir, ray_config(cluster, pool=limit) + METRICS).start()
    d.ready()
    d.until(lambda: d.status()["totals"]["done"] == len(rels), "every image done")
    _done_once(d, rels)
    assert d.status()["failures"] == [] and not d.events("worker_lost")
    recycled = d.events("worker_recycle")
    assert recycled and {e["reason"] for e in recycled} == {reason}, d.log()[-3000:]
    if reason == "max_images":
        assert all(int(e["images"]) >= 3 for e in recycled)
    # the replacements (slots after the first two actors') took work
    assert len(d.events("ray_actor_added")) == 2 + len(recycled)
    assert any(int(e["slot"]) > 2 for e in d.events("image_done"))
    address = d.metrics_address()
    d.until(lambda: by_label(scrape(address), "ocr_inbox_worker_restarts_total", "cause").get(f"recycled_{reason}", 0)
            == len(recycled), "every recycled actor counted")
    assert d.stop() == 0


def test_paths_transport_reads_images_on_the_nodes(cluster: ray_cluster.Cluster, tmp_path: Path, models_dir: Path) -> None:
    """``transport = "paths"``: the actors open the images themselves, beneath the same inbox
    path (every node mounts it at the same place: here they share the file system)."""
    rels = _images(tmp_path / "inbox", 6)
    d = Daemon(tmp_path, models_dir, ray_config(cluster, transport="paths")).start()
    d.ready()
    d.until(lambda: d.status()["totals"]["done"] == len(rels), "every image done")
    _done_once(d, rels)
    docs = json_files(d.outbox)
    assert all(docs[rel]["source"]["size"] == (d.inbox / rel).stat().st_size for rel in rels)
    assert d.stop() == 0


@pytest.mark.parametrize("mode", ["pickle_bomb", "other_job", "plain_other_job", "raises"])
def test_a_hostile_node_can_neither_run_code_in_the_bridge_nor_answer_for_another_image(
    cluster: ray_cluster.Cluster, tmp_path: Path, mode: str,
) -> None:
    """Audit finding: the bridge unpickled whatever an actor returned (``ray.get``) and
    forwarded the actor's own idea of which job a result belongs to. Now it reads only
    plain data; anything else loses the actor, and every event names the jobs it sent."""
    mark = tmp_path / "unpickled"
    script = Path(__file__).resolve().parent / "fakes" / "hostile_actor.py"
    res = subprocess.run(
        [sys.executable, str(script), cluster.address, mode, str(mark), str(tmp_path / "in")],
        capture_output=True, text=True, env=cli_env(**{k: v for k, v in cluster.env.items() if k.startswith("RAY_")}),
        timeout=300,
    )
    assert not mark.exists(), "the bridge ran code the node chose (unpickled its result)"
    assert res.returncode == 0, res.stdout + res.stderr
    events = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    sent = {(1, "f/a.png"), (2, "f/b.png")}
    assert events, res.stdout + res.stderr
    for ev in events:
        assert {tuple(j) for j in ev["jobs"]} <= sent, ev
    if mode == "plain_other_job":  # well-formed plain data: the answer is for the job sent
        assert [ev["event"] for ev in events] == ["Failed", "Failed", "BatchDone"]
        assert [ev["jobs"] for ev in events[:2]] == [[[1, "f/a.png"]], [[2, "f/b.png"]]]
    else:  # not plain data: the actor is lost, its images go back (the first one its suspect)
        assert events[0]["event"] == "WorkerLost" and events[0]["jobs"] == [[1, "f/a.png"], [2, "f/b.png"]], events


def test_ray_runs_in_a_loopback_only_namespace(netns: None) -> None:
    """What every Ray process of this module sees: loopback and nothing else."""
    res = subprocess.run(
        [sys.executable, "-c", "import socket; print([n for _, n in socket.if_nameindex()])"],
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )
    assert res.stdout.strip() == "['lo']"


def test_settings_and_placement_plan(tmp_path: Path) -> None:
    """No address, no Ray (never a private cluster by surprise); actors per node from its resources."""
    from ocr_inbox import config
    from ocr_inbox.executors.ray.bridge import actor_options
    from ocr_inbox.executors.ray.plan import actors_for, bridge_config, placement_problem
    from ocr_inbox.support.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        config.from_mapping({"executor": {"kind": "ray"}})
    assert err.value.key == "executor" and "executor.address" in err.value.reason
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"executor": {"kind": "ray", "address": "auto"}})
    assert err.value.key == "executor.address"
    s = config.from_mapping({"executor": {"kind": "ray", "address": "10.0.0.5:6379", "workers_per_gpu": 3}})
    cfg = bridge_config(s, tmp_path)
    assert cfg.worker.engine.device == "gpu:0" and cfg.worker.env == {}
    assert actors_for({"CPU": 16.0, "GPU": 2.0}, cfg) == 6
    assert actors_for({"CPU": 4.0, "GPU": 2.0}, cfg) == 4  # CPUs bound it too
    assert actors_for({"CPU": 16.0}, cfg) == 0  # no GPU: no GPU actors
    assert actor_options("ab" * 28, cfg)["num_gpus"] == 0.3333
    cpu = bridge_config(config.from_mapping({"executor": {"kind": "ray", "address": "h:1", "workers_per_gpu": 0, "cpus_per_worker": 2}}), tmp_path)
    assert actors_for({"CPU": 7.0, "GPU": 1.0}, cpu) == 3 and cpu.worker.engine.device == "cpu"
    # no node fits an actor: why, naming the setting (issue 20: CPU-only nodes, the default workers_per_gpu)
    assert placement_problem([{"CPU": 16.0}, {"CPU": 8.0, "GPU": 1.0}], cfg) == ""
    assert "executor.workers_per_gpu = 0" in placement_problem([{"CPU": 16.0}, {"CPU": 8.0}], cfg)
    assert "at most 0.25 of 'GPU'" in placement_problem([{"CPU": 16.0, "GPU": 0.25}], cfg)
    assert "executor.cpus_per_worker = 2" in placement_problem([{"CPU": 1.0}], cpu)
    assert placement_problem([], cfg) == ""
