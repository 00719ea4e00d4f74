"""What OCR finds on a page: engine-neutral result types.

The engine adapter produces them, the JSON document (``outbox/document.py``)
stores them and the PDF text layer reads them; they live with the OCR side so
that ``outbox`` depends on ``ocr`` and never the reverse. Coordinates are
pixels of the image *after* its EXIF orientation is applied (docs/JSON.md),
also on a page the engine turned to read it (``Page.rotation``).
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

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)
