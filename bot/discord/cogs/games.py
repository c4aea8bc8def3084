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

from bot.discord.client import MediaBot, respond
from bot.discord.cogs.chat import scope_of
from bot.discord.cogs.media import BUSY, MEMORY_DOWN, NO_CATALOG, begin, review
from bot.generation.base import GenerationError
from bot.media.story import Genre, StoryState, StoryWithheld
from bot.media.trivia import LETTERS, NoQuestion, Question
from bot.moderation.rules import defuse_mentions
from memory.store import MemoryUnavailable

log = logging.getLogger(__name__)

ANSWERS = {
    "right": "Right! That's {score} point{s} for you on this server.",
    "wrong": "Not quite: the answer was **{answer}**.",
    "again": "You already answered this one.",
    "late": "Time's up for this one: the answer was **{answer}**.",
    "gone": "This question has expired.",
}


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
    media = bot.services.media
    if media is None:
        await respond(interaction, NO_CATALOG)
        return
    guild = str(interaction.guild_id) if interaction.guild_id else None
    try:
        result = await media.trivia.answer(guild, question_id, str(interaction.user.id), option)
    except MemoryUnavailable:
        await respond(interaction, MEMORY_DOWN)
        return
    right = ""
    if result.correct >= 0:
        with contextlib.suppress(IndexError, MemoryUnavailable):
            right = (await media.trivia.options(guild, question_id))[result.correct]
    text = ANSWERS[result.outcome].format(
        score=result.score, s="" if result.score == 1 else "s", answer=right or "?"
    )
    await respond(interaction, defuse_mentions(text))


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
            await respond(interaction, "This is someone else's story: start yours with "
                          "/story start.")  # fmt: skip
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = interaction.client
        assert isinstance(bot, MediaBot)
        await choose(bot, interaction, self.step, self.option)


async def choose(bot: MediaBot, interaction: discord.Interaction, step: int, option: int) -> None:
    media = await begin(bot, interaction)
    if media is None:
        return
    scope, user = scope_of(interaction.guild), str(interaction.user.id)
    try:
        result = await media.stories.choose(
            scope, user, step, option, check=lambda text: review(bot, interaction, text)
        )
    except MemoryUnavailable:
        await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
        return
    except StoryWithheld:
        return  # review() said why
    except GenerationError as exc:
        await interaction.followup.send(str(exc) or BUSY, ephemeral=True)
        return
    if isinstance(result, str):
        await interaction.followup.send(result, ephemeral=True)
        return
    await interaction.followup.send(story_text(result), view=story_view(interaction.user.id,
                                                                          result))  # fmt: skip


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
        media = await begin(self.bot, interaction)
        if media is None:
            return
        guild = str(interaction.guild_id) if interaction.guild_id else None
        try:
            q = await media.question(guild, None if kind == "any" else kind)
        except NoQuestion:
            await interaction.followup.send("The catalog has too little in it for that.")
            return
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN)
            return
        seconds = int(media.trivia.seconds)
        text = defuse_mentions(f"**Trivia** ({seconds} s, one answer each): {q.text}")
        message = await interaction.followup.send(text, view=question_view(q), wait=True)
        task = asyncio.create_task(self._reveal(message, q, text, media.trivia.seconds))
        self._reveals.add(task)
        task.add_done_callback(self._reveals.discard)

    async def _reveal(self, message: Any, q: Question, text: str, seconds: float) -> None:
        """When time is up, show the answer and take the buttons away."""
        await asyncio.sleep(seconds)
        with contextlib.suppress(discord.HTTPException, AttributeError):
            await message.edit(
                content=defuse_mentions(f"{text}\nTime's up! The answer: **{q.correct}**"),
                view=None,
            )

    @trivia.command(name="leaderboard", description="This server's trivia leaderboard")
    async def trivia_leaderboard(self, interaction: discord.Interaction) -> None:
        media = await begin(self.bot, interaction)
        if media is None:
            return
        guild = str(interaction.guild_id) if interaction.guild_id else None
        try:
            rows = await media.trivia.leaderboard(guild)
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN)
            return
        if not rows:
            await interaction.followup.send("Nobody has scored yet: /trivia play starts a round.")
            return
        lines = [f"{n}. <@{user}>: {score}" for n, (user, score) in enumerate(rows, 1)]
        embed = discord.Embed(title="Trivia leaderboard", description="\n".join(lines))
        await interaction.followup.send(embed=embed)

    @story.command(name="start", description="Start a story (replaces yours in progress)")
    async def story_start(self, interaction: discord.Interaction, genre: Genre = "fantasy") -> None:
        media = await begin(self.bot, interaction)
        if media is None:
            return
        try:
            state = await media.stories.start(
                scope_of(interaction.guild), str(interaction.user.id), genre,
                check=lambda text: review(self.bot, interaction, text),
            )  # fmt: skip
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN)
            return
        except StoryWithheld:
            return
        except GenerationError as exc:
            await interaction.followup.send(str(exc) or BUSY)
            return
        await interaction.followup.send(
            story_text(state), view=story_view(interaction.user.id, state)
        )

    @story.command(name="end", description="End your story here")
    async def story_end(self, interaction: discord.Interaction) -> None:
        media = await begin(self.bot, interaction, ephemeral=True)
        if media is None:
            return
        try:
            had = await media.stories.end(scope_of(interaction.guild), str(interaction.user.id))
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        await interaction.followup.send(
            "Your story has ended. /story start begins a new one." if had
            else "You have no story running here.",
            ephemeral=True,
        )  # fmt: skip


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(Games(bot))
