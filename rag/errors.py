"""One error tree for the whole service.

Every failure a caller may want to react to is an ``AppError``; ``retryable`` tells an edge
(CLI, HTTP, bot) whether trying again later can help. Edges translate these once.
"""

from __future__ import annotations


class AppError(Exception):
    """Base of all errors Perimeter raises on purpose."""

    retryable: bool = False
    code: str = "app_error"

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(AppError):
    """Settings are missing or invalid; the message names the variable."""

    code = "config_error"


class InputError(AppError):
    """The caller sent something we cannot accept (empty question, bad dataset line...)."""

    code = "bad_input"


class DocumentError(AppError):
    """A knowledge-base file cannot be read: corrupt, empty, undecodable or too large."""

    code = "document_error"


class BackendUnavailable(AppError):
    """A backend (model server, vector store, embedder server) cannot be reached or failed."""

    code = "backend_unavailable"
    retryable = True


class ModelTimeout(BackendUnavailable):
    """The chat model did not answer within its deadline."""

    code = "model_timeout"


class QueueFull(BackendUnavailable):
    """The bounded model queue is full or the wait exceeded its deadline."""

    code = "model_queue_full"


class ModelCircuitOpen(BackendUnavailable):
    """The model failed repeatedly; calls fail fast until the circuit breaker tries it again."""

    code = "model_circuit_open"
