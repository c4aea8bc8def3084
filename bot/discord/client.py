"""The discord.py Bot: services come in through the constructor, cogs load in
`setup_hook`, and no message it sends can ping anyone."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.interactions import respond
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
        self.settings = settings
        self.services = services
        self.guild_config: GuildConfig = services.guild_config
        self.tree.error(self.on_app_command_error)

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
