"""/help: what the bot does and how to talk to it."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.client import MediaBot

HELP = """**mediabot** chats about films, TV, music, games, books and podcasts.
Talk to me by mentioning me, in DMs, by replying to one of my messages, or in a chat channel.
- `/chat prompt` ask me something
- `/memory` what I remember of our conversation here
- `/reset` forget our conversation here
- `/export` everything I store about you, as a JSON file
- `/forget` delete everything I store about you, everywhere
- `/persona list` the personas; `/persona set` picks one for a channel (Manage Server)
- `/chatchannel add|remove|list` channels where I answer without a mention (Manage Server)
- `/title` look a title up; `/search` titles by genre, person, type and years
- `/recommend` picks from the catalog for you; `/prefs add|remove|show` your taste
- `/headline`, `/post`, `/adcopy`, `/synopsis` media copy about a title or topic
- `/trivia play|leaderboard` catalog trivia; `/story start|end` a choose-your-path story
- `/mod …` moderation settings (Manage Server)
What you say in one server is never used in another, and DMs are separate."""


class Help(commands.Cog):
    """The help text."""

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="What I can do")
    async def help(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        await interaction.followup.send(HELP, ephemeral=True)


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(Help(bot))
