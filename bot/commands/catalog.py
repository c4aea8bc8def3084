"""Catalog commands: look a title up, search, recommend (and "more like this"), and the
taste profile that recommendations read. Chat's recommendations come through here too."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.commands import messages
from bot.commands.base import MEMORY_DOWN, NO_CATALOG, Caller, Done, Feature, Refused
from bot.media.catalog import Title, concept_of
from bot.media.recommend import Pick
from bot.moderation.policy import GuildPolicy
from memory.errors import MemoryUnavailable
from memory.records import Polarity, TasteItem

SEARCH_SHOWN = 15


@dataclass(frozen=True, slots=True)
class Found:
    """Titles a search found, newest first; `more`: there were others past these."""

    titles: list[Title]
    more: bool = False


@dataclass(frozen=True, slots=True)
class Picks:
    """Recommended titles (none when nothing fits), and the title they are like when
    the member asked for more like one."""

    picks: list[Pick]
    like: Title | None = None


class CatalogCommands(Feature):
    async def title(self, caller: Caller, name: str) -> list[Title] | Refused:
        """The catalog entries closest to `name`, best first (typos are fine)."""
        if self.media is None:
            return NO_CATALOG
        found = await self.media.lookup(name)
        return found or Refused(messages.no_match(name))

    async def search(
        self,
        caller: Caller,
        *,
        genre: str | None = None,
        person: str | None = None,
        kind: str | None = None,
        year_from: int | None = None,
        year_to: int | None = None,
    ) -> Found | Refused:
        if self.media is None:
            return NO_CATALOG
        if not any((genre, person, kind, year_from, year_to)):
            return Refused(messages.SEARCH_NOTHING_ASKED)
        catalog = await self.media.current()
        if genre and concept_of(genre) is None and genre.strip().lower() not in catalog.concepts:
            return Refused(messages.unknown_genre(genre, catalog.concepts))
        found = catalog.search(genre=genre, person=person, kind=kind, year_from=year_from,
                               year_to=year_to, limit=SEARCH_SHOWN + 1)  # fmt: skip
        if not found:
            return Refused(messages.SEARCH_NOTHING_FOUND)
        return Found(found[:SEARCH_SHOWN], more=len(found) > SEARCH_SHOWN)

    async def recommend(
        self,
        caller: Caller,
        mood: str,
        *,
        taste: list[TasteItem] | None = None,
        seeds: Sequence[Title] = (),
        exclude: Sequence[Title] = (),
        on_position: Callable[[int], None] | None = None,
        screened_under: GuildPolicy | None = None,
    ) -> Picks | Refused:
        """Titles for this mood and the caller's taste profile here: the mood screened,
        the picks' sentences reviewed (a held sentence gives way to the facts).

        Chat passes what it has already: the profile it loaded (`taste`), the titles
        the message named (`seeds`, never picked, as every title of their names in
        `exclude`), and the policy it screened the whole message under, so that the
        message is not screened, and counted towards flood limits, twice."""
        if self.media is None:
            return NO_CATALOG
        policy = screened_under
        if policy is None:
            policy = await self.policy(caller)
            refused = await self.screen(caller, mood, policy)
            if refused is not None:
                return refused
        try:
            picks = await self.media.recommend(
                caller.scope, caller.user_id, mood or messages.ANYTHING_GOOD, taste=taste,
                owner=caller.owner(on_position), check=self.moderator.allows(policy),
                seeds=seeds, exclude=exclude,
            )  # fmt: skip
        except MemoryUnavailable:  # reading the taste profile
            return MEMORY_DOWN
        return Picks(picks)

    async def more_like(self, caller: Caller, title_id: str) -> Picks | Refused:
        """Titles like one catalog title (a recommendation's "More like this")."""
        if self.media is None:
            return NO_CATALOG
        title = (await self.media.current()).get(title_id)
        if title is None:
            return Refused(messages.TITLE_GONE)
        policy = await self.policy(caller)
        try:
            picks = await self.media.recommend(
                caller.scope, caller.user_id, f"more like {title.title}", seed=title,
                owner=caller.owner(), check=self.moderator.allows(policy),
            )  # fmt: skip
        except MemoryUnavailable:
            return MEMORY_DOWN
        return Picks(picks, like=title)

    # --- the taste profile -----------------------------------------------------------

    async def taste(self, caller: Caller) -> list[TasteItem] | Refused:
        """The caller's taste profile here (it lives in memory: no catalog needed)."""
        try:
            return await self.memory.taste(caller.scope, caller.user_id)
        except MemoryUnavailable:
            return MEMORY_DOWN

    async def add_pref(self, caller: Caller, polarity: Polarity, phrase: str) -> Done | Refused:
        """Like, dislike or have seen a genre, title or person the catalog knows."""
        if self.media is None:
            return NO_CATALOG
        try:
            change = await self.media.add_pref(caller.scope, caller.user_id, polarity, phrase)
        except MemoryUnavailable:
            return MEMORY_DOWN
        if change.outcome == "unknown":
            return Refused(messages.not_in_catalog(phrase, self.media.catalog.concepts))
        if change.item is None:  # "full": nothing was written
            return Refused(messages.TASTE_FULL)
        return Done(messages.noted(polarity, change.item.value, change.item.kind))

    async def mark_title(self, caller: Caller, polarity: Polarity, title_id: str) -> Done | Refused:
        """A recommendation's "Seen it" or "Not for me", for whoever pressed it."""
        if self.media is None:
            return NO_CATALOG
        try:
            change = await self.media.add_title_pref(
                caller.scope, caller.user_id, polarity, title_id, source="button"
            )
        except MemoryUnavailable:
            return MEMORY_DOWN
        if change.outcome == "gone":
            return Refused(messages.TITLE_GONE)
        if change.item is None:  # "full": nothing was written
            return Refused(messages.TASTE_FULL)
        return Done(messages.noted_title(polarity, change.item.value))

    async def remove_pref(self, caller: Caller, phrase: str) -> Done | Refused:
        """Remove every item (like, dislike, seen) of what `phrase` names."""
        if self.media is None:
            return NO_CATALOG
        try:
            change = await self.media.remove_pref(caller.scope, caller.user_id, phrase)
        except MemoryUnavailable:
            return MEMORY_DOWN
        if change.outcome == "absent":
            return Refused(messages.not_in_profile(phrase))
        return Done(messages.removed(change.count, phrase))
