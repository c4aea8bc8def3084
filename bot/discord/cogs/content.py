"""Content commands: /headline, /post, /adcopy, /synopsis. The model writes from a
template in prompts/tasks; code checks the result (platform limits, hashtags, no
mentions, no claims the catalog contradicts) and moderation reviews it before it is
posted."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands import Refused, messages
from bot.commands.content import content_request
from bot.discord.chunks import MESSAGE_LIMIT
from bot.discord.client import MediaBot
from bot.discord.interactions import begin, caller_of, cut, refuse
from bot.media.content import ContentRequest, Length, Platform, Tone

Subject = app_commands.Range[str, 1, 300]


class ContentCommands(commands.Cog):
    """Headlines, social posts, ad copy and synopses."""

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot

    async def _write(self, interaction: discord.Interaction, request: ContentRequest) -> None:
        await begin(interaction)
        content = await self.bot.services.commands.content.write(caller_of(interaction), request)
        if isinstance(content, Refused):
            await refuse(interaction, content)
            return
        note = f"\n-# {messages.about(content.title.label)}" if content.title else ""
        text = cut(content.text)
        if len(text) + len(note) > MESSAGE_LIMIT:
            note = ""
        await interaction.followup.send(text + note)

    @app_commands.command(name="headline", description="A news headline about a title or topic")
    async def headline(
        self, interaction: discord.Interaction, subject: Subject, tone: Tone | None = None
    ) -> None:
        await self._write(interaction, content_request("headline", subject, tone=tone))

    @app_commands.command(name="post", description="A social media post about a title or topic")
    async def post(
        self,
        interaction: discord.Interaction,
        subject: Subject,
        platform: Platform | None = None,
        tone: Tone | None = None,
    ) -> None:
        await self._write(
            interaction, content_request("post", subject, tone=tone, platform=platform)
        )

    @app_commands.command(name="adcopy", description="Advertising copy for a title or topic")
    async def adcopy(
        self,
        interaction: discord.Interaction,
        subject: Subject,
        tone: Tone | None = None,
        length: Length | None = None,
    ) -> None:
        await self._write(interaction, content_request("adcopy", subject, tone=tone, length=length))

    @app_commands.command(name="synopsis", description="A short synopsis of a title or topic")
    async def synopsis(
        self,
        interaction: discord.Interaction,
        subject: Subject,
        tone: Tone | None = None,
        length: Length | None = None,
    ) -> None:
        await self._write(
            interaction, content_request("synopsis", subject, tone=tone, length=length)
        )


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(ContentCommands(bot))
