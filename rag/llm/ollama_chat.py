"""Chat through an Ollama server with the official ``ollama`` client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import httpx
import ollama
import pydantic

from rag.errors import BackendUnavailable, ModelTimeout
from rag.llm._streaming import Finish, StreamingChat
from rag.llm.base import ChatMessage, ChatOptions
from rag.llm.limiter import ConcurrencyLimiter

HEALTH_TIMEOUT_S = 5.0


class OllamaChat(StreamingChat):
    """``keep_alive`` is Ollama's own (e.g. ``"30m"``): how long the model stays loaded.

    ``aclose`` closes the client it was given.
    """

    backend = "ollama"

    def __init__(
        self,
        client: ollama.AsyncClient,
        model: str,
        limiter: ConcurrencyLimiter,
        *,
        keep_alive: str | None = None,
    ) -> None:
        super().__init__(model, limiter)
        self._client = client
        self._keep_alive = keep_alive
        # The client keeps its host only on its private httpx client; read for messages.
        self.url = str(client._client.base_url)

    async def _generate(
        self, messages: Sequence[ChatMessage], options: ChatOptions, deadline: float
    ) -> AsyncGenerator[str | Finish, None]:
        request_options: dict[str, Any] = {
            "num_predict": options.max_tokens,
            "temperature": options.temperature,
        }
        if options.stop:
            request_options["stop"] = list(options.stop)
        final: ollama.ChatResponse | None = None
        try:
            parts = await self._client.chat(
                model=self.name,
                messages=[{"role": m.role, "content": m.content} for m in messages],
                stream=True,
                options=request_options,
                keep_alive=self._keep_alive,
            )
            # The client hands back an async generator that holds the HTTP response open;
            # close it even when we stop early (timeout, caller gone).
            async with aclosing(parts) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    if chunk.message.content:
                        yield chunk.message.content
                    if chunk.done:
                        final = chunk
        except ollama.ResponseError as exc:
            raise self._response_error(exc) from None
        except httpx.TimeoutException as exc:
            raise ModelTimeout(f"Ollama at {self.url} timed out: {exc!r}") from None
        except (httpx.ConnectError, ConnectionError) as exc:
            raise BackendUnavailable(f"cannot reach Ollama at {self.url}: {exc}") from None
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"connection to Ollama at {self.url} failed: {exc}") from None
        except (json.JSONDecodeError, pydantic.ValidationError) as exc:
            raise BackendUnavailable(f"Ollama at {self.url} sent a malformed reply: {exc}") from None
        if final is not None:
            yield Finish(
                prompt_tokens=final.prompt_eval_count or 0,
                completion_tokens=final.eval_count or 0,
                finish_reason="length" if final.done_reason == "length" else "stop",
            )

    def _response_error(self, exc: ollama.ResponseError) -> BackendUnavailable:
        if exc.status_code == 404:
            return BackendUnavailable(
                f"Ollama at {self.url} has no model {self.name}: run `ollama pull {self.name}` ({exc.error})",
                retryable=False,
            )
        message = f"Ollama at {self.url} failed for model {self.name}: {exc.error}"
        if exc.status_code < 0:  # the client's mark for an error line in the middle of a stream
            return BackendUnavailable(message)
        # Other 4xx mean the request itself is wrong; resending it cannot help.
        return BackendUnavailable(f"{message} (HTTP {exc.status_code})", retryable=exc.status_code >= 500)

    async def health(self) -> bool:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                listing = await self._client.list()
        except Exception:  # health reports, it never raises
            return False
        names = {m.model for m in listing.models}
        # Ollama names a model without a tag as ":latest".
        return self.name in names or f"{self.name}:latest" in names

    async def aclose(self) -> None:
        await self._client.close()
