"""Prometheus metrics of one service process, on a registry of its own (no global state).

Counters and histograms are fed where a question ends (``observe_usage``), gauges read the
live state they describe at scrape time: the model queue, the circuit breakers, and the
database's backlog of inbound events, outbox messages and open tickets — the database is
shared by every replica, so those gauges are the same on each and should be read with max().
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from bot.storage.database import Database
from bot.storage.tables import inbound_events, outbox, tickets
from bot.storage.tickets import ACTIVE

log = logging.getLogger(__name__)

STAGES = ("retrieval", "crm", "model_queue", "model_ttft", "model_total", "delivery", "total")
# From a few milliseconds (retrieval) to a minute (a slow model on a busy GPU).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
CIRCUIT = {"closed": 0, "half_open": 1, "open": 2}


class _Backlog(Collector):
    """Inbound events, outbox and open tickets by status, counted in the database at scrape time."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterable[Metric]:
        events = GaugeMetricFamily("perimeter_inbound_events", "Stored inbound events by status", labels=["status"])
        sent = GaugeMetricFamily("perimeter_outbox", "Outbox messages by status", labels=["status"])
        open_tickets = GaugeMetricFamily("perimeter_tickets_open", "Tickets not yet resolved")
        try:
            ev, ob, tk = self._db.tx_sync(_backlog)
        except Exception as exc:  # a scrape must not fail because the database blinked
            log.warning("metrics: backlog query failed: %s", type(exc).__name__)
            return []
        for status in ("pending", "processing", "done", "failed"):
            events.add_metric([status], float(ev.get(status, 0)))
        for status in ("pending", "sending", "sent", "failed"):
            sent.add_metric([status], float(ob.get(status, 0)))
        open_tickets.add_metric([], float(tk))
        return [events, sent, open_tickets]


def _backlog(c: Connection) -> tuple[dict[str, int], dict[str, int], int]:
    events = {s: int(n) for s, n in c.execute(
        select(inbound_events.c.status, func.count()).group_by(inbound_events.c.status))}
    sent = {s: int(n) for s, n in c.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))}
    open_tickets = int(c.execute(select(func.count()).select_from(tickets).where(tickets.c.status.in_(ACTIVE)))
                       .scalar_one())
    return events, sent, open_tickets


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage = Histogram("perimeter_stage_seconds", "Time spent per stage of answering", ["stage"],
                               buckets=BUCKETS, registry=r)
        self.answers = Counter("perimeter_answers", "Questions handled, by how they ended", ["channel", "outcome"],
                               registry=r)
        self.escalations = Counter("perimeter_escalations", "Questions handed to an operator, by reason", ["reason"],
                                   registry=r)
        self.tokens = Counter("perimeter_tokens", "Model tokens", ["direction"], registry=r)
        self.errors = Counter("perimeter_errors", "Errors by kind", ["kind"], registry=r)
        self.job_runs = Counter("perimeter_job_runs", "Scheduled job runs", ["job", "status"], registry=r)
        self.queue_depth = Gauge("perimeter_model_queue_depth", "Requests waiting for a model slot", registry=r)
        self.in_flight = Gauge("perimeter_model_in_flight", "Requests the model is working on", registry=r)
        self.model_circuit = Gauge("perimeter_model_circuit_state", "0 closed, 1 half-open, 2 open", registry=r)
        self.crm_circuit = Gauge("perimeter_crm_circuit_state", "0 closed, 1 half-open, 2 open", registry=r)

    def watch_database(self, db: Database) -> None:
        self.registry.register(_Backlog(db))

    def watch_model(self, waiting: Callable[[], int], in_flight: Callable[[], int],
                    circuit: Callable[[], str] | None) -> None:
        self.queue_depth.set_function(lambda: float(waiting()))
        self.in_flight.set_function(lambda: float(in_flight()))
        if circuit is not None:
            self.model_circuit.set_function(lambda: float(CIRCUIT.get(circuit(), 0)))

    def watch_crm(self, circuit: Callable[[], str]) -> None:
        self.crm_circuit.set_function(lambda: float(CIRCUIT.get(circuit(), 0)))

    def observe_usage(self, *, channel: str, outcome: str, reason: str | None, stages: dict[str, float | None],
                      prompt_tokens: int, completion_tokens: int) -> None:
        self.answers.labels(channel=channel, outcome=outcome).inc()
        if outcome in ("escalated", "failed"):
            self.escalations.labels(reason=reason or outcome).inc()
        for stage, seconds in stages.items():
            if seconds is not None:
                self.stage.labels(stage=stage).observe(seconds)
        if prompt_tokens:
            self.tokens.labels(direction="prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(direction="completion").inc(completion_tokens)

    def observe_delivery(self, seconds: float) -> None:
        self.stage.labels(stage="delivery").observe(seconds)

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
