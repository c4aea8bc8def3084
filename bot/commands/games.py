"""Games: catalog trivia (a question, an answer, the leaderboard of a server or of DMs)
and choose-your-path stories, whose scenes are reviewed like replies."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from bot.commands import messages
from bot.commands.base import MEMORY_DOWN, NO_CATALOG, Caller, Done, Feature, Refused
from bot.generation.base import GenerationError
from bot.media.story import StoryState, StoryWithheld
from bot.media.trivia import NoQuestion, Outcome, Question
from memory.errors import MemoryUnavailable

UNCHOSEN = {
    "none": messages.STORY_NONE,
    "stale": messages.STORY_STALE,
    "not-offered": messages.STORY_NOT_OFFERED,
}


@dataclass(frozen=True, slots=True)
class Round:
    """A trivia question and how long it takes answers."""

    question: Question
    seconds: float


@dataclass(frozen=True, slots=True)
class Answer:
    """What an answer earned; `correct` is the right option's index and `right` its
    text (-1 and "" when the question is gone)."""

    outcome: Outcome
    score: int
    correct: int
    right: str


class GameCommands(Feature):
    async def question(self, caller: Caller, kind: str | None = None) -> Round | Refused:
        """A new trivia question, open for answers here until its deadline."""
        if self.media is None:
            return NO_CATALOG
        try:
            q = await self.media.question(caller.scope.guild_id, kind)
            return Round(q, self.media.trivia.seconds)
        except NoQuestion:
            return Refused(messages.NO_QUESTION)
        except MemoryUnavailable:
            return MEMORY_DOWN

    async def answer(self, caller: Caller, question_id: str, option: int) -> Answer | Refused:
        if self.media is None:
            return NO_CATALOG
        trivia, guild = self.media.trivia, caller.scope.guild_id
        try:
            result = await trivia.answer(guild, question_id, caller.user_id, option)
        except MemoryUnavailable:
            return MEMORY_DOWN
        right = ""
        if result.correct >= 0:
            # The answer counted; only the wording of the right option is missing.
            with contextlib.suppress(IndexError, MemoryUnavailable):
                right = (await trivia.options(guild, question_id))[result.correct]
        return Answer(result.outcome, result.score, result.correct, right)

    async def leaderboard(self, caller: Caller) -> list[tuple[str, int]] | Refused:
        """(user id, score), best first, for the caller's server (or DMs)."""
        if self.media is None:
            return NO_CATALOG
        try:
            return await self.media.trivia.leaderboard(caller.scope.guild_id)
        except MemoryUnavailable:
            return MEMORY_DOWN

    async def story_start(self, caller: Caller, genre: str) -> StoryState | Refused:
        """A new story here (replacing one in progress), with its opening scene."""
        if self.media is None:
            return NO_CATALOG
        check = self.moderator.allows(await self.policy(caller))
        try:
            return await self.media.stories.start(caller.scope, caller.user_id, genre, check=check)
        except StoryWithheld as exc:  # the story stays at its last scene
            return Refused(str(exc), "withheld")
        except GenerationError as exc:  # stories do not fall back: a scene needs the model
            return Refused(str(exc) or messages.BUSY)
        except MemoryUnavailable:
            return MEMORY_DOWN

    async def story_choose(self, caller: Caller, step: int, option: int) -> StoryState | Refused:
        """The next scene, after the choice `option` made at scene `step`."""
        if self.media is None:
            return NO_CATALOG
        check = self.moderator.allows(await self.policy(caller))
        try:
            moved = await self.media.stories.choose(
                caller.scope, caller.user_id, step, option, check=check
            )
        except StoryWithheld as exc:
            return Refused(str(exc), "withheld")
        except GenerationError as exc:
            return Refused(str(exc) or messages.BUSY)
        except MemoryUnavailable:
            return MEMORY_DOWN
        return moved if isinstance(moved, StoryState) else Refused(UNCHOSEN[moved])

    async def story_end(self, caller: Caller) -> Done | Refused:
        if self.media is None:
            return NO_CATALOG
        try:
            had = await self.media.stories.end(caller.scope, caller.user_id)
        except MemoryUnavailable:
            return MEMORY_DOWN
        return Done(messages.STORY_ENDED if had else messages.STORY_NOT_RUNNING)
