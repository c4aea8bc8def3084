"""The discord.py Bot: services come in through the constructor, cogs load in
`setup_hook`, and no message it sends can ping anyone."""

from __future__ import annotations

import logging
import math
import traceback
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.interactions import respond
from bot.distributed import IdentifyGate
from bot.services import Services
from bot.settings import Settings
from memory.guilds import GuildConfig

log = logging.getLogger(__name__)

COGS = (
    "bot.discord.cogs.chat",
    "bot.discord.cogs.memory",
    "bot.discord.cogs.admin",
    "bot.discord.cogs.moderation",
    "bot.discord.cogs.media",
    "bot.discord.cogs.games",
    "bot.discord.cogs.content",
    "bot.discord.cogs.help",
)
ERROR_SENTENCE = "Sorry, something went wrong on my side. Please try again in a moment."
NEEDS_MANAGE_SERVER = "Only members with the Manage Server permission can do that."
CHAT_CHANNELS_OFF = (
    "The message content intent is off: chat channels are disabled; I answer mentions, "
    "DMs, replies to me and slash commands."
)


def intents_for(settings: Settings) -> discord.Intents:
    intents = discord.Intents.default()
    # Privileged: only chat channels need it (mentions and DMs carry content anyway).
    intents.message_content = settings.discord.message_content_intent
    return intents


class MediaBot(commands.Bot):
    """The bot. Every service is built in `main()` and handed in here."""

    def __init__(
        self,
        *,
        settings: Settings,
        services: Services,
        intents: discord.Intents | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents or intents_for(settings),
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            **options,
        )
        self.identify_gate = IdentifyGate(services.memory.client, services.memory.keys)
        self.settings = settings
        self.services = services
        self.guild_config: GuildConfig = services.guild_config
        self.tree.error(self.on_app_command_error)
        services.health.add("discord", self._gateway_ok)
        services.metrics.on_collect(self._gateway_latency)

    async def _gateway_ok(self) -> bool:
        """Connected to the gateway (for /health)."""
        return self.is_ready() and not self.is_closed()

    def _gateway_latency(self) -> None:
        shards = getattr(self, "latencies", None) or [(0, self.latency)]
        for shard, latency in shards:
            if not math.isnan(latency):  # NaN until the first heartbeat
                self.services.metrics.gateway_latency.labels(str(shard)).set(latency)

    @property
    def chat_channels_enabled(self) -> bool:
        return self.settings.discord.message_content_intent

    async def load_cogs(self) -> None:
        for cog in COGS:
            await self.load_extension(cog)

    async def setup_hook(self) -> None:
        await self.load_cogs()
        if not self.chat_channels_enabled:
            log.warning(CHAT_CHANNELS_OFF)
        guild_id = self.settings.discord.dev_guild_id
        if guild_id is not None:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Wait for this shard's identify bucket, whichever process last used it."""
        await self.identify_gate.wait(shard_id or 0)

    async def on_message(self, message: discord.Message, /) -> None:
        """No text commands: messages are for the chat cog, commands are slash commands."""

    async def on_ready(self) -> None:
        print(f"Connected to Discord as {self.user} in {len(self.guilds)} servers.", flush=True)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        log.error("error in %s\n%s", event_method, traceback.format_exc())

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        if isinstance(error, app_commands.MissingPermissions | app_commands.NoPrivateMessage):
            text = (
                NEEDS_MANAGE_SERVER
                if isinstance(error, app_commands.MissingPermissions)
                else "That command only works in a server."
            )
        else:
            log.error("slash command failed", exc_info=error)
            text = ERROR_SENTENCE
        await respond(interaction, text, ephemeral=True)


class ShardedMediaBot(MediaBot, commands.AutoShardedBot):
    """The bot on several shards: this process runs `DISCORD_SHARD_IDS` of
    `DISCORD_SHARD_COUNT` (all of them when the ids are unset), spacing the shards'
    identifies with every other process's through Redis (`MediaBot.identify_gate`)."""

    async def setup_hook(self) -> None:
        try:
            limits = await self.fetch_session_start_limits()
            self.identify_gate.max_concurrency = max(1, limits.max_concurrency)
        except discord.HTTPException:
            log.warning("session start limits unknown: one identify at a time")
        await super().setup_hook()


def make_bot(settings: Settings, services: Services) -> MediaBot:
    """The bot `mediabot run` starts: sharded when `DISCORD_SHARD_COUNT` is set."""
    discord_settings = settings.discord
    if discord_settings.shard_count is None:
        return MediaBot(settings=settings, services=services)
    shards: dict[str, Any] = {"shard_count": discord_settings.shard_count}
    if discord_settings.shards is not None:
        shards["shard_ids"] = discord_settings.shards
    return ShardedMediaBot(settings=settings, services=services, **shards)
