"""Chat through any OpenAI-compatible server: vLLM, TGI, llama.cpp server, LocalAI.

Speaks ``POST /v1/chat/completions`` with server-sent events. The given ``httpx.AsyncClient``
has the server root as ``base_url`` (``http://127.0.0.1:8000``); the paths add ``/v1``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import httpx

from rag.errors import BackendUnavailable, ModelTimeout
from rag.llm._streaming import Finish, StreamingChat
from rag.llm.base import ChatMessage, ChatOptions
from rag.llm.limiter import ConcurrencyLimiter

HEALTH_TIMEOUT_S = 5.0
CHARS_PER_TOKEN = 4  # rough figure for English and code when a server reports no usage


class OpenAICompatibleChat(StreamingChat):
    """``aclose`` closes the client it was given."""

    backend = "openai"

    def __init__(
        self,
        http: httpx.AsyncClient,
        model: str,
        limiter: ConcurrencyLimiter,
        *,
        api_key: str | None = None,
    ) -> None:
        super().__init__(model, limiter)
        self._http = http
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = str(http.base_url)
        self._where = f"OpenAI-compatible server at {self.url}"

    async def _generate(
        self, messages: Sequence[ChatMessage], options: ChatOptions, deadline: float
    ) -> AsyncGenerator[str | Finish, None]:
        payload: dict[str, Any] = {
            "model": self.name,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if options.stop:
            payload["stop"] = list(options.stop)
        try:
            async with self._http.stream(
                "POST",
                "/v1/chat/completions",
                json=payload,
                headers=self._headers,
                # The client's own default (5 s between reads) would cut a model that is
                # slow to start; our deadline is the bound.
                timeout=max(deadline - time.monotonic(), 0.001),
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._status_error(response)
                async for piece in self._read_events(response, messages):
                    yield piece
        except httpx.TimeoutException as exc:
            raise ModelTimeout(f"{self._where} timed out: {exc!r}") from None
        except httpx.ConnectError as exc:
            raise BackendUnavailable(f"cannot reach {self._where}: {exc}") from None
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"connection to {self._where} failed: {exc}") from None

    async def _read_events(
        self, response: httpx.Response, messages: Sequence[ChatMessage]
    ) -> AsyncGenerator[str | Finish, None]:
        usage: dict[str, Any] | None = None
        finish_reason: str | None = None
        pieces = 0
        async for line in response.aiter_lines():
            # SSE: only ``data:`` lines carry chunks; comments, ``event:`` and blanks do not.
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                raise BackendUnavailable(f"{self._where} sent a malformed event: {data[:200]!r}") from None
            if "error" in chunk:
                raise BackendUnavailable(f"{self._where} failed mid-stream: {_error_text(chunk)}")
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    pieces += 1
                    yield content
                finish_reason = choice.get("finish_reason") or finish_reason
        if finish_reason is None:
            return  # the stream was cut before the model finished
        if usage:
            prompt_tokens = usage.get("prompt_tokens", 0)
            completion_tokens = usage.get("completion_tokens", 0)
        else:
            # Servers that ignore stream_options send no usage. Approximate: characters / 4
            # for the prompt, and one streamed piece per token (true for vLLM and llama.cpp).
            prompt_tokens = sum(len(m.content) for m in messages) // CHARS_PER_TOKEN
            completion_tokens = pieces
        yield Finish(prompt_tokens, completion_tokens, "length" if finish_reason == "length" else "stop")

    def _status_error(self, response: httpx.Response) -> BackendUnavailable:
        detail = _error_text(_json_or_text(response))
        status = response.status_code
        where = self._where
        if status == 404:
            return BackendUnavailable(
                f"{where} has no model {self.name} (or no /v1/chat/completions): {detail}", retryable=False
            )
        if status in (401, 403):
            return BackendUnavailable(f"{where} refused the API key ({status}): {detail}", retryable=False)
        # Other 4xx mean the request itself is wrong (prompt too long...); resending cannot help.
        return BackendUnavailable(f"{where} failed (HTTP {status}): {detail}", retryable=status >= 500)

    async def health(self) -> bool:
        try:
            response = await self._http.get("/v1/models", headers=self._headers, timeout=HEALTH_TIMEOUT_S)
            response.raise_for_status()
            return any(m.get("id") == self.name for m in response.json().get("data", []))
        except Exception:  # health reports, it never raises
            return False

    async def aclose(self) -> None:
        await self._http.aclose()


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _error_text(body: Any) -> str:
    """The message of the error shapes these servers use, or the body itself."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)
        if isinstance(error, str):
            return error
        return str(body.get("message") or body.get("detail") or body)  # older vLLM, FastAPI
    return str(body)[:500]
