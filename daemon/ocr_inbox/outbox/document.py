"""The per-image JSON document: the contract between OCR and everything after it.

See docs/JSON.md. One file per source image at
``OUTBOX/<relative dir>/<image file name>.json`` (``names.json_path_for``).
Coordinates are pixels of the image as stored on disk *after* its EXIF
orientation is applied. The page, line and word types are ``ocr.results``'.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ocr_inbox.ocr.results import Line, Page, Word, word_poly
from ocr_inbox.support import atomic

#: 2: lines may carry ``rec`` (the cascade's recognizer), ``engine`` may carry ``refine``;
#: 3: lines may carry ``respelled`` (the word lists' changes); 4: pages may carry
#: ``rotation`` (turned to be read; the boxes stay the stored image's), words ``poly`` (the
#: word's stretch of its line's polygon, derived on writing). Each only adds
#: optional fields, so a reader of an earlier schema reads the later ones (docs/JSON.md)
SCHEMA_VERSION = 4


@dataclass(frozen=True)
class SourceInfo:
    path: str  # relative to the inbox, POSIX separators
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Document:
    source: SourceInfo
    engine: dict[str, Any]
    pages: tuple[Page, ...]
    elapsed_ms: int
    schema: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(p.text for p in self.pages)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        for page, pg in zip(d["pages"], self.pages, strict=True):
            if not page["rotation"]:
                del page["rotation"]  # read as it lies
            if not page["source"]:
                del page["source"]  # OCR'd
            for line, ln in zip(page["lines"], pg.lines, strict=True):
                for word, w in zip(line["words"], ln.words, strict=True):
                    word["poly"] = [list(p) for p in word_poly(ln, w)]
                if not line["rec"]:
                    del line["rec"]  # the profile's own recognizer: engine.models.rec says which
                if not line["respelled"]:
                    del line["respelled"]
        return d


def write(dest: Path, doc: Document) -> None:
    atomic.write_json(dest, doc.to_json())


def _box(b: Any) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in b)
    return (x0, y0, x1, y1)


def _line(d: dict[str, Any]) -> Line:
    poly = tuple((float(x), float(y)) for x, y in d["poly"])
    if len(poly) != 4:
        raise ValueError("poly must have 4 points")
    words = tuple(Word(w["text"], _box(w["box"])) for w in d.get("words", ()))
    respelled = tuple((str(read), str(written)) for read, written in d.get("respelled", ()))
    return Line(text=str(d["text"]), score=float(d["score"]), poly=poly, words=words, rec=str(d.get("rec", "")), respelled=respelled)


def from_json(obj: dict[str, Any]) -> Document:
    src = obj["source"]
    pages = tuple(
        Page(
            index=int(p["index"]),
            width=int(p["width"]),
            height=int(p["height"]),
            lines=tuple(_line(ln) for ln in p.get("lines", ())),
            dpi=tuple(p["dpi"]) if p.get("dpi") else None,
            rotation=int(p.get("rotation", 0)),
            source=str(p.get("source", "")),
        )
        for p in obj["pages"]
    )
    known = {"source", "engine", "pages", "elapsed_ms", "schema"}
    return Document(
        source=SourceInfo(src["path"], int(src["size"]), int(src["mtime_ns"]), src["sha256"]),
        engine=dict(obj["engine"]),
        pages=pages,
        elapsed_ms=int(obj["elapsed_ms"]),
        schema=int(obj.get("schema", SCHEMA_VERSION)),
        extra={k: v for k, v in obj.items() if k not in known},
    )


def read(path: Path) -> Document:
    with open(path, encoding="utf-8") as fh:
        return from_json(json.load(fh))


def read_current(json_file: Path, size: int, mtime_ns: int) -> Document | None:
    """``json_file``'s document if it is valid and for the source version (``size``, ``mtime_ns``), else None.

    Opened non-blocking and read only if it is a regular file: a FIFO planted in the
    outbox must not hang the daemon.
    """
    try:
        fd = os.open(json_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, encoding="utf-8") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            doc = from_json(json.load(fh))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return doc if (doc.source.size, doc.source.mtime_ns) == (size, mtime_ns) else None
