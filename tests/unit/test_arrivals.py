"""The in-memory receipt times that start a question's deadline at the webhook."""

from __future__ import annotations

from bot.arrivals import Arrivals


def test_arrivals_are_taken_once_and_bounded() -> None:
    arrivals = Arrivals(max_entries=2)
    for key in ("1", "2", "3"):
        arrivals.received("telegram", key)
    assert len(arrivals) == 2
    assert arrivals.take("telegram", "1") is None  # the oldest made room
    first = arrivals.take("telegram", "2")
    assert first is not None
    assert arrivals.take("telegram", "2") is None  # a retry starts its clock when taken up
    assert arrivals.take("bitrix24", "3") is None and arrivals.take("telegram", "3") is not None
