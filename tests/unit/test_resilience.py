"""ResilientCrm: retries within a budget, per-attempt timeouts, safe write retries, the breaker.

Driven by a scripted stand-in for the *inner* adapter port (the wrapper is the unit under
test) and a hand-moved clock whose ``sleep`` only advances it; per-attempt timeouts use the
event loop's real clock with a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import pytest

from crm_adapters.base import (
    AmbiguousCustomer,
    CrmError,
    CrmReader,
    CrmUnavailable,
    CrmWriter,
    CustomerContext,
    CustomerRef,
    Lookup,
    NewTask,
    Value,
)
from crm_adapters.resilience import CrmCircuitOpen, CrmNotSent, CrmTimeout, ResilientCrm

REF = CustomerRef("scripted", "42")
LOOKUP = Lookup(phone="79161234567")
HANG = "hang"  # a step: wait until the gate opens (forever unless a test opens it)

Step = str | BaseException


class ScriptedCrm:
    """Stand-in for an adapter: each call takes the next step of the script (default: success)."""

    name = "scripted"

    def __init__(self, *steps: Step) -> None:
        self.steps: deque[Step] = deque(steps)
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.closed = False

    def script(self, *steps: Step) -> None:
        self.steps.extend(steps)

    async def _step(self, op: str) -> None:
        self.calls.append(op)
        step = self.steps.popleft() if self.steps else "ok"
        if isinstance(step, BaseException):
            raise step
        if step == HANG:
            await self.gate.wait()

    async def find_customer(self, lookup: Lookup) -> CustomerRef | None:
        await self._step("find_customer")
        return REF

    async def context(self, ref: CustomerRef) -> CustomerContext:
        await self._step("context")
        return CustomerContext(ref, Value("name", "Имя", "Иванова Марина", "personal"))

    async def add_note(self, ref: CustomerRef, text: str, *, deal_id: str | None = None) -> str:
        await self._step("add_note")
        return "note-1"

    async def add_task(self, ref: CustomerRef, task: NewTask) -> str:
        await self._step("add_task")
        return "task-1"

    async def aclose(self) -> None:
        self.closed = True


class ReaderOnly:
    """An adapter without write-back, like SqlCrm."""

    name = "reader"

    async def find_customer(self, lookup: Lookup) -> CustomerRef | None:
        return REF

    async def context(self, ref: CustomerRef) -> CustomerContext:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class Time:
    """A clock the test moves by hand; ``sleep`` records the wait and moves the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def wrap(inner: CrmReader, clock: Time, **kw: float) -> ResilientCrm:
    options: dict[str, float] = dict(attempt_timeout_s=3.0, budget_s=8.0, max_attempts=4,
                                     breaker_threshold=5, breaker_reset_s=30.0)
    options.update(kw)
    return ResilientCrm(inner, clock=clock, sleep=clock.sleep, rand=lambda: 0.5, **options)  # type: ignore[arg-type]


def down(message: str = "503", retry_after_s: float | None = None) -> CrmUnavailable:
    return CrmUnavailable(message, retry_after_s=retry_after_s)


# --- retries -----------------------------------------------------------------------------------


async def test_a_failing_call_is_retried_with_growing_jittered_waits_until_it_succeeds() -> None:
    clock = Time()
    inner = ScriptedCrm(down(), down(), down(), "ok")
    crm = wrap(inner, clock)

    assert await crm.find_customer(LOOKUP) == REF
    assert inner.calls == ["find_customer"] * 4
    # base 0.2 s doubling; equal jitter with rand=0.5 is 3/4 of each step
    assert clock.sleeps == pytest.approx([0.15, 0.3, 0.6])
    stats = crm.stats
    assert (stats.calls, stats.attempts, stats.retries, stats.failures, stats.gave_up) == (1, 4, 3, 3, 0)
    assert crm.consecutive_failures == 0  # the success reset it


async def test_the_crms_retry_after_is_a_floor_for_the_wait() -> None:
    clock = Time()
    inner = ScriptedCrm(down("429", retry_after_s=1.5), "ok")
    assert await wrap(inner, clock).context(REF) is not None
    assert clock.sleeps == [1.5]


async def test_it_gives_up_rather_than_wait_past_the_budget() -> None:
    clock = Time()
    inner = ScriptedCrm(*(down("429", retry_after_s=3.0) for _ in range(4)))
    crm = wrap(inner, clock, budget_s=8.0)

    with pytest.raises(CrmUnavailable, match=r"gave up after 3 attempt\(s\)") as caught:
        await crm.find_customer(LOOKUP)
    # attempts at 0 s, 3 s, 6 s; a third wait would end at 9 s, past the 8 s budget: no sleep for it
    assert len(inner.calls) == 3
    assert clock.sleeps == [3.0, 3.0]
    assert clock.now - 1000.0 == 6.0
    assert caught.value.retry_after_s == 3.0
    assert isinstance(caught.value.__cause__, CrmUnavailable)
    assert crm.stats.gave_up == 1


async def test_it_stops_after_max_attempts() -> None:
    clock = Time()
    inner = ScriptedCrm(*(down() for _ in range(10)))
    with pytest.raises(CrmUnavailable, match="4 attempts made"):
        await wrap(inner, clock, max_attempts=4, breaker_threshold=100).find_customer(LOOKUP)
    assert len(inner.calls) == 4


async def test_each_attempt_is_cut_at_attempt_timeout_and_counts_as_unavailable() -> None:
    clock = Time()
    inner = ScriptedCrm(HANG, HANG)
    crm = wrap(inner, clock, attempt_timeout_s=0.05, max_attempts=2)

    started = time.monotonic()
    with pytest.raises(CrmUnavailable) as caught:
        await crm.context(REF)
    assert time.monotonic() - started < 1.0
    assert isinstance(caught.value.__cause__, CrmTimeout)
    assert len(inner.calls) == 2
    assert crm.stats.timeouts == 2


async def test_the_last_attempt_only_gets_what_is_left_of_the_budget() -> None:
    inner = ScriptedCrm(HANG)
    # the real clock: the budget (0.1 s) is far shorter than the attempt timeout (10 s)
    crm = ResilientCrm(inner, attempt_timeout_s=10.0, budget_s=0.1)
    started = time.monotonic()
    with pytest.raises(CrmUnavailable):
        await crm.find_customer(LOOKUP)
    assert time.monotonic() - started < 1.0


async def test_a_crm_error_is_not_retried_and_does_not_count_against_the_crm() -> None:
    clock = Time()
    for error in (AmbiguousCustomer("two customers"), CrmError("401 bad token")):
        inner = ScriptedCrm(error)
        crm = wrap(inner, clock, breaker_threshold=1)
        with pytest.raises(type(error)):
            await crm.find_customer(LOOKUP)
        assert inner.calls == ["find_customer"]
        assert crm.state == "closed"
        assert crm.consecutive_failures == 0
    assert clock.sleeps == []


# --- writes ------------------------------------------------------------------------------------


async def test_a_write_is_not_repeated_after_a_timeout_or_an_ambiguous_failure() -> None:
    clock = Time()
    inner = ScriptedCrm(HANG)
    crm = wrap(inner, clock, attempt_timeout_s=0.05)
    with pytest.raises(CrmUnavailable, match="may have reached the CRM"):
        await crm.add_note(REF, "Клиент просил перезвонить")
    assert inner.calls == ["add_note"]

    inner.script(down("502 from the proxy"))
    with pytest.raises(CrmUnavailable):
        await crm.add_task(REF, NewTask("Перезвонить"))
    assert inner.calls == ["add_note", "add_task"]
    assert clock.sleeps == []


async def test_a_write_that_was_never_sent_is_retried() -> None:
    clock = Time()
    inner = ScriptedCrm(CrmNotSent("connection refused"), CrmNotSent("connection refused"), "ok")
    crm = wrap(inner, clock)
    assert await crm.add_note(REF, "Клиент просил перезвонить") == "note-1"
    assert inner.calls == ["add_note"] * 3
    inner.script(CrmNotSent("429", retry_after_s=2.0))
    assert await crm.add_task(REF, NewTask("Перезвонить")) == "task-1"
    assert clock.sleeps[-1] == 2.0


async def test_a_reader_only_adapter_takes_no_writes() -> None:
    crm = ResilientCrm(ReaderOnly())
    assert not crm.writable
    assert ResilientCrm(ScriptedCrm()).writable
    assert isinstance(crm, CrmReader) and isinstance(crm, CrmWriter)
    with pytest.raises(CrmError, match="read-only"):
        await crm.add_note(REF, "x")


async def test_aclose_closes_the_inner_adapter() -> None:
    inner = ScriptedCrm()
    await ResilientCrm(inner).aclose()
    assert inner.closed


# --- the breaker -------------------------------------------------------------------------------


async def test_the_breaker_opens_fails_fast_lets_one_probe_through_and_closes() -> None:
    clock = Time()
    inner = ScriptedCrm(down(), down(), down())
    crm = wrap(inner, clock, max_attempts=1, breaker_threshold=3, breaker_reset_s=30.0)

    for _ in range(3):
        with pytest.raises(CrmUnavailable):
            await crm.find_customer(LOOKUP)
    assert crm.state == "open"
    assert crm.consecutive_failures == 3

    # open: fails fast, the CRM is not called
    with pytest.raises(CrmCircuitOpen, match="circuit open") as caught:
        await crm.context(REF)
    assert len(inner.calls) == 3
    assert caught.value.retry_after_s == pytest.approx(30.0)

    # after the reset time: one probe goes through while the others keep failing fast
    clock.now += 30.0
    assert crm.state == "half_open"
    inner.script(HANG)
    probe = asyncio.create_task(crm.find_customer(LOOKUP))
    await asyncio.sleep(0)
    with pytest.raises(CrmCircuitOpen, match="probe"):
        await crm.find_customer(LOOKUP)
    assert len(inner.calls) == 4
    inner.gate.set()
    assert await probe == REF
    assert crm.state == "closed"
    assert crm.consecutive_failures == 0
    stats = crm.stats
    assert (stats.circuit_opened, stats.short_circuited) == (1, 2)


async def test_a_failed_probe_opens_the_circuit_again() -> None:
    clock = Time()
    inner = ScriptedCrm(down(), down())
    crm = wrap(inner, clock, max_attempts=4, breaker_threshold=2, breaker_reset_s=30.0)

    # the circuit opens during the retries: the call stops there instead of hammering on
    with pytest.raises(CrmCircuitOpen):
        await crm.find_customer(LOOKUP)
    assert len(inner.calls) == 2
    assert crm.state == "open"

    clock.now += 30.0
    inner.script(down("still down"))
    with pytest.raises(CrmUnavailable):
        await crm.find_customer(LOOKUP)
    assert len(inner.calls) == 3  # only the probe, no retries past the re-opened circuit
    assert crm.state == "open"
    assert crm.stats.circuit_opened == 2

    clock.now += 29.0
    with pytest.raises(CrmCircuitOpen):
        await crm.find_customer(LOOKUP)
    clock.now += 1.0
    assert await crm.find_customer(LOOKUP) == REF
    assert crm.state == "closed"


async def test_a_success_resets_the_count_of_failures_in_a_row() -> None:
    clock = Time()
    inner = ScriptedCrm(down(), down(), "ok", down(), down())
    crm = wrap(inner, clock, max_attempts=1, breaker_threshold=3)
    for expected in (CrmUnavailable, CrmUnavailable, None, CrmUnavailable, CrmUnavailable):
        if expected is None:
            await crm.find_customer(LOOKUP)
        else:
            with pytest.raises(expected):
                await crm.find_customer(LOOKUP)
    assert crm.state == "closed"
    assert crm.consecutive_failures == 2


async def test_a_neutral_probe_hands_the_probe_slot_on() -> None:
    clock = Time()
    inner = ScriptedCrm(down())
    crm = wrap(inner, clock, max_attempts=1, breaker_threshold=1, breaker_reset_s=10.0)
    with pytest.raises(CrmUnavailable):
        await crm.find_customer(LOOKUP)
    clock.now += 10.0
    inner.script(AmbiguousCustomer("two"))
    with pytest.raises(AmbiguousCustomer):
        await crm.find_customer(LOOKUP)
    assert crm.state == "half_open"
    assert await crm.find_customer(LOOKUP) == REF
    assert crm.state == "closed"
