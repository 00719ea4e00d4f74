"""Every line the daemon writes is one structured record: nested values, library
logging, Python warnings, prints and uncaught exceptions included."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from daemon_harness import cli_env

from ocr_inbox.support import logs

INFO = {
    "profile": "ppocrv6-tiny",
    "models": {"det": "PP-OCRv6_tiny_det", "rec": "PP-OCRv6_tiny_rec"},
    "lexicon": ["en"],
    "refine": {"profile": "ppocrv6-small", "below": 0.93},
}


@pytest.fixture(autouse=True)
def restore_hooks() -> Iterator[None]:
    """configure() installs process-wide hooks: give pytest its own back."""
    saved = (warnings.showwarning, sys.excepthook, threading.excepthook, logging.lastResort)
    with warnings.catch_warnings():
        yield
    warnings.showwarning, sys.excepthook, threading.excepthook, logging.lastResort = saved


def _fields(line: str) -> dict[str, str]:
    return {k: v for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


def _unquote(v: str) -> str:
    return v[1:-1].encode().decode("unicode_escape") if v.startswith('"') else v


@pytest.mark.parametrize("fmt", ["journal", "logfmt"])
def test_nested_values_are_compact_json_not_reprs(fmt: str) -> None:
    buf = io.StringIO()
    logs.configure("info", fmt, stream=buf)
    structlog.get_logger("t").info("worker_ready", slot=0, pages=(1, 2), tags={"b"}, **INFO)
    (line,) = buf.getvalue().splitlines()
    assert "{'" not in line and "['" not in line and "('" not in line, line  # no Python repr
    f = _fields(line)
    assert json.loads(_unquote(f["models"])) == INFO["models"]
    assert json.loads(_unquote(f["refine"])) == INFO["refine"]
    assert json.loads(_unquote(f["lexicon"])) == ["en"]
    assert json.loads(_unquote(f["pages"])) == [1, 2] and json.loads(_unquote(f["tags"])) == ["b"]


def test_nested_values_stay_structure_in_json_and_readable_on_the_console() -> None:
    buf = io.StringIO()
    logs.configure("info", "json", stream=buf)
    structlog.get_logger("t").info("worker_ready", path=Path("/in/a.png"), names={"x\x1by"}, **INFO)
    rec = json.loads(buf.getvalue())
    assert rec["models"] == INFO["models"] and rec["refine"] == INFO["refine"] and rec["lexicon"] == ["en"]
    assert rec["path"] == "/in/a.png" and rec["names"] == ["x\\x1by"]  # str(), not PosixPath('...')
    buf = io.StringIO()
    logs.configure("info", "console", stream=buf)
    structlog.get_logger("t").info("worker_ready", **INFO)
    assert '{"det":"PP-OCRv6_tiny_det","rec":"PP-OCRv6_tiny_rec"}' in buf.getvalue()


def test_a_python_warning_is_one_record_at_warning_priority() -> None:
    buf = io.StringIO()
    logs.configure("info", "journal", stream=buf)
    warnings.simplefilter("always")
    warnings.warn("add_watch failed: wd=-1\nsecond line", RuntimeWarning, stacklevel=1)
    (line,) = buf.getvalue().splitlines()
    assert line.startswith("<4>event=python_warning "), line
    f = _fields(line)
    assert f["category"] == "RuntimeWarning" and "wd=-1" in f["message"] and "\\n" in f["message"]
    assert f["where"].startswith(__file__)


def test_library_logging_is_ours_even_when_it_bypasses_the_root_logger() -> None:
    """PaddleX's logger: ANSI colours, propagate=False and no handler while it imports."""
    buf = io.StringIO()
    logs.configure("info", "journal", stream=buf)
    lib = logging.getLogger("test_lib_no_propagate")
    lib.propagate = False
    try:
        lib.warning("\x1b[33mCreating model: %s\x1b[0m", "PP-OCRv6")
        logging.getLogger("watchdog").error("inotify watch failed")
    finally:
        lib.propagate = True
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("<4>event=library_log ") and "\x1b" not in lines[0] and "[33m" not in lines[0]
    assert _fields(lines[0])["logger"] == "test_lib_no_propagate"
    assert _unquote(_fields(lines[0])["message"]) == "Creating model: PP-OCRv6"
    assert lines[1].startswith("<3>event=library_log ") and _fields(lines[1])["logger"] == "watchdog"


def test_an_adopted_library_logger_leaves_its_own_raw_handler() -> None:
    """`import ray` gives the "ray" logger a raw stderr handler and stops propagation."""
    buf, raw = io.StringIO(), io.StringIO()
    logs.configure("info", "journal", stream=buf)
    lib = logging.getLogger("test_lib_own_handler")
    lib.addHandler(logging.StreamHandler(raw))
    lib.propagate = False
    logs.adopt("test_lib_own_handler")
    lib.warning("Connecting to existing Ray cluster")
    assert raw.getvalue() == ""
    (line,) = buf.getvalue().splitlines()
    assert line.startswith("<4>event=library_log ") and "logger=test_lib_own_handler" in line


def test_prints_become_records_one_per_line() -> None:
    buf = io.StringIO()
    logs.configure("info", "journal", stream=buf)
    out = logs.LineLogger("worker.stdout")
    print("\x1b[32mloading\x1b[0m", file=out)
    out.write("two\nlines and a ")
    out.write("tail")
    out.flush()
    lines = buf.getvalue().splitlines()
    assert [_unquote(_fields(x)["message"]) for x in lines] == ["loading", "two", "lines and a tail"]
    assert all(x.startswith("<6>event=library_output ") for x in lines)


def test_an_uncaught_exception_in_a_thread_is_one_record() -> None:
    buf = io.StringIO()
    logs.configure("info", "journal", stream=buf)

    def boom() -> None:
        raise ValueError("bad\nvalue")

    t = threading.Thread(target=boom, name="decode")
    t.start()
    t.join()
    (line,) = buf.getvalue().splitlines()
    assert line.startswith("<2>event=uncaught_exception ") and "thread=decode" in line
    assert "Traceback" in line and "ValueError: bad" in line and "value\"" in line


def test_a_process_writes_nothing_raw(tmp_path: Path) -> None:
    """A real interpreter: a warning, a print routed like a worker's, then an uncaught
    exception in the main thread and one in a crash_logged child entry. Every line of
    stderr is one record with a priority; no traceback of several lines, no ANSI."""
    script = tmp_path / "child.py"
    script.write_text(
        "import sys, warnings, logging\n"
        "from ocr_inbox.support import logs\n"
        "logs.configure('info', 'journal')\n"
        "warnings.warn('DecompressionBombWarning-like', UserWarning)\n"
        "sys.stdout = logs.LineLogger('worker.stdout')\n"
        "print('\\x1b[1mCreating model\\x1b[0m')\n"
        "@logs.crash_logged\n"
        "def entry():\n"
        "    raise RuntimeError('in a child entry')\n"
        "if sys.argv[1] == 'entry':\n"
        "    entry()\n"
        "raise KeyError('main thread')\n"
    )
    for mode, want_rc in (("entry", 1), ("main", 1)):
        res = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, env=cli_env(), timeout=60)
        assert res.returncode == want_rc
        assert res.stdout == ""
        lines = res.stderr.splitlines()
        assert lines and all(re.match(r"<[2-7]>event=\w+ ", x) for x in lines), res.stderr
        assert "\x1b" not in res.stderr
        events = [_fields(x)["event"] for x in lines]
        assert events == ["python_warning", "library_output", "uncaught_exception"], lines
