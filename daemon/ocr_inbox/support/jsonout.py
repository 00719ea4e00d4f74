"""The ``--json`` output of every command (``status``, ``search``, ``doctor``): one dump for all.

Names come from whoever writes the inbox. ``json.dumps(ensure_ascii=False)`` escapes only
C0 controls, so a C1 control (U+009B, a terminal's CSI) or a bidi override (U+202E) in a
file name would reach the operator's terminal raw. Here every character that is not
printable (``str.isprintable``, the rule the tables and the journal use) is written as a
JSON ``\\uXXXX`` escape instead: still valid JSON that reads back to the same names,
while other text (accents, CJK) stays readable.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: candidates only: the structure json.dumps writes is ASCII, so anything unprintable is inside a string
_NON_ASCII_OR_DEL = re.compile(r"[^\x20-\x7e\n]")


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    return c if c.isprintable() else json.dumps(c)[1:-1]  # ensure_ascii: "\u009b", surrogate pairs beyond the BMP


def dumps(obj: Any) -> str:
    """``obj`` as indented JSON with unprintable characters escaped."""
    return _NON_ASCII_OR_DEL.sub(_escape, json.dumps(obj, ensure_ascii=False, indent=1))


def emit(obj: Any) -> None:
    """Print ``obj`` as a command's ``--json`` output."""
    print(dumps(obj))
