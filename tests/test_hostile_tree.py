"""An inbox shared by people you don't fully trust: trees and links, against the real daemon.

Every test runs ``ocr-inbox run`` with the fake engine (one line "fake WxH" per
page), so which image was read shows in the JSON and the PDF text. Waits are on
the daemon's log events and status, never on time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pymupdf
import pytest
from daemon_harness import Daemon, json_files, toml_config
from deeptree import nested, remove_tree
from imagemaker import plain

from ocr_inbox.support import atomic

pytestmark = [pytest.mark.slow]

#: the default [watch] max_depth
MAX_DEPTH = 64
#: deeper than Python's recursion limit (1,000): os.walk and watchdog's walks raised RecursionError
DEEP = 1200
INSIDE = (64, 48)
OUTSIDE = (200, 100)  # outside images have another size: their text would say "fake 200x100"


def config(**sections: dict[str, object]) -> str:
    base: dict[str, dict[str, object]] = {
        "watch": {"settle_seconds": 0.3, "rescan_interval_s": 1, "poll_interval_s": 0.2},
        "pdf": {"quiet_seconds": 0.5},
        "ocr": {"engine_plugin": "fake_engine:create", "workers_per_device": 1},
    }
    return toml_config(base, sections)






def kill_if_running(d: Daemon) -> None:
    """After a failed assertion: no daemon of ours outlives its test."""
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.wait_exit()


def failures(d: Daemon) -> dict[str, str]:
    return {f["rel"]: f["reason"] for f in d.status()["failures"]}


def refusals(d: Daemon) -> list[tuple[str, str]]:
    return [(e["path"].strip('"'), e["reason"]) for e in d.events("file_refused")]


def scans(d: Daemon) -> int:
    return len(d.events("scan_done"))


def idle(d: Daemon) -> bool:
    t = d.status()["totals"]
    return bool(t["queued"] == 0 and t["running"] == 0)


def pdf_pages(pdf: Path) -> list[tuple[str, tuple[int, int]]]:
    """Each page's text and the pixel size of the image embedded in it."""
    out = []
    with pymupdf.open(pdf) as doc:
        for page in doc:
            (xref, *_), *_ = page.get_images(full=True)
            info = doc.extract_image(xref)
            out.append((page.get_text(), (info["width"], info["height"])))
    return out


@pytest.mark.parametrize("observer", ["auto", "polling"])
def test_a_deep_tree_is_refused_once_and_the_daemon_stays_up(tmp_path: Path, models_dir: Path, observer: str) -> None:
    d = Daemon(tmp_path / "d", models_dir, config(watch={"observer": observer}))
    try:
        _deep_tree(tmp_path, d)
    finally:
        kill_if_running(d)
        for top in (d.inbox / "deep", d.inbox / "moved", tmp_path / "moved"):
            if top.exists():
                remove_tree(top)


def _deep_tree(tmp_path: Path, d: Daemon) -> None:
    bottom = nested(d.inbox / "deep", DEEP)
    plain(bottom / "bottom.png")
    plain(d.inbox / "book" / "p1.png")
    too_deep = "deep" + "/d" * MAX_DEPTH  # the folder max_depth + 1 levels down
    d.start()
    d.ready()
    d.until(lambda: "book/p1.png" in json_files(d.outbox), "the normal image's JSON")
    d.until(lambda: failures(d).get(too_deep) == "too_deep", "the deep subtree refused")

    # The watcher still sees the normal part of the tree, and a deep tree moved in while running.
    plain(d.inbox / "later" / "p2.png")
    moved = nested(tmp_path / "moved", DEEP)
    plain(moved / "bottom.png")
    os.rename(tmp_path / "moved", d.inbox / "moved")
    d.until(lambda: "later/p2.png" in json_files(d.outbox), "a new image in a normal folder")
    moved_too_deep = "moved" + "/d" * MAX_DEPTH
    d.until(lambda: failures(d).get(moved_too_deep) == "too_deep", "the deep tree moved in refused")
    seen = scans(d)
    d.until(lambda: scans(d) >= seen + 2, "two more full rescans")

    assert set(json_files(d.outbox)) == {"book/p1.png", "later/p2.png"}
    assert failures(d) == {too_deep: "too_deep", moved_too_deep: "too_deep"}
    assert sorted(refusals(d)) == [(too_deep, "too_deep"), (moved_too_deep, "too_deep")]  # one line each
    assert d.stop() == 0

    # Every restart walks the same tree again: it starts, and refuses nothing twice.
    d.start()
    d.ready()
    seen = scans(d)
    d.until(lambda: scans(d) >= seen + 1, "a rescan after the restart")
    assert d.status()["totals"]["done"] == 2
    assert len(refusals(d)) == 2
    assert d.stop() == 0
    assert "RecursionError" not in d.log()


@pytest.mark.parametrize("swap", ["folder", "parent"])
def test_a_folder_swapped_for_a_link_out_of_the_inbox_never_reaches_the_outbox(
    tmp_path: Path, models_dir: Path, swap: str, request: pytest.FixtureRequest
) -> None:
    """Its images were OCR'd; before the folder is quiet, it (or a folder above it) becomes a
    link to a directory outside the inbox holding other images under the same names."""
    # quiet_seconds: time enough to swap the folder between its images' JSON and its PDF
    d = Daemon(tmp_path / "d", models_dir, config(pdf={"quiet_seconds": 3}))
    request.addfinalizer(lambda: kill_if_running(d))
    swapped, folder = ("book", "book") if swap == "folder" else ("a", "a/b")
    names = ("p1.png", "p2.png")
    for n in names:
        plain(d.inbox / folder / n, INSIDE)
    outside = tmp_path / "outside"
    for n in names:
        plain(outside / Path(folder).relative_to(swapped) / n, OUTSIDE)
    d.start()
    d.ready()
    done = {f"{folder}/{n}" for n in names}
    d.until(lambda: done <= {e["path"].strip('"') for e in d.events("image_done")}, "the folder's images done")
    os.rename(d.inbox / swapped, tmp_path / "away")
    os.symlink(outside, d.inbox / swapped)

    # Either a build started before the images' departure was seen (it ends, without them), or
    # none will: images that left the inbox are gone, and a folder with nothing done gets no PDF.
    ended = ("pdf_done", "pdf_failed", "pdf_waits_for_ocr")

    def build_over_or_none_due() -> bool:
        if any(e["folder"].strip('"') == folder for ev in ended for e in d.events(ev)):
            return True
        building = len(d.events("pdf_start")) > len([e for ev in ended for e in d.events(ev)])
        return not building and all(f["done"] == 0 for f in d.status()["folders"] if f["folder"] == folder)

    d.until(build_over_or_none_due, "the PDF build's end, or no build due")
    d.until(lambda: failures(d).get(swapped) == "directory_symlink", "the link refused")
    d.until(lambda: idle(d), "nothing queued")
    seen = scans(d)
    d.until(lambda: scans(d) >= seen + 1, "a full rescan")

    docs = json_files(d.outbox)
    assert set(docs) == done
    assert f"fake {OUTSIDE[0]}x{OUTSIDE[1]}" not in json.dumps(docs)
    for pdf in d.outbox.rglob("*.pdf"):
        for text, size in pdf_pages(pdf):
            assert "200x100" not in text and size == INSIDE, (pdf, text, size)
    assert failures(d) == {swapped: "directory_symlink"}
    assert d.stop() == 0
    # the outside directory was only refused, never read into anything nor touched
    assert sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*.png")) == sorted(
        (Path(folder).relative_to(swapped) / n).as_posix() for n in names
    )


def test_polling_never_follows_a_folder_link(tmp_path: Path, models_dir: Path, request: pytest.FixtureRequest) -> None:
    """``x/l -> ..`` made the polling snapshot walk x/l/x/l/..., and each image was OCR'd again."""
    d = Daemon(tmp_path / "d", models_dir, config(watch={"observer": "polling"}))
    request.addfinalizer(lambda: kill_if_running(d))
    plain(d.inbox / "x" / "p1.png")
    d.start()
    d.ready()
    d.until(lambda: "x/p1.png" in json_files(d.outbox), "the first image's JSON")
    os.symlink("..", d.inbox / "x" / "l")
    plain(d.inbox / "x" / "p2.png")  # seen in the same poll as the link, or a later one
    d.until(lambda: "x/p2.png" in json_files(d.outbox), "the image added after the link")
    d.until(lambda: failures(d).get("x/l") == "directory_symlink", "the link refused")
    d.until(lambda: idle(d), "nothing queued")
    seen = scans(d)
    d.until(lambda: scans(d) >= seen + 2, "two more full rescans")

    assert set(json_files(d.outbox)) == {"x/p1.png", "x/p2.png"}
    assert d.status()["totals"]["done"] == 2
    assert failures(d) == {"x/l": "directory_symlink"}
    assert refusals(d) == [("x/l", "directory_symlink")]
    assert d.stop() == 0


def test_the_sweep_of_a_deep_outbox_is_bounded_and_never_raises(tmp_path: Path) -> None:
    """The outbox mirrors the inbox: the start-up sweep walked it with os.walk (recursive)."""
    outbox = tmp_path / "outbox"
    try:
        bottom = nested(outbox, DEEP)
        shallow = outbox.joinpath(*(["d"] * 10))
        for folder in (shallow, bottom):
            (folder / f"{atomic.TMP_PREFIX}x.part").write_bytes(b"x")
        assert atomic.sweep_temp_files(outbox) == 1  # only down to SWEEP_MAX_DEPTH
        assert not (shallow / f"{atomic.TMP_PREFIX}x.part").exists()
    finally:
        remove_tree(outbox)
