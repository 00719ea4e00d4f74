"""Every command's --help says what it does, with an example; every argument has help."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest
from daemon_harness import cli_env

from ocr_inbox import cli
from ocr_inbox.support.errors import ExitCode

COMMANDS = [["run"], ["ocr"], ["pdf"], ["status"], ["retry"], ["models"], ["models", "install"], ["models", "list"], ["doctor"]]


def _help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})  # type: ignore[return-value]


def test_top_level_help_lists_commands_and_exit_statuses() -> None:
    res = subprocess.run([sys.executable, "-m", "ocr_inbox", "--help"], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert res.returncode == 0
    out = res.stdout
    assert "only place" not in out and "exceptions become exit codes" not in out  # not the module's docstring
    assert out.index("OCR image folders") < out.index("commands:")
    commands = out[out.index("commands:") :]
    for name in _subparsers(cli.build_parser()):
        assert re.search(rf"^    {name} +\w+", commands, re.MULTILINE), name  # with its one-line summary
    for code in ExitCode:
        assert f"  {int(code):>3}  " in out, code
    assert "OCR_INBOX_MODELS_DIR" in out and "OCR_INBOX_CONFIG" in out


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_each_command_says_what_it_does_with_an_example(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    out = _help(capsys, argv)
    usage, _, rest = out.partition("\n\n")
    assert usage.startswith(f"usage: ocr-inbox {' '.join(argv)}")
    description = rest.split("\n\n")[0]
    assert len(description) > 20 and description[0].isupper(), description
    assert "examples:\n  ocr-inbox " + argv[0] in out
    assert "exit codes" not in out.lower() and "only place" not in out


def test_every_argument_has_help() -> None:
    missing = []
    stack = [("ocr-inbox", cli.build_parser())]
    while stack:
        name, parser = stack.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend((f"{name} {n}", p) for n, p in action.choices.items())
            elif not action.help:
                missing.append(f"{name}: {action.dest}")
    assert not missing
