"""``ocr-inbox index rebuild``: a new search index of every done image, filled beside the live
one and swapped in by one transaction."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence

from ocr_inbox.ledger import index
from ocr_inbox.ledger.db import LedgerDb
from ocr_inbox.ledger.schema import _DONE, Indexable
from ocr_inbox.ocr.results import Page


class Reindex(LedgerDb):
    """The rebuild of the search index."""

    def indexable(self) -> list[Indexable]:
        """Done images whose text belongs in the search index (a rebuild checks their files)."""
        rows = self._conn.execute(
            f"SELECT rel, size, mtime_ns, source_deleted FROM images WHERE status = {_DONE} ORDER BY rel"
        ).fetchall()
        return [Indexable(rel, size, mtime_ns, bool(deleted)) for rel, size, mtime_ns, deleted in rows]

    def rebuild_index(self, docs: Iterable[tuple[str, Sequence[Page]]], now: float, chunk: int = 200) -> int:
        """A new search index of ``docs`` (rel, pages), swapped in by one transaction; returns images indexed.

        It is filled beside the live one, committed every ``chunk`` images: cut off half-way,
        the live index is untouched (the next rebuild discards the part filled). The caller
        holds the state dir (``open``, not read-only), so no transition runs meanwhile.
        """
        with self._tx() as c:
            index.start_rebuild(c)
        n = 0
        try:
            batch: list[tuple[str, Sequence[Page]]] = []
            for item in docs:
                batch.append(item)
                if len(batch) >= chunk:
                    n += self._index_next(batch)
                    batch = []
            n += self._index_next(batch)
            with self._tx() as c:
                index.swap_in(c, now)
        except BaseException:
            with contextlib.suppress(sqlite3.Error), self._tx() as c:
                index.discard_rebuild(c)
            raise
        return n

    def _index_next(self, batch: list[tuple[str, Sequence[Page]]]) -> int:
        with self._tx() as c:
            for rel, pages in batch:
                index.put(c, rel, pages, index.NEXT)
        return len(batch)
