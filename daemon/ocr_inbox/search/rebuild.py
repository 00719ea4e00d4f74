"""``ocr-inbox index rebuild``: the search index again, from the outbox JSON of the ledger's done images.

For an outbox OCR'd before the index existed (an upgraded ledger), after a
restore, or to be sure. It needs the state dir to itself: the daemon (or an
``ocr-inbox ocr`` run) is the ledger's one writer, and the lock says whether
one runs; stop it first (searching keeps working meanwhile, on the old index).
The new index is filled beside the old one and swapped in by one transaction
(``Ledger.rebuild_index``): interrupted, it leaves the old index as it was.

Each done image's JSON must be for the version the ledger recorded (size and
mtime); one that is missing, unreadable or for another version is left out
and reported (the daemon OCRs such an image again once its file changes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import structlog

from ocr_inbox.ledger import Indexable, Ledger, in_use
from ocr_inbox.ocr.results import Page
from ocr_inbox.outbox import document, names
from ocr_inbox.search.scope import Scope
from ocr_inbox.support.errors import BadArguments, StateError
from ocr_inbox.support.progress import Progress

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Rebuilt:
    images: int
    pages: int
    #: done images whose JSON was missing, unreadable or for another version
    left_out: tuple[str, ...]
    seconds: float


def rebuild(scope: Scope, progress: bool | None = None) -> Rebuilt:
    if in_use(scope.state_dir):
        raise StateError(
            f"an ocr-inbox daemon (or `ocr-inbox ocr` run) is using {scope.state_dir}: stop it "
            "(systemctl stop ocr-inbox), run `ocr-inbox index rebuild`, then start it again; "
            "search keeps working on the old index meanwhile"
        )
    if not scope.state_dir.is_dir():
        raise StateError(f"no ledger in {scope.state_dir}: has the daemon run with this state_dir?")
    t0 = time.monotonic()
    with Ledger.open(scope.state_dir) as ledger:
        todo = ledger.indexable()
        log.info("index_rebuild_started", ledger=str(ledger.path), images=len(todo), outbox=str(scope.outbox))
        bar = Progress(len(todo), progress, label="index")
        left_out: list[str] = []
        pages = 0

        def docs() -> Iterator[tuple[str, Sequence[Page]]]:
            nonlocal pages
            for row in todo:
                doc = _current(scope, row)
                bar.advance(doc is not None)
                if doc is None:
                    left_out.append(row.rel)
                    log.warning("index_json_unusable", path=row.rel,
                                json=str(names.json_path_for(scope.outbox, row.rel)),
                                reason="missing, unreadable or not for the version the ledger recorded")
                    continue
                pages += len(doc.pages)
                yield row.rel, doc.pages
            if todo and len(left_out) == len(todo):
                # a wrong outbox, not lost JSON: keep the index there is (raised before the swap)
                raise BadArguments(
                    f"{scope.outbox} holds none of the {len(todo)} done images' JSON: is it the right outbox "
                    "(paths.outbox, or --outbox for a run)? The index was left as it was"
                )

        try:
            images = ledger.rebuild_index(docs(), time.time())
        finally:
            bar.close()
    done = Rebuilt(images, pages, tuple(left_out), time.monotonic() - t0)
    log.info("index_rebuilt", images=done.images, pages=done.pages, left_out=len(done.left_out),
             seconds=round(done.seconds, 2))
    return done


def _current(scope: Scope, row: Indexable) -> document.Document | None:
    return document.read_current(names.json_path_for(scope.outbox, row.rel), row.size, row.mtime_ns)
