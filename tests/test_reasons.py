"""Failure reasons are one enum (``support/reasons.Reason``): every one has advice, and no
producer spells a reason as a loose string that could drift from the list."""

from __future__ import annotations

import ast
from pathlib import Path

from ocr_inbox.support.reasons import ADVICE, Reason, advice

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "ocr_inbox"
#: the calls that create a failure or refusal, and which positional argument is its reason
PRODUCERS = {"BadImage": 0, "Refused": 1, "Failed": 2, "failed": 1, "ImageFailed": 1}


def test_every_reason_has_its_advice_and_nothing_else_does() -> None:
    assert set(ADVICE) == set(Reason)
    assert all(advice(r) == advice(r.value) and "{reason}" not in advice(r) for r in Reason)


def test_no_producer_spells_a_reason_as_a_plain_string() -> None:
    loose = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            at = PRODUCERS.get(name)
            if at is None or len(node.args) <= at:
                continue
            arg = node.args[at]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                loose.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}({arg.value!r})")
    assert not loose, "use support.reasons.Reason:\n" + "\n".join(loose)
