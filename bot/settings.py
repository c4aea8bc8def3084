"""Every setting of the bot, read from the environment (and `.env`) once, in `main()`.

One section per concern, each with its own environment prefix. Nothing reads the
environment at import time; tests construct `Settings(...)` directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TITLES = Path(__file__).resolve().parents[1] / "data" / "catalog" / "netflix_titles.csv"


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mediabot"


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mediabot"


def _section(prefix: str) -> SettingsConfigDict:
    # An empty value (`DISCORD_TOKEN=` in a fresh .env) counts as unset.
    return SettingsConfigDict(
        env_prefix=prefix,
        env_file=".env",
        extra="ignore",
        validate_default=True,
        env_ignore_empty=True,
    )


class RedisSettings(BaseSettings):
    """Where memory lives: a Redis URL, or an embedded server with its data on disk."""

    model_config = _section("REDIS_")

    url: SecretStr | None = Field(
        default=None,
        description=(
            "redis:// or rediss:// or unix:// URL, redis+cluster:// (or rediss+cluster://) "
            "for a Redis Cluster; unset starts an embedded Redis."
        ),
    )
    data_dir: Path = Field(
        default_factory=lambda: _data_home() / "redis",
        description="Directory of the embedded Redis's data (used only without REDIS_URL).",
    )
    socket_timeout: float = Field(default=2.0, gt=0, le=60)
    connect_timeout: float = Field(default=2.0, gt=0, le=60)

    _expand = field_validator("data_dir")(lambda p: p.expanduser())


class ModelSettings(BaseSettings):
    """Which local model generates, and where its converted weights are cached."""

    model_config = _section("MODEL_")

    path: Path | None = Field(
        default=None,
        description="A local Hugging Face model directory; unset uses the embedded SmolLM2-135M.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: _cache_home() / "models",
        description="Where the embedded model's converted bf16 weights are cached.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    threads: int | None = Field(default=None, ge=1, le=512)
    int4: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: decode passes of few rows use 4-bit weights where measured faster "
        "(bf16 on a CPU); off: the dtype's weights only.",
    )

    _expand = field_validator("cache_dir")(lambda p: p.expanduser())

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: Path | None) -> Path | None:
        if path is not None:
            path = path.expanduser()
        if path is not None and not path.is_dir():
            raise ValueError(f"{path} is not a directory")
        return path


class GenerationSettings(BaseSettings):
    """Sampling parameters and the size of the context window."""

    model_config = _section("GENERATION_")

    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    temperature: float = Field(default=0.7, ge=0.0, le=5.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    top_k: int = Field(default=50, ge=0)
    repetition_penalty: float = Field(default=1.1, ge=1.0, le=3.0)
    seed: int | None = None
    max_context_tokens: int = Field(
        default=2048, ge=256, description="Upper bound on the prompt, whatever the model allows."
    )
    context_margin: int = Field(default=16, ge=0, le=1024)
    concurrency: int = Field(
        default=1, ge=1, le=64, description="Generations run at once when not batching."
    )
    max_batch: int = Field(
        default=8, ge=1, le=256, description="Replies decoded together; 1 turns batching off."
    )
    queue_max: int = Field(default=64, ge=0, le=10_000, description="Requests that may wait.")
    per_user: int = Field(default=2, ge=1, le=100, description="Requests one member may have.")
    prefix_cache_mb: float = Field(
        default=144, ge=0, le=1_000_000,
        description="Memory for recent replies' KV kept for reuse (0: off).",
    )  # fmt: skip
    timeout: float = Field(default=300.0, gt=0, description="Seconds a reply may take.")
    backend: Literal["local", "remote"] = Field(
        default="local", description="local: the model in this process; remote: REMOTE_URL."
    )


class RemoteSettings(BaseSettings):
    """An OpenAI-compatible server that generates instead of the local model
    (GENERATION_BACKEND=remote): vLLM, TGI, llama.cpp's server, `transformers serve`."""

    model_config = _section("REMOTE_")

    url: SecretStr | None = Field(
        default=None, description="The API base, e.g. http://gpu-host:8000/v1."
    )
    model: str = Field(default="default", min_length=1, max_length=300)
    api_key: SecretStr | None = None
    timeout: float = Field(
        default=30.0, gt=0, le=600, description="Seconds to connect, and between streamed bytes."
    )
    context_length: int | None = Field(
        default=None, ge=256, description="The server model's window; unset: the local tokenizer's."
    )
    concurrency: int = Field(
        default=8, ge=1, le=1024,
        description="Requests at the server at once, from every bot process together.",
    )  # fmt: skip
    lease_seconds: float = Field(
        default=30.0, ge=1, le=3600,
        description="How soon a dead process's places at the server come back.",
    )  # fmt: skip

    @field_validator("url")
    @classmethod
    def _http(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url


class MemorySettings(BaseSettings):
    """What is remembered, for how long, and how much of the window it may take."""

    model_config = _section("MEMORY_")

    retention_days: float = Field(
        default=30.0, ge=0, description="Idle time after which a scope is forgotten; 0 keeps it."
    )
    max_turns: int = Field(default=1000, ge=2, le=100_000, description="Turns kept per scope.")
    key_prefix: str = Field(default="mb", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    profile_share: float = Field(default=0.10, ge=0.0, le=0.5)
    summary_share: float = Field(default=0.15, ge=0.0, le=0.5)
    max_message_chars: int = Field(
        default=100_000, ge=100, description="Longer input is cut before tokenising."
    )
    recall_share: float = Field(default=0.15, ge=0.0, le=0.5)
    recall_threshold: float = Field(
        default=0.15, ge=0.0, le=1.0, description="Least relevance x recency to recall a turn."
    )
    recall_half_life_days: float = Field(default=90.0, ge=0.0)
    recall_candidates: int = Field(default=1000, ge=0, le=100_000)
    recall_limit: int = Field(default=8, ge=0, le=50)
    summary_mode: Literal["extractive", "model", "off"] = "extractive"

    @property
    def retention_seconds(self) -> int | None:
        return int(self.retention_days * 86400) or None


class RateLimitSettings(BaseSettings):
    """How often one member, and one server, may ask the bot something."""

    model_config = _section("RATELIMIT_")

    enabled: bool = True
    user_per_minute: float = Field(default=6.0, gt=0, le=6000)
    user_burst: int = Field(default=4, ge=1, le=1000)
    guild_per_minute: float = Field(default=60.0, gt=0, le=60000)
    guild_burst: int = Field(default=20, ge=1, le=10000)
    guild_in_flight: int = Field(
        default=4, ge=0, le=1000, description="Replies one server may have generating; 0: no cap."
    )


class ModerationSettings(BaseSettings):
    """Defaults of every server's moderation policy (admins change theirs with /mod),
    the flood rules, and the classifier."""

    model_config = _section("MODERATION_")

    level: Literal["off", "standard", "strict"] = "standard"
    action: Literal["refuse", "log", "cooldown"] = "log"
    standard_threshold: float = Field(default=0.90, gt=0.0, le=1.0)
    strict_threshold: float = Field(default=0.75, gt=0.0, le=1.0)
    strike_limit: int = Field(default=3, ge=1, le=100)
    strike_decay_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    cooldown_minutes: float = Field(default=10.0, gt=0, le=60 * 24 * 30)
    flood_messages: int = Field(default=8, ge=2, le=1000, description="Messages per window.")
    flood_seconds: float = Field(default=30.0, gt=0, le=3600)
    repeat_limit: int = Field(default=3, ge=2, le=100, description="Same text, per window.")
    log_max: int = Field(default=1000, ge=10, le=1_000_000, description="Log stream length.")
    titles_file: Path | None = Field(
        default_factory=lambda: DEFAULT_TITLES,
        description="CSV whose 'title' column is masked before the classifier scores.",
    )
    hf_model_path: Path | None = Field(
        default=None, description="A local text-classification model directory (optional)."
    )
    hf_labels: str = Field(
        default="toxic,offensive,hate,abusive,obscene,insult,threat",
        description="Comma-separated labels of that model counted as offensive.",
    )

    @field_validator("hf_model_path")
    @classmethod
    def _model_dir(cls, path: Path | None) -> Path | None:
        if path is not None:
            path = path.expanduser()
            if not (path / "config.json").is_file():
                raise ValueError(f"{path} is not a model directory (no config.json)")
        return path


class CatalogSettings(BaseSettings):
    """The media catalog: the file seeded into Redis when it holds none, and the
    media features built on it."""

    model_config = _section("CATALOG_")

    file: Path | None = Field(
        default_factory=lambda: DEFAULT_TITLES,
        description="CSV or JSON loaded when Redis holds no catalog; unset starts empty.",
    )
    blurb_tokens: int = Field(
        default=60, ge=8, le=512, description="Most tokens of each sentence about a pick."
    )
    content_tokens: int = Field(
        default=160, ge=16, le=1024, description="Most tokens of a headline, post or synopsis."
    )
    trivia_seconds: float = Field(
        default=30.0, ge=5, le=3600, description="How long a trivia question takes answers."
    )
    story_tokens: int = Field(default=200, ge=32, le=1024, description="Most tokens of a scene.")

    @field_validator("file")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None:
            path = path.expanduser()
            if not path.is_file():
                raise ValueError(f"{path} is not a file")
        return path


class GroundingSettings(BaseSettings):
    """Chat grounded in the catalog: the titles and people a message names are found,
    their facts given to the model, factual questions answered from the catalog, and
    every reply checked against it before it is shown."""

    model_config = _section("GROUNDING_")

    enabled: bool = Field(
        default=True, description="false: chat goes to the model with no catalog step."
    )
    facts_share: float = Field(
        default=0.15, ge=0.0, le=0.5, description="Share of the window for catalog facts."
    )


class DiscordSettings(BaseSettings):
    """The Discord front end (used by `python -m bot run`)."""

    model_config = _section("DISCORD_")

    token: SecretStr | None = None
    message_content_intent: bool = True
    dev_guild_id: int | None = None
    edit_interval: float = Field(default=1.0, ge=0.2, le=10.0)
    shard_count: int | None = Field(
        default=None, ge=1, le=100_000,
        description="Shards of the whole bot; unset: Discord's recommended count.",
    )  # fmt: skip
    shard_ids: str | None = Field(
        default=None, description="Shards this process runs, e.g. 0,1 or 0-3; unset: all."
    )

    @field_validator("shard_ids")
    @classmethod
    def _shard_list(cls, value: str | None) -> str | None:
        if value is not None:
            parse_shards(value)
        return value

    @model_validator(mode="after")
    def _shards_need_a_count(self) -> DiscordSettings:
        if self.shard_ids is not None:
            if self.shard_count is None:
                raise ValueError("DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT")
            if max(parse_shards(self.shard_ids)) >= self.shard_count:
                raise ValueError("a shard id must be below DISCORD_SHARD_COUNT")
        return self

    @property
    def shards(self) -> list[int] | None:
        return parse_shards(self.shard_ids) if self.shard_ids is not None else None


def parse_shards(text: str) -> list[int]:
    """ "0,1" or "0-3" or "0-1,4" -> shard ids, sorted, each once."""
    ids: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{text!r} is not a list of shard ids like 0,1 or 0-3")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"{part!r}: a range goes up")
        ids.update(range(low, high + 1))
    return sorted(ids)


class MetricsSettings(BaseSettings):
    """The HTTP endpoint of a running bot or chat: Prometheus metrics and a health check."""

    model_config = _section("METRICS_")

    port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve /metrics and /health here; unset: off."
    )
    host: str = Field(
        default="127.0.0.1", min_length=1, max_length=255,
        description="Address to listen on (0.0.0.0 in a container).",
    )  # fmt: skip


PersonaName = Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,40}$")]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseModel):
    """All sections together. Build it once with `Settings.from_env()`; each section
    not given reads its own part of the environment."""

    redis: RedisSettings = Field(default_factory=RedisSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    grounding: GroundingSettings = Field(default_factory=GroundingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)
    persona: PersonaName = "default"
    log_level: LogLevel = "WARNING"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(**_TopLevel().model_dump())


class _TopLevel(BaseSettings):
    """The settings without a section prefix: PERSONA, LOG_LEVEL."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", validate_default=True, env_ignore_empty=True
    )

    persona: PersonaName = "default"
    log_level: LogLevel = "WARNING"


_PREFIXES: dict[str, str] = {
    "RedisSettings": "REDIS_",
    "ModelSettings": "MODEL_",
    "GenerationSettings": "GENERATION_",
    "MemorySettings": "MEMORY_",
    "DiscordSettings": "DISCORD_",
    "RateLimitSettings": "RATELIMIT_",
    "ModerationSettings": "MODERATION_",
    "CatalogSettings": "CATALOG_",
    "GroundingSettings": "GROUNDING_",
    "MetricsSettings": "METRICS_",
    "RemoteSettings": "REMOTE_",
}


def describe_error(exc: ValidationError) -> str:
    """One sentence naming the first bad setting by its environment variable."""
    err = exc.errors()[0]
    prefix = _PREFIXES.get(exc.title, "")
    field = ".".join(str(p) for p in err["loc"]) or "(section)"
    name = (prefix + field).upper() if field != "(section)" else exc.title
    message = err["msg"].removeprefix("Value error, ")
    # Never echo the input back: it may be a secret.
    return f"Invalid setting {name}: {message}."
