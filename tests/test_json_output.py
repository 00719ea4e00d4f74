"""Every ``--json`` output escapes control and bidi characters that come from file names.

A name may hold a C1 control (U+009B: a terminal's CSI) or a bidi override (U+202E);
the tables write them out, and so must ``--json``: as ``\\uXXXX`` escapes, still JSON
that reads back to the very same names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from ocr_inbox import config
from ocr_inbox.commands import doctor, status
from ocr_inbox.executors.base import WorkerView
from ocr_inbox.ledger import Ledger
from ocr_inbox.ocr.results import Line, Page
from ocr_inbox.search import show
from ocr_inbox.service import access, live
from ocr_inbox.support import jsonout

HOSTILE = "a\u009b31m\u202eevil\u2066gpj.png"
RAW = ("\u009b", "\u202e", "\u2066")


def _clean(out: str) -> object:
    assert not any(c in out for c in RAW), out
    return json.loads(out)


@pytest.mark.parametrize("value", [HOSTILE, "\x7f", "\U000e0001 tag", "\u2028line\u2029", "naïve 姓名 ok", "tab\tnl\n"])
def test_the_dump_round_trips_and_keeps_printable_text(value: str) -> None:
    out = jsonout.dumps({"k": [value]})
    assert json.loads(out) == {"k": [value]}
    assert out.isascii() == value.isascii() or not value.isprintable()
    assert all(c.isprintable() or c in "\n" for c in out)
    if value == "naïve 姓名 ok":
        assert value in out  # readable text is not escaped


def _state(tmp_path: Path) -> config.Settings:
    state = tmp_path / "state"
    with Ledger.open(state) as led:
        for rel in (f"f/{HOSTILE}", f"f/bad{HOSTILE}"):
            led.observe(rel, 1, 1, now=1.0)
        claimed = [r.rel for r in led.claim(2, now=2.0)]
        page = Page(index=0, width=100, height=100, lines=(Line("findme", 0.9, ((1.0, 1.0), (9.0, 1.0), (9.0, 9.0), (1.0, 9.0))),))
        assert led.done(f"f/{HOSTILE}", 1, 1, f"f/{HOSTILE}.json", 5, now=3.0, pages=(page,))
        assert led.failed(f"f/bad{HOSTILE}", "decode_failed", f"cannot read {HOSTILE}", now=3.0, retry=False)
        assert len(claimed) == 2
    live.write(state, "local", [WorkerView(1, f"node{HOSTILE}", "cpu", "idle", 1, 0)], f"note {HOSTILE}", "")
    return config.load(None, {"paths": {"state_dir": state, "inbox": tmp_path / "in", "outbox": tmp_path / "out"}})


def test_status_json_escapes_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with structlog.testing.capture_logs():  # the log lines are not the output
        status.show(_state(tmp_path), as_json=True)
    data = _clean(capsys.readouterr().out)
    assert isinstance(data, dict)
    assert {f["rel"] for f in data["failures"]} == {f"f/bad{HOSTILE}"}
    assert f"cannot read {HOSTILE}" in {f["detail"] for f in data["failures"]}


def test_search_json_escapes_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with structlog.testing.capture_logs():
        show.run(_state(tmp_path), "findme", as_json=True)
    data = _clean(capsys.readouterr().out)
    assert isinstance(data, dict)
    assert [r["image"] for r in data["results"]] == [f"f/{HOSTILE}"]


def test_doctor_json_escapes_names(tmp_path: Path) -> None:
    inbox = tmp_path / f"in{HOSTILE}"
    s = config.load(None, {"paths": {"state_dir": tmp_path / "state", "inbox": inbox, "outbox": tmp_path / "out"}})
    checks = doctor.check_permissions(s, access.Identity.current())
    data = _clean(doctor.render_json(checks))
    assert isinstance(data, dict)
    assert any(HOSTILE in c["detail"] for c in data["checks"])
