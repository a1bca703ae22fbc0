from __future__ import annotations

import asyncio

import pytest

from rag.errors import QueueFull
from rag.llm.limiter import ConcurrencyLimiter


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


async def hold(limiter: ConcurrencyLimiter, release: asyncio.Event, log: list[str], name: str) -> float:
    async with limiter.slot(5) as waited:
        log.append(name)
        await release.wait()
    return waited


async def test_free_slot_is_taken_at_once() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=2, max_queue=0)
    async with limiter.slot(1) as waited:
        assert waited == 0.0
        assert (limiter.in_flight, limiter.waiting) == (1, 0)
    assert limiter.in_flight == 0


async def test_waiters_are_served_in_arrival_order() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=10)
    release = asyncio.Event()
    log: list[str] = []
    first = asyncio.create_task(hold(limiter, release, log, "first"))
    await settle()
    others = []
    for name in ["a", "b", "c", "d"]:
        others.append(asyncio.create_task(hold(limiter, release, log, name)))
        await settle()
    assert (limiter.in_flight, limiter.waiting) == (1, 4)
    release.set()
    waits = await asyncio.gather(first, *others)
    assert log == ["first", "a", "b", "c", "d"]
    assert all(w > 0 for w in waits[1:])
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


async def test_newcomer_does_not_overtake_a_woken_waiter() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=10)
    log: list[str] = []
    release = asyncio.Event()
    holder = asyncio.create_task(hold(limiter, release, log, "holder"))
    await settle()
    waiter = asyncio.create_task(hold(limiter, asyncio.Event(), log, "waiter"))
    await settle()
    release.set()
    await holder
    # The slot was handed to "waiter" on release, before it ran: a caller arriving now queues.
    assert limiter.in_flight == 1
    with pytest.raises(QueueFull):
        async with limiter.slot(0.05):
            pass
    await settle()
    assert log == ["holder", "waiter"]
    waiter.cancel()


async def test_full_queue_is_refused_immediately() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=1)
    release = asyncio.Event()
    tasks = [asyncio.create_task(hold(limiter, release, [], str(i))) for i in range(2)]
    await settle()
    assert (limiter.in_flight, limiter.waiting) == (1, 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(QueueFull, match="full"):
        async with limiter.slot(10):
            pass
    assert loop.time() - started < 0.1
    release.set()
    await asyncio.gather(*tasks)


async def test_wait_past_deadline_raises_queue_full() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=5)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(limiter, release, [], "holder"))
    await settle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(QueueFull, match=r"within 0\.1s"):
        async with limiter.slot(0.1):
            pass
    assert 0.09 < loop.time() - started < 0.5
    assert (limiter.in_flight, limiter.waiting) == (1, 0)
    release.set()
    await holder
    assert limiter.in_flight == 0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=5)
    release = asyncio.Event()
    log: list[str] = []
    holder = asyncio.create_task(hold(limiter, release, log, "holder"))
    await settle()
    cancelled = asyncio.create_task(hold(limiter, release, log, "cancelled"))
    after = asyncio.create_task(hold(limiter, release, log, "after"))
    await settle()
    cancelled.cancel()
    await settle()
    assert limiter.waiting == 1
    release.set()
    await asyncio.gather(holder, after)
    assert cancelled.cancelled()
    assert log == ["holder", "after"]
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


async def test_waiter_cancelled_after_the_handover_passes_the_slot_on() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=5)
    log: list[str] = []
    async with limiter.slot(1):
        unlucky = asyncio.create_task(hold(limiter, asyncio.Event(), log, "unlucky"))
        after = asyncio.create_task(hold(limiter, asyncio.Event(), log, "after"))
        await settle()
    # Leaving the block handed the slot to "unlucky", which is cancelled before it ran.
    unlucky.cancel()
    await settle()
    assert unlucky.cancelled()
    assert log == ["after"]
    assert (limiter.in_flight, limiter.waiting) == (1, 0)
    after.cancel()
    await settle()
    assert (limiter.in_flight, limiter.waiting) == (0, 0)


async def test_exception_in_body_releases_the_slot() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=0)
    with pytest.raises(RuntimeError):
        async with limiter.slot(1):
            raise RuntimeError("boom")
    async with limiter.slot(1) as waited:
        assert waited == 0.0


def test_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        ConcurrencyLimiter(max_concurrent=0, max_queue=1)
    with pytest.raises(ValueError):
        ConcurrencyLimiter(max_concurrent=1, max_queue=-1)


async def test_learns_how_long_a_call_holds_its_slot() -> None:
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=5)
    assert limiter.typical_hold_s is None
    async with limiter.slot(1):
        await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError):  # a failed call says nothing about how long answers take
        async with limiter.slot(1):
            raise RuntimeError("boom")
    assert limiter.typical_hold_s is not None and limiter.typical_hold_s >= 0.05


async def trained(hold_s: float) -> tuple[ConcurrencyLimiter, float]:
    """A one-slot limiter that has seen one call hold its slot for ``hold_s``, and its estimate."""
    limiter = ConcurrencyLimiter(max_concurrent=1, max_queue=10)
    async with limiter.slot(1):
        await asyncio.sleep(hold_s)
    assert limiter.typical_hold_s is not None
    return limiter, limiter.typical_hold_s


async def test_a_caller_whose_turn_would_come_too_late_is_refused_on_arrival() -> None:
    limiter, typical = await trained(0.05)
    release = asyncio.Event()
    queued = [asyncio.create_task(hold(limiter, release, [], str(i))) for i in range(4)]
    await settle()
    assert (limiter.in_flight, limiter.waiting) == (1, 3)
    assert limiter.expected_wait_s() == pytest.approx(4 * typical)

    # Four calls' time ahead of it and one of its own: a deadline of three cannot be kept.
    with pytest.raises(QueueFull, match="would not reach this request in time") as refused:
        async with limiter.slot(3 * typical):
            pass
    assert refused.value.queue_wait_s == 0.0
    assert limiter.waiting == 3  # it never took a place in the line

    # With time for the wait and the answer it queues as before.
    patient = asyncio.create_task(hold(limiter, release, [], "patient"))
    await settle()
    assert limiter.waiting == 4
    release.set()
    await asyncio.gather(*queued, patient)


async def test_a_wait_keeps_a_typical_calls_time_for_the_answer() -> None:
    limiter, typical = await trained(0.1)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(limiter, release, [], "holder"))
    await settle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Admitted (one call ahead: about `typical` to wait), but the holder never finishes: it
    # gives up while a typical call's time is still left, not at the deadline.
    with pytest.raises(QueueFull, match="keeping time to answer") as refused:
        async with limiter.slot(2.5 * typical):
            pass
    waited = loop.time() - started
    assert waited < 2.5 * typical
    assert refused.value.queue_wait_s == pytest.approx(waited, abs=0.05)
    release.set()
    await holder
