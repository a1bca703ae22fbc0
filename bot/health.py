"""Readiness: can this process answer? Each check says what is wrong, for `/readyz`.

- database: reachable and at the head migration (a replica on an old schema must not serve);
- qdrant: the active collection exists;
- model: the model server answers and has the model (unless none is configured: then answers
  are extractive, which is a choice, not a fault), and its circuit breaker is not open;
- crm: the CRM's circuit breaker is not open (no call is made: readiness probes every few
  seconds must not load the company's CRM).

Every check is bounded by a timeout; a check that raises reports the exception's type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Check = Callable[[], Awaitable[str | None]]  # None: fine; else what is wrong


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str


class Readiness:
    def __init__(self, checks: dict[str, Check], *, timeout_s: float = 3.0) -> None:
        self._checks, self._timeout = checks, timeout_s

    async def run(self) -> dict[str, CheckResult]:
        names = list(self._checks)
        results = await asyncio.gather(*(self._one(self._checks[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def _one(self, check: Check) -> CheckResult:
        try:
            async with asyncio.timeout(self._timeout):
                problem = await check()
        except TimeoutError:
            return CheckResult(False, f"no answer within {self._timeout:g} s")
        except Exception as exc:  # a check must report, never crash the probe
            return CheckResult(False, f"{type(exc).__name__}: {exc}"[:300])
        return CheckResult(problem is None, problem or "ok")
