"""StabilityTracker with an injected clock: no sleeps."""

from __future__ import annotations

from ocr_inbox.inbox.stability import StabilityTracker


def test_settles_after_settle_s_without_change() -> None:
    t = StabilityTracker()
    t.seen("a.jpg", 100, 1, now=0.0)
    t.seen("a.jpg", 100, 1, now=2.9)
    assert t.settled(now=2.9, settle_s=3.0) == []
    t.seen("a.jpg", 100, 1, now=3.0)
    assert t.settled(now=3.0, settle_s=3.0) == ["a.jpg"]
    # returned once, then forgotten
    assert "a.jpg" not in t and len(t) == 0
    assert t.settled(now=100.0, settle_s=3.0) == []


def test_a_change_restarts_the_clock() -> None:
    t = StabilityTracker()
    t.seen("a.jpg", 100, 1, now=0.0)
    t.seen("a.jpg", 200, 1, now=2.0)  # size changed
    t.seen("a.jpg", 200, 1, now=4.0)
    assert t.settled(now=4.0, settle_s=3.0) == []
    t.seen("a.jpg", 200, 2, now=4.5)  # same size, new mtime (rewritten in place)
    t.seen("a.jpg", 200, 2, now=7.0)
    assert t.settled(now=7.0, settle_s=3.0) == []
    t.seen("a.jpg", 200, 2, now=7.5)
    assert t.settled(now=7.5, settle_s=3.0) == ["a.jpg"]


def test_a_file_nobody_looked_at_again_is_not_assumed_settled() -> None:
    t = StabilityTracker()
    t.seen("a.jpg", 100, 1, now=0.0)
    assert t.settled(now=1000.0, settle_s=3.0) == []
    assert t.tracked() == ["a.jpg"]
    t.seen("a.jpg", 100, 1, now=1000.0)
    assert t.settled(now=1000.0, settle_s=3.0) == ["a.jpg"]


def test_slow_writer_is_never_settled_while_writing() -> None:
    """100 bytes every 50 ms for 20 s, looked at on every write and every 1 s tick."""
    t = StabilityTracker()
    settle_s = 3.0
    size, step_ms = 0, 0
    while step_ms <= 20_000:
        now = step_ms / 1000
        size += 100
        t.seen("slow.tif", size, step_ms * 1_000_000, now)
        if step_ms % 1000 == 0:
            assert t.settled(now, settle_s) == []
        step_ms += 50
    last_write = (step_ms - 50) / 1000
    # writing stopped: the next looks see the same size and mtime
    t.seen("slow.tif", size, (step_ms - 50) * 1_000_000, last_write + 1.0)
    assert t.settled(last_write + 1.0, settle_s) == []
    t.seen("slow.tif", size, (step_ms - 50) * 1_000_000, last_write + settle_s)
    assert t.settled(last_write + settle_s, settle_s) == ["slow.tif"]


def test_settled_returns_only_the_stable_ones_in_name_order() -> None:
    t = StabilityTracker()
    for name in ("c.jpg", "a.jpg", "b.jpg"):
        t.seen(name, 1, 1, now=0.0)
    t.seen("b.jpg", 2, 2, now=2.0)  # b still changes
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        t.seen(name, 2 if name == "b.jpg" else 1, 2 if name == "b.jpg" else 1, now=3.0)
    assert t.settled(now=3.0, settle_s=3.0) == ["a.jpg", "c.jpg"]
    assert t.tracked() == ["b.jpg"]


def test_forget() -> None:
    t = StabilityTracker()
    t.seen("a.jpg", 1, 1, now=0.0)
    t.forget("a.jpg")
    t.forget("never-seen.jpg")
    t.seen("a.jpg", 1, 1, now=10.0)
    assert t.settled(now=10.0, settle_s=3.0) == []  # the clock started again


def test_zero_settle_time_takes_files_at_once() -> None:
    t = StabilityTracker()
    t.seen("a.jpg", 1, 1, now=5.0)
    assert t.settled(now=5.0, settle_s=0.0) == ["a.jpg"]


def test_looks_after_now_do_not_count() -> None:
    t = StabilityTracker()
    t.seen("a.jpg", 1, 1, now=0.0)
    t.seen("a.jpg", 1, 1, now=10.0)
    assert t.settled(now=2.0, settle_s=3.0) == []
