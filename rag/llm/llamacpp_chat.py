"""Chat with a GGUF model run inside this process by llama.cpp (llama-cpp-python).

A ``Llama`` object is not thread-safe and generation blocks, so each call runs in a worker
thread that holds ``_lock`` for the whole generation and feeds text back to the event loop
through an ``asyncio.Queue``. The limiter (one slot by default) keeps the queue fair and
bounded; the lock is what makes sharing the engine safe whatever the limiter allows.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import BackendUnavailable, ConfigError, ModelTimeout
from rag.llm._streaming import Finish, StreamingChat
from rag.llm.base import ChatMessage, ChatOptions
from rag.llm.limiter import ConcurrencyLimiter

if TYPE_CHECKING:
    from llama_cpp import Llama

DEFAULT_MAX_QUEUE = 16
INSTALL_HINT = "pip install 'perimeter[llamacpp]'"

# A base model has no chat template, and llama-cpp-python then silently formats chats as
# Llama-2 ``[INST]`` turns, which such a model has never seen. A plain transcript ending in
# the assistant's cue is what it continues best; the role cues stop it inventing more turns.
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
PLAIN_STOPS = [f"\n{cue}:" for cue in PLAIN_ROLES.values()]

Emit = Callable[[str | Finish | Exception], None]


def _load_llama_class() -> type[Llama]:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ConfigError(f"the llamacpp backend needs llama-cpp-python: {INSTALL_HINT}") from exc
    return Llama


def plain_prompt(messages: Sequence[ChatMessage]) -> str:
    turns = [f"{PLAIN_ROLES[m.role]}: {m.content.strip()}" for m in messages]
    return "\n\n".join([*turns, f"{PLAIN_ROLES['assistant']}:"])


class LlamaCppChat(StreamingChat):
    """The model loads once, on ``load()`` or lazily inside the first call's deadline.

    ``chat_format`` is llama-cpp-python's (e.g. ``"chatml"``); ``None`` uses the GGUF's own
    template, or a plain transcript when the model has none (base models). ``n_threads``
    bounds the cores used for the prompt and for generation (``None``: llama.cpp's choice).
    """

    backend = "llamacpp"

    def __init__(
        self,
        model_path: Path,
        limiter: ConcurrencyLimiter | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        chat_format: str | None = None,
    ) -> None:
        super().__init__(model_path.name, limiter or ConcurrencyLimiter(1, DEFAULT_MAX_QUEUE))
        self.model_path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._chat_format = chat_format
        self._lock = threading.Lock()
        self._llm: Llama | None = None
        self._plain = False

    async def load(self) -> None:
        """Load the model now instead of in the first call. Raises ``ConfigError``."""
        if self._llm is None:
            await asyncio.to_thread(self._load_locked)

    def _load_locked(self) -> None:
        with self._lock:
            self._ensure_loaded()

    def _ensure_loaded(self) -> Llama:
        """Caller holds ``_lock``."""
        if self._llm is not None:
            return self._llm
        llama_class = _load_llama_class()
        if not self.model_path.is_file():
            raise ConfigError(f"llama.cpp model file not found: {self.model_path}")
        try:
            llm = llama_class(
                model_path=str(self.model_path),
                n_ctx=self._n_ctx,
                # One knob for both phases: llama.cpp's default puts every core on the
                # prompt, and spinning threads slow to a crawl when a core is taken.
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,
                chat_format=self._chat_format,
                verbose=False,
            )
        except ValueError as exc:  # llama-cpp-python's way of saying the file did not load
            raise ConfigError(f"llama.cpp cannot load {self.model_path}: {exc}") from exc
        self._plain = self._chat_format is None and "tokenizer.chat_template" not in llm.metadata
        self._llm = llm
        return llm

    async def _generate(
        self, messages: Sequence[ChatMessage], options: ChatOptions, deadline: float
    ) -> AsyncGenerator[str | Finish, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Finish | Exception] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: str | Finish | Exception) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        worker = loop.run_in_executor(None, self._run, messages, options, deadline, stop, emit)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            stop.set()
            # Hold the slot until the engine is really free: the thread notices ``stop``
            # between tokens. ``wait`` rather than ``await`` so a second cancellation
            # cannot abandon it (the lock would still keep the engine safe).
            await asyncio.wait({worker})

    def _run(
        self,
        messages: Sequence[ChatMessage],
        options: ChatOptions,
        deadline: float,
        stop: threading.Event,
        emit: Emit,
    ) -> None:
        try:
            if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise self._timeout(options)
            try:
                self._run_locked(self._ensure_loaded(), messages, options, deadline, stop, emit)
            finally:
                self._lock.release()
        except (ConfigError, BackendUnavailable) as exc:
            emit(exc)
        except Exception as exc:  # the engine's own errors: too long a prompt, a failed decode
            emit(BackendUnavailable(f"llama.cpp failed on {self.name}: {exc}", retryable=False))

    def _run_locked(
        self,
        llm: Llama,
        messages: Sequence[ChatMessage],
        options: ChatOptions,
        deadline: float,
        stop: threading.Event,
        emit: Emit,
    ) -> None:
        prompt_tokens, chunks = self._start(llm, messages, options)
        completion_tokens = 0
        finish_reason = "stop"
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                # Checked between tokens only: evaluating the prompt is one llama.cpp call
                # that runs to its end, so a deadline can be overrun by that much.
                if time.monotonic() > deadline:
                    raise self._timeout(options)
                choice = chunk["choices"][0]
                text = choice["text"] if self._plain else choice["delta"].get("content")
                if text:
                    # llama.cpp streams one piece per token except where it holds text back
                    # (a partial stop string or UTF-8 sequence), so this may undercount a little.
                    completion_tokens += 1
                    emit(text)
                finish_reason = choice["finish_reason"] or finish_reason
        finally:
            chunks.close()  # ends llama.cpp's own generator, leaving the engine consistent
        emit(Finish(prompt_tokens, completion_tokens, "length" if finish_reason == "length" else "stop"))

    def _start(
        self, llm: Llama, messages: Sequence[ChatMessage], options: ChatOptions
    ) -> tuple[int, Generator[dict[str, Any], None, None]]:
        """The prompt's token count and llama-cpp-python's chunk stream."""
        stop = list(options.stop)
        if self._plain:
            prompt = llm.tokenize(plain_prompt(messages).encode(), add_bos=True, special=True)
            completion: Any = llm.create_completion(
                prompt,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                stop=[*stop, *PLAIN_STOPS],
                stream=True,
            )
            return len(prompt), completion
        # llama-cpp-python renders the chat template internally and does not expose the
        # result, so the count covers the messages' text, not the template's few markers.
        prompt_tokens = sum(len(llm.tokenize(m.content.encode(), add_bos=False)) for m in messages)
        chat_messages: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
        chat: Any = llm.create_chat_completion(
            chat_messages,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            stop=stop,
            stream=True,
        )
        return prompt_tokens, chat

    def _timeout(self, options: ChatOptions) -> ModelTimeout:
        return ModelTimeout(f"llamacpp model {self.name} did not finish within {options.timeout_s:g}s")

    async def health(self) -> bool:
        try:
            await self.load()
        except Exception:  # health reports, it never raises
            return False
        return True

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close_locked)

    def _close_locked(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
