"""The result of answering one question, shared by the pipeline, the cache and the edges."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rag.llm.base import ChatUsage

Mode = Literal["generated", "extractive", "cached", "none"]


@dataclass(frozen=True)
class SourceRef:
    """A cited source: ``n`` is the number used in the answer text ([1], [2]...)."""

    n: int
    source_id: str
    title: str
    url: str | None
    heading: str
    similarity: float


@dataclass
class AnswerResult:
    """``escalate`` means: a person should take this; ``reason`` says why.

    ``mode`` tells how the text was made: by the model, extractively (the best passage, when
    no model is configured or it failed — ``degraded`` says which), from the answer cache,
    or not at all (``none``, when the gate found nothing to answer from).
    """

    text: str
    sources: list[SourceRef]
    confidence: float
    escalate: bool
    reason: str | None
    mode: Mode
    language: str
    timings: dict[str, float] = field(default_factory=dict)
    usage: ChatUsage | None = None
    degraded: str | None = None
    index_version: int = 0
    used_customer_context: bool = False
    # The error code when the model failed (then the text is extractive): the channel opens a
    # ticket, since a person should check an answer the model could not give.
    failure: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AnswerResult:
        usage = data.get("usage")
        return cls(
            text=data["text"],
            sources=[SourceRef(**s) for s in data.get("sources", [])],
            confidence=float(data["confidence"]),
            escalate=bool(data["escalate"]),
            reason=data.get("reason"),
            mode=data["mode"],
            language=data["language"],
            timings=dict(data.get("timings", {})),
            usage=ChatUsage(**usage) if usage else None,
            degraded=data.get("degraded"),
            index_version=int(data.get("index_version", 0)),
            used_customer_context=bool(data.get("used_customer_context", False)),
            failure=data.get("failure"),
        )
