"""The inbox walk: what is an image, what is refused and why; nothing escapes the inbox."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from deeptree import nested, remove_tree
from imagemaker import plain

from ocr_inbox.config import DEFAULT_IGNORE
from ocr_inbox.inbox import scan
from ocr_inbox.support import paths


def _walk(inbox: Path) -> tuple[set[str], dict[str, str]]:
    ok, refused = set(), {}
    for item in scan.walk(inbox, DEFAULT_IGNORE):
        if isinstance(item, scan.Candidate):
            ok.add(item.rel)
        elif isinstance(item, scan.Refused):
            refused[item.rel] = item.reason
    return ok, refused


def test_images_junk_links_and_special_files(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    plain(inbox / "book" / "p1.JPG", fmt="JPEG")
    plain(inbox / "book" / "p 2 ünï.png")
    plain(outside / "secret.png")
    (inbox / "book" / "notes.txt").write_text("x")
    plain(inbox / "book" / ".hidden.png")
    plain(inbox / "book" / "upload.png.part", fmt="PNG")
    plain(inbox / "__MACOSX" / "p1.png")
    plain(inbox / "@eaDir" / "thumb.jpg", fmt="JPEG")
    (inbox / "book" / "Thumbs.db").write_bytes(b"x")
    os.symlink(outside / "secret.png", inbox / "book" / "escape.png")
    os.symlink(inbox / "book" / "p1.JPG", inbox / "book" / "alias.jpg")
    os.symlink("loop.png", inbox / "book" / "loop.png")
    os.symlink(outside, inbox / "linked_dir")
    os.mkfifo(inbox / "book" / "fifo.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(inbox / "book" / "sock.png"))
    ok, refused = _walk(inbox)
    skipped = {i.rel: i.suffix for i in scan.walk(inbox, DEFAULT_IGNORE) if isinstance(i, scan.Skipped)}
    sock.close()
    assert ok == {"book/p1.JPG", "book/p 2 ünï.png", "book/alias.jpg"}
    # the one other file (not ignored junk, not a special file, not a link) is reported as skipped
    assert skipped == {"book/notes.txt": ".txt"}
    assert refused == {
        "book/escape.png": "symlink_outside_inbox",
        "book/loop.png": "symlink_loop",
        "linked_dir": "directory_symlink",
        "book/fifo.png": "not_a_regular_file",
        "book/sock.png": "not_a_regular_file",
    }


def test_layout_checks(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    assert paths.check_layout(inbox, ("outbox", inbox / "out"))
    assert paths.check_layout(inbox / "sub", ("outbox", inbox))
    assert paths.check_layout(inbox, ("outbox", inbox))
    assert paths.check_layout(inbox, ("outbox", tmp_path / "out")) is None
    assert paths.folder_of("a/b/c.png") == "a/b" and paths.folder_of("c.png") == ""


def test_names_the_outbox_cannot_hold_are_refused(tmp_path: Path) -> None:
    """``<name>.json`` must fit in NAME_MAX (255 bytes); the ledger and JSON hold UTF-8 text only."""
    inbox = tmp_path / "inbox"
    fits = "é" * 123 + ".png"  # 250 bytes: its JSON name is exactly 255
    too_long = "L" * 251 + ".png"  # 255 bytes: a legal name whose JSON name is not
    plain(inbox / fits)
    plain(inbox / too_long)
    plain(Path(os.fsdecode(os.fsencode(inbox) + b"/bad-\xff.png")), fmt="PNG")
    ok, refused = _walk(inbox)
    assert ok == {fits}
    assert refused == {too_long: "name_too_long", "bad-\\xff.png": "name_not_utf8"}
    for rel in refused:
        rel.encode("utf-8")  # storable and loggable


def test_classify_refuses_a_directory_symlink_by_any_name(tmp_path: Path) -> None:
    """The watcher hands single paths to ``classify``: a linked directory must be refused there too."""
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    plain(outside / "secret.png")
    inbox.mkdir()
    os.symlink(outside, inbox / "linked")
    os.symlink(outside, inbox / "linked.png")
    root = os.path.realpath(inbox)
    for rel in ("linked", "linked.png"):
        got = scan.classify(root, rel)
        assert isinstance(got, scan.Refused) and got.reason == "directory_symlink", rel
    assert scan.classify(root, "missing.png") is None






def test_a_deep_tree_is_walked_without_recursion_and_refused_once(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    try:
        _deep_walk(inbox)
    finally:
        remove_tree(inbox)


def _deep_walk(inbox: Path) -> None:
    plain(nested(inbox / "deep", 1200) / "bottom.png")
    plain(nested(inbox / "ok", 3) / "p.png")
    items = list(scan.walk(inbox, DEFAULT_IGNORE, max_depth=5))
    too_deep = "deep" + "/d" * 5
    assert [(i.rel, isinstance(i, scan.Candidate)) for i in items] == [(too_deep, False), ("ok/d/d/d/p.png", True)]
    assert isinstance(items[0], scan.Refused) and items[0].reason == "too_deep"
    # a watcher event deep inside, and a walk of a folder deep inside: the same one refusal
    deep_rel = "deep" + "/d" * 1200 + "/bottom.png"
    got = scan.classify(os.path.realpath(inbox), deep_rel, max_depth=5)
    assert isinstance(got, scan.Refused) and (got.rel, got.reason) == (too_deep, "too_deep")
    sub = list(scan.walk(inbox, subdir="deep" + "/d" * 10, max_depth=5))
    assert [(i.rel, i.reason) for i in sub if isinstance(i, scan.Refused)] == [(too_deep, "too_deep")]
    assert len(sub) == 1


def test_no_path_through_a_symlinked_folder(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    plain(inbox / "x" / "p1.png")
    plain(outside / "b" / "p1.png")
    os.symlink("..", inbox / "x" / "l")
    os.symlink(outside, inbox / "a")
    root = os.path.realpath(inbox)
    for rel, link in (("x/l/x/p1.png", "x/l"), ("x/l/x/l/x/p1.png", "x/l"), ("a/b/p1.png", "a")):
        got = scan.classify(root, rel)
        assert isinstance(got, scan.Refused) and (got.rel, got.reason) == (link, "directory_symlink"), rel
    for subdir, link in (("x/l/x", "x/l"), ("a/b", "a"), ("a", "a")):
        assert [(i.rel, i.reason) for i in scan.walk(inbox, subdir=subdir) if isinstance(i, scan.Refused)] == [
            (link, "directory_symlink")
        ]
    assert _walk(inbox) == ({"x/p1.png"}, {"x/l": "directory_symlink", "a": "directory_symlink"})
