"""The Ray executor: the same OCR worker code, as Ray actors on a cluster of hosts.

Three processes, one module each:

- ``executor.py``, in the daemon's process: ``RayExecutor`` implements ``base.Executor``
  from a mirror of the actors (booting / idle / busy and the batch each holds). It never
  imports Ray: a Ray driver ends its own process when the cluster's GCS stays
  unreachable, and the daemon must outlive its cluster.
- ``bridge.py``, the *bridge* (a child process of the daemon, ``bridge_main``), is the Ray
  driver: it connects to ``[executor] address`` with the token of ``token_file``, creates
  actors for every node (and for each node that joins), sends each batch's images as one
  actor call per image, and runs our own dispatcher loop over ``ray.wait`` (not Ray's
  ActorPool, which breaks on a dead actor) with a deadline per busy actor.
- ``actor.py``, in a Ray worker process on a cluster node: ``OcrActor``, the local
  worker's boot and per-image code behind calls that return plain data.

Between them: ``wire.py`` (what the bridge and the daemon tell each other, and the
bridge's configuration) and ``plan.py`` (from the settings to that configuration, how
many actors a node gets, the token file's check: no Ray needed).

What dispatch sees is what the local pool gives it: ``Ready``, ``Done`` (the pages;
dispatch writes the JSON), ``Failed``, ``BatchDone`` and ``WorkerLost``.

Recycling, as the local pool does it (``pool.max_images_per_worker``,
``pool.max_worker_rss_mb``): after each batch the actor reports its resident memory
(one more call, queued behind the batch's images); an actor past either limit is
killed between two batches, holding no work, and a fresh one is placed on its node.

Who is blamed when an actor dies. An actor runs one call at a time, in the order it
got them, so the first unfinished image of its batch is the one it was working on:
that one is the suspect (``WorkerLost.in_flight``; the poison rule applies across
the cluster, because dispatch counts attempts per image, not per worker) and the rest
are ``unstarted``. An actor that died *between* two images, or while idle, is
noticed only at its next call: that image is then blamed once without cause (it is
retried; ``pool.max_attempts`` >= 2 keeps it from quarantine). When the whole
cluster is lost (the bridge exits), no image is blamed: every batch goes back to
the queue and the executor reconnects by itself, with a backoff.

Nothing is imported here: the daemon imports ``executor`` (no Ray), a node ``actor``.
"""
