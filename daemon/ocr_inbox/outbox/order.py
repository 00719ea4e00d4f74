"""Natural order of file names: the order images are OCR'd in and a folder PDF's pages.

One text key (``natural_key``) serves both: the ledger stores it so ``claim()``
can ``ORDER BY`` it in SQL, and ``page_order`` sorts with it, so the PDF lists
pages in the order they were queued.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

_DIGITS = re.compile(r"\d+")


def natural_key(name: str) -> str:
    """A text key that sorts file names naturally and case-insensitively.

    Digit runs are zero-padded so text comparison orders them by value (p2
    before p10); the extension is compared after the whole stem (``\\0``
    separates them), so ``p1.jpg`` comes before ``p1.5.jpg``.
    """
    stem, ext = os.path.splitext(name.casefold())

    def pad(text: str) -> str:
        return _DIGITS.sub(lambda m: m.group().zfill(20), text)

    return f"{pad(stem)}\0{ext}"


def page_order(names: Iterable[str], first_prefixes: Sequence[str] = ()) -> list[str]:
    """``names`` in page order.

    Names starting with one of ``first_prefixes`` (case-insensitive) come first,
    grouped in the order of that list (a name matching several goes with the
    first); each group, and the rest after them, in natural order. The sort is
    stable: names that compare equal keep their input order.
    """
    prefixes = [p.casefold() for p in first_prefixes if p]

    def rank(name: str) -> int:
        folded = name.casefold()
        return next((i for i, p in enumerate(prefixes) if folded.startswith(p)), len(prefixes))

    return sorted(names, key=lambda n: (rank(n), natural_key(n)))
