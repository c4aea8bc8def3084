"""Memory commands: what is remembered, reset, export and forget (with a confirm)."""

from __future__ import annotations

import io
import json

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands import Caller, Refused, messages
from bot.commands.memory import Remembered
from bot.discord.client import MediaBot
from bot.discord.interactions import begin, caller_of, cut, place_of, refuse
from bot.memory_view import summary_lines

Button = discord.ui.Button["ConfirmForget"]
CONFIRM_SECONDS = 60


def memory_summary(remembered: Remembered, place: str) -> str:
    lines = summary_lines(remembered, place, user="you", bot="me", time_format="%Y-%m-%d",
                          template="- {when}, {who}: {text}")  # fmt: skip
    return cut("\n".join(lines))


class ConfirmForget(discord.ui.View):
    """Two buttons; only the user who asked can press them."""

    def __init__(self, bot: MediaBot, caller: Caller) -> None:
        super().__init__(timeout=CONFIRM_SECONDS)
        self.bot = bot
        self.caller = caller

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return str(interaction.user.id) == self.caller.user_id

    @discord.ui.button(label="Delete everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, _: Button) -> None:
        # Trivia scores are kept per server: every server the bot is in.
        servers = [str(g.id) for g in self.bot.guilds]
        done = await self.bot.services.commands.memory.forget(self.caller, servers)
        if not isinstance(done, Refused):
            self.stop()
        await interaction.response.edit_message(content=done.text, view=None)

    @discord.ui.button(label="Keep it", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, _: Button) -> None:
        self.stop()
        await interaction.response.edit_message(content=messages.KEPT, view=None)


class Memory(commands.Cog):
    """What the bot remembers about you, and deleting it."""

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot
        self.commands = bot.services.commands.memory

    @app_commands.command(name="memory", description="What I remember of our conversation here")
    async def memory(self, interaction: discord.Interaction) -> None:
        await begin(interaction, ephemeral=True)
        caller = caller_of(interaction)
        remembered = await self.commands.show(caller)
        if isinstance(remembered, Refused):
            await refuse(interaction, remembered, ephemeral=True)
            return
        await interaction.followup.send(memory_summary(remembered, place_of(caller)),
                                        ephemeral=True)  # fmt: skip

    @app_commands.command(name="reset", description="Forget our conversation here")
    async def reset(self, interaction: discord.Interaction) -> None:
        await begin(interaction, ephemeral=True)
        done = await self.commands.reset(caller_of(interaction))
        await interaction.followup.send(done.text, ephemeral=True)

    @app_commands.command(name="export", description="Everything I store about you, as JSON")
    async def export(self, interaction: discord.Interaction) -> None:
        await begin(interaction, ephemeral=True)
        data = await self.commands.export(caller_of(interaction))
        if isinstance(data, Refused):
            await refuse(interaction, data, ephemeral=True)
            return
        payload = json.dumps(data, indent=2, ensure_ascii=False).encode()
        await interaction.followup.send(
            messages.EXPORT_INTRO,
            file=discord.File(io.BytesIO(payload), filename="mediabot-export.json"),
            ephemeral=True,
        )

    @app_commands.command(name="forget", description="Delete everything I store about you")
    async def forget(self, interaction: discord.Interaction) -> None:
        await begin(interaction, ephemeral=True)
        await interaction.followup.send(
            messages.FORGET_ASK,
            view=ConfirmForget(self.bot, caller_of(interaction)),
            ephemeral=True,
        )


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(Memory(bot))
