"""The storage rules the service relies on, on SQLite and PostgreSQL.

Idempotent inbound events handled in order per chat with leases; the outbox's order, pacing
and dedupe; one active ticket per customer; a claim that exactly one of two concurrent
operators wins.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from bot.storage.conversations import ConversationRepository
from bot.storage.events import InboundEventRepository
from bot.storage.outbox import NewOutboxMessage, OutboxRepository
from bot.storage.tables import inbound_events
from bot.storage.tickets import NewTicket, TicketRepository

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _event(repo: InboundEventRepository, key: int, chat: str | None) -> bool:
    return repo.add("telegram", str(key), chat, {"update_id": key}, T0)


def test_an_event_is_stored_once_and_the_duplicate_is_reported(migrated_engine: Engine) -> None:
    with migrated_engine.begin() as c:
        repo = InboundEventRepository(c)
        assert _event(repo, 1, "a") is True
        assert _event(repo, 1, "a") is False
        assert repo.counts() == {"pending": 1}


def test_events_of_one_chat_are_claimed_one_at_a_time_in_order(migrated_engine: Engine) -> None:
    with migrated_engine.begin() as c:
        repo = InboundEventRepository(c)
        for key, chat in [(10, "a"), (11, "a"), (12, "b"), (13, None), (14, None)]:
            _event(repo, key, chat)
    with migrated_engine.begin() as c:
        first = InboundEventRepository(c).claim(T0, 30, limit=10)
    # Chat "a" gets only its first event; events without a chat are not serialised.
    assert [e.key for e in first] == ["10", "12", "13", "14"]
    with migrated_engine.begin() as c:
        repo = InboundEventRepository(c)
        assert repo.claim(T0, 30, limit=10) == []  # all leased, "11" waits behind "10"
        repo.finish(first[0].id, T0)
        assert [e.key for e in repo.claim(T0, 30, limit=10)] == ["11"]


def test_a_crashed_workers_event_is_taken_again_after_its_lease(migrated_engine: Engine) -> None:
    with migrated_engine.begin() as c:
        _event(InboundEventRepository(c), 7, "a")
    with migrated_engine.begin() as c:
        (event,) = InboundEventRepository(c).claim(T0, 30, limit=5)
    assert event.attempts == 1
    with migrated_engine.begin() as c:
        repo = InboundEventRepository(c)
        assert repo.claim(T0 + timedelta(seconds=29), 30, limit=5) == []
        (again,) = repo.claim(T0 + timedelta(seconds=31), 30, limit=5)
    assert again.id == event.id and again.attempts == 2


def test_a_failed_event_keeps_its_reason_and_is_never_claimed_again(migrated_engine: Engine) -> None:
    with migrated_engine.begin() as c:
        repo = InboundEventRepository(c)
        _event(repo, 8, "a")
        (event,) = repo.claim(T0, 30, limit=5)
        repo.retry_later(event.id, "boom", T0 + timedelta(seconds=5))
        assert repo.claim(T0 + timedelta(seconds=4), 30, limit=5) == []
        (event,) = repo.claim(T0 + timedelta(seconds=5), 30, limit=5)
        repo.fail(event.id, "boom again", T0)
        repo.finish(event.id, T0)  # a late finish does not overwrite the failure
        assert repo.claim(T0 + timedelta(hours=1), 30, limit=5) == []
        row = c.execute(select(inbound_events.c.status, inbound_events.c.error)).one()
    assert (row.status, row.error) == ("failed", "boom again")


def _msg(chat: int, text: str, key: str | None = None) -> NewOutboxMessage:
    return NewOutboxMessage("telegram", chat, "sendMessage", {"text": text}, "notice", dedupe_key=key)


def test_outbox_dedupes_keeps_order_per_chat_and_paces_each_chat(migrated_engine: Engine) -> None:
    with migrated_engine.begin() as c:
        repo = OutboxRepository(c)
        first = repo.add(_msg(1, "a1", "k1"), T0)
        assert first is not None
        assert repo.add(_msg(1, "a1 again", "k1"), T0) is None
        repo.add(_msg(1, "a2"), T0)
        repo.add(_msg(2, "b1"), T0)
    with migrated_engine.begin() as c:
        rows = OutboxRepository(c).claim_due(T0, lease_s=60, per_chat_interval_s=1.0, limit=10)
        assert [r.payload["text"] for r in rows] == ["a1", "b1"]
        OutboxRepository(c).mark_sent(rows[0].id, 501, T0)
    with migrated_engine.begin() as c:
        repo = OutboxRepository(c)
        # "a2" is next for chat 1 but not within a second of "a1".
        assert repo.claim_due(T0 + timedelta(seconds=0.5), lease_s=60, per_chat_interval_s=1.0, limit=10) == []
        (row,) = repo.claim_due(T0 + timedelta(seconds=1.1), lease_s=60, per_chat_interval_s=1.0, limit=10)
        assert row.payload["text"] == "a2"
        assert repo.find_sent(1, 501) is not None and repo.find_sent(1, 502) is None


def test_a_rescheduled_row_waits_for_its_time(migrated_engine: Engine) -> None:
    with migrated_engine.begin() as c:
        repo = OutboxRepository(c)
        repo.add(_msg(1, "x"), T0)
        (row,) = repo.claim_due(T0, lease_s=60, per_chat_interval_s=0, limit=5)
        repo.reschedule(row.id, T0 + timedelta(seconds=7), "429 retry after 7s", count_attempt=False)
        assert repo.claim_due(T0 + timedelta(seconds=6.9), lease_s=60, per_chat_interval_s=0, limit=5) == []
        (again,) = repo.claim_due(T0 + timedelta(seconds=7), lease_s=60, per_chat_interval_s=0, limit=5)
        assert again.attempts == 0


def _customer(engine: Engine, external_id: str = "42") -> tuple[int, int]:
    with engine.begin() as c:
        repo = ConversationRepository(c)
        user = repo.upsert_user("telegram", external_id, chat_id=int(external_id), display_name="Иван Петров",
                                username=None, language="ru", now=T0)
        return user.id, repo.current_conversation(user, T0, 3600)


def _new_ticket(user_id: int, conversation_id: int) -> NewTicket:
    return NewTicket(user_id=user_id, conversation_id=conversation_id, channel="telegram", reason="low_confidence",
                     language="ru", summary="", summary_mode="last_messages", transcript=[])


def test_a_customer_has_at_most_one_active_ticket(migrated_engine: Engine) -> None:
    user_id, conv = _customer(migrated_engine)
    with migrated_engine.begin() as c:
        repo = TicketRepository(c)
        first, created = repo.open(_new_ticket(user_id, conv), T0)
        again, created_again = repo.open(_new_ticket(user_id, conv), T0)
        assert created and not created_again and again.id == first.id
        assert repo.resolve(first.id, "7", "Оля", T0)
        third, created_third = repo.open(_new_ticket(user_id, conv), T0)
        assert created_third and third.id != first.id
        assert [k for k, _, _ in repo.events(first.id)] == ["opened", "resolved"]


def test_two_operators_claiming_at_once_exactly_one_wins(migrated_engine: Engine) -> None:
    user_id, conv = _customer(migrated_engine)
    with migrated_engine.begin() as c:
        ticket, _ = TicketRepository(c).open(_new_ticket(user_id, conv), T0)
    results: dict[str, bool] = {}
    barrier = threading.Barrier(2)

    def claim(operator: str) -> None:
        barrier.wait()
        with migrated_engine.begin() as c:
            results[operator] = TicketRepository(c).claim(ticket.id, operator, f"op {operator}", T0)

    threads = [threading.Thread(target=claim, args=(op,)) for op in ("1", "2")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results.values()) == [False, True]
    winner = next(op for op, won in results.items() if won)
    with migrated_engine.begin() as c:
        stored = TicketRepository(c).get(ticket.id)
        assert stored is not None and stored.operator_id == winner and stored.status == "claimed"
        # Only the holder may reply.
        loser = "2" if winner == "1" else "1"
        assert not TicketRepository(c).mark_answered(ticket.id, loser, "hi", T0)
        assert TicketRepository(c).mark_answered(ticket.id, winner, "hi", T0)


def test_timestamps_come_back_aware_in_utc(migrated_engine: Engine) -> None:
    user_id, _conv = _customer(migrated_engine)
    with migrated_engine.begin() as c:
        user = ConversationRepository(c).user_by_id(user_id)
        row = ConversationRepository(c).history(1, before_id=None, limit=5)
    assert user.language == "ru" and row == []
    with migrated_engine.begin() as c:
        (stamp,) = c.execute(select(inbound_events.c.received_at)).scalars().all() or [T0]
    assert stamp.tzinfo is not None and stamp == T0
