"""Per-server settings that admins change from Discord: chat channels and personas."""

from __future__ import annotations

from memory.connection import RedisClient
from memory.errors import redis_errors
from memory.keys import Keys


class GuildConfig:
    """Chat channels (no mention needed) and the persona of each channel."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        self._redis = client
        self.keys = keys or Keys()

    async def chat_channels(self, guild_id: str) -> set[str]:
        key = self.keys.guild_key(guild_id, "chat_channels")
        with redis_errors():
            members = await self._redis.smembers(key)  # type: ignore[misc]
        return {m.decode() if isinstance(m, bytes) else m for m in members}

    async def is_chat_channel(self, guild_id: str, channel_id: str) -> bool:
        key = self.keys.guild_key(guild_id, "chat_channels")
        with redis_errors():
            return bool(await self._redis.sismember(key, channel_id))  # type: ignore[misc]

    async def set_chat_channel(self, guild_id: str, channel_id: str, on: bool) -> bool:
        """Mark or unmark a chat channel; False when nothing changed."""
        key = self.keys.guild_key(guild_id, "chat_channels")
        with redis_errors():
            if on:
                return bool(await self._redis.sadd(key, channel_id))  # type: ignore[misc]
            return bool(await self._redis.srem(key, channel_id))  # type: ignore[misc]

    async def persona(self, guild_id: str, channel_id: str) -> str | None:
        key = self.keys.guild_key(guild_id, "personas")
        with redis_errors():
            value = await self._redis.hget(key, channel_id)  # type: ignore[misc]
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def set_persona(self, guild_id: str, channel_id: str, persona: str | None) -> None:
        key = self.keys.guild_key(guild_id, "personas")
        with redis_errors():
            if persona is None:
                await self._redis.hdel(key, channel_id)  # type: ignore[misc]
            else:
                await self._redis.hset(key, channel_id, persona)  # type: ignore[misc]
