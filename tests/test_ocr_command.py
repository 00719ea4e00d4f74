"""`ocr-inbox ocr` end to end: the real CLI, real PaddleX inference, real corpus pages."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS, PAGES, char_f1, copy_pages, ground_truth, run_cli
from imagemaker import png_with_declared_size
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.corpus]


def _doc(outbox: Path, rel: str) -> dict:
    return json.loads((outbox / (rel + ".json")).read_text(encoding="utf-8"))


def _text(doc: dict) -> str:
    return "\n".join(line["text"] for page in doc["pages"] for line in page["lines"])


def test_text_matches_ground_truth(corpus_ocr: tuple[Path, Path]) -> None:
    _, outbox = corpus_ocr
    # order-insensitive character F1 against third-party ground truth
    floors = {"tesseract_test/phototest.tif": 0.95, "xfund_zh/zh_val_0.jpg": 0.85, "funsd/82092117.png": 0.75}
    for rel in PAGES:
        f1 = char_f1(ground_truth(rel), _text(_doc(outbox, rel)))
        assert f1 >= floors[rel], (rel, f1)
    assert "quick brown dog" in _text(_doc(outbox, "tesseract_test/phototest.tif"))
    assert "纾困申请表" in _text(_doc(outbox, "xfund_zh/zh_val_0.jpg"))


def test_json_follows_the_contract(corpus_ocr: tuple[Path, Path]) -> None:
    inbox, outbox = corpus_ocr
    for rel in PAGES:
        doc = _doc(outbox, rel)
        st = (inbox / rel).stat()
        assert doc["schema"] == 4
        assert doc["source"]["path"] == rel
        assert (doc["source"]["size"], doc["source"]["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        assert len(doc["source"]["sha256"]) == 64
        assert doc["engine"]["profile"] == "ppocrv6-tiny"
        assert doc["engine"]["device"] == "cpu"
        assert doc["engine"]["models"] == {"det": "PP-OCRv6_tiny_det", "rec": "PP-OCRv6_tiny_rec"}
        assert isinstance(doc["elapsed_ms"], int)
        (page,) = doc["pages"]
        with Image.open(inbox / rel) as img:
            assert (page["width"], page["height"]) == img.size
        assert page["index"] == 0 and page["lines"]
        for line in page["lines"]:
            assert line["text"] and 0 <= line["score"] <= 1
            assert len(line["poly"]) == 4
            for x, y in line["poly"]:
                assert -2 <= x <= page["width"] + 2 and -2 <= y <= page["height"] + 2
            for w in line.get("words", []):
                assert w["text"].strip() and len(w["box"]) == 4
    # the outbox mirrors the inbox and nothing was written into the inbox
    assert sorted(p.relative_to(inbox).as_posix() for p in inbox.rglob("*") if p.is_file()) == sorted(PAGES)
    report = json.loads((outbox / ".ocr-inbox" / "failures.json").read_text())
    assert report["failures"] == [] and report["done"] == 3


def test_second_run_skips_and_touched_image_is_redone(tmp_path: Path, models_dir: Path) -> None:
    pages = ("tesseract_test/phototest.tif", "cnocr/helloworld.jpg")
    inbox = copy_pages(tmp_path / "in", pages)
    outbox = tmp_path / "out"
    assert run_cli("ocr", inbox, outbox, state_dir=tmp_path / "s", models=models_dir).returncode == 0
    before = {rel: (outbox / (rel + ".json")).stat().st_mtime_ns for rel in pages}

    res = run_cli("ocr", inbox, outbox, state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 0
    assert json.loads((outbox / ".ocr-inbox/failures.json").read_text())["skipped"] == 2
    assert {rel: (outbox / (rel + ".json")).stat().st_mtime_ns for rel in pages} == before

    touched = inbox / pages[1]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert run_cli("ocr", inbox, outbox, state_dir=tmp_path / "s", models=models_dir).returncode == 0
    assert (outbox / (pages[0] + ".json")).stat().st_mtime_ns == before[pages[0]]
    redone = _doc(outbox, pages[1])
    assert redone["source"]["mtime_ns"] == touched.stat().st_mtime_ns
    assert "hello" in _text(redone).lower()


def test_bad_inputs_are_reported_and_the_rest_is_done(tmp_path: Path, models_dir: Path) -> None:
    inbox = tmp_path / "in"
    good = inbox / "mixed"
    good.mkdir(parents=True)
    page = CORPUS / "tesseract_test/phototest.tif"
    shutil.copy(page, good / "page one.tif")
    shutil.copy(CORPUS / "cnocr/helloworld.jpg", good / "你好 世界.jpg")
    (good / "zero.jpg").write_bytes(b"")
    data = (CORPUS / "xfund_zh/zh_val_0.jpg").read_bytes()
    (good / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (good / "notes.png").write_text("this is not an image\n")
    png_with_declared_size(good / "bomb.png", 100_000, 100_000)
    with Image.open(page) as img:
        rgb = img.convert("RGB")
        # EXIF orientation 6: stored rotated, shown upright once the tag is applied
        exif = Image.Exif()
        exif[0x0112] = 6
        rgb.transpose(Image.Transpose.ROTATE_90).save(good / "rotated.jpg", exif=exif, quality=92)
        rgb.convert("CMYK").save(good / "cmyk.jpg", quality=92)
        gray16 = Image.fromarray(np.asarray(rgb.convert("L")).astype("<u2") * 257)
        assert gray16.mode == "I;16"
        gray16.save(good / "sixteen.png")
        upright_size = rgb.size

    res = run_cli("ocr", inbox, tmp_path / "out", state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 1, res.stderr  # documented: some images failed
    out = tmp_path / "out"
    report = json.loads((out / ".ocr-inbox/failures.json").read_text())
    reasons = {f["path"]: f["reason"] for f in report["failures"]}
    assert reasons == {
        "mixed/zero.jpg": "empty_file",
        "mixed/truncated.jpg": "truncated",
        "mixed/notes.png": "not_an_image",
        "mixed/bomb.png": "too_many_pixels",
    }
    for name in ("page one.tif", "rotated.jpg", "cmyk.jpg", "sixteen.png"):
        doc = _doc(out, f"mixed/{name}")
        assert "quick brown" in _text(doc), name
    rotated = _doc(out, "mixed/rotated.jpg")["pages"][0]
    assert (rotated["width"], rotated["height"]) == upright_size
    assert "hello" in _text(_doc(out, "mixed/你好 世界.jpg")).lower()
    for rel, reason in reasons.items():
        assert f"path={rel}" in res.stderr and f"reason={reason}" in res.stderr
    assert not (out / "mixed/zero.jpg.json").exists()


def test_refuses_outbox_inside_inbox(tmp_path: Path, models_dir: Path) -> None:
    inbox = copy_pages(tmp_path / "in", ("cnocr/helloworld.jpg",))
    res = run_cli("ocr", inbox, inbox / "out", state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 2
    assert "inside the inbox" in res.stderr
    res = run_cli("ocr", tmp_path / "missing", tmp_path / "out", state_dir=tmp_path / "s", models=models_dir)
    assert res.returncode == 2
    assert not (inbox / "out").exists()
