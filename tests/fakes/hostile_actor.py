"""The bridge against an actor that returns what a hostile cluster node could.

Run by test_ray.py as ``python hostile_actor.py ADDRESS MODE MARK INBOX``, with the
cluster's token in the environment. It drives the real bridge (``_Bridge``, connected
to the real cluster) with one stand-in actor in place of the OCR actors, hands it a
batch of two images and prints, one JSON object a line, what the bridge sent the
daemon about them. Modes:

- ``pickle_bomb``: ``ocr`` returns an object whose unpickling creates the file MARK
  (code a node chose, run in the bridge);
- ``other_job``: ``ocr`` returns a well-formed result that claims another image
  (job 999), pickled as a Ray actor would return it;
- ``plain_other_job``: the plain form, with a job id of its own added;
- ``raises``: ``ocr`` raises (Ray keeps the exception pickled).
"""

from __future__ import annotations

import json
import os
import sys
import time
from multiprocessing import Pipe
from typing import Any

import ray

from ocr_inbox import config
from ocr_inbox.executors import messages as m
from ocr_inbox.executors.ray import bridge, plan, wire

ADDRESS, MODE, MARK, INBOX = sys.argv[1:5]


class Bomb:
    def __reduce__(self) -> Any:
        return (open, (MARK, "w"))  # unpickling calls open(MARK, "w")


class Hostile:
    def ocr(self, job: m.Job, file: Any) -> Any:
        if MODE == "pickle_bomb":
            return Bomb()
        if MODE == "other_job":
            return m.Done(1, m.Job(999, "elsewhere/secret.png"), 1, 1, "0" * 64, {}, (), 1)
        if MODE == "plain_other_job":
            plain = json.loads(m.to_plain(m.Failed(1, job, "decode_failed", "x")))
            plain["job"] = {"job_id": 999, "rel": "elsewhere/secret.png"}
            return json.dumps(plain).encode()
        raise RuntimeError("raised in the actor")

    def rss(self) -> Any:
        return m.to_plain(1) if hasattr(m, "to_plain") else 1  # (the latter: the code before plain data)


def main() -> None:
    bridge._connect_env(wire.BridgeConfig(ADDRESS, os.environ["RAY_AUTH_TOKEN_PATH"], 0, 0, "", "paths", None, 1, None, "info", "logfmt"))  # type: ignore[arg-type]
    ray.init(address=ADDRESS, namespace="ocr-inbox-hostile", log_to_driver=False, logging_level="ERROR")
    s = config.from_mapping({"executor": {"kind": "ray", "address": ADDRESS, "transport": "paths", "workers_per_gpu": 0},
                             "ocr": {"engine_plugin": "fake_engine:create"}})
    cfg = plan.bridge_config(s, __import__("pathlib").Path(INBOX))
    parent, child = Pipe()
    br = bridge._Bridge(child, cfg)
    br.next_scan = float("inf")  # no OCR actors: only the stand-in
    handle = ray.remote(Hostile).options(num_cpus=0, max_restarts=0, max_task_retries=0).remote()
    br.actors[1] = bridge._Actor(1, "stand-in", "stand-in", handle, None, ready=True)
    jobs = (m.Job(1, "f/a.png"), m.Job(2, "f/b.png"))
    br.submit(1, m.Batch(1, jobs))
    end = time.monotonic() + 120
    while 1 in br.actors and br.actors[1].batch is not None and time.monotonic() < end:
        br.step()
    while parent.poll():
        ev = parent.recv()
        named = [j for j in (getattr(ev, "job", None), getattr(ev, "in_flight", None), *getattr(ev, "unstarted", ())) if j]
        print(json.dumps({"event": type(ev).__name__, "jobs": [[j.job_id, j.rel] for j in named],
                          "cause": getattr(ev, "cause", "")}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
