"""Shared fixtures: a real Redis (REDIS_URL, else an embedded server started here), a
key prefix per test that is deleted afterwards, a local Redis Cluster for the modules
marked to run on one too, and the real embedded model, converted and measured in a
model cache of the test session's own."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from bot.generation.base import GenerationError
from bot.generation.llama import LlamaModel
from bot.generation.local import LocalGenerator
from bot.generation.ways import packing_available
from bot.generation.weights import cached_model_dir, embedded_gguf, is_converted, model_dir
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
    # (pytest keeps the last sessions' temporary directories: not 270 MB of weights, nor
    # the 4-bit copies)
    shutil.rmtree(cached_model_dir(ours), ignore_errors=True)
    shutil.rmtree(ours / "int4", ignore_errors=True)


def model_settings() -> ModelSettings:
    """The embedded model in the test session's own cache (`model_cache`)."""
    if not _session_cache:
        raise RuntimeError(
            "model_settings() is for tests and fixtures: the session cache is not made yet"
        )
    return ModelSettings(cache_dir=_session_cache[0])


def embedded_model_dir() -> Path:
    """The embedded model's converted weights in the session's cache, converted first
    when no test has yet (a test may run alone)."""
    return model_dir(None, model_settings().cache_dir, lambda message: None)


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


# The ways of computing the generators the tests share use, whatever this machine
# measured at loading: in bf16 each way's kernels round differently, so the text a test
# sees would depend on a measurement (taken on a busy machine, it chose other ways and
# a greedy reply parted from the expected one after 90 characters). Pinned: the weight
# products packed for oneDNN where this torch can (else torch's linear, in every
# build), the written-out attention, and narrow decode passes (4-bit layers, 8-bit
# output rows) of up to 8 rows, as the bot runs where they measure faster. Each way is
# tested against transformers on its own in test_ways.py.
def pinned_ways(model: LlamaModel) -> tuple[str, str]:
    return ("packed" if packing_available(model.device, model.dtype) else "linear"), "matmul"


def pin_ways(gen: LocalGenerator, *, narrow: bool = True) -> LocalGenerator:
    """Make a batching generator compute with the pinned ways (on its engine's thread,
    between passes). `narrow=False` keeps the dtype's own weights for every pass: a
    float32 generator's greedy replies are then transformers' exactly (narrow passes
    round their rows to bf16)."""
    engine, model = gen.engine, gen.fast
    assert engine is not None and model is not None
    ways = pinned_ways(model)
    int4_rows = min(engine.max_batch, 8) if narrow and model.int4_available() else 0

    def pin() -> None:
        model.products, model.attention = ways
        model.int4_rows = int4_rows

    engine.call(pin).result()
    assert (model.products, model.attention, model.int4_rows) == (*ways, int4_rows)
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
