"""Token buckets in real Redis: exact under concurrency, refill, server limits, and the
pipeline's answer when a limit is reached."""

from __future__ import annotations

import asyncio
import dataclasses
import re

from bot import assistant as pipeline
from bot.assistant import Assistant
from bot.generation.local import LocalGenerator
from bot.moderation.ratelimit import Decision, Limits, RateLimiter
from memory.connection import RedisClient
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import REDIS_CLUSTER, ScriptedGenerator, connect, make_settings
from tests.test_assistant import RecordingSink, request

pytestmark = REDIS_CLUSTER


async def test_exactly_the_burst_passes_out_of_100_concurrent_callers(
    redis_url: str, keys: Keys
) -> None:
    clients = [await connect(redis_url) for _ in range(20)]
    try:
        limiters = [
            RateLimiter(c, Limits(user_per_minute=0.01, user_burst=10), keys) for c in clients
        ]
        decisions = await asyncio.gather(*(limiters[i % 20].take("u1", None) for i in range(100)))
        assert sum(d.allowed for d in decisions) == 10
        refused = [d for d in decisions if not d.allowed]
        assert all(d.who == "user" and d.retry_after > 60 for d in refused)
    finally:
        for c in clients:
            await c.aclose()


async def test_a_bucket_refills_at_its_rate_and_expires_when_full(
    redis_client: RedisClient, keys: Keys
) -> None:
    limiter = RateLimiter(redis_client, Limits(user_per_minute=600, user_burst=1), keys)
    assert (await limiter.take("u1", None)).allowed
    denied = await limiter.take("u1", None)
    assert not denied.allowed and 0 < denied.retry_after <= 0.1
    await asyncio.sleep(0.15)
    assert (await limiter.take("u1", None)).allowed
    ttl = await redis_client.pttl(f"{keys.user_tag('u1')}:ratelimit")
    assert 0 < ttl <= 1200


async def test_a_busy_server_is_limited_without_spending_its_members_allowance(
    redis_client: RedisClient, keys: Keys
) -> None:
    limiter = RateLimiter(
        redis_client,
        Limits(user_per_minute=0.01, user_burst=2, guild_per_minute=0.01, guild_burst=1),
        keys,
    )
    assert (await limiter.take("u1", "g1")).allowed
    blocked = await limiter.take("u2", "g1")
    assert not blocked.allowed and blocked.who == "server"
    # u2's own token was given back: u2 can still talk in DMs, twice.
    assert (await limiter.take("u2", None)).allowed
    assert (await limiter.take("u2", None)).allowed
    assert not (await limiter.take("u2", None)).allowed


async def test_the_pipeline_says_when_to_come_back_and_stores_nothing(
    store: MemoryStore, keys: Keys, generator: LocalGenerator, redis_client: RedisClient
) -> None:
    limiter = RateLimiter(redis_client, Limits(user_per_minute=0.01, user_burst=1), keys)
    bot = Assistant(settings=make_settings(keys), memory=store,
                    generator=ScriptedGenerator(generator, ["Sure!"]), limiter=limiter)  # fmt: skip
    first = await bot.reply(request("Recommend a film", scope=Scope("9")), RecordingSink())
    assert first.stored
    sink = RecordingSink()
    second = await bot.reply(request("And another one", scope=Scope("9")), sink)
    assert not second.generated and not second.stored
    [notice] = sink.kinds("notice")
    assert re.fullmatch(
        r"You're sending messages faster than I can answer: try again in \d+ s\.", notice
    )
    wait = int(re.findall(r"\d+", notice)[0])
    assert notice == pipeline.slow_down_notice(Decision(False, wait, "user"))
    assert sink.kinds("piece") == []
    assert len((await store.load(Scope("9"), "u1", token_budget=1000)).turns) == 2
    # The terminal (one local user) is not limited.
    local = dataclasses.replace(request("From the terminal", scope=Scope("9")), rate_limited=False)
    assert (await bot.reply(local, RecordingSink())).stored
