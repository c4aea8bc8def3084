"""Shared fixtures: a real Redis (REDIS_URL, else an embedded server started here), a
local Redis Cluster for the modules marked to run on one too, a key prefix per test that
is deleted afterwards, and the real embedded model."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from bot.generation.local import LocalGenerator
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
from memory.connection import EmbeddedRedis, RedisClient, client_for_url
from memory.keys import Keys
from memory.store import MemoryStore
from tests.redis_cluster import LocalCluster


def model_settings() -> ModelSettings:
    """The user's model cache (or MODEL_CACHE_DIR): the conversion runs once a machine."""
    return ModelSettings()


# A module with `pytestmark = REDIS_CLUSTER` runs each test that uses Redis twice: on one
# server and on a local three-master Redis Cluster, so a script or transaction whose keys
# leave one hash slot fails here (CROSSSLOT) and not in a deployment.
REDIS_CLUSTER = pytest.mark.redis_cluster
REDIS_KINDS = ("single", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    node = metafunc.definition
    # Tests marked `model` run the real model at length (minutes): twice would double
    # that, and their Redis calls are the call sites that the other tests of the module
    # and tests/test_cluster.py already run on the cluster.
    if (
        "redis_url" in metafunc.fixturenames
        and node.get_closest_marker("redis_cluster") is not None
        and node.get_closest_marker("model") is None
    ):
        metafunc.parametrize("redis_url", REDIS_KINDS, indirect=True)


@pytest.fixture(scope="session")
async def single_redis_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield await server.start()
    await server.stop()


@pytest.fixture(scope="session")
def cluster_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Redis Cluster of three masters, started for the first test that asks for
    one and stopped at the end of the session. The nodes count every CROSSSLOT reply:
    one that a caller caught and hid (as memory degrades quietly) still fails the run."""
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
        crossslot = cluster.errors("CROSSSLOT")
    finally:
        cluster.stop()
    assert crossslot == 0, f"the cluster answered CROSSSLOT {crossslot} times in this run"


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """The single server, or the cluster where a module runs on both (see above)."""
    kind = getattr(request, "param", "single")
    return str(request.getfixturevalue(f"{kind}_redis_url"))


async def connect(url: str) -> RedisClient:
    """A client for a test's URL, ready for concurrent use: a `RedisCluster` for a
    cluster URL, which (as in `open_redis`) learns the cluster's layout first."""
    client = client_for_url(url)
    if isinstance(client, RedisCluster):
        await client.initialize()
    return client


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[RedisClient]:
    client = await connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def keys(redis_client: RedisClient) -> AsyncIterator[Keys]:
    """A key prefix of this test's own; every key under it is deleted afterwards, and
    nothing else on a shared server is touched. On a cluster SCAN walks every master."""
    prefix = "mbt" + uuid.uuid4().hex[:12]
    yield Keys(prefix)
    async for key in redis_client.scan_iter(match=f"{prefix}:*", count=500):
        await redis_client.delete(key)


@pytest.fixture
def store(redis_client: RedisClient, keys: Keys) -> MemoryStore:
    return MemoryStore(redis_client, keys=keys, max_turns=500, retention_seconds=3600)


@pytest.fixture(scope="session")
def generator() -> Iterator[LocalGenerator]:
    """The real model as the bot runs it: continuous batching, 8 rows, prefix reuse."""
    gen = LocalGenerator.load(model_settings(), max_batch=8, prefix_mb=96)
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
def moderator(redis_client: RedisClient, keys: Keys, classifier: OffensiveClassifier) -> Moderator:
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
