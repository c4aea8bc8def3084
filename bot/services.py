"""Builds every service from the settings, in `main()`, and closes each once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bot.assistant import Assistant
from bot.generation.base import Generator
from bot.generation.local import LocalGenerator
from bot.generation.weights import Progress
from bot.moderation.ratelimit import Limits, RateLimiter
from bot.settings import Settings
from memory.connection import open_redis
from memory.guilds import GuildConfig
from memory.keys import Keys
from memory.store import MemoryStore


@dataclass(frozen=True, slots=True)
class Services:
    memory: MemoryStore
    generator: Generator
    assistant: Assistant
    guild_config: GuildConfig


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, *, progress: Progress = lambda _: None
) -> AsyncIterator[Services]:
    """Redis first (an unreachable Redis fails in a second, not after the model
    load), then the model, loaded in a thread so the loop stays free."""
    url = settings.redis.url.get_secret_value() if settings.redis.url else None
    async with open_redis(
        url,
        data_dir=settings.redis.data_dir,
        socket_timeout=settings.redis.socket_timeout,
        connect_timeout=settings.redis.connect_timeout,
    ) as client:
        keys = Keys(settings.memory.key_prefix)
        memory = MemoryStore(
            client,
            keys=keys,
            max_turns=settings.memory.max_turns,
            retention_seconds=settings.memory.retention_seconds,
        )
        progress("Loading the model…")
        generator = await asyncio.to_thread(
            LocalGenerator.load,
            settings.model,
            concurrency=settings.generation.concurrency,
            progress=progress,
        )
        rl = settings.ratelimit
        limiter = (
            RateLimiter(
                client,
                Limits(rl.user_per_minute, rl.user_burst, rl.guild_per_minute, rl.guild_burst),
                keys,
            )
            if rl.enabled
            else None
        )
        assistant = Assistant(
            settings=settings, memory=memory, generator=generator, limiter=limiter
        )
        try:
            yield Services(
                memory=memory,
                generator=generator,
                assistant=assistant,
                guild_config=GuildConfig(client, keys),
            )
        finally:
            await assistant.upkeep.drain()
            generator.close()
