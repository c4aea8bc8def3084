"""Content commands: /headline, /post, /adcopy, /synopsis. The model writes from a
template in prompts/tasks; code checks the result (platform limits, hashtags, no
mentions, no claims the catalog contradicts) and moderation reviews it before it is
posted."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.client import MediaBot
from bot.discord.cogs.media import BUSY, begin, review, screen
from bot.generation.base import GenerationError, Owner
from bot.media.content import ContentRequest, Length, Platform, Tone
from bot.moderation.rules import defuse_mentions

Subject = app_commands.Range[str, 1, 300]


class ContentCommands(commands.Cog):
    """Headlines, social posts, ad copy and synopses."""

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot

    async def _write(self, interaction: discord.Interaction, request: ContentRequest) -> None:
        media = await begin(self.bot, interaction)
        if media is None:
            return
        if not await screen(self.bot, interaction, request.subject):
            return
        owner = Owner(str(interaction.user.id), str(interaction.guild_id or "") or None)
        try:
            content = await media.content(request, owner=owner)
        except GenerationError as exc:
            await interaction.followup.send(str(exc) or BUSY)
            return
        if not await review(self.bot, interaction, content.text):
            return
        note = f"\n-# About {content.title.label}, from the catalog." if content.title else ""
        text = defuse_mentions(content.text)
        if len(text) + len(note) > 2000:
            note = ""
        await interaction.followup.send(text[:2000] + note)

    @app_commands.command(name="headline", description="A news headline about a title or topic")
    async def headline(
        self, interaction: discord.Interaction, subject: Subject, tone: Tone = "neutral"
    ) -> None:
        await self._write(interaction, ContentRequest("headline", subject, tone))

    @app_commands.command(name="post", description="A social media post about a title or topic")
    async def post(
        self,
        interaction: discord.Interaction,
        subject: Subject,
        platform: Platform = "x",
        tone: Tone = "neutral",
    ) -> None:
        await self._write(interaction, ContentRequest("post", subject, tone, platform=platform))

    @app_commands.command(name="adcopy", description="Advertising copy for a title or topic")
    async def adcopy(
        self,
        interaction: discord.Interaction,
        subject: Subject,
        tone: Tone = "excited",
        length: Length = "short",
    ) -> None:
        await self._write(interaction, ContentRequest("adcopy", subject, tone, length))

    @app_commands.command(name="synopsis", description="A short synopsis of a title or topic")
    async def synopsis(
        self,
        interaction: discord.Interaction,
        subject: Subject,
        tone: Tone = "neutral",
        length: Length = "short",
    ) -> None:
        await self._write(interaction, ContentRequest("synopsis", subject, tone, length))


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(ContentCommands(bot))
