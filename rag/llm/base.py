"""The chat-model port and the figures every call reports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class ChatOptions:
    """Per-call knobs. ``timeout_s`` bounds the whole call including the queue wait."""

    max_tokens: int = 512
    temperature: float = 0.1
    stop: tuple[str, ...] = ()
    timeout_s: float = 60.0


@dataclass(frozen=True)
class ChatUsage:
    """Figures of one call. Times are seconds measured by us, tokens as the backend counts them."""

    prompt_tokens: int
    completion_tokens: int
    queue_wait_s: float
    time_to_first_token_s: float | None
    total_s: float
    model: str
    backend: str  # "ollama" | "openai" | "llamacpp"


@dataclass(frozen=True)
class ChatResult:
    text: str
    usage: ChatUsage
    finish_reason: str = "stop"  # "stop" | "length"


@dataclass(frozen=True)
class StreamEvent:
    """A streamed piece. The last event has ``done=True`` and carries ``result``."""

    delta: str = ""
    done: bool = False
    result: ChatResult | None = None


@runtime_checkable
class ChatModel(Protocol):
    """A local language model.

    Contract: ``complete`` and ``stream`` raise ``ModelTimeout`` past ``options.timeout_s``,
    ``QueueFull`` when the bounded concurrency queue cannot take the call in time and
    ``BackendUnavailable`` for connection errors and 5xx; they never hang and never retry
    on their own (callers decide). ``name`` is the model, ``backend`` the adapter kind.
    """

    name: str
    backend: str

    async def complete(self, messages: Sequence[ChatMessage], options: ChatOptions) -> ChatResult: ...

    def stream(self, messages: Sequence[ChatMessage], options: ChatOptions) -> AsyncIterator[StreamEvent]: ...

    async def health(self) -> bool:
        """True when the backend answers and has the model; never raises."""
        ...

    async def aclose(self) -> None: ...
