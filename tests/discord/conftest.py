"""A real MediaBot on dpytest's offline Discord, over the real pipeline and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import discord
import discord.ext.test as dpytest
import pytest

from bot.assistant import Assistant
from bot.discord.client import MediaBot, intents_for
from bot.generation.local import LocalGenerator
from bot.media.service import Media
from bot.moderation.moderator import Moderator
from bot.services import Services
from bot.settings import DiscordSettings, Settings
from memory.guilds import GuildConfig
from memory.keys import Keys
from memory.store import MemoryStore
from tests.conftest import make_settings


@pytest.fixture
def payloads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every JSON payload the bot sends or edits, as discord.py builds it for the API."""
    seen: list[dict[str, Any]] = []
    real = discord.http.handle_message_parameters

    def spy(*args: Any, **kwargs: Any) -> Any:
        params = real(*args, **kwargs)
        seen.append(dict(params.payload or {}))
        return params

    for module in (discord.abc, discord.message, discord.interactions, discord.webhook.async_):
        if hasattr(module, "handle_message_parameters"):
            monkeypatch.setattr(module, "handle_message_parameters", spy)
    yield seen


def build_bot(
    store: MemoryStore,
    keys: Keys,
    generator: Any,
    *,
    content_intent: bool = True,
    moderator: Moderator | None = None,
    settings: Settings | None = None,
    media: Media | None = None,
) -> MediaBot:
    settings = settings or make_settings(keys)
    settings.discord = DiscordSettings(
        edit_interval=0.2, message_content_intent=content_intent, token=None
    )
    assistant = Assistant(
        settings=settings, memory=store, generator=generator, moderator=moderator, media=media
    )
    services = Services(
        memory=store,
        generator=generator,
        assistant=assistant,
        guild_config=GuildConfig(store._redis, keys),
        moderator=assistant.moderator,
        media=media,
    )
    # dpytest's offline guild resolves mentions from the member cache, which needs the
    # members intent; the bot itself does not ask for it.
    intents = intents_for(settings)
    intents.members = True
    return MediaBot(settings=settings, services=services, intents=intents)


@pytest.fixture
async def bot(
    store: MemoryStore, keys: Keys, generator: LocalGenerator, moderator: Moderator
) -> AsyncIterator[MediaBot]:
    client = build_bot(store, keys, generator, moderator=moderator)
    await client._async_setup_hook()
    await client.load_cogs()
    dpytest.configure(client, guilds=1, text_channels=2, members=2)
    yield client
    await dpytest.empty_queue()
