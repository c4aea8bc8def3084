"""State shared by bot processes through Redis: leases on capacity (taken, given back,
renewed, and running out when their holder dies) and the gate that spaces the shards'
identifies. Times are read from Redis's own clock, not the test's."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from bot.assistant import Assistant
from bot.discord.client import MediaBot, ShardedMediaBot, make_bot
from bot.distributed import IdentifyGate, Leases
from bot.generation.local import LocalGenerator
from bot.services import Services
from bot.settings import DiscordSettings
from memory.guilds import GuildConfig
from memory.keys import Keys
from memory.store import MemoryStore
from tests.conftest import REDIS_CLUSTER, make_settings

pytestmark = REDIS_CLUSTER


async def redis_ms(client: Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_leases_are_capped_given_back_and_held_once_per_request(
    redis_client: Redis, keys: Keys
) -> None:
    leases = Leases(redis_client, keys.remote_slots_key(), cap=2, lease_s=30)
    assert await leases.take("a") and await leases.take("b")
    assert not await leases.take("c")  # the cap
    assert await leases.take("a")  # a request that holds one already keeps it
    assert await leases.held() == 2
    await leases.give_back("a")
    assert await leases.take("c") and await leases.held() == 2


async def test_a_dead_holders_lease_runs_out_and_a_renewed_one_does_not(
    redis_client: Redis, keys: Keys
) -> None:
    leases = Leases(redis_client, keys.remote_slots_key(), cap=1, lease_s=0.4)
    assert await leases.take("dead")  # its process never gives it back
    taken_at = await redis_ms(redis_client)
    assert not await leases.take("next")
    async with asyncio.timeout(30):  # a hang guard: the lease runs out by itself
        while not await leases.take("next"):  # noqa: ASYNC110 - Redis's clock decides
            await asyncio.sleep(0.05)
    assert await redis_ms(redis_client) - taken_at >= 400  # not before its end
    assert not await leases.renew("dead")  # gone: nothing to renew

    live = Leases(redis_client, keys.member_inflight_key("u1"), cap=1, lease_s=0.4)
    async with live.holding("long") as held:
        assert held == "long"
        before = await redis_client.zscore(live.key, "long")
        # The heartbeat renews at a third of the lease: it is still held long after.
        async with asyncio.timeout(30):
            while await redis_client.zscore(live.key, "long") == before:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert not await live.take("other")
    assert await live.take("other")  # given back at the end


async def test_holding_waits_for_a_free_lease(redis_client: Redis, keys: Keys) -> None:
    leases = Leases(redis_client, keys.remote_slots_key(), cap=1, lease_s=30)
    order: list[str] = []

    async def one(name: str, release: asyncio.Event) -> None:
        async with leases.holding(name):
            order.append(f"{name} in")
            await release.wait()
            order.append(f"{name} out")

    first_done, second_done = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(one("first", first_done))
    async with asyncio.timeout(30):
        while order != ["first in"]:  # noqa: ASYNC110 - another task's progress
            await asyncio.sleep(0.01)
    second = asyncio.create_task(one("second", second_done))
    await asyncio.sleep(0.3)
    assert order == ["first in"]  # waiting: the cap is one
    first_done.set()
    second_done.set()
    await asyncio.gather(first, second)
    assert order == ["first in", "first out", "second in", "second out"]


async def test_identifies_of_one_bucket_are_a_window_apart_across_gates(
    redis_client: Redis, keys: Keys
) -> None:
    """Two gates, as two processes would hold: shards 0 and 2 share bucket 0 of a
    max_concurrency of 2, shard 1 is in bucket 1 and does not wait for them."""
    a = IdentifyGate(redis_client, keys, max_concurrency=2, window_s=0.5)
    b = IdentifyGate(redis_client, keys, max_concurrency=2, window_s=0.5)
    times: dict[int, int] = {}

    async def identify(gate: IdentifyGate, shard: int) -> None:
        await gate.wait(shard)
        times[shard] = await redis_ms(redis_client)

    await identify(a, 0)
    await asyncio.gather(identify(b, 2), identify(a, 1))
    assert times[2] - times[0] >= 500  # the same bucket: a whole window later
    assert times[1] - times[0] < times[2] - times[0]  # another bucket: not held back


async def test_the_sharded_bot_runs_its_shards_and_identifies_through_the_gate(
    store: MemoryStore, keys: Keys, generator: LocalGenerator, redis_client: Redis
) -> None:
    settings = make_settings(keys)
    assistant = Assistant(settings=settings, memory=store, generator=generator)
    services = Services(memory=store, generator=generator, assistant=assistant,
                        guild_config=GuildConfig(store.client, keys),
                        moderator=assistant.moderator)  # fmt: skip
    assert type(make_bot(settings, services)) is MediaBot  # one process, no sharding
    settings.discord = DiscordSettings(shard_count=4, shard_ids="2-3")
    bot = make_bot(settings, services)  # not connected: nothing to close
    assert isinstance(bot, ShardedMediaBot)
    assert (bot.shard_count, bot.shard_ids) == (4, [2, 3])
    bot.identify_gate.window_ms = 300
    began = await redis_ms(redis_client)
    await bot.before_identify_hook(2, initial=True)
    await bot.before_identify_hook(3)  # one bucket (max_concurrency 1): a window on
    assert await redis_ms(redis_client) - began >= 300
