"""The running service: Telegram in (webhook or polling), the update worker, the outbox
sender and the re-announce loop, started and stopped together.

`perimeter serve` runs this inside the HTTP app's lifespan; `perimeter bot` runs it with a
polling loop and no HTTP server. Everything is built by the composition root.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from aiogram.exceptions import TelegramAPIError, TelegramRetryAfter

from bot.composition import Container
from bot.scheduler import LeasedScheduler
from rag.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

Ingress = Literal["webhook", "polling"]


class ServiceRuntime:
    def __init__(self, container: Container, ingress: Ingress) -> None:
        self.c, self.ingress = container, ingress
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.bot_username: str | None = None
        self.scheduler: LeasedScheduler | None = None

    async def start(self) -> None:
        c, tg = self.c, self.c.settings.telegram
        c.retriever.active_collection()  # refuse now, not at the first question, if nothing is indexed
        self._spawn(c.update_worker.run(self._stop), "event-worker")
        if c.settings.schedule.enabled:
            from bot.jobs import build_scheduler

            self.scheduler = build_scheduler(c)
            self.scheduler.start()
        if not c.telegram_enabled:
            return  # the web app, the widget and CRM events only
        try:
            me = await c.bot.get_me()
        except TelegramAPIError as exc:
            raise ConfigError(f"PERIMETER_TELEGRAM_TOKEN: Telegram refused the token ({exc})") from exc
        except (TimeoutError, OSError) as exc:
            raise BackendUnavailable(f"the Bot API at {tg.api_url} does not answer: {exc}") from exc
        self.bot_username = me.username
        allowed = c.dispatcher.resolve_used_update_types()
        if self.ingress == "webhook":
            assert tg.webhook_url and tg.webhook_secret  # checked by Container.webhook_ingress
            await c.bot.set_webhook(tg.webhook_url, secret_token=tg.webhook_secret.get_secret_value(),
                                    allowed_updates=allowed, drop_pending_updates=False)
        else:
            await c.bot.delete_webhook(drop_pending_updates=False)
            self._spawn(self._poll(allowed), "telegram-polling")
        self._spawn(c.outbox_sender.run(self._stop), "outbox-sender")

    def _spawn(self, coro: object, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))  # type: ignore[arg-type]

    async def stop(self) -> None:
        """Stop taking work, let in-flight updates finish (briefly), close everything. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self.scheduler is not None:
            await self.scheduler.shutdown()
        for task in self._tasks:
            if task.get_name() == "telegram-polling":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.c.aclose()
        log.warning("service stopped cleanly")

    async def wait(self) -> None:
        await self._stop.wait()

    async def _poll(self, allowed: list[str]) -> None:
        """getUpdates, store each update, then confirm it with the next offset."""
        offset: int | None = None
        while not self._stop.is_set():
            try:
                updates = await self.c.bot.get_updates(offset=offset, timeout=25, allowed_updates=allowed)
            except TelegramRetryAfter as exc:
                await asyncio.sleep(exc.retry_after)
                continue
            except (TimeoutError, TelegramAPIError, OSError) as exc:
                log.warning("getUpdates failed, retrying in 3 s: %s", exc)
                await asyncio.sleep(3)
                continue
            for update in updates:
                payload = update.model_dump(mode="json", exclude_none=True, by_alias=True)
                while True:
                    try:
                        await asyncio.to_thread(self.c.telegram_inbox.store, payload)
                        break
                    except Exception:  # the offset only moves past an update once it is stored
                        log.exception("could not store update %s, retrying", update.update_id)
                        await asyncio.sleep(1)
                offset = update.update_id + 1
            if updates:
                self.c.update_worker.notify()
