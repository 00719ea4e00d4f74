"""What OCR produces for one image: pages of lines, each with its polygon, score and words.

Engine-neutral (the engine adapter converts PaddleX's output into these); the
JSON document (``outbox/document.py``) and the PDF text layer read them.
"""

from __future__ import annotations

from dataclasses import dataclass

Point = tuple[float, float]


@dataclass(frozen=True)
class Word:
    text: str
    #: axis-aligned [x0, y0, x1, y1] in page pixels
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Line:
    text: str
    score: float
    #: four corners, clockwise from the one nearest the image top-left (docs/JSON.md)
    poly: tuple[Point, Point, Point, Point]
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Page:
    index: int
    width: int
    height: int
    lines: tuple[Line, ...] = ()
    #: (x, y) dots per inch from the file, or None when it has none
    dpi: tuple[float, float] | None = None

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)
