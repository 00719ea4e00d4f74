"""What both executors (the local pool, the Ray mirror) know of their workers: ``executors/slots.py``."""

from __future__ import annotations

from ocr_inbox.executors import messages as m
from ocr_inbox.executors.slots import Slot, Slots, SlotState


def test_a_batch_is_in_flight_until_each_image_is_answered_and_the_worker_is_idle_again() -> None:
    slots: Slots[Slot] = Slots({1: Slot(1, started=0.0), 2: Slot(2, started=0.0)})
    assert (slots.ready_count(), slots.capacity(), slots.idle()) == (0, 0, None)  # both loading models
    slots[1].state = slots[2].state = SlotState.idle
    assert (slots.ready_count(), slots.capacity()) == (2, 2)
    jobs = (m.Job(10, "a.png"), m.Job(11, "b.png"), m.Job(12, "c.png"))
    w = slots.idle()
    assert w is not None
    w.take(m.Batch(1, jobs))
    assert slots.busy() and slots.capacity() == 1
    w.answered(jobs[1])
    assert slots.in_flight() == [jobs[0], jobs[2]]  # in the batch's order, the answered one left out
    w.answered(jobs[0])
    w.answered(jobs[2])
    w.batch_done()
    assert slots.in_flight() == [] and not slots.busy() and slots.capacity() == 2
    assert w.images == 3
    w.take(m.Batch(2, jobs[:1]))
    assert slots.in_flight() == [jobs[0]]  # a new batch starts with nothing answered


def test_a_pool_is_usable_while_a_worker_loads_within_its_boot_timeout() -> None:
    slots: Slots[Slot] = Slots({1: Slot(1, started=100.0)})
    assert slots.usable(now=159.0, boot_timeout_s=60)
    assert not slots.usable(now=161.0, boot_timeout_s=60)
    slots[1].state = SlotState.retiring  # loaded, told to exit after its batch
    assert slots.usable(now=1000.0, boot_timeout_s=60)
    assert not Slots[Slot]().usable(now=0.0, boot_timeout_s=60)
