"""Memory commands: what is remembered, reset, export and forget (with a confirm)."""

from __future__ import annotations

import io
import json

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.chunks import MESSAGE_LIMIT
from bot.discord.client import MediaBot
from bot.discord.cogs.chat import scope_of
from bot.memory_view import turn_lines
from bot.moderation.rules import defuse_mentions
from memory.profile import render
from memory.records import Fact
from memory.store import MemoryUnavailable

Button = discord.ui.Button["ConfirmForget"]
MEMORY_DOWN = "I can't reach my memory right now; please try again in a moment."
CONFIRM_SECONDS = 60


def memory_summary(records: list[dict[str, object]], facts: list[Fact], where: str) -> str:
    if not records and not facts:
        return f"I don't remember anything of our conversation in {where}."
    lines = []
    if facts:
        lines += ["What I know about you here:", render([(f.label, f.value) for f in facts])]
    lines.append(f"I remember {len(records)} messages of our conversation in {where}.")
    if records:
        lines[-1] += " The last ones:"
    lines += turn_lines(
        records, user="you", bot="me", time_format="%Y-%m-%d", template="- {when}, {who}: {text}"
    )
    lines.append("Use /reset to clear this, /forget to delete everything everywhere.")
    body = defuse_mentions("\n".join(lines))
    return body if len(body) <= MESSAGE_LIMIT else body[: MESSAGE_LIMIT - 1] + "…"


class ConfirmForget(discord.ui.View):
    """Two buttons; only the user who asked can press them."""

    def __init__(self, bot: MediaBot, user_id: int) -> None:
        super().__init__(timeout=CONFIRM_SECONDS)
        self.bot = bot
        self.user_id = user_id
        self.deleted: int | None = None

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id

    @discord.ui.button(label="Delete everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, _: Button) -> None:
        try:
            self.deleted = await self.bot.services.memory.forget(str(self.user_id))
            media = self.bot.services.media
            if media is not None:  # trivia scores are kept per server, not in memory
                servers: list[str | None] = [str(g.id) for g in self.bot.guilds]
                await media.trivia.forget_user(str(self.user_id), [*servers, None])
        except MemoryUnavailable:
            await interaction.response.edit_message(content=MEMORY_DOWN, view=None)
            return
        self.stop()
        await interaction.response.edit_message(
            content=f"Done: I deleted everything I stored about you ({self.deleted} messages, "
            "in every server and in DMs).",
            view=None,
        )

    @discord.ui.button(label="Keep it", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, _: Button) -> None:
        self.stop()
        await interaction.response.edit_message(content="Kept everything.", view=None)


class Memory(commands.Cog):
    """What the bot remembers about you, and deleting it."""

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot

    @app_commands.command(name="memory", description="What I remember of our conversation here")
    async def memory(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        scope = scope_of(interaction.guild)
        try:
            records = await self.bot.services.memory.history(scope, str(interaction.user.id))
            facts = await self.bot.services.memory.facts(scope, str(interaction.user.id))
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        where = "our DMs" if interaction.guild is None else "this server"
        await interaction.followup.send(memory_summary(records, facts, where), ephemeral=True)

    @app_commands.command(name="reset", description="Forget our conversation here")
    async def reset(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            count = await self.bot.services.memory.reset(
                scope_of(interaction.guild), str(interaction.user.id)
            )
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        await interaction.followup.send(
            f"Forgot our conversation here ({count} messages).", ephemeral=True
        )

    @app_commands.command(name="export", description="Everything I store about you, as JSON")
    async def export(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            data = await self.bot.services.memory.export(str(interaction.user.id))
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        payload = json.dumps(data, indent=2, ensure_ascii=False).encode()
        await interaction.followup.send(
            "Everything I store about you, in every server and in DMs:",
            file=discord.File(io.BytesIO(payload), filename="mediabot-export.json"),
            ephemeral=True,
        )

    @app_commands.command(name="forget", description="Delete everything I store about you")
    async def forget(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send(
            "This deletes everything I store about you, in every server and in DMs. Sure?",
            view=ConfirmForget(self.bot, interaction.user.id),
            ephemeral=True,
        )


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(Memory(bot))
