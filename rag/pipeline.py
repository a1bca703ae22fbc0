"""The answer pipeline: question → hybrid retrieval → confidence gate → prompt → model → answer.

Contract of `AnswerPipeline.answer`: it always returns an AnswerResult for a valid question
(never raises for model or cache trouble): the model's answer with citations, an extractive
answer marked as such when no model is configured or it failed, or ``escalate=True`` with a
reason when nothing relevant was found or the model said the sources do not answer. It
raises InputError for an empty question and BackendUnavailable when the index itself
cannot be searched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from rag.answer import AnswerResult, SourceRef
from rag.answer_cache import SemanticAnswerCache
from rag.errors import BackendUnavailable, DeadlineExceeded, InputError
from rag.extractive import extractive_answer
from rag.language import detect_language
from rag.leak_guard import check_answer
from rag.llm.base import ChatModel, ChatOptions
from rag.prompts import SYSTEM, Turn, build_messages, is_no_answer, postprocess
from rag.retriever import Retrieval, Retriever
from rag.store import Hit, SearchFilter
from rag.text import normalize_text

log = logging.getLogger(__name__)

T = TypeVar("T")

REASON_NO_DOCUMENTS = "no_relevant_documents"
REASON_LOW_CONFIDENCE = "low_confidence"
REASON_MODEL_DECLINED = "model_declined"
REASON_ANSWER_WITHHELD = "answer_withheld"
REASON_MODEL_UNAVAILABLE = "model_unavailable"  # down, overloaded, or no time left for it

_ESCALATE_TEXT = {
    "ru": "В базе знаний нет ответа на этот вопрос. Я передам его оператору — он ответит вам здесь.",
    "en": "The knowledge base has no answer to this question. I will pass it to an operator, who will reply here.",
}


@dataclass(frozen=True)
class PipelineConfig:
    top_k: int = 5
    min_confidence: float = 0.84
    max_question_chars: int = 2000
    max_context_chars: int = 6000
    history_turns: int = 6
    max_tokens: int = 512
    temperature: float = 0.1
    timeout_s: float = 60.0  # one question's whole budget: retrieval, model queue and generation
    canary: str | None = None  # planted in the system prompt; an answer carrying it is withheld


@dataclass(frozen=True)
class Retrieved:
    """Retrieval plus the gate's inputs: what the model would be asked about."""

    question: str
    language: str
    hits: list[Hit]
    confidence: float  # the best dense cosine among the hits
    timings: dict[str, float]
    retrieval: Retrieval


@dataclass(frozen=True)
class AnswerRequest:
    question: str
    history: Sequence[Turn] = ()
    customer_context: str | None = None
    audience: str = "customer"  # "operator" may also read operator-only documents
    language: str | None = None  # None: detected from the question
    # A ``time.monotonic()`` instant by which the answer must be decided; None: the config's
    # ``timeout_s`` from now. The caller sets it when the question waited before (e.g. for CRM).
    deadline: float | None = None


class AnswerPipeline:
    def __init__(
        self,
        retriever: Retriever,
        model: ChatModel | None,
        config: PipelineConfig,
        *,
        cache: SemanticAnswerCache | None = None,
        no_model_reason: str = "no model configured",
    ) -> None:
        self._retriever, self._model, self._cfg, self._cache = retriever, model, config, cache
        self._no_model_reason = no_model_reason
        # Embedding and (embedded) Qdrant search are CPU-bound and not safe to run from many
        # threads at once: one worker thread keeps them off the event loop, in order.
        self._cpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieval")

    async def _off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._cpu.shutdown(wait=False, cancel_futures=True)

    @property
    def model(self) -> ChatModel | None:
        return self._model

    def deadline_from(self, started: float | None = None) -> float:
        """The deadline of a question that arrived at ``started`` (``time.monotonic()``; None:
        now), see ``AnswerRequest.deadline``."""
        return (time.monotonic() if started is None else started) + self._cfg.timeout_s

    def prepare_question(self, raw: str) -> str:
        question = normalize_text(raw or "").strip()
        if not question:
            raise InputError("the question is empty")
        # Long pastes keep their beginning: the prompt must stay inside the model's context.
        return question[: self._cfg.max_question_chars]

    def retrieve(self, request: AnswerRequest) -> Retrieved:
        """Retrieval only, no model (also what the overhead benchmark times)."""
        t0 = time.perf_counter()
        question = self.prepare_question(request.question)
        language = request.language or _language(question)
        audiences = ("customer", "operator") if request.audience == "operator" else ("customer",)
        retrieval = self._retriever.search(question, limit=self._cfg.top_k, flt=SearchFilter(audiences=audiences))
        timings = {
            "prepare": max(0.0, time.perf_counter() - t0 - retrieval.embed_s - retrieval.search_s),
            "embed": retrieval.embed_s,
            "search": retrieval.search_s,
        }
        confidence = max((h.similarity for h in retrieval.hits), default=0.0)
        return Retrieved(question, language, retrieval.hits, confidence, timings, retrieval)

    def gate(self, retrieved: Retrieved) -> str | None:
        """The reason to escalate instead of answering, or None."""
        if not retrieved.hits:
            return REASON_NO_DOCUMENTS
        if retrieved.confidence < self._cfg.min_confidence:
            return REASON_LOW_CONFIDENCE
        return None

    async def answer(self, request: AnswerRequest) -> AnswerResult:
        t0 = time.perf_counter()
        deadline = request.deadline if request.deadline is not None else self.deadline_from()
        try:
            # The retrieval thread serves one question at a time: under load the wait for it
            # counts against the same deadline as the model.
            async with asyncio.timeout_at(_loop_time(deadline)):
                got = await self._off_loop(self.retrieve, request)
        except TimeoutError:
            language = request.language or _language(self.prepare_question(request.question))
            log.warning("no time left to search the knowledge base: the question goes to an operator")
            result = self._escalation(language, 0.0, REASON_MODEL_UNAVAILABLE, [])
            result.failure = DeadlineExceeded.code
            result.timings["total"] = time.perf_counter() - t0
            return result
        question, language, hits, confidence, timings = (
            got.question, got.language, got.hits, got.confidence, dict(got.timings)
        )
        version, collection, qvec = got.retrieval.index_version, got.retrieval.collection, got.retrieval.query_vector

        def finish(result: AnswerResult) -> AnswerResult:
            result.timings.update(timings)
            result.timings["total"] = time.perf_counter() - t0
            result.index_version = version
            return result

        gate_reason = self.gate(got)
        # A verified customer's own data may answer what the documents do not («когда мой
        # платёж?»): then the model decides, and its NO_ANSWER still escalates. Without a model
        # nothing can read that data, so the gate stands.
        from_customer_data = bool(request.customer_context) and self._model is not None
        if gate_reason and not from_customer_data:
            return finish(self._escalation(language, confidence, gate_reason, hits))

        cache = self._cache if not request.customer_context and not request.history else None
        if cache is not None:
            t = time.perf_counter()
            try:
                found = await self._off_loop(
                    cache.lookup, qvec, collection=collection, version=version, audience=request.audience,
                    language=language,
                )
            except Exception as exc:  # the cache is an optimisation: its failure must not fail the answer
                log.warning("answer cache lookup failed: %s", exc)
                found = None
            timings["cache"] = time.perf_counter() - t
            if found:
                cached, _similarity = found
                cached.mode = "cached"
                cached.timings = {}
                cached.usage = None
                return finish(cached)

        if self._model is None:
            return finish(self._extractive(hits, language, confidence, self._no_model_reason))

        t = time.perf_counter()
        messages = build_messages(
            question, hits, language=language, history=self._bounded_history(request.history),
            customer_context=request.customer_context, max_context_chars=self._cfg.max_context_chars,
            canary=self._cfg.canary,
        )
        timings["prompt"] = time.perf_counter() - t
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("no time left to ask the model")
            options = ChatOptions(max_tokens=self._cfg.max_tokens, temperature=self._cfg.temperature, timeout_s=left)
            chat = await self._model.complete(messages, options)
        except BackendUnavailable as exc:
            log.warning("model unavailable, answering extractively: %s", exc)
            if exc.queue_wait_s is not None:
                timings["model_queue"] = exc.queue_wait_s
            if gate_reason:  # no passage good enough to quote: a person must answer
                result = self._escalation(language, confidence, gate_reason, hits)
            else:
                result = self._extractive(hits, language, confidence, f"model unavailable: {exc.code}: {exc}")
            result.failure = exc.code
            return finish(result)
        timings["model_total"] = chat.usage.total_s
        if chat.usage.time_to_first_token_s is not None:
            timings["model_ttft"] = chat.usage.time_to_first_token_s
        if is_no_answer(chat.text):
            result = self._escalation(language, confidence, REASON_MODEL_DECLINED, hits)
            result.usage = chat.usage
            return finish(result)
        allowed = {h.url for h in hits if h.url}
        text, cited = postprocess(chat.text, len(hits), allowed)
        canaries = [self._cfg.canary] if self._cfg.canary else []
        leak = check_answer(text, system_prompts=SYSTEM.values(), canaries=canaries)
        if leak.blocked or not text.strip():  # withheld, or nothing left once links were removed
            # The model was talked into repeating its instructions: a person answers instead.
            log.warning("answer withheld: %s", leak.reason or "nothing left after removing links")
            result = self._escalation(language, confidence, REASON_ANSWER_WITHHELD, hits)
            result.usage = chat.usage
            return finish(result)
        # Uncited answers list the best documents, unless they were below the gate: then the
        # answer came from the customer's data and those documents are no source of it.
        numbers = cited or ([] if gate_reason else list(range(1, min(len(hits), 3) + 1)))
        result = AnswerResult(
            text=text, sources=[_ref(n, hits[n - 1]) for n in numbers], confidence=confidence,
            escalate=False, reason=None, mode="generated", language=language, usage=chat.usage,
            used_customer_context=bool(request.customer_context),
        )
        result = finish(result)
        if cache is not None:
            try:
                await self._off_loop(cache.store, qvec, question, result, collection=collection,
                                     audience=request.audience)
            except Exception as exc:
                log.warning("answer cache store failed: %s", exc)
        return result

    def _bounded_history(self, history: Sequence[Turn]) -> list[Turn]:
        """The recent turns, each cleaned and cut like a question, newest kept first within a
        budget: a pasted wall of text earlier in the chat must not overflow later prompts."""
        if not self._cfg.history_turns:
            return []
        budget = self._cfg.max_context_chars // 2
        kept: list[Turn] = []
        for turn in reversed(list(history)[-2 * self._cfg.history_turns :]):
            text = normalize_text(turn.text).strip()[: self._cfg.max_question_chars]
            if not text:
                continue
            if len(text) > budget:
                break
            budget -= len(text)
            kept.append(Turn(turn.role, text))
        return kept[::-1]

    def _extractive(self, hits: list[Hit], language: str, confidence: float, why: str) -> AnswerResult:
        return AnswerResult(
            text=extractive_answer(hits[0], language), sources=[_ref(1, hits[0])], confidence=confidence,
            escalate=False, reason=None, mode="extractive", language=language, degraded=why,
        )

    @staticmethod
    def _escalation(language: str, confidence: float, reason: str, hits: list[Hit]) -> AnswerResult:
        return AnswerResult(
            text=_ESCALATE_TEXT.get(language, _ESCALATE_TEXT["ru"]),
            sources=[_ref(n, h) for n, h in enumerate(hits[:3], start=1)],  # for the operator's context
            confidence=confidence, escalate=True, reason=reason, mode="none", language=language,
        )


def _loop_time(monotonic_instant: float) -> float:
    """A ``time.monotonic()`` instant on the running loop's clock (``asyncio.timeout_at``)."""
    return asyncio.get_running_loop().time() + (monotonic_instant - time.monotonic())


def _language(question: str) -> str:
    lang = detect_language(question)
    return lang if lang in ("ru", "en") else "ru"


def _ref(n: int, hit: Hit) -> SourceRef:
    return SourceRef(
        n=n, source_id=hit.source_id, title=hit.title, url=hit.url,
        heading=" / ".join(hit.heading_path), similarity=round(hit.similarity, 4),
    )
