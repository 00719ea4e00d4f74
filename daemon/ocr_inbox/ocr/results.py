"""What OCR finds on a page: engine-neutral result types.

The engine adapter produces them, the JSON document (``outbox/document.py``)
stores them and the PDF text layer reads them; they live with the OCR side so
that ``outbox`` depends on ``ocr`` and never the reverse. Coordinates are
pixels of the image *after* its EXIF orientation is applied (docs/JSON.md),
also on a page the engine turned to read it (``Page.rotation``).
"""

from __future__ import annotations

import math
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
    #: the recognition model that read the text when it is not the profile's own
    #: (the confidence cascade, ``ocr/refine.py``); empty: the profile's recognizer
    rec: str = ""
    #: words the word lists respelled (``ocr/lexicon.py``): (as the recognizer read it, as written)
    respelled: tuple[tuple[str, str], ...] = ()


class Lines(list[Line]):
    """A page's lines as an engine returns them, and the turn (degrees clockwise) it
    applied to read the page upright; the lines' coordinates are the page's as given."""

    def __init__(self, lines: list[Line], rotation: int = 0) -> None:
        super().__init__(lines)
        self.rotation = rotation


#: PaddleX reads a text box this much taller than long as vertical text, top to bottom
_VERTICAL_RATIO = 1.5


def word_poly(line: Line, word: Word) -> tuple[Point, Point, Point, Point]:
    """The word's quadrilateral on its line: the stretch of the line's polygon the word spans.

    PaddleX cuts a line into words along its polygon's first edge (``poly[0] -> poly[1]``,
    or down ``poly[0] -> poly[3]`` for vertical text) and reports each word as the
    axis-aligned box of that slice, which on a skewed line reaches into the next line.
    The word's share of the edge is read back from the box on the axis the edge mostly
    runs along, and the polygon is cut there, across its full height: same corner
    order as the line's (the text's top-left first), in the same pixels."""
    p0, p1, p2, p3 = line.poly
    length, side = math.dist(p0, p1), math.dist(p0, p3)
    vertical = side > _VERTICAL_RATIO * length
    if vertical:  # vertical: the text runs down poly[0] -> poly[3]
        a0, a1, b0, b1 = p0, p3, p1, p2
    else:
        a0, a1, b0, b1 = p0, p1, p3, p2
    axis = 0 if abs(a1[0] - a0[0]) >= abs(a1[1] - a0[1]) else 1
    span = a1[axis] - a0[axis]
    if abs(span) < 1e-6:
        x0, y0, x1, y1 = word.box
        return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
    lo, hi = word.box[axis], word.box[axis + 2]
    t0, t1 = sorted(min(1.0, max(0.0, (v - a0[axis]) / span)) for v in (lo, hi))

    def at(a: Point, b: Point, t: float) -> Point:
        return (round(a[0] + t * (b[0] - a[0]), 1), round(a[1] + t * (b[1] - a[1]), 1))

    if vertical:  # the cut runs across, from the left edge to the right one
        return (at(a0, a1, t0), at(b0, b1, t0), at(b0, b1, t1), at(a0, a1, t1))
    return (at(a0, a1, t0), at(a0, a1, t1), at(b0, b1, t1), at(b0, b1, t0))


@dataclass(frozen=True)
class Page:
    index: int
    width: int
    height: int
    lines: tuple[Line, ...] = ()
    #: (x, y) dots per inch from the file, or None when it has none
    dpi: tuple[float, float] | None = None
    #: degrees clockwise the image was turned to read it upright (0, 90, 180, 270); the
    #: coordinates stay the image's as stored (``ocr/orientation.py``)
    rotation: int = 0
    #: where the lines come from: "" OCR, "pdf_text" the PDF page's own text (kept, not OCR'd)
    source: str = ""

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)
