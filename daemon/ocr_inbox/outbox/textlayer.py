"""The invisible text layer of one page: geometry and PDF content stream.

Pure functions of a :class:`~ocr_inbox.ocr.results.Page`: no PDF library.
Every text line becomes glyphs of the glyphless font (see ``font.py``) drawn in
render mode 3 (invisible) along the line's polygon:

* the baseline runs along the polygon's bottom edge, raised by the font's
  descent so the glyph boxes (and so search highlights) fill the polygon;
  rotated and skewed polygons give a rotated / sheared text matrix;
* with word boxes, each word is placed on its box and stretched with ``Tz``
  to the box's width; the characters between words in the recognised line text
  (spaces for Latin, nothing between CJK characters) are drawn in the gap, so
  extraction yields exactly the line text and highlights cover the word;
* without word boxes the whole line text is stretched over the polygon.

Lines are emitted in reading order (:func:`reading_order`) so copy/paste and
extraction follow it.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ocr_inbox.ocr.results import Line, Page, Point
from ocr_inbox.outbox import font

Vec = tuple[float, float]

#: fraction of the font size below the baseline (the font's descent)
_DESCENT = -font.DESCENT / font.UNITS_PER_EM
_ADVANCE = font.GLYPH_ADVANCE / font.UNITS_PER_EM
#: a drawn run never gets narrower than this fraction of its natural width
_MIN_STRETCH = 0.02


@dataclass(frozen=True)
class PixelToPoint:
    """Page pixels (origin top-left, y down) -> PDF user space points (y up).

    The scale comes from the page sizes, not from a DPI, so a JSON page is
    always mapped onto the whole PDF page whatever resolution the image has.
    """

    sx: float
    sy: float
    page_height: float

    @classmethod
    def fit(cls, width_px: float, height_px: float, width_pt: float, height_pt: float) -> PixelToPoint:
        return cls(width_pt / width_px, height_pt / height_px, height_pt)

    def __call__(self, p: Point) -> Vec:
        return (p[0] * self.sx, self.page_height - p[1] * self.sy)


@dataclass(frozen=True)
class Run:
    """``text`` drawn from ``start`` to ``end`` points along the line's baseline."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class LineFrame:
    """A line's text coordinate system in points.

    ``along`` is the unit baseline direction; ``up`` is the polygon's side
    direction scaled so that one unit of it is one unit of height (a sheared
    polygon gives an ``up`` that is not perpendicular to ``along``).
    """

    origin: Vec  # bottom-left corner of the polygon
    along: Vec
    up: Vec
    height: float
    length: float

    def position(self, p: Vec) -> float:
        """Distance along the baseline of point ``p``, measured in this frame."""
        v = _sub(p, self.origin)
        normal = (-self.along[1], self.along[0])
        return _dot(v, self.along) - _dot(v, normal) * _dot(self.up, self.along)


def _sub(a: Vec, b: Vec) -> Vec:
    return (a[0] - b[0], a[1] - b[1])


def _add(a: Vec, b: Vec) -> Vec:
    return (a[0] + b[0], a[1] + b[1])


def _scale(a: Vec, k: float) -> Vec:
    return (a[0] * k, a[1] * k)


def _dot(a: Vec, b: Vec) -> float:
    return a[0] * b[0] + a[1] * b[1]


def _unit(a: Vec) -> Vec | None:
    n = math.hypot(*a)
    return (a[0] / n, a[1] / n) if n > 1e-9 else None


def _aabb(poly: Sequence[Point]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in poly]
    ys = [p[1] for p in poly]
    return (min(xs), min(ys), max(xs), max(ys))


def _frame_of(corners: Sequence[Vec]) -> LineFrame | None:
    """Frame of a polygon (tl, tr, br, bl in reading direction, in points)."""
    tl, tr, br, bl = corners
    along = _unit(_add(_sub(tr, tl), _sub(br, bl)))
    if along is None:
        return None
    normal = (-along[1], along[0])  # 90 degrees counter-clockwise: "up" for y-up space
    side = _add(_sub(tl, bl), _sub(tr, br))
    height = _dot(side, normal) / 2
    if height <= 1e-6:
        return None
    up = _scale(side, 1 / (2 * height))
    frame = LineFrame(origin=bl, along=along, up=up, height=height, length=0.0)
    length = max(frame.position(tr), frame.position(br))
    if length <= 1e-6:
        return None
    return LineFrame(bl, along, up, height, length)


#: PaddleX reads a text box at least this much taller than long as vertical
#: text (it turns the crop by 90 degrees before recognition)
_VERTICAL_RATIO = 1.5


def line_frame(line: Line, tf: PixelToPoint) -> LineFrame | None:
    """The line's frame from its polygon; its bounding box when the polygon is degenerate.

    A polygon much taller than long holds vertical text running top to bottom
    (how PaddleX recognised it): its corners are turned by one so the
    baseline runs down the long side instead of squeezing the text across.
    """
    corners = [tf(p) for p in line.poly]
    frame = _frame_of(corners)
    if frame is None:
        x0, y0, x1, y1 = _aabb(line.poly)
        corners = [tf((x0, y0)), tf((x1, y0)), tf((x1, y1)), tf((x0, y1))]
        frame = _frame_of(corners)
    if frame is not None and frame.height >= _VERTICAL_RATIO * frame.length:
        frame = _frame_of(corners[1:] + corners[:1]) or frame
    return frame


# Scripts written without spaces between words: never invent one there.
_NO_SPACE_RANGES = (
    (0x2E80, 0x2FDF),  # CJK radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x31FF),  # Bopomofo, Katakana extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # full-width and half-width forms
    (0x0E00, 0x0E7F),  # Thai
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)


def _no_space(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _NO_SPACE_RANGES)


def _separators(text: str, words: Sequence[str]) -> list[str] | None:
    """The text of ``text`` before, between and after ``words``; None when they don't match it."""
    seps, pos = [], 0
    for w in words:
        i = text.find(w, pos)
        if i < 0:
            return None
        seps.append(text[pos:i])
        pos = i + len(w)
    seps.append(text[pos:])
    return seps


def _guessed_separators(words: Sequence[str]) -> list[str]:
    """Fallback when the words don't spell the line text: a space between Latin words only."""
    gaps = ["" if _no_space(a[-1]) or _no_space(b[0]) else " " for a, b in itertools.pairwise(words)]
    return ["", *gaps, ""]


def word_runs(line: Line, frame: LineFrame, tf: PixelToPoint) -> list[Run]:
    """Runs for one line: a run per word box and one per non-empty gap between them."""
    placed = []
    for w in line.words:
        text = w.text.strip()
        if not text:
            continue
        x0, y0, x1, y1 = w.box
        ts = [frame.position(tf(p)) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
        placed.append((text, min(ts), max(ts)))
    if not placed:
        return [Run(line.text.strip(), 0.0, frame.length)] if line.text.strip() else []

    texts = [t for t, _, _ in placed]
    seps = _separators(line.text, texts) or _guessed_separators(texts)
    runs: list[Run] = []
    last = len(placed) - 1
    for i, (text, start, end) in enumerate(placed):
        if i == 0 and seps[0].strip():
            text = seps[0].strip() + text
        if i == last:
            if seps[-1].strip():
                text += seps[-1].strip()
            runs.append(Run(text, start, end))
            break
        gap, next_start = seps[i + 1], placed[i + 1][1]
        if gap:
            runs.append(Run(text, start, end))
            runs.append(Run(gap, end, max(next_start, end)))
        else:
            # Adjacent runs (CJK characters): close the gap so no extractor
            # sees room for a space that isn't in the text.
            runs.append(Run(text, start, max(end, next_start)))
    return runs


def num(v: float, digits: int = 2) -> str:
    """``v`` as a short PDF number: at most ``digits`` decimals, no trailing zeros, never ``-0``."""
    s = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def line_ops(line: Line, tf: PixelToPoint, font_name: str) -> list[str]:
    """Content-stream operators drawing one line (inside BT/ET, render mode set)."""
    frame = line_frame(line, tf)
    if frame is None or not line.text.strip():
        return []
    size = frame.height
    runs = word_runs(line, frame, tf) if line.words else [Run(line.text.strip(), 0.0, frame.length)]
    baseline = _add(frame.origin, _scale(frame.up, _DESCENT * size))
    a, b = frame.along
    c, d = frame.up
    ops = [f"/{font_name} {num(size)} Tf"]
    for run in runs:
        n = font.glyph_count(run.text)
        if n == 0:
            continue
        natural = n * _ADVANCE * size
        width = max(run.end - run.start, natural * _MIN_STRETCH)
        x, y = _add(baseline, _scale(frame.along, run.start))
        ops.append(f"{num(a, 5)} {num(b, 5)} {num(c, 5)} {num(d, 5)} {num(x)} {num(y)} Tm")
        ops.append(f"{num(100 * width / natural)} Tz")
        ops.append(f"<{font.encode_text(run.text)}> Tj")
    return ops


def text_layer(page: Page, tf: PixelToPoint, font_name: str = "F0") -> bytes:
    """The content stream drawing ``page``'s text invisibly; empty when it has none."""
    ops: list[str] = []
    for line in reading_order(page.lines):
        ops.extend(line_ops(line, tf, font_name))
    if not ops:
        return b""
    return ("BT\n3 Tr\n" + "\n".join(ops) + "\nET\n").encode("ascii")


# --- reading order ----------------------------------------------------------

Box = tuple[float, float, float, float]


def _gaps(items: Sequence[int], boxes: Sequence[Box], axis: int) -> list[tuple[float, int]]:
    """Empty bands across ``items`` along ``axis`` (0 = x, 1 = y): (width, items before it)."""
    order = sorted(items, key=lambda i: boxes[i][axis])
    gaps, reach = [], boxes[order[0]][axis + 2]
    for k, i in enumerate(order[1:], 1):
        lo, hi = boxes[i][axis], boxes[i][axis + 2]
        if lo > reach:
            gaps.append((lo - reach, k))
        reach = max(reach, hi)
    return gaps


def _cut(items: list[int], boxes: Sequence[Box], axis: int, min_gap: float) -> list[list[int]]:
    order = sorted(items, key=lambda i: boxes[i][axis])
    cuts = [k for width, k in _gaps(items, boxes, axis) if width >= min_gap]
    bounds = [0, *cuts, len(order)]
    return [order[s:e] for s, e in itertools.pairwise(bounds)]


def _looks_like_columns(items: list[int], boxes: Sequence[Box], gap: float) -> bool:
    """Text columns have lines much wider than the gutter; form fields don't."""
    widths = [boxes[i][2] - boxes[i][0] for i in items]
    return statistics.median(widths) >= 2 * gap


def _split(items: list[int], boxes: Sequence[Box]) -> list[list[int]] | None:
    """One step of a recursive XY cut; None when the items cannot be separated.

    Cuts at the widest empty band only (and any as wide, within a pixel), so
    big separations (title, footer, gutter) are cut before line spacing: a
    gutter wider than every row gap splits columns, else blocks split top to
    bottom. Like quicksort, this takes about n log n steps on real pages.
    """
    y_gaps = _gaps(items, boxes, 1)
    x_gaps = _gaps(items, boxes, 0)
    widest_y = max((w for w, _ in y_gaps), default=0.0)
    widest_x = max((w for w, _ in x_gaps), default=0.0)
    if x_gaps and widest_x > widest_y and (not y_gaps or _looks_like_columns(items, boxes, widest_x)):
        return _cut(items, boxes, 0, widest_x - 1.0)
    if y_gaps:
        return _cut(items, boxes, 1, widest_y - 1.0)
    return None


def _rows(items: list[int], boxes: Sequence[Box]) -> list[int]:
    """Items that overlap both ways: group into rows by vertical centre, each left to right."""
    order = sorted(items, key=lambda i: (boxes[i][1] + boxes[i][3]) / 2)
    out: list[int] = []
    row: list[int] = []
    row_bottom = -math.inf
    for i in order:
        centre = (boxes[i][1] + boxes[i][3]) / 2
        if row and centre > row_bottom:
            out.extend(sorted(row, key=lambda j: boxes[j][0]))
            row = []
        if not row:
            row_bottom = boxes[i][3]
        row.append(i)
        row_bottom = min(row_bottom, boxes[i][3])
    out.extend(sorted(row, key=lambda j: boxes[j][0]))
    return out


def reading_order(lines: Sequence[Line]) -> list[Line]:
    """Lines top to bottom, left to right within a column (recursive XY cut on line boxes)."""
    if len(lines) < 2:
        return list(lines)
    boxes = [_aabb(ln.poly) for ln in lines]
    out: list[int] = []
    stack = [list(range(len(lines)))]
    while stack:
        items = stack.pop()
        parts = _split(items, boxes) if len(items) > 1 else None
        if parts is None or len(parts) < 2:
            out.extend(_rows(items, boxes) if len(items) > 1 else items)
        else:
            stack.extend(reversed(parts))
    return [lines[i] for i in out]
