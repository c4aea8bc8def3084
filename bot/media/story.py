"""A choose-your-path story: the model writes each scene and its choices; the state
(genre, the last scenes, the choices on offer, the step) lives in Redis with the
user's memory, so a story survives a restart, /export shows it and /forget ends it.

Choices are parsed from the model's numbered lines; when it gives fewer than two,
the genre's own stock choices stand in, so the reader is never stuck.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from bot.generation.base import GenerationParams, Generator, Owner
from bot.moderation.moderator import OUTPUT_WITHHELD
from bot.moderation.rules import Rules
from memory.keys import Scope
from memory.store import MemoryStore
from prompts import load_task

Genre = Literal["fantasy", "sci-fi", "horror", "mystery", "comedy", "western", "noir", "romance"]
GENRES: tuple[str, ...] = get_args(Genre)
MAX_SCENE = 1200
MAX_CHOICE = 80
KEPT_SCENES = 3
STOCK_CHOICES: dict[str, tuple[str, str, str]] = {
    "fantasy": ("Follow the old map", "Ask the innkeeper about the tower", "Draw your sword"),
    "sci-fi": ("Open the airlock", "Hail the unknown ship", "Run a full scan"),
    "horror": ("Go down to the cellar", "Lock the door and wait", "Call out into the dark"),
    "mystery": ("Examine the letter", "Question the butler", "Search the study"),
    "comedy": ("Pretend nothing happened", "Blame the cat", "Make a dramatic speech"),
    "western": ("Ride for the canyon", "Wait in the saloon", "Follow the tracks"),
    "noir": ("Tail the stranger", "Pour another drink and think", "Visit the docks"),
    "romance": ("Send the letter", "Go to the dance", "Take the long walk home"),
}
_CHOICE = re.compile(r"^\s*(?:choice\s*)?([1-3])[.):]\s*(.+?)\s*$", re.I | re.M)
OPENING = "the story begins"
# Moderation of generated text: True when it may be shown.
Check = Callable[[str], Awaitable[bool]]
# Why a choice moved nothing: no story here, a choice from an earlier scene, or none
# of the choices on offer.
Unchosen = Literal["none", "stale", "not-offered"]


class StoryWithheld(Exception):
    """Moderation withheld the scene; the story stays at its last scene."""


@dataclass
class StoryState:
    genre: str
    step: int = 0
    scenes: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def dump(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def load(cls, data: object) -> StoryState | None:
        if not isinstance(data, dict) or data.get("genre") not in GENRES:
            return None
        try:
            return cls(
                genre=data["genre"],
                step=int(data.get("step", 0)),
                scenes=[str(s)[:MAX_SCENE] for s in data.get("scenes", [])][-KEPT_SCENES:],
                choices=[str(c)[:MAX_CHOICE] for c in data.get("choices", [])][:3],
                started=float(data.get("started", 0.0)),
            )
        except (TypeError, ValueError):
            return None


def parse_scene(genre: str, text: str) -> tuple[str, list[str]]:
    """The scene (the text before the numbered choices) and two or three choices."""
    text = Rules.clean_output(text).strip()
    first = _CHOICE.search(text)
    scene = (text[: first.start()] if first else text).strip()
    choices: list[str] = []
    for match in _CHOICE.finditer(text):
        choice = " ".join(match.group(2).split()).strip(" *_\"'")[:MAX_CHOICE]
        if choice and choice.lower() not in {c.lower() for c in choices}:
            choices.append(choice)
    if len(choices) < 2:
        choices = list(STOCK_CHOICES[genre])
    scene = re.sub(r"\n{3,}", "\n\n", scene)[:MAX_SCENE].strip()
    if not scene:
        scene = "The scene shifts, and something is about to happen."
    return scene, choices[:3]


class Stories:
    def __init__(
        self, memory: MemoryStore, generator: Generator, *, params: GenerationParams
    ) -> None:
        self.memory = memory
        self.generator = generator
        self.params = params

    async def current(self, scope: Scope, user_id: str) -> StoryState | None:
        return StoryState.load(await self.memory.story(scope, user_id))

    async def start(
        self, scope: Scope, user_id: str, genre: str, *, check: Check | None = None
    ) -> StoryState:
        """A new story (replacing one in progress), with its opening scene."""
        state = StoryState(genre=genre)
        return await self._advance(scope, user_id, state, OPENING, check)

    async def choose(
        self, scope: Scope, user_id: str, step: int, option: int, *, check: Check | None = None
    ) -> StoryState | Unchosen:
        """Advance by a choice made at `step`, or say why it cannot be."""
        state = await self.current(scope, user_id)
        if state is None:
            return "none"
        if step != state.step:
            return "stale"
        if not 0 <= option < len(state.choices):
            return "not-offered"
        return await self._advance(scope, user_id, state, state.choices[option], check)

    async def end(self, scope: Scope, user_id: str) -> bool:
        had = await self.current(scope, user_id) is not None
        await self.memory.set_story(scope, user_id, None)
        return had

    async def _advance(
        self, scope: Scope, user_id: str, state: StoryState, choice: str, check: Check | None
    ) -> StoryState:
        task = load_task("story")
        so_far = " ".join(state.scenes[-2:])[-900:] or "(nothing yet: this is the opening)"
        prompt = task.render(genre=state.genre, so_far=so_far, choice=choice)
        text = ""
        # A failed generation (queue full, model error) raises: the story stays where it
        # was, and the front end says why.
        async for piece in self.generator.stream(
            [{"role": "user", "content": prompt}], self.params,
            owner=Owner(user_id, scope.guild_id),
        ):  # fmt: skip
            text += piece
        scene, choices = parse_scene(state.genre, text)
        if check is not None and not await check("\n".join([scene, *choices])):
            raise StoryWithheld(OUTPUT_WITHHELD)
        state.step += 1
        state.scenes = [*state.scenes, scene][-KEPT_SCENES:]
        state.choices = choices
        await self.memory.set_story(scope, user_id, state.dump())
        return state
