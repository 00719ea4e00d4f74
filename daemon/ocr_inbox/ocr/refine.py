"""The confidence cascade: lines the first recognizer is unsure of, read again by a stronger one.

Detection runs once (the main pipeline's); each line scoring below
``refine_below`` is cropped from the same image with PaddleX's own crop
(``CropByPolys``, the rotated minimum-area crop the OCR pipeline uses), so the
second recognizer sees exactly the pixels the first one saw, and its word boxes
come from PaddleX's ``cal_ocr_word_box`` as the pipeline's do. The second reading
replaces the first, whatever the two scores: on the corpus the stronger recognizer's
text was the better one more often than its score said (word F1 at < 0.95: 0.903
replacing, 0.900 keeping the better score; docs/BENCHMARKS.md, "Accuracy at tiny's speed").
Imported only inside a worker, after ``engine.prepare_environment``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Refinement:
    """One line as the second recognizer read it."""

    text: str
    score: float
    #: word texts and their axis-aligned boxes, as the pipeline's ``text_word``/``text_word_boxes``
    words: tuple[str, ...]
    word_boxes: np.ndarray
    rec: str  # the model that produced it


class Refiner:
    """A second recognition model, loaded once per worker beside the OCR pipeline."""

    def __init__(
        self,
        model_name: str,
        model_dir: Path | None,
        below: float,
        *,
        device: str,
        engine: str,
        engine_config: dict[str, Any],
        batch_size: int,
    ) -> None:
        import paddlex
        from paddlex.inference.pipelines.components import CropByPolys, cal_ocr_word_box, convert_points_to_boxes

        self.model_name = model_name
        self.below = below
        self.predictor = paddlex.create_predictor(
            model_name=model_name,
            model_dir=None if model_dir is None else str(model_dir),
            device=device,
            engine=engine,
            engine_config=engine_config,
            batch_size=batch_size,
        )
        # "quad": the crop of the general OCR pipeline (text_type "general")
        self._crop = CropByPolys(det_box_type="quad")
        self._word_box = cal_ocr_word_box
        self._to_boxes = convert_points_to_boxes

    def unsure(self, scores: Sequence[float]) -> list[int]:
        return [i for i, s in enumerate(scores) if float(s) < self.below]

    def refine(self, bgr: np.ndarray, res: Any, word_boxes: bool) -> dict[int, Refinement]:
        """The second recognizer's reading of every unsure line of PaddleX's ``OCRResult`` ``res``, by index."""
        scores = list(res.get("rec_scores") or [])
        polys = list(res.get("rec_polys") or [])
        todo = self.unsure(scores)
        if not todo:
            return {}
        crops = self._crop(bgr, [polys[i] for i in todo])
        # widest last, as the pipeline orders them: batches of similar widths pad least
        order = sorted(range(len(todo)), key=lambda k: crops[k].shape[1] / float(crops[k].shape[0]))
        outs = list(self.predictor([crops[k] for k in order], return_word_box=word_boxes))
        readings: dict[int, Refinement] = {}
        for k, out in zip(order, outs, strict=True):
            i = todo[k]
            score = float(out["rec_score"])
            if word_boxes:
                text, info = out["rec_text"]
                words, regions = self._word_box(text, polys[i], info)
                boxes = self._to_boxes(regions)
            else:
                text, words, boxes = out["rec_text"], [], np.zeros((0, 4))
            readings[i] = Refinement(str(text), score, tuple(str(w) for w in words), np.asarray(boxes), self.model_name)
        return readings
