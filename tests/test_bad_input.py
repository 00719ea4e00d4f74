"""Bad input and hostile names against one real daemon: each case is processed right or refused with a reason.

One ``ocr-inbox run`` (real PaddleX, default profile) serves the whole module. The
``battery`` fixture drops one case per kind into its inbox after READY (so the
watcher path is the one exercised), waits until ``ocr-inbox status --json``
accounts for every case (nothing queued or running, each expected JSON describing
the file as it is now, each refusal recorded, no PDF pending), checks the process is
still alive, stops it and keeps everything it saw. Each test then judges one kind.

A processed case has a JSON whose pages have the right size and text and whose
``source`` matches the file; a refused case has no JSON, a ``failures`` entry with
the reason, and an ``image_failed`` / ``file_refused`` log line naming path and
reason. The table in docs/RELIABILITY.md lists what each kind does.

Run as root, the daemon is started without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH
(``setpriv``), like the packaged service's own user, so a mode-000 file is really
unreadable to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import select
import shutil
import socket
import stat
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import imagemaker as im
import pytest
import structlog
from conftest import CORPUS
from daemon_harness import Daemon, json_files, temp_files

from ocr_inbox.outbox.names import pdf_path_for
from ocr_inbox.support import reasons
from ocr_inbox.support.logs import _escape

pytestmark = [pytest.mark.slow, pytest.mark.corpus]

FAST = """
[watch]
settle_seconds = 0.5
[pdf]
quiet_seconds = 2
"""

BIG_PAGE = "xfund_zh/zh_val_0.jpg"  # a full A4 scan: OCR takes long enough to replace it meanwhile
FORGED = "level=error event=forged"
DEEP = "/".join(f"d{i:02d}" for i in range(1, 51))
LONG_DIR = "F" * 255  # a folder name at NAME_MAX: "<name>.pdf" cannot exist, the PDF name is shortened
ODD_NAMES = {
    "spaces": "scan 7 page.png",
    "unicode": "ünïcødé 日本語 ½.png",
    "newline": "new\nline.png",
    "dash-rf": "-rf.png",
    "dash-help": "--help.jpg",
    "250-bytes": "L" * 246 + ".png",  # its JSON name is exactly 255 bytes
    "250-bytes-multibyte": "é" * 123 + ".png",  # 250 bytes in 127 characters
}
FORGE_NAME = f"forge\n{FORGED} path=x\x1b[31m\r.png"  # a newline, a fake record, an ANSI colour, a CR


@dataclass(frozen=True)
class Ok:
    """Processed: one (width, height) and one expected phrase ('' = no text) per page."""

    sizes: tuple[tuple[int, int], ...]
    words: tuple[str, ...]


@dataclass(frozen=True)
class No:
    """Refused: no JSON, this reason recorded and logged."""

    reason: str
    event: str = "image_failed"  # the worker read it; "file_refused": the scan refused it


@dataclass
class Battery:
    d: Daemon
    cases: dict[str, Ok | No]
    status: dict[str, Any] = field(default_factory=dict)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    alive: bool = False
    rc: int | None = None
    inbox_before: dict[str, tuple] = field(default_factory=dict)
    inbox_after: dict[str, tuple] = field(default_factory=dict)
    tree_before: dict[str, tuple] = field(default_factory=dict)
    tree_after: dict[str, tuple] = field(default_factory=dict)
    models_before: dict[str, tuple] = field(default_factory=dict)
    models_after: dict[str, tuple] = field(default_factory=dict)
    unreadable_skip: str = ""
    replaced_in_flight: bool = False
    daemon_caps: str = ""

    @property
    def failures(self) -> dict[str, dict[str, Any]]:
        return {f["rel"]: f for f in self.status["failures"]}


# ---------------------------------------------------------------------------- helpers


def _words(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def page_text(page: dict[str, Any]) -> str:
    return _words(" ".join(line["text"] for line in page["lines"]))


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    """Every entry under ``root``: name -> (type, size, mtime_ns, sha256 or link target). Never follows links."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [n for n in dirnames if Path(dirpath, n) not in skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p in skip:
                continue
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            extra: str = ""
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            mtime = st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0
            out[os.path.relpath(p, root)] = (kind, size, mtime, stat.S_IMODE(st.st_mode), extra)
    return out


def json_written(outbox: Path, rel: str) -> bool:
    """Whether ``<rel>.json`` exists (listed, not stat'ed: the name may be too long to stat)."""
    folder = (outbox / rel).parent
    return folder.is_dir() and rel.rsplit("/", 1)[-1] + ".json" in os.listdir(folder)


def logfmt_value(value: str) -> str:
    """How the daemon's logfmt renders a path (control characters escaped first)."""
    return structlog.processors.LogfmtRenderer()(None, "", {"v": _escape(value)})[2:]


def log_lines(d: Daemon, event: str, rel: str) -> list[str]:
    """Log lines of ``event`` whose ``path`` is ``rel`` (matched as rendered, escapes and all)."""
    token = f" path={logfmt_value(rel)}"
    return [ln for ln in d.log().splitlines() if f" event={event} " in ln and (token + " " in ln or ln.endswith(token))]


@contextlib.contextmanager
def without_dac_override(root: Path) -> Iterator[str]:
    """As root: make ``Daemon.start`` run the daemon without the capabilities that ignore file modes.

    Yields why an unreadable file cannot be tested ('' when it can).
    """
    if os.geteuid() != 0:
        yield ""
        return
    setpriv = shutil.which("setpriv")
    if not setpriv:
        yield "running as root and setpriv(1) is missing: file modes do not bind root"
        return
    caps = "-dac_override,-dac_read_search"
    wrapper = root / "python-without-dac-override"
    wrapper.write_text(f'#!/bin/sh\nexec {setpriv} --inh-caps={caps} --bounding-set={caps} -- {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    with mock.patch.object(sys, "executable", str(wrapper)):
        yield ""


# ---------------------------------------------------------------------------- the cases


def _make_cases(inbox: Path, outside: Path, unreadable: bool) -> dict[str, Ok | No]:
    """Write every case but the replaced one; returns what each must become."""
    cases: dict[str, Ok | No] = {}
    lot, quick = im.text_crop(CORPUS, "lot"), im.text_crop(CORPUS, "quick")
    lot_ok = Ok((lot.size,), (im.CROPS["lot"][1],))
    quick_ok = Ok((quick.size,), (im.CROPS["quick"][1],))

    # refused by the decoder
    r = inbox / "refused"
    r.mkdir(parents=True)
    (r / "zero.png").write_bytes(b"")
    cases["refused/zero.png"] = No("empty_file")
    im.truncate(im.save(lot.convert("RGB"), r / "truncated.jpg", "JPEG", quality=90))
    cases["refused/truncated.jpg"] = No("truncated")
    im.truncate(im.save(lot, r / "truncated.png", "PNG"))
    cases["refused/truncated.png"] = No("truncated")
    (r / "text.jpg").write_text("Dear scanner, this is a text file with an image name.\n")
    cases["refused/text.jpg"] = No("not_an_image")
    im.png_with_declared_size(r / "bomb.png", 100_000, 100_000)
    cases["refused/bomb.png"] = No("too_many_pixels")

    # extreme sizes
    im.save(im.Image.new("L", (1, 1), 255), inbox / "sizes" / "1x1.png")
    cases["sizes/1x1.png"] = Ok(((1, 1),), ("",))
    im.save(im.Image.new("L", (60000, 10), 255), inbox / "sizes" / "60000x10.png")
    cases["sizes/60000x10.png"] = Ok(((60000, 10),), ("",))

    # formats and pixel modes
    f = inbox / "formats"
    im.png16(lot, f / "png16.png")
    im.cmyk_jpeg(lot, f / "cmyk.jpg")
    im.palette_png_with_transparency(lot, f / "palette-transparent.png")
    im.save(lot, f / "gray.png")
    im.save(lot.convert("RGB"), f / "rgb.bmp")
    im.save(lot.convert("RGB"), f / "rgb.webp", quality=90)
    im.g4_tiff(lot, f / "g4.tif")
    for name in ("png16.png", "cmyk.jpg", "palette-transparent.png", "gray.png", "rgb.bmp", "rgb.webp", "g4.tif"):
        cases[f"formats/{name}"] = lot_ok
    frames = ["lot", "quick", "lazy"]
    im.multipage_tiff([im.text_crop(CORPUS, w) for w in frames], f / "multipage.tif")
    cases["formats/multipage.tif"] = Ok(
        tuple(im.text_crop(CORPUS, w).size for w in frames), tuple(im.CROPS[w][1] for w in frames)
    )

    # EXIF orientation: the stored pixels turned by the tag show the upright crop
    for o in range(1, 9):
        im.with_exif_orientation(lot, inbox / "exif" / f"orientation-{o}.jpg", o)
        cases[f"exif/orientation-{o}.jpg"] = lot_ok

    # names
    n = inbox / "names"
    for name in [*ODD_NAMES.values(), FORGE_NAME]:
        im.save(quick.convert("RGB"), n / name, "JPEG" if name.endswith(".jpg") else "PNG")
        cases[f"names/{name}"] = quick_ok
    too_long = "L" * 251 + ".png"  # a legal 255-byte name whose JSON name is not
    im.save(quick, n / too_long, "PNG")
    cases[f"names/{too_long}"] = No("name_too_long", "file_refused")
    (Path(os.fsdecode(os.fsencode(n) + b"/latin1-caf\xe9.png"))).write_bytes((n / "-rf.png").read_bytes())
    cases["names/latin1-caf\\xe9.png"] = No("name_not_utf8", "file_refused")
    im.save(quick, inbox / LONG_DIR / "page.png", "PNG")
    cases[f"{LONG_DIR}/page.png"] = quick_ok
    im.save(quick, inbox / "deep" / DEEP / "page.png", "PNG")
    cases[f"deep/{DEEP}/page.png"] = quick_ok

    # links
    lk = inbox / "links"
    lk.mkdir()
    os.symlink(outside / "secret.png", lk / "escape.png")
    cases["links/escape.png"] = No("symlink_outside_inbox", "file_refused")
    os.symlink("loop.png", lk / "loop.png")
    cases["links/loop.png"] = No("symlink_loop", "file_refused")
    os.symlink("nowhere.png", lk / "dangling.png")
    cases["links/dangling.png"] = No("broken_symlink", "file_refused")
    os.symlink(outside, lk / "linked_dir")
    cases["links/linked_dir"] = No("directory_symlink", "file_refused")
    os.symlink("../formats/gray.png", lk / "alias.png")
    cases["links/alias.png"] = lot_ok
    im.save(quick, lk / "hard-a.png", "PNG")
    os.link(lk / "hard-a.png", lk / "hard-b.png")
    cases["links/hard-a.png"] = cases["links/hard-b.png"] = quick_ok

    # special files with image names
    sp = inbox / "special"
    sp.mkdir()
    os.mkfifo(sp / "fifo.png")
    cases["special/fifo.png"] = No("not_a_regular_file", "file_refused")
    with contextlib.chdir(sp), socket.socket(socket.AF_UNIX) as sock:  # a relative name: sun_path is short
        sock.bind("socket.jpg")
    cases["special/socket.jpg"] = No("not_a_regular_file", "file_refused")
    if unreadable:
        im.save(quick, sp / "unreadable.png", "PNG").chmod(0)
        cases["special/unreadable.png"] = No("unreadable", "file_refused")

    # the same image twice
    im.save(lot, inbox / "copies" / "a.png", "PNG")
    shutil.copy(inbox / "copies" / "a.png", inbox / "copies" / "b.png")
    cases["copies/a.png"] = cases["copies/b.png"] = lot_ok
    return cases


def _replace_while_ocr(d: Daemon) -> bool:
    """Drop a big page; the moment a worker has read it, replace it (rename over it) by a small other page.

    Returns whether the replacement came after the worker's read (the race under test).
    """
    folder = d.inbox / "replace"
    folder.mkdir()
    hidden, staged = folder / ".big.jpg", folder / ".next.jpg"  # hidden names are ignored by the daemon
    shutil.copy(CORPUS / BIG_PAGE, hidden)
    im.save(im.text_crop(CORPUS, "quick").convert("RGB"), staged, "JPEG", quality=92)
    # watch the inode before the daemon can know the file: the first read-and-close is the worker's
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(hidden), 0x10) >= 0  # IN_CLOSE_NOWRITE
    try:
        os.rename(hidden, folder / "big.jpg")
        read = bool(select.select([fd], [], [], 240)[0])
    finally:
        os.close(fd)
    os.rename(staged, folder / "big.jpg")
    return read


# ---------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def battery(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Battery]:
    root = tmp_path_factory.mktemp("bad_input")
    outside = root / "outside"
    im.save(im.text_crop(CORPUS, "quick"), outside / "secret.png", "PNG")  # the target of a link out of the inbox
    home, tmp = root / "home", root / "tmp"
    home.mkdir()
    tmp.mkdir()
    d = Daemon(root, models_dir, FAST)
    skip = (d.inbox, d.outbox, d.state, d.log_path, root / "stdout.txt")
    with pytest.MonkeyPatch.context() as mp, without_dac_override(root) as unreadable_skip:
        # anything the daemon or PaddleX writes to $HOME or $TMPDIR lands in the snapshot
        mp.setenv("HOME", str(home))
        mp.setenv("TMPDIR", str(tmp))
        mp.delenv("XDG_CACHE_HOME", raising=False)
        tree_before = {k: v for k, v in snapshot(root, skip).items() if not k.startswith("notify-")}
        d.start()
    b = Battery(d, {}, tree_before=tree_before, unreadable_skip=unreadable_skip, models_before=snapshot(models_dir))
    try:
        d.ready()
        b.daemon_caps = _cap_eff(d)
        b.cases = _make_cases(d.inbox, outside, unreadable=not unreadable_skip)
        b.inbox_before = snapshot(d.inbox)  # at once: the daemon reads nothing before it settled (0.5 s)
        b.replaced_in_flight = _replace_while_ocr(d)
        b.cases["replace/big.jpg"] = Ok((im.text_crop(CORPUS, "quick").size,), (im.CROPS["quick"][1],))
        b.inbox_before.update({k: v for k, v in snapshot(d.inbox).items() if k.startswith("replace")})
        b.status = d.until(lambda: _accounted(d, b.cases), "every case processed or refused, PDFs built")
        b.docs = json_files(d.outbox)
        b.alive = d.proc is not None and d.proc.poll() is None
        b.inbox_after = snapshot(d.inbox)
    finally:
        b.rc = d.stop() if d.proc is not None and d.proc.poll() is None else d.wait_exit()
    b.tree_after = {k: v for k, v in snapshot(root, skip).items() if not k.startswith("notify-")}
    b.models_after = snapshot(models_dir)
    yield b


def _cap_eff(d: Daemon) -> str:
    assert d.proc is not None
    with open(f"/proc/{d.proc.pid}/status") as fh:
        return next(ln.split()[1] for ln in fh if ln.startswith("CapEff:"))


def _accounted(d: Daemon, cases: dict[str, Ok | No]) -> dict[str, Any] | None:
    """The status once every case settled (refusal recorded or JSON of the file as it is now) and each PDF was
    built or failed."""
    st = d.status()
    t = st["totals"]
    if t["queued"] or t["running"]:
        return None
    failed = {f["rel"] for f in st["failures"]}
    docs = json_files(d.outbox)
    for rel in cases:  # judged by the tests: here refused or processed both count, so a wrong outcome fails fast
        if rel in failed:
            continue
        doc = docs.get(rel)
        try:
            s = os.stat(d.inbox / rel)
        except OSError:  # a refused case not recorded yet
            return None
        if doc is None or (doc["source"]["size"], doc["source"]["mtime_ns"]) != (s.st_size, s.st_mtime_ns):
            return None
    pdf_failed = {e["folder"] for e in d.events("pdf_failed")}
    for f in st["folders"]:
        if f["done"] and f["pdf_state"] != "done" and logfmt_value(f["folder"]) not in pdf_failed:
            return None
    return st


# ---------------------------------------------------------------------------- judging


def check_processed(b: Battery, rel: str) -> dict[str, Any]:
    want = b.cases[rel]
    assert isinstance(want, Ok)
    assert rel not in b.failures, b.failures.get(rel)
    doc = b.docs[rel]
    data = (b.d.inbox / rel).read_bytes()
    s = os.stat(b.d.inbox / rel)
    assert doc["source"] == {
        "path": rel, "size": s.st_size, "mtime_ns": s.st_mtime_ns, "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert [(p["width"], p["height"]) for p in doc["pages"]] == list(want.sizes)
    assert [p["index"] for p in doc["pages"]] == list(range(len(want.sizes)))
    for page, words in zip(doc["pages"], want.words, strict=True):
        if words:
            assert words in page_text(page), (rel, page["index"], page_text(page))
    assert log_lines(b.d, "image_done", rel), f"no image_done line for {rel!r}"
    return doc


def check_refused(b: Battery, rel: str) -> None:
    want = b.cases[rel]
    assert isinstance(want, No)
    assert rel not in b.docs
    assert not json_written(b.d.outbox, rel)
    fail = b.failures[rel]
    assert fail["reason"] == want.reason, fail
    assert fail["detail"], fail
    assert fail["advice"] == reasons.advice(want.reason) and want.reason in reasons.ADVICE, fail  # what to do
    lines = log_lines(b.d, want.event, rel)
    assert lines, f"no {want.event} line for {rel!r}"
    assert all(f" reason={want.reason} " in ln + " " for ln in lines), lines


def _rels(b: Battery, prefix: str) -> list[str]:
    return sorted(r for r in b.cases if r.startswith(prefix))


# ---------------------------------------------------------------------------- one test per kind


def test_zero_byte_file_is_refused(battery: Battery) -> None:
    check_refused(battery, "refused/zero.png")


@pytest.mark.parametrize("rel", ["refused/truncated.jpg", "refused/truncated.png"])
def test_truncated_images_are_refused(battery: Battery, rel: str) -> None:
    check_refused(battery, rel)


def test_text_file_named_jpg_is_refused(battery: Battery) -> None:
    check_refused(battery, "refused/text.jpg")


def test_decompression_bomb_is_refused_from_its_header(battery: Battery) -> None:
    check_refused(battery, "refused/bomb.png")
    assert "10000000000" in battery.failures["refused/bomb.png"]["detail"]


@pytest.mark.parametrize("rel", ["sizes/1x1.png", "sizes/60000x10.png"])
def test_extreme_sizes_are_processed_without_text(battery: Battery, rel: str) -> None:
    doc = check_processed(battery, rel)
    assert doc["pages"][0]["lines"] == []


@pytest.mark.parametrize(
    "rel",
    [
        "formats/png16.png", "formats/cmyk.jpg", "formats/palette-transparent.png", "formats/gray.png",
        "formats/rgb.bmp", "formats/rgb.webp", "formats/g4.tif",
    ],
)
def test_pixel_formats_are_read(battery: Battery, rel: str) -> None:
    check_processed(battery, rel)


def test_multipage_tiff_has_one_page_per_frame(battery: Battery) -> None:
    doc = check_processed(battery, "formats/multipage.tif")
    assert len(doc["pages"]) == 3
    assert len({page_text(p) for p in doc["pages"]}) == 3  # each frame OCR'd on its own


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_page(battery: Battery, orientation: int) -> None:
    rel = f"exif/orientation-{orientation}.jpg"
    stored = im.Image.open(battery.d.inbox / rel).size
    doc = check_processed(battery, rel)  # upright size and text
    if orientation >= 5:
        assert stored == (doc["pages"][0]["height"], doc["pages"][0]["width"])  # the file itself is turned
    lines = doc["pages"][0]["lines"]
    assert [ln["poly"][0][1] for ln in lines] == sorted(ln["poly"][0][1] for ln in lines)  # top to bottom


@pytest.mark.parametrize("name", list(ODD_NAMES.values()), ids=list(ODD_NAMES))
def test_odd_names_are_processed(battery: Battery, name: str) -> None:
    check_processed(battery, f"names/{name}")
    assert (battery.d.outbox / "names" / (name + ".json")).is_file()


def test_name_whose_json_name_exceeds_name_max_is_refused(battery: Battery) -> None:
    check_refused(battery, "names/" + "L" * 251 + ".png")


def test_name_that_is_not_utf8_is_refused(battery: Battery) -> None:
    check_refused(battery, "names/latin1-caf\\xe9.png")


def test_long_folder_name_is_processed(battery: Battery) -> None:
    check_processed(battery, f"{LONG_DIR}/page.png")


@pytest.mark.parametrize(
    "folder",
    [
        "sizes", "formats", "exif", "copies", "replace", f"deep/{DEEP}", "names", "links",
        pytest.param(LONG_DIR, id="long-folder-name"),
    ],
    ids=lambda f: f.split("/")[0],
)
def test_folder_pdf_is_built_despite_odd_pages(battery: Battery, folder: str) -> None:
    import pymupdf

    folders = {f["folder"]: f for f in battery.status["folders"]}
    assert folders[folder]["pdf_state"] == "done", folders[folder]
    name = folder.rsplit("/", 1)[-1]
    (pdf,) = (battery.d.outbox / folder).glob("*.pdf")
    if folder == LONG_DIR:
        assert pdf.name.startswith("F" * 200) and len(pdf.name) <= 255, pdf.name
    else:
        assert pdf.name == f"{name}.pdf"
    want_pages = sum(
        len(w.sizes) for r, w in battery.cases.items() if isinstance(w, Ok) and r.rsplit("/", 1)[0] == folder
    )
    with pymupdf.open(pdf) as doc:
        assert doc.page_count == want_pages  # exactly the images that were OCR'd


def test_deep_tree_is_processed(battery: Battery) -> None:
    rel = f"deep/{DEEP}/page.png"
    check_processed(battery, rel)
    assert len(rel.split("/")) == 52


@pytest.mark.parametrize("rel", ["links/escape.png", "links/loop.png", "links/dangling.png", "links/linked_dir"])
def test_symlinks_that_leave_loop_or_dangle_are_refused(battery: Battery, rel: str) -> None:
    check_refused(battery, rel)


def test_symlink_inside_the_inbox_is_processed_like_its_target(battery: Battery) -> None:
    doc = check_processed(battery, "links/alias.png")
    assert doc["source"]["sha256"] == battery.docs["formats/gray.png"]["source"]["sha256"]


def test_images_load_reads_a_link_only_inside_root(tmp_path: Path) -> None:
    from ocr_inbox.ocr import images
    from ocr_inbox.support.errors import BadImage

    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    im.save(im.text_crop(CORPUS, "quick"), inbox / "a" / "page.png")
    im.save(im.text_crop(CORPUS, "lazy"), outside / "secret.png")
    (inbox / "b").mkdir()
    os.symlink("../a/page.png", inbox / "b" / "alias.png")
    os.symlink(outside / "secret.png", inbox / "b" / "escape.png")
    os.symlink(outside, inbox / "c")  # a parent folder leading outside
    lim = images.Limits()
    assert im.load(str(inbox), "b/alias.png", lim)[0].width == 576
    for rel in ("b/escape.png", "c/secret.png", "../outside/secret.png"):
        with pytest.raises(BadImage) as exc:
            im.load(str(inbox), rel, lim)
        assert exc.value.reason == "outside_inbox", rel


def test_hard_links_both_get_json(battery: Battery) -> None:
    a, b = check_processed(battery, "links/hard-a.png"), check_processed(battery, "links/hard-b.png")
    assert a["source"]["sha256"] == b["source"]["sha256"]
    assert a["pages"][0]["lines"] == b["pages"][0]["lines"]


@pytest.mark.parametrize("rel", ["special/fifo.png", "special/socket.jpg"])
def test_fifo_and_socket_with_image_names_are_refused(battery: Battery, rel: str) -> None:
    check_refused(battery, rel)


def test_unreadable_file_is_refused(battery: Battery) -> None:
    if battery.unreadable_skip:
        pytest.skip(battery.unreadable_skip)
    if os.geteuid() == 0:  # the setup is what makes this meaningful: no CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2)
        assert int(battery.daemon_caps, 16) & 0b110 == 0, battery.daemon_caps
    check_refused(battery, "special/unreadable.png")


def test_image_replaced_while_ocr_gets_json_of_the_final_file(battery: Battery) -> None:
    rel = "replace/big.jpg"
    assert battery.replaced_in_flight, "the worker never read the big page"
    check_processed(battery, rel)  # source size/mtime/sha256, page size and text of the new file
    # the replacement came after the worker's read; the worker either saw it (the usual way: its OCR of a
    # full page outlasts the rename) or finished first and the changed file was OCR'd again
    noticed = [ln for ln in log_lines(battery.d, "image_failed", rel) if "reason=changed_while_reading" in ln]
    assert noticed or len(log_lines(battery.d, "image_done", rel)) >= 2
    assert rel not in battery.failures


def test_same_image_copied_twice_gets_two_identical_jsons(battery: Battery) -> None:
    a, b = check_processed(battery, "copies/a.png"), check_processed(battery, "copies/b.png")
    assert [ln["text"] for ln in a["pages"][0]["lines"]] == [ln["text"] for ln in b["pages"][0]["lines"]]
    assert a["source"]["sha256"] == b["source"]["sha256"] and a["source"]["path"] != b["source"]["path"]


# ---------------------------------------------------------------------------- the daemon and its surroundings


def test_every_case_is_accounted_for_and_nothing_else(battery: Battery) -> None:
    b = battery
    assert set(b.docs) == {r for r, w in b.cases.items() if isinstance(w, Ok)}
    assert set(b.failures) == {r for r, w in b.cases.items() if isinstance(w, No)}
    assert b.status["totals"]["queued"] == b.status["totals"]["running"] == 0


def test_daemon_survived_everything_and_stopped_cleanly(battery: Battery) -> None:
    assert battery.alive
    assert battery.rc == 0
    assert battery.d.events("stopped")
    assert not battery.d.events("worker_lost") and not battery.d.events("engine_error")


def test_file_names_cannot_forge_log_lines(battery: Battery) -> None:
    log = battery.d.log()
    assert "\x1b" not in log and "\r" not in log
    for ln in log.splitlines():
        assert ln.startswith("timestamp="), f"a log line that is not a log record: {ln!r}"
        assert not ln.startswith(FORGED)
    rel = f"names/{FORGE_NAME}"
    (line,) = log_lines(battery.d, "image_done", rel)
    assert '\\\\nlevel=error event=forged path=x\\\\x1b[31m\\\\r.png"' in line  # escaped, in one quoted value
    assert (battery.d.outbox / (rel + ".json")).is_file()  # the name itself is kept as it is


def test_nothing_is_written_outside_the_outbox_and_state_dir(battery: Battery) -> None:
    b = battery
    assert b.tree_after == b.tree_before  # HOME, TMPDIR, the symlink's target, the config
    assert b.models_after == b.models_before
    assert temp_files(b.d.outbox, b.d.state) == []
    pdfs = {str(p.relative_to(b.d.outbox)) for p in b.d.outbox.rglob("*.pdf")}
    expected_pdfs = {
        str(pdf_path_for(b.d.outbox, b.d.inbox, f["folder"]).relative_to(b.d.outbox))
        for f in b.status["folders"] if f["pdf_state"] == "done"
    }
    assert pdfs == expected_pdfs
    others = [
        p for p in b.d.outbox.rglob("*")
        if p.is_file() and p.suffix not in (".json", ".pdf") and ".ocr-inbox" not in p.relative_to(b.d.outbox).parts
    ]
    assert others == []
    assert not (b.d.outbox / "links" / "escape.png.json").exists()
    assert not (b.d.outbox / "links" / "linked_dir").exists()


def test_inbox_is_not_modified(battery: Battery) -> None:
    assert battery.inbox_after == battery.inbox_before
    assert battery.inbox_before  # names, sizes, mtimes, modes, content hashes, link targets


# a case that takes the daemon down: kept out of the module's daemon


def test_deleting_a_file_with_a_non_utf8_name_keeps_the_daemon_running(tmp_path: Path, models_dir: Path) -> None:
    d = Daemon(tmp_path, models_dir, FAST).start()
    d.ready()
    bad = Path(os.fsdecode(os.fsencode(d.inbox) + b"/caf\xe9.png"))
    im.save(im.text_crop(CORPUS, "quick"), bad, "PNG")
    d.until(lambda: d.events("file_refused"), "the name refused")
    bad.unlink()
    im.save(im.text_crop(CORPUS, "quick"), d.inbox / "after.png", "PNG")
    try:
        d.until(lambda: "after.png" in json_files(d.outbox), "an image after the deletion")
    finally:
        alive = d.proc is not None and d.proc.poll() is None
        rc = d.stop() if alive else d.wait_exit()
    assert alive and rc == 0
