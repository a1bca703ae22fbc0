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
    # Seconds a model call waited in our own queue before it failed, when known: a failed
    # call's wait is still part of what the customer waited, and reports show it.
    queue_wait_s: float | None = None


# A timeout counts against the model server only if the server had at least this many
# typical calls' worth of time: less means our own queue spent the budget.
FAIR_CHANCE_FACTOR = 3.0


class ModelTimeout(BackendUnavailable):
    """The chat model did not answer within its deadline.

    ``server_s`` is how long the server had the request, ``typical_s`` how long a call
    usually holds a model slot (both None when unknown).
    """

    code = "model_timeout"
    server_s: float | None = None
    typical_s: float | None = None

    @property
    def cut_short(self) -> bool:
        """The deadline ran out before the server had a fair chance: the time went to the
        wait for a slot, so this says the service is overloaded, not that the server is down."""
        if self.server_s is None or self.typical_s is None:
            return False
        return self.server_s < FAIR_CHANCE_FACTOR * self.typical_s


class QueueFull(BackendUnavailable):
    """The bounded model queue is full, or a slot would not (or did not) free up in time."""

    code = "model_queue_full"


class DeadlineExceeded(BackendUnavailable):
    """The question's time ran out before the model could be asked (e.g. during retrieval)."""

    code = "deadline_exceeded"


class ModelCircuitOpen(BackendUnavailable):
    """The model failed repeatedly; calls fail fast until the circuit breaker tries it again."""

    code = "model_circuit_open"
