"""`perimeter demo`: the sample bank with a customer who already talked to the bot.

The demo CRM's first customer is verified (as if she had shared her contact) and has asked for a
person, so the widget opens on a real customer with a conversation and an open ticket — through
the same services a Telegram customer goes through, only without a chat to reply into.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from sqlalchemy import select
from sqlalchemy.engine import Connection

from bot.composition import Container
from bot.conversations import Sender
from bot.storage.conversations import ConversationRepository
from bot.storage.events import InboundEventRepository
from bot.storage.tables import inbound_events
from bot.storage.tickets import TicketRepository
from bot.web.auth import WidgetSession

DEMO_CUSTOMER = "1001"  # Иванова Марина Сергеевна in examples/crm/customers.json
DEMO_PHONE = "+79212451807"
DEMO_SENDER = Sender(channel="demo", external_id="demo-1001", chat_id=None, display_name="Марина Иванова",
                     username=None, language_code="ru")
DEMO_QUESTIONS = (
    "Сколько стоит обслуживание карты «Классик»?",
    "Позовите, пожалуйста, оператора: хочу обсудить досрочное погашение кредита.",
)


async def seed_demo_conversation(c: Container) -> None:
    """Once per data dir: verify the demo customer and let her ask two questions."""
    if c.db.tx_sync(_has_active_ticket):
        return
    user_id = await c.conversations.record_sender(DEMO_SENDER)
    await c.customers.verify_contact(user_id, DEMO_SENDER.external_id, DEMO_PHONE, DEMO_SENDER.external_id)
    for n, question in enumerate(DEMO_QUESTIONS):
        event_id = c.db.tx_sync(partial(_seed_event, key=f"seed-{n}", text=question, now=c.clock()))
        await c.conversations.handle_text(event_id, DEMO_SENDER, question)
        c.db.tx_sync(partial(_finish, event_id=event_id, now=c.clock()))


def _has_active_ticket(conn: Connection) -> bool:
    user = ConversationRepository(conn).user(DEMO_SENDER.channel, DEMO_SENDER.external_id)
    return user is not None and TicketRepository(conn).active_for_user(user.id) is not None


def _finish(conn: Connection, *, event_id: int, now: datetime) -> None:
    InboundEventRepository(conn).finish(event_id, now)


def _seed_event(conn: Connection, *, key: str, text: str, now: datetime) -> int:
    """The demo's questions are recorded as inbound events like any other channel's."""
    InboundEventRepository(conn).add("demo", key, None, {"text": text}, now)
    return int(conn.execute(
        select(inbound_events.c.id).where(inbound_events.c.source == "demo", inbound_events.c.key == key)
    ).scalar_one())


def demo_link(c: Container, base_url: str) -> str:
    """A signed link that opens the widget on the demo customer (valid for the session's lifetime)."""
    token = c.session_signer.issue(WidgetSession(
        operator_id="demo:operator", operator_name="Оператор (демо)", vendor="demo", account="demo",
        customer_id=DEMO_CUSTOMER))
    return f"{base_url}/widget/demo?token={token}"
