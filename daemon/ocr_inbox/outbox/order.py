"""Page order of a folder PDF: natural sort of file names, chosen prefixes first."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from natsort import natsort_keygen, ns

# Natural order of file names: p2 before p10, "p1.jpg" before "p1.5.jpg"
# (the extension is not part of the number), case-insensitive.
_natural = natsort_keygen(alg=ns.PATH | ns.IGNORECASE)


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

    return sorted(names, key=lambda n: (rank(n), _natural(n)))
