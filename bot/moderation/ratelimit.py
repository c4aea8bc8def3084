"""Token buckets per user and per server, in Redis, so limits hold across bot processes.

Each bucket is one atomic Lua script call. A message takes a token from the user's
bucket, then from the server's; if the server's is empty the user's token is given
back, so a busy server does not drain its members' own allowance.
"""

from __future__ import annotations

from dataclasses import dataclass

from memory.connection import RedisClient
from memory.errors import redis_errors
from memory.keys import Keys
from memory.scripts import load_script

SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    user_per_minute: float = 6.0
    user_burst: int = 4
    guild_per_minute: float = 60.0
    guild_burst: int = 20


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds
    who: str = ""  # "user" or "server": whose limit was reached


class RateLimiter:
    def __init__(self, client: RedisClient, limits: Limits, keys: Keys | None = None) -> None:
        self._redis = client
        self.limits = limits
        self.keys = keys or Keys()
        self._take = client.register_script(load_script("bot.moderation", "take_token"))

    def _user_key(self, user_id: str) -> str:
        return f"{self.keys.user_tag(user_id)}:ratelimit"

    def _guild_key(self, guild_id: str) -> str:
        return f"{self.keys.guild_tag(guild_id)}:ratelimit"

    async def _bucket(
        self, key: str, per_minute: float, burst: int, cost: float
    ) -> tuple[bool, float]:
        with redis_errors():
            allowed, wait_ms = await self._take(
                keys=[key], args=[per_minute / SECONDS_PER_MINUTE, burst, cost]
            )
        return bool(int(allowed)), int(wait_ms) / 1000

    async def take(self, user_id: str, guild_id: str | None) -> Decision:
        lim = self.limits
        ok, wait = await self._bucket(
            self._user_key(user_id), lim.user_per_minute, lim.user_burst, 1
        )
        if not ok:
            return Decision(False, wait, "user")
        if guild_id is None:
            return Decision(True)
        ok, wait = await self._bucket(
            self._guild_key(guild_id), lim.guild_per_minute, lim.guild_burst, 1
        )
        if not ok:
            # Give the user's token back: the server's limit stopped this message.
            await self._bucket(self._user_key(user_id), lim.user_per_minute, lim.user_burst, -1)
            return Decision(False, wait, "server")
        return Decision(True)
