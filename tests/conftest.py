"""Shared fixtures: a real Redis (REDIS_URL, else an embedded server started here), a
key prefix per test that is deleted afterwards, and the real embedded model, converted
and measured in a model cache of the test session's own."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bot.generation.base import GenerationError
from bot.generation.local import LocalGenerator
from bot.generation.weights import cached_model_dir, embedded_gguf, is_converted
from bot.media.catalog import Catalog
from bot.media.library import parse_file
from bot.moderation.classifier import OffensiveClassifier
from bot.moderation.moderator import Moderator
from bot.moderation.policy import Moderation
from bot.services import build_moderator, default_policy
from bot.settings import (
    DEFAULT_TITLES,
    GenerationSettings,
    MemorySettings,
    ModelSettings,
    RedisSettings,
    Settings,
)
from memory.connection import EmbeddedRedis
from memory.keys import Keys
from memory.store import MemoryStore

_session_cache: list[Path] = []  # the session's model cache, once `model_cache` made it


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The test session's own model cache, so that nothing the tests do (converting the
    embedded model, measuring the ways of computing into products.json) is written
    into the user's (~/.cache/mediabot, or MODEL_CACHE_DIR). It is MODEL_CACHE_DIR for
    the whole session, so settings built from the environment and the processes the
    tests start use it too.

    The converted weights are copied from the user's cache when it has them (read
    only: converting takes 30-50 s); a copy, not a hard link, so that no test writing
    into the session's weights could change the user's."""
    user = ModelSettings().cache_dir
    ours = tmp_path_factory.mktemp("model-cache")
    try:
        if is_converted(cached_model_dir(user), embedded_gguf()):
            shutil.copytree(cached_model_dir(user), cached_model_dir(ours))
    except (GenerationError, OSError):  # converted by the first test that loads it
        shutil.rmtree(cached_model_dir(ours), ignore_errors=True)
    before = os.environ.get("MODEL_CACHE_DIR")
    os.environ["MODEL_CACHE_DIR"] = str(ours)
    _session_cache.append(ours)
    yield ours
    _session_cache.clear()
    if before is None:
        del os.environ["MODEL_CACHE_DIR"]
    else:
        os.environ["MODEL_CACHE_DIR"] = before
    # (pytest keeps the last sessions' temporary directories: not 270 MB of weights)
    shutil.rmtree(cached_model_dir(ours), ignore_errors=True)


def model_settings() -> ModelSettings:
    """The embedded model in the test session's own cache (`model_cache`)."""
    if not _session_cache:
        raise RuntimeError(
            "model_settings() is for tests and fixtures: the session cache is not made yet"
        )
    return ModelSettings(cache_dir=_session_cache[0])


@pytest.fixture(scope="session")
async def redis_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield await server.start()
    await server.stop()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def keys(redis_client: Redis) -> AsyncIterator[Keys]:
    """A key prefix of this test's own; every key under it is deleted afterwards, and
    nothing else on a shared server is touched."""
    prefix = "mbt" + uuid.uuid4().hex[:12]
    yield Keys(prefix)
    async for key in redis_client.scan_iter(match=f"{prefix}:*", count=500):
        await redis_client.delete(key)


@pytest.fixture
def store(redis_client: Redis, keys: Keys) -> MemoryStore:
    return MemoryStore(redis_client, keys=keys, max_turns=500, retention_seconds=3600)


# The ways of computing the generators the tests share use, whatever this machine
# measured at loading: in bf16 each way's kernels round differently, so the text a test
# sees would depend on a measurement (taken on a busy machine, it chose other ways and
# a greedy reply parted from the expected one after 90 characters). These two are in
# every build; each way is tested against transformers on its own in test_ways.py.
PINNED = ("linear", "matmul")


def pin_ways(gen: LocalGenerator) -> LocalGenerator:
    """Make a batching generator compute with the `PINNED` ways (on its engine's thread,
    between passes)."""
    engine, model = gen.engine, gen.fast
    assert engine is not None and model is not None

    def pin() -> None:
        model.products, model.attention = PINNED

    engine.call(pin).result()
    assert (model.products, model.attention) == PINNED
    return gen


async def read_in_full(gen: LocalGenerator) -> None:
    """Wait until the generator's batch engine runs no row, then forget its cached
    prefixes, so that the next prompt is read in full and alone: a request repeated
    after this is computed exactly as the first one was. (Reading only the part past a
    cached prefix multiplies other row counts, which the CPU's kernels round otherwise:
    in bf16 a greedy reply then parts from the first after a few dozen tokens.)"""
    engine = gen.engine
    if engine is None:
        return  # one `generate` at a time: nothing cached, nothing beside it
    for _ in range(200):
        if not engine.running:
            break
        await asyncio.sleep(0.05)
    await asyncio.wrap_future(engine.call(engine.prefixes.clear))


@pytest.fixture(scope="session")
def generator() -> Iterator[LocalGenerator]:
    """The real model as the bot runs it: continuous batching, 8 rows, prefix reuse
    (the ways of computing pinned)."""
    gen = pin_ways(LocalGenerator.load(model_settings(), max_batch=8, prefix_mb=96))
    yield gen
    gen.close()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    """The default catalog, parsed and indexed once."""
    titles, _ = parse_file(DEFAULT_TITLES)
    return Catalog(titles)


@pytest.fixture(scope="session")
def classifier() -> OffensiveClassifier:
    """The real classifier, with the default catalog's titles masked."""
    return OffensiveClassifier.load(titles=DEFAULT_TITLES)


@pytest.fixture
def moderator(redis_client: Redis, keys: Keys, classifier: OffensiveClassifier) -> Moderator:
    """Real moderation on this test's keys, with the settings' defaults."""
    settings = make_settings(keys)
    moderation = Moderation(redis_client, keys, defaults=default_policy(settings))
    return build_moderator(settings, moderation, classifier)


def make_settings(keys: Keys, redis_url: str | None = None, **generation: object) -> Settings:
    """Settings for a pipeline test: this test's key prefix, short replies."""
    gen = {"max_new_tokens": 12, "temperature": 0.0, **generation}
    return Settings(
        redis=RedisSettings(url=redis_url),
        model=model_settings(),
        generation=GenerationSettings.model_validate(gen),
        memory=MemorySettings(key_prefix=keys.prefix, retention_days=1),
    )


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


class ScriptedGenerator:
    """The real model's tokenizer and template, with a reply written in advance: for
    testing what front ends do with a given reply (the real decoding is tested with the
    real model elsewhere)."""

    def __init__(self, real: LocalGenerator, pieces: list[str]) -> None:
        self.pieces = pieces
        self.context_length = real.context_length
        self.count_tokens = real.count_tokens
        self.truncate_tokens = real.truncate_tokens
        self.count_prompt_tokens = real.count_prompt_tokens

    async def stream(self, messages: Any, params: Any, **kw: Any) -> AsyncIterator[str]:
        for piece in self.pieces:
            await asyncio.sleep(0)
            yield piece


class RecordingSink:
    """A reply sink that records what the pipeline shows (the terminal and Discord
    sinks are tested on their own)."""

    def __init__(self) -> None:
        self.text = ""
        self.notices: list[str] = []

    async def context(self, window: Any) -> None: ...

    async def notice(self, text: str) -> None:
        self.notices.append(text)

    async def piece(self, text: str) -> None:
        self.text += text

    async def finish(self, text: str) -> str | None:
        return None

    async def retract(self, text: str) -> None: ...

    def position(self, place: int) -> None: ...
