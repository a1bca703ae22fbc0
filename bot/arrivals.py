"""When this process received each inbound event, so a question's deadline starts at receipt.

A customer's wait starts when the webhook stored their message, not when a worker took it up:
under load the message may sit in the inbox table for seconds first, and that time must come
out of the same budget as retrieval and the model. The instant is a ``time.monotonic()`` reading
kept in memory rather than a database timestamp, so it is immune to wall-clock steps and
needs no schema; an event received by another replica or before a restart has none and its
clock starts when it is taken up, as does a retry (the first attempt took the instant).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class Arrivals:
    """``received`` at ingress (any thread), ``take`` once when the event is handled."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._at: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()  # the webhook stores from worker threads

    def received(self, source: str, key: str) -> None:
        with self._lock:
            self._at[(source, key)] = time.monotonic()
            while len(self._at) > self._max:  # events handled elsewhere never get taken here
                self._at.popitem(last=False)

    def take(self, source: str, key: str) -> float | None:
        with self._lock:
            return self._at.pop((source, key), None)

    def __len__(self) -> int:
        return len(self._at)
