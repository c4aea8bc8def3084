"""/metrics and /health served by the real aiohttp server on a free port, scraped over
HTTP while the real pipeline answers (real Redis, the real moderation and rate limits),
and /health following Redis as it stops and comes back."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from bot.assistant import Assistant, ReplyRequest
from bot.generation.batch import EngineStats
from bot.generation.local import LocalGenerator
from bot.metrics import Health, Metrics, serve, watch_queue
from bot.moderation.moderator import Moderator
from bot.moderation.ratelimit import Limits, RateLimiter
from bot.services import open_services, watch
from bot.settings import MetricsSettings
from memory.connection import EmbeddedRedis, client_for_url
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import RecordingSink, ScriptedGenerator, make_settings

GUILD = Scope("5150")


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text page (0 when it is not there)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        got = ",".join(sorted(p for p in (match.group(2) or "").split(",") if p))
        if got == want:
            return float(match.group(3))
    return 0.0


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


def ask(text: str, user: str = "u1") -> ReplyRequest:
    return ReplyRequest(scope=GUILD, user_id=user, user_name="Ada", text=text,
                        message_id=uuid.uuid4().hex, channel_id="c1")  # fmt: skip


@pytest.fixture
async def served(
    store: MemoryStore, keys: Keys, generator: LocalGenerator, moderator: Moderator,
    redis_client: Redis,
) -> AsyncIterator[tuple[Assistant, int]]:  # fmt: skip
    metrics, health = Metrics(), Health()
    scripted = ScriptedGenerator(generator, ["A fine ", "choice."])
    watch(metrics, health, store, scripted, moderator)  # type: ignore[arg-type]
    limiter = RateLimiter(redis_client, Limits(60.0, 2, 600.0, 100), keys)
    bot = Assistant(settings=make_settings(keys), memory=store, generator=scripted,
                    moderator=moderator, limiter=limiter, metrics=metrics)  # fmt: skip
    async with serve(metrics, health, host="127.0.0.1", port=0) as port:
        yield bot, port


async def test_the_counters_move_while_the_pipeline_answers(
    served: tuple[Assistant, int],
) -> None:
    bot, port = served
    status, before = await get(port, "/metrics")
    assert status == 200 and "mediabot_num_requests_running" in before
    assert value(before, "mediabot_replies_total", outcome="model") == 0

    assert (await bot.reply(ask("Recommend me a film about whales?"), RecordingSink())).stored
    flood = " ".join(f"<@{100000000000000000 + i}>" for i in range(12))
    await bot.reply(ask(f"hey {flood}", user="u2"), RecordingSink())
    for n in range(3):  # a burst of two, then the limit
        await bot.reply(ask(f"and another one, number {n}?", user="u3"), RecordingSink())

    _, after = await get(port, "/metrics")
    assert value(after, "mediabot_replies_total", outcome="model") == 3
    assert value(after, "mediabot_replies_total", outcome="refused") == 1
    assert value(after, "mediabot_replies_total", outcome="limited") == 1
    assert value(after, "mediabot_moderation_actions_total", rule="mention-flood",
                 action="refused") == 1  # fmt: skip
    assert value(after, "mediabot_ratelimit_refusals_total", who="user") == 1
    assert value(after, "mediabot_time_to_first_token_seconds_count") == 3
    assert value(after, "mediabot_e2e_request_latency_seconds_count") == 3
    assert value(after, "mediabot_context_window_tokens_count", slot="system") == 3
    assert value(after, "mediabot_prompt_tokens_total") > 0
    assert value(after, "mediabot_generation_tokens_total") > 0
    assert value(after, "mediabot_memory_latency_seconds_count", op="write") == 3
    assert value(after, "mediabot_memory_errors_total", op="read") == 0


def test_the_engine_counts_are_served_as_prefix_cache_metrics() -> None:
    stats = EngineStats(passes=7, prefix_lookups=3, prefix_hits=2, prefix_query_tokens=400,
                        prefix_hit_tokens=300, slab_slots=4, slab_bytes=5_000_000)  # fmt: skip

    class Batched:
        def engine_stats(self) -> EngineStats:
            return stats

    metrics = Metrics()
    watch_queue(metrics, Batched())
    page = metrics.render().decode()
    assert value(page, "mediabot_prefix_cache_queries_total") == 400
    assert value(page, "mediabot_prefix_cache_hits_total") == 300
    assert value(page, "mediabot_prefix_cache_hit_ratio") == 0.75
    assert value(page, "mediabot_engine_forward_passes_total") == 7
    assert value(page, "mediabot_engine_kv_bytes") == 5_000_000
    assert value(page, "mediabot_engine_kv_slots_peak") == 4
    stats.prefix_query_tokens, stats.prefix_hit_tokens = 500, 300  # read at each scrape
    assert value(metrics.render().decode(), "mediabot_prefix_cache_hit_ratio") == 0.6

    class OneAtATime:  # replies through `generate`: no engine, no prefix cache
        def engine_stats(self) -> None:
            return None

    plain = Metrics()
    watch_queue(plain, OneAtATime())
    assert "prefix_cache" not in plain.render().decode()


async def test_health_follows_redis_down_and_back(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = await server.start()
    client = client_for_url(url, socket_timeout=0.5, connect_timeout=0.5)
    store = MemoryStore(client, keys=Keys("mbhealth"))
    metrics, health = Metrics(), Health()

    class Loaded:
        context_length = 8192

    watch(metrics, health, store, Loaded(), Moderator(None, None))  # type: ignore[arg-type]
    async with serve(metrics, health, host="127.0.0.1", port=0) as port:
        status, body = await get(port, "/health")
        assert status == 200 and '"redis": true' in body
        await server.stop()
        status, body = await get(port, "/health")
        assert status == 503 and '"redis": false' in body and '"generator": true' in body
        server = EmbeddedRedis(tmp_path / "redis")
        await server.start()
        status, _ = await get(port, "/health")
        assert status == 200
    await client.aclose()
    await server.stop()


@pytest.mark.model
async def test_the_services_serve_the_endpoint_when_a_port_is_set(
    keys: Keys, redis_url: str
) -> None:
    """What the terminal chat, the Discord bot and the benchmarks open."""
    settings = make_settings(keys, redis_url)
    settings.metrics = MetricsSettings(port=0)
    async with open_services(settings) as services:
        assert services.metrics_port is not None
        status, body = await get(services.metrics_port, "/health")
        assert status == 200 and '"generator": true' in body
        request = ReplyRequest(scope=Scope(None), user_id="m1", user_name="M",
                               text="Say hello.", message_id="x1")  # fmt: skip
        assert (await services.assistant.reply(request, RecordingSink())).generated
        status, page = await get(services.metrics_port, "/metrics")
        assert status == 200 and "mediabot_num_requests_waiting 0.0" in page
        # The real model's queue told when the reply started: its wait is measured.
        assert value(page, "mediabot_request_queue_time_seconds_count") == 1
        assert value(page, "mediabot_replies_total", outcome="model") == 1
        # The batch engine read the prompt: the prefix cache was asked about it.
        assert value(page, "mediabot_prefix_cache_queries_total") > 0
        assert 0 <= value(page, "mediabot_prefix_cache_hit_ratio") <= 1
        client = services.memory.client
        async for key in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
            await client.delete(key)
    settings.metrics = MetricsSettings()
    async with open_services(settings) as services:
        assert services.metrics_port is None  # off unless asked for
