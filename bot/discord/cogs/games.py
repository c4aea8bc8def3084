"""Games: /trivia (catalog questions, buttons, a per-server leaderboard) and /story
(a choose-your-path story whose state lives in Redis). Buttons carry everything they
need in their custom ids, so both keep working after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands import Refused, messages
from bot.discord.client import MediaBot
from bot.discord.interactions import begin, caller_of, cut, refuse, respond
from bot.media.story import Genre, StoryState
from bot.media.trivia import LETTERS, Question
from bot.moderation.rules import defuse_mentions

log = logging.getLogger(__name__)


def question_view(q: Question) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for i, option in enumerate(q.options):
        view.add_item(TriviaButton(q.id, i, f"{LETTERS[i]}) {option}"))
    return view


class TriviaButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"trivia:(?P<q>[0-9a-f]{12}):(?P<o>[0-3])",
):
    def __init__(self, question_id: str, option: int, label: str = "") -> None:
        super().__init__(
            discord.ui.Button(
                label=(label or LETTERS[option])[:80],
                style=discord.ButtonStyle.secondary,
                custom_id=f"trivia:{question_id}:{option}",
            )
        )
        self.question_id = question_id
        self.option = option

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> TriviaButton:
        return cls(match["q"], int(match["o"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = interaction.client
        assert isinstance(bot, MediaBot)
        await answer(bot, interaction, self.question_id, self.option)


async def answer(
    bot: MediaBot, interaction: discord.Interaction, question_id: str, option: int
) -> None:
    """A trivia button pressed: the answer of whoever pressed it, shown only to them."""
    result = await bot.services.commands.games.answer(caller_of(interaction), question_id, option)
    if isinstance(result, Refused):
        await refuse(interaction, result, ephemeral=True)
        return
    right = f"**{result.right or '?'}**"
    await respond(interaction, cut(messages.answered(result.outcome, result.score, right)))


def story_view(user_id: int, state: StoryState) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for i, choice in enumerate(state.choices):
        view.add_item(StoryButton(user_id, state.step, i, f"{i + 1}. {choice}"))
    return view


def story_text(state: StoryState) -> str:
    scene = defuse_mentions(state.scenes[-1] if state.scenes else "")
    head = f"**{state.genre.title()} story, scene {state.step}**\n"
    lines = [f"{i + 1}. {defuse_mentions(c)}" for i, c in enumerate(state.choices)]
    body = head + scene + "\n\n" + "\n".join(lines)
    return body if len(body) <= 2000 else body[:1999] + "…"


class StoryButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"story:(?P<user>\d{1,20}):(?P<step>\d{1,6}):(?P<o>[0-2])",
):
    def __init__(self, user_id: int, step: int, option: int, label: str = "") -> None:
        super().__init__(
            discord.ui.Button(
                label=(label or str(option + 1))[:80],
                style=discord.ButtonStyle.primary,
                custom_id=f"story:{user_id}:{step}:{option}",
            )
        )
        self.user_id, self.step, self.option = user_id, step, option

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> StoryButton:
        return cls(int(match["user"]), int(match["step"]), int(match["o"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.user_id:
            await respond(interaction, messages.STORY_NOT_YOURS)
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = interaction.client
        assert isinstance(bot, MediaBot)
        await choose(bot, interaction, self.step, self.option)


async def choose(bot: MediaBot, interaction: discord.Interaction, step: int, option: int) -> None:
    """A story button pressed by its reader: the next scene."""
    await begin(interaction)
    state = await bot.services.commands.games.story_choose(caller_of(interaction), step, option)
    if isinstance(state, Refused):
        await refuse(interaction, state, ephemeral=True)
        return
    await interaction.followup.send(story_text(state), view=story_view(interaction.user.id, state))


class Games(commands.Cog):
    """Trivia and interactive stories."""

    trivia = app_commands.Group(name="trivia", description="Catalog trivia for the server")
    story = app_commands.Group(name="story", description="A choose-your-path story")

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot
        self._reveals: set[asyncio.Task[None]] = set()

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(TriviaButton, StoryButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(TriviaButton, StoryButton)
        for task in self._reveals:
            task.cancel()

    @trivia.command(name="play", description="A trivia question from the catalog")
    async def trivia_play(
        self,
        interaction: discord.Interaction,
        kind: Literal["any", "director", "year", "genre", "odd"] = "any",
    ) -> None:
        await begin(interaction)
        kind_asked = None if kind == "any" else kind
        trivia = await self.bot.services.commands.games.question(caller_of(interaction), kind_asked)
        if isinstance(trivia, Refused):
            await refuse(interaction, trivia)
            return
        q = trivia.question
        text = cut(f"**{messages.trivia_heading(int(trivia.seconds))}**: {q.text}")
        message = await interaction.followup.send(text, view=question_view(q), wait=True)
        task = asyncio.create_task(self._reveal(message, q, text, trivia.seconds))
        self._reveals.add(task)
        task.add_done_callback(self._reveals.discard)

    async def _reveal(self, message: Any, q: Question, text: str, seconds: float) -> None:
        """When time is up, show the answer and take the buttons away."""
        await asyncio.sleep(seconds)
        with contextlib.suppress(discord.HTTPException, AttributeError):
            await message.edit(
                content=cut(f"{text}\n{messages.times_up(f'**{q.correct}**')}"), view=None
            )

    @trivia.command(name="leaderboard", description="This server's trivia leaderboard")
    async def trivia_leaderboard(self, interaction: discord.Interaction) -> None:
        await begin(interaction)
        rows = await self.bot.services.commands.games.leaderboard(caller_of(interaction))
        if isinstance(rows, Refused):
            await refuse(interaction, rows)
            return
        if not rows:
            await interaction.followup.send(messages.NOBODY_SCORED)
            return
        lines = [f"{n}. <@{user}>: {score}" for n, (user, score) in enumerate(rows, 1)]
        embed = discord.Embed(title="Trivia leaderboard", description="\n".join(lines))
        await interaction.followup.send(embed=embed)

    @story.command(name="start", description="Start a story (replaces yours in progress)")
    async def story_start(self, interaction: discord.Interaction, genre: Genre = "fantasy") -> None:
        await begin(interaction)
        state = await self.bot.services.commands.games.story_start(caller_of(interaction), genre)
        if isinstance(state, Refused):
            await refuse(interaction, state)
            return
        await interaction.followup.send(
            story_text(state), view=story_view(interaction.user.id, state)
        )

    @story.command(name="end", description="End your story here")
    async def story_end(self, interaction: discord.Interaction) -> None:
        await begin(interaction, ephemeral=True)
        done = await self.bot.services.commands.games.story_end(caller_of(interaction))
        await interaction.followup.send(done.text, ephemeral=True)


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(Games(bot))
