"""The command line surface: pdf, models, devices, log formats."""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import shutil
import sys
from pathlib import Path

import pymupdf
import pytest
import structlog
from conftest import CORPUS, run_cli

from ocr_inbox.support import logs

pytestmark = [pytest.mark.corpus]


def test_pdf_command_with_json_dir_and_mirrored(corpus_ocr: tuple[Path, Path], tmp_path: Path, models_dir: Path) -> None:
    inbox, outbox = corpus_ocr
    out = tmp_path / "zh.pdf"
    res = run_cli("pdf", inbox / "xfund_zh", outbox / "xfund_zh", out, state_dir=tmp_path, models=models_dir)
    assert res.returncode == 0, res.stderr
    with pymupdf.open(out) as doc:
        assert doc.page_count == 1 and "纾困申请表" in doc[0].get_text().replace(" ", "")
        assert doc.metadata["title"] == "xfund_zh" and doc.metadata["producer"].startswith("ocr-inbox ")
    out2 = tmp_path / "en.pdf"
    res = run_cli("pdf", inbox / "tesseract_test", out2, "--inbox", inbox, "--outbox", outbox, state_dir=tmp_path, models=models_dir)
    assert res.returncode == 0, res.stderr
    with pymupdf.open(out2) as doc:
        assert "quick brown dog" in doc[0].get_text()
    res = run_cli("pdf", tmp_path / "nowhere", out2, "--inbox", inbox, "--outbox", outbox, state_dir=tmp_path, models=models_dir)
    assert res.returncode == 2 and "not inside the inbox" in res.stderr


def test_models_list_and_version(tmp_path: Path, models_dir: Path) -> None:
    res = run_cli("models", "list", state_dir=tmp_path, models=models_dir)
    assert res.returncode == 0
    rows = {line.split()[0]: line for line in res.stdout.splitlines()}
    assert "installed" in rows["ppocrv6-tiny"] and "(configured)" in rows["ppocrv6-tiny"]
    assert "hub" in rows["paddlex-ppocrv5-server"]
    res = run_cli("--version", state_dir=tmp_path, models=models_dir)
    assert res.stdout.startswith("ocr-inbox ")


def _cuda_present() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


@pytest.mark.skipif(_cuda_present(), reason="this machine has a GPU")
@pytest.mark.parametrize("profile", ["ppocrv6-tiny", "ppocrv4-mobile"])
def test_unavailable_gpu_is_a_clear_error(profile: str, tmp_path: Path, models_dir: Path) -> None:
    if profile == "ppocrv4-mobile" and importlib.util.find_spec("paddle") is None:
        pytest.skip("paddlepaddle is not installed")
    (tmp_path / "in").mkdir()
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", tmp_path / "in")
    args = ("ocr", tmp_path / "in", tmp_path / "out", "--device", "gpu:0", "--profile", profile)
    res = run_cli(*args, state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 4, res.stderr  # not a silent fall-back to the CPU
    assert "ocr.devices contains 'gpu:0'" in res.stderr and 'devices = [\\"cpu\\"]' in res.stderr
    assert not (tmp_path / "out" / "helloworld.jpg.json").exists()


def test_journal_lines_carry_priorities_and_escape_names() -> None:
    buf = io.StringIO()
    logs.configure("info", "journal", stream=buf)
    structlog.get_logger("t").warning("image_failed", path="evil\nevent=forged \x1b[31mred")
    structlog.get_logger("t").info("image_done", path="a b.png")
    logging.getLogger("paddlex").error("library says %s", "hi")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("<4>event=image_failed ") and "\\n" in lines[0] and "\x1b" not in lines[0]
    assert lines[1].startswith("<6>event=image_done ") and 'path="a b.png"' in lines[1]
    assert lines[2].startswith("<3>")
    assert "timestamp=" not in lines[1]  # journald stamps lines itself


@pytest.mark.parametrize("fmt", ["journal", "logfmt", "console", "json"])
def test_names_cannot_reach_the_terminal_in_any_format(fmt: str) -> None:
    """A name arrives as a str, a Path, inside an exception or a library's message:
    no raw control character (ESC, CSI, newline, bidi override) in any format."""
    buf = io.StringIO()
    logs.configure("info", fmt, stream=buf)
    evil = "a\x1b[31m\nevent=forged \u202e\x9bz"
    structlog.get_logger("t").warning("image_failed", path=evil, file=Path(evil), error=OSError(2, evil))
    logging.getLogger("paddlex").error("cannot read %s", evil)
    out = buf.getvalue()
    assert len(out.splitlines()) == 2, out
    assert not any(c in out for c in "\x1b\x9b\u202e\r"), out


def test_auto_format_detects_the_journal(tmp_path: Path) -> None:
    f = open(tmp_path / "stream", "w")
    st = os.fstat(f.fileno())
    os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    try:
        assert logs.resolve_format("auto", f) == "journal"
        assert logs.resolve_format("auto", sys.__stderr__) != "journal"
    finally:
        del os.environ["JOURNAL_STREAM"]
        f.close()
    assert logs.resolve_format("auto", io.StringIO()) == "logfmt"


def test_a_search_word_that_starts_with_a_dash_is_a_word_not_an_option() -> None:
    """`ocr-inbox search invoice -draft --json`: the query's words, options before or after them."""
    from ocr_inbox import cli

    ap = cli.build_parser()

    def parsed(*argv: str) -> tuple[list[str], str | None, int, bool]:
        ns = ap.parse_args(cli.search_words_last(ap, list(argv)))
        return ns.query, ns.folder, ns.limit, ns.json

    assert parsed("search", "invoice", "-draft", "--json") == (["invoice", "-draft"], None, 20, True)
    assert parsed("search", "--folder", "forms", "-x", "a", "OR", "b", "--lim", "3") == (["-x", "a", "OR", "b"], "forms", 3, False)
    assert parsed("search", "--folder=-odd", "q") == (["q"], "-odd", 20, False)
    assert parsed("search", "q", "--", "--json") == (["q", "--json"], None, 20, False)  # after --: words
    assert cli.search_words_last(ap, ["ocr", "-x"]) == ["ocr", "-x"]  # other commands as typed
    with pytest.raises(SystemExit):
        ap.parse_args(cli.search_words_last(ap, ["search", "q", "--bogus"]))  # an unknown --option stays an error
