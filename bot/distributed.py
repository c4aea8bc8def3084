"""What must hold across bot processes sharing one Redis (Discord shards spread over
several processes): capacity handed out as leases, and the gate that spaces the
shards' identifies the way Discord asks.

A lease is a request id in a Redis sorted set, scored by when it runs out. Taking one
is one script (`bot/lua/inflight.lua`: drop the expired, then take if under the
cap); giving it back is one ZREM; a process that dies holding one loses it when it runs
out. A long holder renews its lease while it works (a heartbeat at a third of the
lease), so a lease can be short and a dead process's capacity comes back soon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from memory.connection import RedisClient
from memory.keys import Keys
from memory.scripts import load_script

log = logging.getLogger(__name__)

POLL_FIRST_S = 0.05
POLL_MAX_S = 0.5
IDENTIFY_WINDOW_S = 5.0  # Discord: one identify per bucket every five seconds


class Leases:
    """At most `cap` leases at once in the sorted set `key`, each `lease_s` long."""

    def __init__(self, client: RedisClient, key: str, *, cap: int, lease_s: float) -> None:
        self.client = client
        self.key = key
        self.cap = cap
        self.lease_ms = max(1, int(lease_s * 1000))
        self._take = client.register_script(load_script("bot", "inflight"))
        self._renew = client.register_script(load_script("bot", "lease_renew"))

    async def take(self, request_id: str) -> bool:
        """Take a lease for `request_id` if one is free (or it holds one already)."""
        return bool(await self._take(keys=[self.key], args=[request_id, self.cap, self.lease_ms]))

    async def renew(self, request_id: str) -> bool:
        """Push a held lease's end forward by a whole lease; False when it is not held."""
        return bool(await self._renew(keys=[self.key], args=[request_id, self.lease_ms]))

    async def give_back(self, request_id: str) -> None:
        try:
            await self.client.zrem(self.key, request_id)
        except RedisError as exc:
            log.warning("could not give a lease back (it runs out by itself): %s", exc)

    async def held(self) -> int:
        """Leases held now (those run out not counted), by Redis's clock."""
        seconds, micros = await self.client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return int(await self.client.zcount(self.key, now_ms, "+inf"))

    @contextlib.asynccontextmanager
    async def holding(self, request_id: str | None = None) -> AsyncIterator[str]:
        """Wait for a lease, hold it (renewed) for the body, give it back after; yields
        the request id. Raises `RedisError` when Redis fails while waiting."""
        request_id = request_id or uuid.uuid4().hex
        pause = POLL_FIRST_S
        while not await self.take(request_id):
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_MAX_S)
        beat = asyncio.create_task(self._heartbeat(request_id))
        try:
            yield request_id
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            await self.give_back(request_id)

    async def _heartbeat(self, request_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.renew(request_id)
            except RedisError as exc:
                log.warning("could not renew a lease: %s", exc)


class IdentifyGate:
    """Spaces the shards' identifies across every process: one per bucket
    (`shard_id % max_concurrency`) each `window_s`, taken as a Redis key that expires;
    without Redis, the window is waited out locally."""

    def __init__(
        self, client: RedisClient, keys: Keys, *, max_concurrency: int = 1,
        window_s: float = IDENTIFY_WINDOW_S,
    ) -> None:  # fmt: skip
        self.client = client
        self.keys = keys
        self.max_concurrency = max(1, max_concurrency)
        self.window_ms = int(window_s * 1000)

    async def wait(self, shard_id: int) -> None:
        key = self.keys.identify_key(shard_id % self.max_concurrency)
        token = uuid.uuid4().hex
        while True:
            try:
                if await self.client.set(key, token, nx=True, px=self.window_ms):
                    return
                left = int(await self.client.pttl(key))
            except RedisError as exc:
                log.warning("identify gate without Redis, waiting the window out: %s", exc)
                await asyncio.sleep(self.window_ms / 1000)
                return
            await asyncio.sleep(max(left, 20) / 1000)
