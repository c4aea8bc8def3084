"""The media features as one service, shared by the Discord and terminal front ends:
title lookups, taste profiles, recommendations; content and games live beside it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bot.generation.base import GenerationParams, Generator, Owner
from bot.media.catalog import Catalog, Title, concept_of
from bot.media.content import Content, ContentRequest, write
from bot.media.library import Library
from bot.media.recommend import PICKS, Check, Mood, Pick, Recommender, Taste, write_blurbs
from bot.media.story import Stories
from bot.media.taste import item, learn, resolve
from bot.media.trivia import Question, Trivia, make_question
from memory.keys import Scope
from memory.records import Polarity, TasteItem
from memory.store import MemoryStore

# What a change to a taste profile did: an item `added`; nothing, because the catalog
# names no such genre, title or person (`unknown`), the profile is `full`, or the title
# is `gone` from the catalog; `removed` items; nothing, being `absent` from the profile.
PrefOutcome = Literal["added", "unknown", "full", "gone", "removed", "absent"]


@dataclass(frozen=True, slots=True)
class PrefChange:
    outcome: PrefOutcome
    item: TasteItem | None = None
    count: int = 0  # items removed


class Media:
    """Owns the catalog index (reloaded when an import changes it) and what is built
    on it."""

    def __init__(
        self,
        library: Library,
        memory: MemoryStore,
        generator: Generator,
        *,
        blurb_params: GenerationParams,
        content_params: GenerationParams | None = None,
        story_params: GenerationParams | None = None,
        trivia_seconds: float = 30.0,
    ) -> None:
        self.library = library
        self.memory = memory
        self.generator = generator
        self.blurb_params = blurb_params
        self.content_params = content_params or blurb_params
        self._recommender: Recommender | None = None
        self.trivia = Trivia(memory.client, memory.keys, seconds=trivia_seconds)
        self.stories = Stories(memory, generator, params=story_params or self.content_params)

    @classmethod
    async def open(
        cls,
        library: Library,
        memory: MemoryStore,
        generator: Generator,
        *,
        default_file: Path | None,
        blurb_params: GenerationParams,
        content_params: GenerationParams | None = None,
        story_params: GenerationParams | None = None,
        trivia_seconds: float = 30.0,
    ) -> Media:
        media = cls(
            library,
            memory,
            generator,
            blurb_params=blurb_params,
            content_params=content_params,
            story_params=story_params,
            trivia_seconds=trivia_seconds,
        )
        await library.ensure(default_file)
        return media

    @property
    def catalog(self) -> Catalog:
        return self.library.catalog

    async def current(self) -> Catalog:
        """The catalog, reloaded first if another process imported one meanwhile."""
        before = self.library.catalog
        catalog = await self.library.current()
        if catalog is not before:
            self._recommender = None
        return catalog

    @property
    def recommender(self) -> Recommender:
        if self._recommender is None or self._recommender.catalog is not self.catalog:
            self._recommender = Recommender(self.catalog)
        return self._recommender

    async def lookup(self, name: str, limit: int = 5) -> list[Title]:
        catalog = await self.current()
        return [m.title for m in catalog.find(name, limit=limit)]

    # --- taste -------------------------------------------------------------------------

    async def taste(self, scope: Scope, user_id: str) -> list[TasteItem]:
        return await self.memory.taste(scope, user_id)

    async def learn_taste(
        self, scope: Scope, user_id: str, text: str, *, message_id: str | None, at: float
    ) -> int:
        """Record the likes, dislikes and seen titles a stored chat message states, as
        they resolve against the catalog ("I loved Dark", "I can't stand horror"), tied
        to the message; returns how many were written. Raises `MemoryUnavailable`."""
        learned = learn(self.catalog, text, message_id=message_id, at=at)
        return await self.memory.add_taste(scope, user_id, learned)

    async def add_pref(
        self, scope: Scope, user_id: str, polarity: Polarity, phrase: str, *, source: str = "prefs"
    ) -> PrefChange:
        hit = resolve(await self.current(), phrase)
        if hit is None:
            return PrefChange("unknown")
        kind, key, shown = hit
        new = item(polarity, kind, key, shown, source)
        written = await self.memory.add_taste(scope, user_id, [new])
        return PrefChange("added", new) if written else PrefChange("full")

    async def add_title_pref(
        self, scope: Scope, user_id: str, polarity: Polarity, title_id: str, *, source: str
    ) -> PrefChange:
        title = (await self.current()).get(title_id)
        if title is None:
            return PrefChange("gone")
        new = item(polarity, "title", title.id, title.title, source)
        written = await self.memory.add_taste(scope, user_id, [new])
        return PrefChange("added", new) if written else PrefChange("full")

    async def remove_pref(self, scope: Scope, user_id: str, phrase: str) -> PrefChange:
        """Remove every item (like, dislike, seen) of what `phrase` names."""
        items = await self.memory.taste(scope, user_id)
        catalog = await self.current()
        hit = resolve(catalog, phrase)
        wanted = phrase.strip().casefold()
        fields = [
            i.field
            for i in items
            if (hit is not None and (i.kind, i.key) == hit[:2])
            or i.value.casefold() == wanted
            or (i.kind == "genre" and concept_of(phrase) == i.key)
        ]
        if not fields:
            return PrefChange("absent")
        removed = await self.memory.remove_taste(scope, user_id, fields)
        return PrefChange("removed", count=removed)

    # --- recommendations ---------------------------------------------------------------

    async def recommend(
        self,
        scope: Scope,
        user_id: str,
        request: str,
        *,
        taste: list[TasteItem] | None = None,
        owner: Owner | None = None,
        k: int = PICKS,
        seed: Title | None = None,
        seeds: Sequence[Title] = (),
        exclude: Sequence[Title] = (),
        blurbs: bool = True,
        check: Check | None = None,
    ) -> list[Pick]:
        """Up to `k` catalog titles for this request and the user's profile here, each
        with a checked sentence. `seed` asks for titles like one title ("more like this");
        `seeds`, for titles like those the request names (as chat found them), and
        `exclude` are titles never picked (every title of a name the member used)."""
        catalog = await self.current()
        if taste is None:
            taste = await self.memory.taste(scope, user_id)
        mood = Mood.read(catalog, request)
        if seed is not None:
            mood = Mood(text=request, seeds=(seed,))
        elif seeds:
            mood = mood.seeded(seeds)
        salt = f"{user_id}|{dt.date.today().isoformat()}"
        skip = frozenset(t.id for t in (*mood.seeds, *exclude))
        picks = self.recommender.pick(mood, Taste.of(catalog, taste), k=k, salt=salt, exclude=skip)
        if not blurbs or not picks:
            return picks
        return await write_blurbs(
            self.generator,
            catalog,
            picks,
            request=request,
            params=self.blurb_params,
            owner=owner or Owner(user_id, scope.guild_id),
            check=check,
        )

    # --- content and games ---------------------------------------------------------------

    async def content(self, request: ContentRequest, *, owner: Owner | None = None) -> Content:
        catalog = await self.current()
        return await write(
            self.generator, catalog, request, params=self.content_params, owner=owner
        )

    async def question(self, guild_id: str | None, kind: str | None = None) -> Question:
        """A new trivia question, stored with its deadline."""
        catalog = await self.current()
        q = make_question(catalog, kind=kind)
        await self.trivia.post(guild_id, q)
        return q
