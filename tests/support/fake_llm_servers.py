"""A real HTTP server on 127.0.0.1 that speaks Ollama's and the OpenAI-compatible wire formats.

Adapters are tested against actual sockets, chunked streams and status codes rather than
mocks of our own functions. One server answers both APIs (their paths do not collide):

- Ollama: ``POST /api/chat`` (NDJSON stream or one JSON), ``GET /api/tags``, ``POST /api/embed``
- OpenAI: ``POST /v1/chat/completions`` (SSE stream or one JSON), ``GET /v1/models``,
  ``POST /v1/embeddings``

Change ``server.behaviour`` at any time to script replies, slowness and failures; read
``server.requests`` and ``server.max_in_flight`` to see what the server saw.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

GENERATION_PATHS = ("/api/chat", "/v1/chat/completions")


@dataclass
class FakeBehaviour:
    """How the server answers. ``drop``: close the socket before answering or after the first token."""

    reply: str = "Hello from the fake model."
    models: list[str] = field(default_factory=lambda: ["fake-model", "fake-embed"])
    first_token_delay_s: float = 0.0
    tokens_per_second: float | None = None  # None: as fast as the socket takes them
    hang: bool = False  # accept the request and never answer
    status: int | None = None  # answer every request with this error status
    error_message: str = "fake server failure"
    drop: Literal["before", "mid"] | None = None
    send_usage: bool = True  # OpenAI: honour stream_options.include_usage
    embedding_dim: int = 64


@dataclass(frozen=True)
class RecordedRequest:
    """What the server received; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    proxied_host: str | None = None  # the host asked for when the server was used as a proxy


def hashed_embedding(text: str, dim: int) -> list[float]:
    """Deterministic unit vector: a hashed bag of lower-cased words (zeros for wordless text).

    Texts sharing words get a positive cosine, so retrieval tests can reason about ranks.
    """
    vector = [0.0] * dim
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest, "little") % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def reply_pieces(text: str) -> list[str]:
    """The reply as the "tokens" the server streams: words with their leading space."""
    return re.findall(r"\s*\S+", text)


def prompt_token_count(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages)


class _Stopped(Exception):
    """The server is shutting down; a handler abandons its reply."""


class FakeLLMServer:
    def __init__(self, behaviour: FakeBehaviour | None = None) -> None:
        self.behaviour = behaviour or FakeBehaviour()
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.block_on_close = False  # hanging handlers are released via _closing instead
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._serve, name="fake-llm", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        # A short poll so that stop() returns quickly: tests start and stop many servers.
        self._httpd.serve_forever(poll_interval=0.02)

    def stop(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def generation_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path in GENERATION_PATHS]

    def sleep(self, seconds: float | None) -> None:
        """Wait ``seconds`` (``None``: until the server stops), cut short by ``stop()``."""
        if self._closing.wait(seconds):
            raise _Stopped

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _enter_generation(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave_generation(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked streams, so a dropped stream is an error to the client
    server: ThreadingHTTPServer

    @property
    def fake(self) -> FakeLLMServer:
        return self.server.fake  # type: ignore[attr-defined, no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: test output is not the place for an access log."""

    def do_GET(self) -> None:
        self._handle(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            self._send_json(400, {"error": "invalid JSON body"})
            return
        self._handle(body)

    def _handle(self, body: Any) -> None:
        # As an HTTP proxy the server is sent absolute URIs ("http://llm.example.com/v1/..."): a
        # test can then give a model endpoint a host name outside the perimeter.
        split = urlsplit(self.path)
        self.requested_host = split.netloc or None
        if split.scheme:
            self.path = split.path or "/"
        fake, behaviour = self.fake, self.fake.behaviour
        headers = {name.lower(): value for name, value in self.headers.items()}
        fake._record(RecordedRequest(self.command, self.path, headers, body, self.requested_host))
        generating = self.path in GENERATION_PATHS
        if generating:
            fake._enter_generation()
        try:
            if behaviour.hang:
                fake.sleep(None)
            if behaviour.drop == "before":
                self._drop()
                return
            if behaviour.status is not None:
                self._send_error(behaviour.status, behaviour.error_message)
                return
            self._route(body)
        except (_Stopped, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away, or the test is over
        finally:
            if generating:
                fake._leave_generation()

    def _route(self, body: Any) -> None:
        routes = {
            ("GET", "/api/tags"): self._ollama_tags,
            ("POST", "/api/chat"): self._ollama_chat,
            ("POST", "/api/embed"): self._ollama_embed,
            ("GET", "/v1/models"): self._openai_models,
            ("POST", "/v1/chat/completions"): self._openai_chat,
            ("POST", "/v1/embeddings"): self._openai_embeddings,
        }
        handler = routes.get((self.command, self.path))
        if handler is None:
            self._send_error(404, f"no route {self.command} {self.path}")
            return
        if body is not None and not self._known_model(str(body.get("model", ""))):
            return
        handler(body)

    # --- Ollama ---------------------------------------------------------------------------

    def _ollama_tags(self, _body: Any) -> None:
        models = [
            {"name": m, "model": m, "modified_at": "2025-01-01T00:00:00Z", "size": 1, "digest": "0" * 64}
            for m in self.fake.behaviour.models
        ]
        self._send_json(200, {"models": models})

    def _ollama_chat(self, body: dict[str, Any]) -> None:
        options = body.get("options") or {}
        messages = body.get("messages") or []

        def line(content: str) -> dict[str, Any]:
            return {
                "model": body["model"],
                "created_at": "2025-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": content},
                "done": False,
            }

        def final(content: str, sent: int, reason: str) -> dict[str, Any]:
            return {
                **line(content),
                "done": True,
                "done_reason": reason,
                "total_duration": 1_000_000,
                "prompt_eval_count": prompt_token_count(messages),
                "eval_count": sent,
            }

        pieces, reason = self._scripted_pieces(options.get("num_predict"), options.get("stop"))
        if not body.get("stream", True):
            self.fake.sleep(self.fake.behaviour.first_token_delay_s)
            self._send_json(200, final("".join(pieces), len(pieces), reason))
            return
        self._stream(
            "application/x-ndjson",
            [json.dumps(line(p)) + "\n" for p in pieces],
            [json.dumps(final("", len(pieces), reason)) + "\n"],
        )

    def _ollama_embed(self, body: dict[str, Any]) -> None:
        texts = self._texts(body.get("input"))
        dim = body.get("dimensions") or self.fake.behaviour.embedding_dim
        self._send_json(
            200,
            {
                "model": body["model"],
                "embeddings": [hashed_embedding(t, dim) for t in texts],
                "total_duration": 1_000_000,
                "prompt_eval_count": sum(len(t.split()) for t in texts),
            },
        )

    # --- OpenAI-compatible ----------------------------------------------------------------

    def _openai_models(self, _body: Any) -> None:
        models = self.fake.behaviour.models
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in models]
        self._send_json(200, {"object": "list", "data": data})

    def _openai_chat(self, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        pieces, reason = self._scripted_pieces(body.get("max_tokens"), body.get("stop"))
        usage = {
            "prompt_tokens": prompt_token_count(messages),
            "completion_tokens": len(pieces),
            "total_tokens": prompt_token_count(messages) + len(pieces),
        }
        head = {"id": "chatcmpl-fake", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            self.fake.sleep(self.fake.behaviour.first_token_delay_s)
            message = {"role": "assistant", "content": "".join(pieces)}
            choice = {"index": 0, "message": message, "finish_reason": reason}
            self._send_json(200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage})
            return

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            return f"data: {json.dumps(chunk)}\n\n"

        def delta(content: str) -> str:
            return event([{"index": 0, "delta": {"content": content}, "finish_reason": None}])

        closing = [event([{"index": 0, "delta": {}, "finish_reason": reason}])]
        wants_usage = (body.get("stream_options") or {}).get("include_usage")
        if wants_usage and self.fake.behaviour.send_usage:
            closing.append(event([], usage=usage))
        closing.append("data: [DONE]\n\n")
        # The role arrives with the first token, so pacing and time to first token stay as scripted.
        events = [delta(p) for p in pieces] or [""]
        events[0] = event([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]) + events[0]
        self._stream("text/event-stream", events, closing)

    def _openai_embeddings(self, body: dict[str, Any]) -> None:
        texts = self._texts(body.get("input"))
        dim = body.get("dimensions") or self.fake.behaviour.embedding_dim
        vectors = [hashed_embedding(t, dim) for t in texts]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        tokens = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._send_json(200, {"object": "list", "data": data, "model": body["model"], "usage": usage})

    # --- shared ---------------------------------------------------------------------------

    def _known_model(self, model: str) -> bool:
        models = self.fake.behaviour.models
        if model in models or f"{model}:latest" in models:
            return True
        if self.path.startswith("/api/"):
            self._send_error(404, f'model "{model}" not found, try pulling it first')
        else:
            self._send_error(404, f"The model `{model}` does not exist.")
        return False

    def _scripted_pieces(self, max_tokens: int | None, stop: str | list[str] | None) -> tuple[list[str], str]:
        """The reply cut at a stop string ("stop") or at ``max_tokens`` ("length")."""
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        pieces: list[str] = []
        text = ""
        for piece in reply_pieces(self.fake.behaviour.reply):
            if max_tokens is not None and max_tokens > 0 and len(pieces) >= max_tokens:
                return pieces, "length"
            cut = min((i for s in stops if (i := (text + piece).find(s)) >= 0), default=None)
            if cut is not None:
                if cut > len(text):
                    pieces.append((text + piece)[len(text) : cut])
                return pieces, "stop"
            pieces.append(piece)
            text += piece
        return pieces, "stop"

    def _texts(self, value: Any) -> list[str]:
        return [value] if isinstance(value, str) else [str(v) for v in value or []]

    def _stream(self, content_type: str, token_events: list[str], closing_events: list[str]) -> None:
        """Chunked response: each token event paced by the behaviour, then the closing events."""
        behaviour = self.fake.behaviour
        self.fake.sleep(behaviour.first_token_delay_s)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, data in enumerate(token_events):
            if index and behaviour.tokens_per_second:
                self.fake.sleep(1 / behaviour.tokens_per_second)
            self._write_chunk(data)
            if behaviour.drop == "mid":
                self._drop()
                return
        for data in closing_events:
            self._write_chunk(data)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _write_chunk(self, data: str) -> None:
        raw = data.encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, payload: Any) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        self.wfile.flush()

    def _send_error(self, status: int, message: str) -> None:
        if self.path.startswith("/api/"):
            self._send_json(status, {"error": message})
        else:
            error = {"message": message, "type": "fake_error", "code": status}
            self._send_json(status, {"error": error})

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)
