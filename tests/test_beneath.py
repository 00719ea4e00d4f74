"""``support/beneath.py``: the one way an inbox file is opened, stat'ed and deleted, with
openat2 and with the fallback where the kernel lacks it (or a seccomp filter hides it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ocr_inbox.inbox.cleanup import delete_source
from ocr_inbox.support import beneath
from ocr_inbox.support.errors import BadImage


@pytest.fixture(params=["openat2", "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "fallback":
        def no_openat2(dirfd: int, rel: str, flags: int, resolve: int) -> int:
            raise OSError(38, "Function not implemented")  # ENOSYS: an old kernel

        monkeypatch.setattr(beneath, "_openat2", no_openat2)
    return str(request.param)


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "a").mkdir(parents=True)
    outside.mkdir()
    (inbox / "a" / "p.png").write_bytes(b"page")
    (outside / "p.png").write_bytes(b"secret")
    os.symlink(outside, inbox / "out")  # a folder leading outside
    os.symlink(inbox / "a", inbox / "alias")  # a folder link that stays inside
    return inbox, outside


def test_open_and_stat_stay_beneath_the_inbox(tmp_path: Path, mode: str) -> None:
    inbox, _ = _tree(tmp_path)
    assert beneath.stat_beneath(str(inbox), "a/p.png").st_size == 4
    assert beneath.stat_beneath(str(inbox), "alias/p.png").st_size == 4  # a link inside is followed
    for rel in ("out/p.png", "../outside/p.png"):
        with pytest.raises(BadImage) as exc:
            beneath.stat_beneath(str(inbox), rel)
        assert exc.value.reason == "outside_inbox", (mode, rel)
    with pytest.raises(BadImage) as exc:
        beneath.stat_beneath(str(inbox), "a/none.png")
    assert exc.value.reason == "vanished"


def test_a_delete_goes_through_no_link_and_only_of_the_version_ocrd(tmp_path: Path, mode: str) -> None:
    inbox, outside = _tree(tmp_path)
    st = (inbox / "a" / "p.png").stat()
    # through a folder link, even one that stays inside: refused, nothing deleted
    assert delete_source(str(inbox), "out/p.png", 6, (outside / "p.png").stat().st_mtime_ns) is not None
    assert delete_source(str(inbox), "alias/p.png", st.st_size, st.st_mtime_ns) is not None
    assert (outside / "p.png").exists() and (inbox / "a" / "p.png").exists()
    # its ctime changed since its OCR (a rewrite with its mtime put back, or a chmod): kept
    why = delete_source(str(inbox), "a/p.png", st.st_size, st.st_mtime_ns, ctime_ns=st.st_ctime_ns - 1, ino=st.st_ino)
    assert why is not None and "ctime" in why
    assert delete_source(str(inbox), "a/p.png", st.st_size, st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino) is None
    assert not (inbox / "a" / "p.png").exists()


def test_a_path_typed_is_named_beneath_the_inbox_or_refused(tmp_path: Path) -> None:
    inbox, outside = _tree(tmp_path)
    assert beneath.rel_beneath(str(inbox), str(inbox / "a" / "p.png")) == "a/p.png"
    assert beneath.rel_beneath(str(inbox), str(inbox)) == "."
    assert beneath.rel_beneath(str(inbox), str(outside / "p.png")) is None
    assert beneath.rel_beneath(str(inbox), str(inbox / "out" / "p.png")) is None  # resolves outside
    assert beneath.rel_beneath(str(inbox), str(tmp_path / "inbox2")) is None  # a prefix is not inside
