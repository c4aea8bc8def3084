"""One table of commands run through both front ends, the terminal in-process and
Discord through the bot's real command tree: they must answer alike (the same titles,
the same sentences, the same screening), since both call the same command layer.

Each front end has its own Redis keys, so both start from the same empty memory and
each row changes both alike; both run in the DM scope (the terminal's) as one person,
since recommendations break ties per person."""

from __future__ import annotations

import dataclasses
import io
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import discord.ext.test as dpytest
import pytest
from redis.asyncio import Redis

from bot.console import Console
from bot.discord.client import MediaBot
from bot.generation.local import LocalGenerator
from bot.media.catalog import Catalog
from bot.moderation.classifier import OffensiveClassifier
from bot.moderation.moderator import Moderator
from bot.moderation.policy import DM, Moderation
from bot.services import build_moderator, default_policy
from memory.keys import Keys
from memory.store import MemoryStore
from tests.commands.test_commands import media_for
from tests.conftest import ScriptedGenerator, make_settings
from tests.discord.conftest import build_bot
from tests.discord.test_commands import MEMBER, FakeInteraction, Sent, invoke
from tests.test_console import console_for

ABUSE = "you worthless piece of shit"
# Longer than most limits, so that a length left out must mean the same on both sides.
WRITTEN = [
    "A gripping and dark story of four families and one missing boy, told across time. ",
    "Every secret in the small town leads somewhere deeper. The mystery grows with each ",
    "episode, and the answers only raise new questions. You will not want to stop once ",
    "it starts. It rewards patience with a finale that is worth every minute of the wait.",
]


@dataclass(frozen=True)
class Row:
    """One command, typed in the terminal and given to Discord, and what to compare:
    "text" (the whole answer), "title" (a lookup), "picks" (recommended titles),
    "content" (a text and its note) or "screened" (moderation refused it)."""

    terminal: str
    discord: str
    options: dict[str, Any] = field(default_factory=dict)
    compare: str = "text"


ROWS = [
    Row("/title strnger things", "title", {"name": "strnger things"}, "title"),
    Row("/title qqzx wobble", "title", {"name": "qqzx wobble"}),
    Row("/search genre=horror type=Movie years=1980-1989", "search",
        {"genre": "horror", "kind": "Movie", "year_from": 1980, "year_to": 1989}),
    Row("/search genre=polka", "search", {"genre": "polka"}),
    Row("/recommend a scary film from the 80s", "recommend",
        {"mood": "a scary film from the 80s"}, "picks"),
    Row(f"/recommend {ABUSE}", "recommend", {"mood": ABUSE}, "screened"),
    Row("/recommend films like discord.gg/abcdef", "recommend",
        {"mood": "films like discord.gg/abcdef"}, "screened"),
    Row("/headline Dark", "headline", {"subject": "Dark"}, "content"),
    Row("/post platform=threads tone=funny Dark", "post",
        {"subject": "Dark", "platform": "threads", "tone": "funny"}, "content"),
    # Not "Dark" a third time: Discord counts repeats towards flood limits, the
    # terminal (one local user, piped lines) does not, as in chat.
    Row("/adcopy The Irishman", "adcopy", {"subject": "The Irishman"}, "content"),
    Row("/synopsis a heist movie marathon", "synopsis",
        {"subject": "a heist movie marathon"}, "content"),
    Row(f"/synopsis {ABUSE}", "synopsis", {"subject": ABUSE}, "screened"),
    Row("/prefs like scary films", "prefs add", {"what": "scary films", "how": "like"}),
    Row("/prefs seen zzqx wobble", "prefs add", {"what": "zzqx wobble", "how": "seen"}),
    Row("/prefs remove horror", "prefs remove", {"what": "horror"}),
    Row("/prefs remove horror", "prefs remove", {"what": "horror"}),
    Row("/reset", "reset"),
]  # fmt: skip


@dataclass
class Fronts:
    console: Console
    bot: MediaBot
    member: Any

    async def terminal(self, line: str) -> str:
        self.console.stdin = io.TextIOWrapper(io.BytesIO(line.encode() + b"\n"), encoding="utf-8")
        self.console.out = out = io.StringIO()
        assert await self.console.run() == 0
        return out.getvalue().strip()

    async def discord(self, path: str, options: dict[str, Any]) -> list[Sent]:
        interaction = FakeInteraction(client=self.bot, user=self.member, guild=None,
                                      channel_id=None, permissions=MEMBER)  # fmt: skip
        await invoke(self.bot, path, interaction, **options)
        return interaction.sent()


@pytest.fixture
async def console_keys(redis_client: Redis) -> AsyncIterator[Keys]:
    """The terminal's own key prefix, deleted afterwards (as `keys` is Discord's)."""
    prefix = "mbt" + uuid.uuid4().hex[:12]
    yield Keys(prefix)
    async for key in redis_client.scan_iter(match=f"{prefix}:*", count=500):
        await redis_client.delete(key)


def moderator_for(redis: Redis, keys: Keys, classifier: OffensiveClassifier) -> Moderator:
    settings = make_settings(keys)
    return build_moderator(settings, Moderation(redis, keys, defaults=default_policy(settings)),
                           classifier)  # fmt: skip


@pytest.fixture
async def fronts(
    redis_client: Redis, keys: Keys, console_keys: Keys, generator: LocalGenerator,
    catalog: Catalog, classifier: OffensiveClassifier,
) -> AsyncIterator[Fronts]:  # fmt: skip
    model = ScriptedGenerator(generator, WRITTEN)
    store = MemoryStore(redis_client, keys=keys)
    bot = build_bot(store, keys, model, moderator=moderator_for(redis_client, keys, classifier),
                    media=media_for(store, catalog, model))  # fmt: skip
    await bot._async_setup_hook()
    await bot.load_cogs()
    dpytest.configure(bot, guilds=1, text_channels=1, members=1)
    member = dpytest.get_config().members[0]

    own = MemoryStore(redis_client, keys=console_keys)
    console, _, _ = console_for(own, console_keys, model, b"", media_for(own, catalog, model),
                                moderator_for(redis_client, console_keys, classifier))  # fmt: skip
    # One person in both: the member's id in the terminal's caller.
    console.caller = dataclasses.replace(console.caller, user_id=str(member.id))
    yield Fronts(console, bot, member)
    await dpytest.empty_queue()


def picked(text: str) -> list[str]:
    return [f"{name} ({year})" for name, year in
            re.findall(r"^\d\. \*\*(.+?)\*\* \((\d{4})", text, re.M)]  # fmt: skip


async def test_every_command_answers_alike_in_the_terminal_and_on_discord(
    fronts: Fronts,
) -> None:
    for row in ROWS:
        said = await fronts.terminal(row.terminal)
        sent = await fronts.discord(row.discord, row.options)
        assert len(sent) == 1, row
        shown = sent[0]
        content = shown.content or ""
        if row.compare == "text":
            # The terminal indents a list where Discord bullets it.
            assert said.replace("\n  ", "\n- ") == content, row
        elif row.compare == "title":
            first, *rest = said.splitlines()
            also = [line for line in rest if line.startswith("Also close:")]
            assert [first, *also] == [shown.embeds[0].title, *([content] if content else [])]
        elif row.compare == "picks":
            assert len(picked(said)) == 5, said
            assert picked(said) == [e.title for e in shown.embeds], row
        elif row.compare == "content":
            body, _, note = content.partition("\n-# ")
            assert said == (f"{body}\n({note})" if note else body), row
        else:
            assert row.compare == "screened"
            assert said == content and shown.ephemeral, row  # only the member sees why
    # Each refusal was logged once, under the same rule, on both sides (newest first).
    logs = []
    for moderator in (fronts.console.services.moderator, fronts.bot.services.moderator):
        assert moderator.moderation is not None
        logs.append([event["rule"] for event in await moderator.moderation.recent(DM)])
    assert logs[0] == logs[1] == ["offensive", "invite-link", "offensive"], logs
