"""A source's version cannot be faked by putting its mtime back (issue 24, case 2).

Against the real daemon and real OCR of corpus pages: a page rewritten in place
with another page of the same byte size and its mtime restored is OCR'd again,
its JSON and its folder's PDF hold the new page's text and never the old; a
``chmod``, a hard link or a ``touch`` to the same mtime of a done page (its ctime
changes, its bytes do not) is confirmed by its SHA-256 and costs no OCR. Then
the unit rules: ``SourceVersion``, the ledger's migration and suspects, and the
PDF builder's hash check for PNG and TIFF.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
from pathlib import Path

import pymupdf
import pytest
from conftest import CORPUS, char_f1, ground_truth
from daemon_harness import Daemon, json_files, toml_config
from PIL import Image

from ocr_inbox.config import WatchSettings
from ocr_inbox.inbox import intake as intake_mod
from ocr_inbox.inbox.intake import Intake
from ocr_inbox.ledger import ImageStatus, Ledger, Observation
from ocr_inbox.ledger import db as ledger_db
from ocr_inbox.ledger import schema
from ocr_inbox.ocr.results import Line, Page
from ocr_inbox.outbox import document, names
from ocr_inbox.outbox.pdf import PageSource, SourceChanged, build_pdf
from ocr_inbox.ocr import images
from ocr_inbox.support.version import Change, SourceVersion

OLD, NEW = "cnocr/multi-line_en_black.png", "cnocr/multi-line_en_white.png"
#: words only the old page has, and only the new one
OLD_ONLY, NEW_ONLY = ("classification", "connected"), ("Dissection", "ebook")


def _same_size_pages() -> tuple[bytes, bytes]:
    """The two corpus pages, the smaller padded after its PNG end (readers stop at IEND) to the
    larger's byte size: a re-scan of the same size."""
    old, new = (CORPUS / OLD).read_bytes(), (CORPUS / NEW).read_bytes()
    size = max(len(old), len(new))
    return old.ljust(size, b"\0"), new.ljust(size, b"\0")


def _pdf_text(pdf: Path) -> str:
    with pymupdf.open(pdf) as doc:
        return "\n".join(page.get_text() for page in doc)


def _ocrs(d: Daemon, rel: str) -> int:
    return len([e for e in d.events("image_done") if e["path"] == rel])


def _confirmed(d: Daemon, rel: str) -> int:
    return len([e for e in d.events("image_confirmed") if e["path"] == rel])


def _pdfs(d: Daemon) -> int:
    return len([e for e in d.events("pdf_done") if e["folder"] == "a"])


@pytest.mark.slow
def test_a_rewrite_with_its_mtime_put_back_is_ocrd_again_and_a_chmod_is_not(tmp_path: Path, models_dir: Path) -> None:
    old, new = _same_size_pages()
    config = toml_config(
        {"watch": {"settle_seconds": 0.3, "rescan_interval_s": 1}, "pdf": {"quiet_seconds": 0.5},
         "ocr": {"workers_per_device": 1}},
        {},
    )
    d = Daemon(tmp_path, models_dir, config)
    page = d.inbox / "a" / "p.png"
    page.parent.mkdir(parents=True)
    page.write_bytes(old)
    d.start("--log-level", "debug")
    d.ready()
    d.until(lambda: _pdfs(d) == 1, "the first PDF")
    before = _pdf_text(d.outbox / "a" / "a.pdf")
    assert all(w in before for w in OLD_ONLY)

    # the same bytes count, written in place, the mtime put back: only ctime says it changed
    st = page.stat()
    with open(page, "r+b") as fh:
        fh.write(new)
    os.utime(page, ns=(st.st_atime_ns, st.st_mtime_ns))
    after_st = page.stat()
    assert (after_st.st_size, after_st.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    d.until(lambda: _pdfs(d) == 2, "the PDF rebuilt with the new page's OCR")

    doc = json_files(d.outbox)["a/p.png"]
    assert doc["source"]["sha256"] == hashlib.sha256(new).hexdigest()
    text = "\n".join(ln["text"] for p in doc["pages"] for ln in p["lines"])
    assert char_f1(ground_truth(NEW), text) > max(0.9, char_f1(ground_truth(OLD), text))
    assert all(w in text for w in NEW_ONLY) and not any(w in text for w in OLD_ONLY)
    pdf = _pdf_text(d.outbox / "a" / "a.pdf")
    assert all(w in pdf for w in NEW_ONLY)
    assert not any(w in pdf for w in OLD_ONLY)  # the old text is nowhere under the new pixels
    assert d.events("image_rewritten")[0]["path"] == "a/p.png"
    assert _ocrs(d, "a/p.png") == 2

    # what changes ctime but not a byte: each is confirmed by its hash, none costs an OCR
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    same = page.stat()
    for n, touch in enumerate((
        lambda: page.chmod(0o600),
        lambda: os.link(page, elsewhere / "p.png"),  # a hard link (outside the inbox: no new image)
        lambda: os.utime(page, ns=(same.st_atime_ns, same.st_mtime_ns)),  # touch -m -d <the same time>
    ), start=1):
        ctime = page.stat().st_ctime_ns
        touch()
        assert page.stat().st_ctime_ns != ctime
        d.until(lambda n=n: _confirmed(d, "a/p.png") == n, f"change {n} confirmed by its hash")
    assert _ocrs(d, "a/p.png") == 2
    with Ledger.open_readonly(d.state, verify=False) as ledger:
        row = ledger.get("a/p.png")
        assert row is not None and row.status == ImageStatus.done
        assert row.version == SourceVersion.of(page.stat())
    assert _pdfs(d) == 2
    assert d.stop() == 0


# --- the rule ----------------------------------------------------------------------------


def test_source_version_rule() -> None:
    v = SourceVersion(10, 5, 7, 100)
    assert v.against(v) is Change.same
    assert SourceVersion(11, 5, 7, 100).against(v) is Change.changed
    assert SourceVersion(10, 6, 7, 100).against(v) is Change.changed
    assert SourceVersion(10, 5, 8, 100).against(v) is Change.suspect  # a rewrite with the mtime put back, or a chmod
    assert SourceVersion(10, 5, 7, 101).against(v) is Change.suspect  # replaced by a rename, or a re-scan
    # a row of an older ledger: judged by size and mtime, its rest filled in
    assert v.against(SourceVersion(10, 5)) is Change.fill
    assert SourceVersion(10, 6, 7, 100).against(SourceVersion(10, 5)) is Change.changed
    # a look that knows only size and mtime cannot suspect anything
    assert SourceVersion(10, 5).against(v) is Change.same


def test_the_ledger_keeps_a_done_suspect_done_until_its_hash_decides(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "state") as led:
        assert led.observe("a/p.png", 10, 5, 1.0, ctime_ns=7, ino=100) is Observation.new
        (row,) = led.claim(1, 2.0)
        assert led.done("a/p.png", 10, 5, "out", 1, 3.0)
        chmodded = SourceVersion(10, 5, 8, 100)
        assert led.observe_many([("a/p.png", chmodded)], 4.0) == [Observation.suspect]
        assert led.get("a/p.png").status == ImageStatus.done  # type: ignore[union-attr]
        # the same hash: the new ctime recorded, still done, no attempt
        assert led.confirmed("a/p.png", chmodded, True, 5.0) is Observation.unchanged
        row = led.get("a/p.png")
        assert row is not None and (row.status, row.version, row.attempts) == (ImageStatus.done, chmodded, 0)
        assert led.observe_many([("a/p.png", chmodded)], 6.0) == [Observation.unchanged]
        # another hash: queued again, as any change
        rewritten = SourceVersion(10, 5, 9, 100)
        assert led.observe_many([("a/p.png", rewritten)], 7.0) == [Observation.suspect]
        assert led.confirmed("a/p.png", rewritten, False, 8.0) is Observation.changed
        row = led.get("a/p.png")
        assert row is not None and (row.status, row.version) == (ImageStatus.pending, rewritten)
        # a pending image only records the new fields: its OCR reads the file as it is
        assert led.observe_many([("a/p.png", SourceVersion(10, 5, 10, 100))], 9.0) == [Observation.unchanged]
        assert led.get("a/p.png").version.ctime_ns == 10  # type: ignore[union-attr]


def test_an_older_ledger_is_migrated_and_its_rows_filled_without_ocr(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / schema.DB_NAME)
    for version in range(3):  # a schema-3 ledger, as the last release left it
        for stmt in ledger_db._statements(schema._MIGRATIONS[version]):
            conn.execute(stmt)
    conn.execute("PRAGMA user_version = 3")
    conn.execute("INSERT INTO folders (folder, first_seen, last_activity) VALUES ('a', 1, 1)")
    conn.execute(
        "INSERT INTO images (rel, folder, natkey, size, mtime_ns, status, first_seen, updated, done_at)"
        " VALUES ('a/p.png', 'a', 'p', 10, 5, 'done', 1, 1, 1)"
    )
    conn.commit()
    conn.close()
    with Ledger.open(state) as led:
        row = led.get("a/p.png")
        assert row is not None and row.version == SourceVersion(10, 5) and row.version.partial
        # the first look (the scan) fills the rest in: no suspect, no OCR
        assert led.fill_versions([("a/p.png", SourceVersion(10, 5, 7, 100))]) == 1
        assert led.observe_many([("a/p.png", SourceVersion(10, 5, 7, 100))], 2.0) == [Observation.unchanged]
        row = led.get("a/p.png")
        assert row is not None and (row.status, row.version) == (ImageStatus.done, SourceVersion(10, 5, 7, 100))


# --- the PDF builder's hash check -------------------------------------------------------------


def _same_size(fmt: str) -> tuple[bytes, bytes]:
    """Two pictures of the same size in ``fmt``, the smaller padded after its end (readers stop
    there; an uncompressed TIFF of the same dimensions has the same size already)."""
    out = []
    for shade in (40, 200):
        buf = io.BytesIO()
        img = Image.new("L", (60, 40), 0)
        img.paste(shade, (0, 0, 30 + shade // 10, 40))
        img.save(buf, fmt)
        out.append(buf.getvalue())
    size = max(len(b) for b in out)
    old, new = (b.ljust(size, b"\0") for b in out)
    assert old != new
    return old, new


def _json(outbox: Path, rel: str, data: bytes, st: os.stat_result) -> Path:
    line = Line("the old text", 0.99, ((2.0, 2.0), (58.0, 2.0), (58.0, 38.0), (2.0, 38.0)))
    doc = document.Document(
        document.SourceInfo(rel, st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest()),
        {"profile": "test"}, (Page(0, 60, 40, (line,)),), 0,
    )
    dest = names.json_path_for(outbox, rel)
    document.write(dest, doc)
    return dest


@pytest.mark.parametrize("fmt, name", [("PNG", "p.png"), ("TIFF", "p.tif"), ("JPEG", "p.jpg")])
def test_the_pdf_builder_never_pairs_pixels_with_another_versions_text(tmp_path: Path, fmt: str, name: str) -> None:
    inbox, outbox, out = tmp_path / "in", tmp_path / "out", tmp_path / "pdf" / "a.pdf"
    data, new = _same_size(fmt)
    path = inbox / name
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    st = path.stat()
    js = _json(outbox, name, data, st)
    v = SourceVersion.of(st)
    pinned = PageSource(name, js, v.size, v.mtime_ns, v.ctime_ns, v.ino)
    assert build_pdf(inbox, [pinned], out, title="t", limits=images.Limits()).pages == 1
    assert "the old text" in _pdf_text(out)

    # other pixels of the same byte size written in place, the mtime put back
    with open(path, "r+b") as fh:
        fh.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = SourceVersion.of(path.stat())
    assert (now.size, now.mtime_ns) == (v.size, v.mtime_ns)
    # even with the new ctime given (a ledger that took it), the bytes are not the JSON's
    fresh = PageSource(name, js, now.size, now.mtime_ns, now.ctime_ns, now.ino)
    first = out.read_bytes()
    with pytest.raises(SourceChanged) as exc:
        build_pdf(inbox, [fresh], out, title="t", limits=images.Limits())
    assert exc.value.rel == name and "SHA-256" in str(exc.value)
    assert out.read_bytes() == first  # nothing published
    # the version the JSON was made for, as the ledger recorded it: its ctime says it changed
    with pytest.raises(SourceChanged):
        build_pdf(inbox, [pinned], out, title="t", limits=images.Limits())
    # taken as it is now (the ``pdf`` command): the page goes in without the old text
    loose = PageSource(name, js, None, None)
    report = build_pdf(inbox, [loose], out, title="t", limits=images.Limits())
    assert [(i.image, i.reason) for i in report.image_only] == [(name, "json_stale")]
    assert "the old text" not in _pdf_text(out)


# --- intake: the hash decides, in bounded steps ---------------------------------------------------


def _intake_with_a_done_page(tmp_path: Path, data: bytes) -> tuple[Intake, Ledger, Path]:
    """An intake over an inbox holding ``a/p.png`` (``data``), done with a JSON of those bytes."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    page = inbox / "a" / "p.png"
    page.parent.mkdir(parents=True)
    page.write_bytes(data)
    led = Ledger.open(tmp_path / "state")
    intake = Intake(inbox, outbox, led, WatchSettings(settle_seconds=0, rescan_interval_s=0), watch=False)
    intake.full_scan()
    _settle(intake)
    (row,) = led.claim(1, 2.0)
    _json(outbox, "a/p.png", data, page.stat())
    assert led.done("a/p.png", row.size, row.mtime_ns, "out", 1, 3.0)
    return intake, led, page


def _settle(intake: Intake) -> int:
    steps = 0
    while intake.settling:
        intake.step()
        steps += 1
        assert steps < 1000
    return steps


def test_a_suspect_is_hashed_a_budget_per_step_and_its_hash_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_mod, "CONFIRM_BYTES_PER_STEP", 1000)
    old = os.urandom(10_000)
    intake, led, page = _intake_with_a_done_page(tmp_path, old)
    page.chmod(0o600)  # ctime only
    intake.full_scan()
    assert _settle(intake) >= 10  # 10,000 bytes, 1,000 a step: the loop is never held longer
    row = led.get("a/p.png")
    assert row is not None and row.status == ImageStatus.done and row.version == SourceVersion.of(page.stat())

    st = page.stat()
    with open(page, "r+b") as fh:
        fh.write(os.urandom(10_000))
    os.utime(page, ns=(st.st_atime_ns, st.st_mtime_ns))
    intake.full_scan()
    _settle(intake)
    row = led.get("a/p.png")
    assert row is not None and row.status == ImageStatus.pending  # OCR'd again
    led.close()


def test_a_page_handed_back_by_the_pdf_build_is_hashed_though_its_version_is_unchanged(tmp_path: Path) -> None:
    """A JSON adopted by size and mtime whose bytes are another's: the PDF build's hash check
    hands the path back (``track``), and intake's hash queues it for OCR."""
    intake, led, page = _intake_with_a_done_page(tmp_path, b"x" * 100)
    _json(tmp_path / "outbox", "a/p.png", b"y" * 100, page.stat())  # the JSON of other bytes
    intake.full_scan()
    _settle(intake)
    assert led.get("a/p.png").status == ImageStatus.done  # type: ignore[union-attr]  # nothing to suspect
    intake.track("a/p.png", verify=True)
    _settle(intake)
    assert led.get("a/p.png").status == ImageStatus.pending  # type: ignore[union-attr]
    led.close()


def test_the_workers_last_look_catches_a_rewrite_with_its_mtime_put_back(tmp_path: Path) -> None:
    from ocr_inbox.executors.worker import check_unchanged
    from ocr_inbox.support.errors import BadImage

    page = tmp_path / "p.png"
    page.write_bytes(b"x" * 10)
    v = SourceVersion.of(page.stat())
    check_unchanged(str(tmp_path), "p.png", v.size, v.mtime_ns, ctime_ns=v.ctime_ns, ino=v.ino)
    check_unchanged(str(tmp_path), "p.png", v.size, v.mtime_ns)  # size and mtime only (a Ray node's result)
    page.write_bytes(b"y" * 10)
    os.utime(page, ns=(v.mtime_ns, v.mtime_ns))
    with pytest.raises(BadImage) as exc:
        check_unchanged(str(tmp_path), "p.png", v.size, v.mtime_ns, ctime_ns=v.ctime_ns, ino=v.ino)
    assert exc.value.reason == "changed_while_reading"


def test_many_small_suspects_are_taken_a_bounded_number_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_mod, "CONFIRM_FILES_PER_STEP", 2)
    intake, led, page = _intake_with_a_done_page(tmp_path, b"x" * 100)
    for i in range(5):  # four more done pages
        other = page.parent / f"q{i}.png"
        other.write_bytes(b"x" * 100)
        intake.track(f"a/q{i}.png")
        _settle(intake)
        (row,) = led.claim(1, 2.0)
        _json(tmp_path / "outbox", row.rel, b"x" * 100, other.stat())
        assert led.done(row.rel, row.size, row.mtime_ns, "out", 1, 3.0)
    for p in page.parent.iterdir():
        p.chmod(0o600)
    intake.full_scan()
    assert _settle(intake) >= 3  # 6 suspects, 2 a step
    assert {r.status for r in (led.get(f"a/{p.name}") for p in page.parent.iterdir()) if r} == {ImageStatus.done}
    assert not intake.settling
    led.close()
