"""What a Ray actor returns travels as plain data, validated by the bridge (messages.to_plain/from_plain).

A cluster node is another host: the bridge must not unpickle what it sends, and the
job a result belongs to is the one the bridge sent, never the node's claim.
"""

from __future__ import annotations

import json
import pickle

import pytest

from ocr_inbox.executors import messages as m
from ocr_inbox.ocr.results import Line, Page, Word

JOB = m.Job(7, "f/a.png", attempt=2)
PAGE = Page(0, 640, 480, (Line("naïve 姓名 \ud800", 0.93, ((1.0, 2.0), (3.5, 2.0), (3.5, 9.0), (1.0, 9.0)),
                               (Word("naïve", (1.0, 2.0, 2.0, 9.0)),), "rec-x", (("naive", "naïve"),)),), (300.0, 300.0))
#: a PDF page that kept its own text
KEPT = Page(1, 2480, 3508, (), (300.0, 300.0), source="pdf_text")
DONE = m.Done(3, JOB, 1234, 5678, "ab" * 32, {"profile": "fake", "models": {"det": "d"}}, (PAGE, KEPT), 42)


@pytest.mark.parametrize("msg", [
    m.Ready(3, 99, {"profile": "fake", "device": "gpu:0", "models": {"det": "x"}}, 1.5),
    m.BootFailed(3, "no models", fatal=True),
    DONE,
    m.Failed(3, JOB, "decode_failed", "truncated \x1b[31m", transient=True),
])
def test_every_actor_answer_round_trips(msg: m.Plain) -> None:
    data = m.to_plain(msg)
    assert isinstance(data, bytes)
    job = getattr(msg, "job", None)
    assert m.from_plain(data, 3, job) == msg
    assert m.from_plain(m.to_plain(12345), 3) == 12345


def test_the_job_and_slot_are_the_bridges_not_the_actors() -> None:
    plain = json.loads(m.to_plain(DONE))
    plain["job"] = {"job_id": 999, "rel": "elsewhere/secret.png"}  # a claim the format has no place for
    res = m.from_plain(json.dumps(plain).encode(), 5, JOB)
    assert isinstance(res, m.Done) and res.job == JOB and res.slot == 5


class _Bomb:
    def __reduce__(self) -> object:
        raise AssertionError("unpickled")


@pytest.mark.parametrize(("data", "job"), [
    (pickle.dumps(DONE), JOB),  # a pickled message: not plain data
    (b"\x80\x04not json", JOB),
    (json.dumps({"t": "done"}).encode(), JOB),  # fields missing
    (m.to_plain(DONE), None),  # an image's answer to a boot call
    (m.to_plain(m.Ready(1, 2, {}, 0.1)), JOB),  # a boot answer to an image call
    (json.dumps({"t": "rss", "bytes": "1"}).encode(), None),
    (json.dumps({"t": "rss", "bytes": True}).encode(), None),
    (json.dumps({"t": "ready", "pid": 1, "info": {"slot": 5}, "load_s": 1}).encode(), None),  # a reserved log field
    (json.dumps({"t": "ready", "pid": 1, "info": {"x": 1}, "load_s": "NaN"}).encode(), None),
    (b'{"t":"ready","pid":1,"info":{},"load_s":NaN}', None),
    (json.dumps({"t": "failed", "reason": "a b\n", "detail": "", "transient": False}).encode(), JOB),
    (b"[" * 100_000, JOB),  # nesting that would exhaust the parser's recursion
])
def test_anything_else_is_refused(data: bytes, job: m.Job | None) -> None:
    with pytest.raises(m.NotPlain):
        m.from_plain(data, 1, job)


def test_objects_are_refused_unread() -> None:
    with pytest.raises(m.NotPlain):
        m.from_plain(_Bomb(), 1, JOB)  # type: ignore[arg-type]
