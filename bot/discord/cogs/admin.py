"""Server admin commands (Manage Server): personas per channel and chat channels."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands.messages import MEMORY_DOWN
from bot.discord.client import MediaBot
from memory.errors import MemoryUnavailable
from prompts import PromptError, list_personas


def _in_server(interaction: discord.Interaction) -> bool:
    # guild_only() hides a command in DMs on Discord's side; this enforces it here too.
    if interaction.guild is None:
        raise app_commands.NoPrivateMessage()
    return True


in_server = app_commands.check(_in_server)


def _channel_id(interaction: discord.Interaction, channel: discord.TextChannel | None) -> int:
    if channel is not None:
        return channel.id
    assert interaction.channel_id is not None
    return interaction.channel_id


class Admin(commands.GroupCog, group_name="chatchannel", description="Chat channels"):
    """Channels where the bot answers every message, no mention needed."""

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot
        super().__init__()

    async def _set(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None, on: bool
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild is not None
        target = _channel_id(interaction, channel)
        try:
            changed = await self.bot.guild_config.set_chat_channel(
                str(interaction.guild.id), str(target), on
            )
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        state = "now a chat channel" if on else "no longer a chat channel"
        note = "" if changed else " (it already was)" if on else " (it was not one)"
        warning = ""
        if on and not self.bot.chat_channels_enabled:
            warning = (
                "\nThe message content intent is off, so I can't read messages there "
                "without a mention until it is turned on."
            )
        await interaction.followup.send(f"<#{target}> is {state}{note}.{warning}", ephemeral=True)

    @app_commands.command(name="add", description="Answer every message in a channel")
    @app_commands.describe(channel="The channel (default: this one)")
    @app_commands.guild_only()
    @in_server
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def add(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        await self._set(interaction, channel, True)

    @app_commands.command(name="remove", description="Stop answering without a mention")
    @app_commands.describe(channel="The channel (default: this one)")
    @app_commands.guild_only()
    @in_server
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def remove(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        await self._set(interaction, channel, False)

    @app_commands.command(name="list", description="The chat channels of this server")
    @app_commands.guild_only()
    @in_server
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def list_channels(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild is not None
        try:
            ids = await self.bot.guild_config.chat_channels(str(interaction.guild.id))
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        if not ids:
            text = "No chat channels: I answer mentions, replies to me and DMs."
        else:
            text = "Chat channels: " + ", ".join(f"<#{i}>" for i in sorted(ids))
        await interaction.followup.send(text, ephemeral=True)


class Personas(commands.GroupCog, group_name="persona", description="Personas"):
    """Who the bot is in each channel."""

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="list", description="The personas I can take")
    async def list_personas(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        current = None
        if interaction.guild is not None and interaction.channel_id is not None:
            try:
                current = await self.bot.guild_config.persona(
                    str(interaction.guild.id), str(interaction.channel_id)
                )
            except MemoryUnavailable:
                current = None
        current = current or self.bot.settings.persona
        lines = [
            f"- **{p.name}**{' (this channel)' if p.name == current else ''}: {p.description}"
            for p in list_personas()
        ]
        await interaction.followup.send("\n".join(lines), ephemeral=True)

    @app_commands.command(name="set", description="Pick the persona for a channel")
    @app_commands.describe(name="Persona name (see /persona list)", channel="Default: this one")
    @app_commands.guild_only()
    @in_server
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def set_persona(
        self,
        interaction: discord.Interaction,
        name: str,
        channel: discord.TextChannel | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild is not None
        try:
            self.bot.services.assistant.persona(name)
        except PromptError:
            names = ", ".join(p.name for p in list_personas())
            await interaction.followup.send(
                f"There is no persona called that. Choose one of: {names}.", ephemeral=True
            )
            return
        target = _channel_id(interaction, channel)
        try:
            await self.bot.guild_config.set_persona(str(interaction.guild.id), str(target), name)
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        await interaction.followup.send(f"<#{target}> now uses the {name} persona.", ephemeral=True)

    @set_persona.autocomplete("name")
    async def _names(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=p.name, value=p.name)
            for p in list_personas()
            if current.lower() in p.name
        ][:25]


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(Admin(bot))
    await bot.add_cog(Personas(bot))
