"""The fake server keeps the wire contracts other tests build on (embeddings, one-shot chat)."""

from __future__ import annotations

import math

import httpx
import ollama
import pytest

from tests.support.fake_llm_servers import FakeLLMServer, hashed_embedding


async def test_ollama_embed_is_deterministic_and_normalised(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.embedding_dim = 16
    client = ollama.AsyncClient(host=fake_llm_server.url)

    response = await client.embed(model="fake-embed", input=["refund policy", "Refund the policy!", ""])

    first, second, empty = (list(v) for v in response.embeddings)
    assert len(first) == 16
    assert math.isclose(sum(v * v for v in first), 1.0)
    assert first == hashed_embedding("refund policy", 16)
    assert sum(a * b for a, b in zip(first, second, strict=True)) > 0.5  # shared words
    assert empty == [0.0] * 16
    await client.close()


async def test_ollama_embed_unknown_model_is_404(fake_llm_server: FakeLLMServer) -> None:
    client = ollama.AsyncClient(host=fake_llm_server.url)

    with pytest.raises(ollama.ResponseError, match="not found") as caught:
        await client.embed(model="nomic-embed-text", input="x")
    assert caught.value.status_code == 404
    await client.close()


async def test_openai_embeddings_and_models(fake_llm_server: FakeLLMServer) -> None:
    async with httpx.AsyncClient(base_url=fake_llm_server.url) as http:
        response = await http.post(
            "/v1/embeddings", json={"model": "fake-embed", "input": ["a b", "c"], "dimensions": 8}
        )
        models = (await http.get("/v1/models")).json()

    body = response.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][1]["embedding"] == hashed_embedding("c", 8)
    assert body["usage"]["prompt_tokens"] == 3
    assert [m["id"] for m in models["data"]] == ["fake-model", "fake-embed"]


async def test_one_shot_chat_in_both_dialects(fake_llm_server: FakeLLMServer) -> None:
    messages = [{"role": "user", "content": "hi there"}]
    client = ollama.AsyncClient(host=fake_llm_server.url)
    reply = await client.chat(model="fake-model", messages=messages, options={"num_predict": 2})
    await client.close()
    async with httpx.AsyncClient(base_url=fake_llm_server.url) as http:
        openai = (await http.post("/v1/chat/completions", json={"model": "fake-model", "messages": messages})).json()

    assert (reply.message.content, reply.done_reason, reply.prompt_eval_count) == ("Hello from", "length", 2)
    assert openai["choices"][0]["message"]["content"] == "Hello from the fake model."
    assert openai["usage"]["completion_tokens"] == 5


async def test_error_bodies_follow_each_dialect(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.status = 500
    fake_llm_server.behaviour.error_message = "out of memory"
    async with httpx.AsyncClient(base_url=fake_llm_server.url) as http:
        ollama_error = await http.post("/api/embed", json={"model": "fake-embed", "input": "x"})
        openai_error = await http.post("/v1/embeddings", json={"model": "fake-embed", "input": "x"})

    assert (ollama_error.status_code, ollama_error.json()) == (500, {"error": "out of memory"})
    assert openai_error.json()["error"]["message"] == "out of memory"
