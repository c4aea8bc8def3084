"""How the media commands render on Discord, through the bot's real app_commands tree,
real Redis and the real catalog: /title, /recommend and its buttons, /prefs, content
commands, /trivia and /story (whose buttons are rebuilt from their custom ids, as after
a restart). What each command does is tested once, in tests/commands.

The cogs are loaded as extensions, which imports their modules afresh: the button
classes the bot uses are compared by name, not identity, with those imported here."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import discord.ext.test as dpytest
import pytest

from bot.discord.client import MediaBot
from bot.discord.cogs.games import TriviaButton
from bot.discord.cogs.media import RecButton
from bot.generation.base import GenerationParams
from bot.generation.local import LocalGenerator
from bot.media.catalog import Catalog
from bot.media.library import Library
from bot.media.service import Media
from bot.moderation.moderator import Moderator
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import ScriptedGenerator
from tests.discord.conftest import build_bot
from tests.discord.test_commands import ADMIN, MEMBER, FakeInteraction, in_guild, invoke

# The "model" for these tests: every sentence it writes invents a title and a year.
INVENTED = ['Watch "The Moon Heist" (2031) with @everyone tonight! #a #b #c #d\n',
            "1. Go left\n2. Go right\n"]  # fmt: skip


@pytest.fixture
async def media_bot(
    store: MemoryStore, keys: Keys, generator: LocalGenerator, moderator: Moderator,
    catalog: Catalog,
) -> AsyncIterator[MediaBot]:  # fmt: skip
    scripted = ScriptedGenerator(generator, INVENTED)
    media = Media(Library(store._redis, keys, fixed=catalog), store, scripted,  # type: ignore[arg-type]
                  blurb_params=GenerationParams(max_new_tokens=16), trivia_seconds=30)  # fmt: skip
    client = build_bot(store, keys, scripted, moderator=moderator, media=media)
    await client._async_setup_hook()
    await client.load_cogs()
    dpytest.configure(client, guilds=1, text_channels=2, members=2)
    yield client
    await dpytest.empty_queue()


def last(interaction: FakeInteraction) -> Any:
    return interaction.sent()[-1]


def guild_scope() -> Scope:
    return Scope(str(dpytest.get_config().guilds[0].id))


async def test_title_embed_from_the_catalog(media_bot: MediaBot) -> None:
    interaction = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "title", interaction, name="strnger things")
    sent = last(interaction)
    embed = sent.embeds[0]
    assert embed.title == "Stranger Things (2019)" or embed.title.startswith("Stranger Things")
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Type"] == "TV Show" and "Winona Ryder" in fields["Cast"]
    assert "TV Sci-Fi & Fantasy" in fields["Genres"]
    missing = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "title", missing, name="qqzx wobble")
    assert "Nothing in the catalog matches" in last(missing).content


async def test_recommend_shows_an_embed_per_pick_and_buttons_teach_the_profile(
    media_bot: MediaBot, store: MemoryStore
) -> None:
    interaction = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "recommend", interaction, mood="a scary film from the 80s")
    sent = last(interaction)
    member = dpytest.get_config().members[0]
    assert sent.content == f"Picks for {member.display_name}: a scary film from the 80s"
    assert len(sent.embeds) == 5  # which titles, and their sentences: tests/commands
    for embed in sent.embeds:
        assert embed.description and embed.footer.text.startswith("Why: ")
        assert len(embed) <= 6000
    buttons = [item for item in sent.view.children]
    assert len(buttons) == 15 and all(type(b).__name__ == "RecButton" for b in buttons)
    first_title = buttons[0].title_id
    # "Seen it" and "Not for me", pressed after a restart: rebuilt from the custom id.
    for action in ("seen", "no"):
        press = in_guild(media_bot, MEMBER)
        match = re.fullmatch(RecButton.__discord_ui_compiled_template__,
                             f"rec:{action}:{first_title}")  # fmt: skip
        rebuilt = await RecButton.from_custom_id(press, buttons[0].item, match)  # type: ignore[arg-type]
        await rebuilt.callback(press)  # type: ignore[arg-type]
        assert last(press).content.startswith("Noted for")
    taste = await store.taste(guild_scope(), str(member.id))
    assert {(i.polarity, i.key, i.source) for i in taste} == {
        ("seen", first_title, "button"), ("dislike", first_title, "button")
    }  # fmt: skip
    more = in_guild(media_bot, MEMBER)
    await RecButton("more", first_title).callback(more)  # type: ignore[arg-type]
    assert last(more).content.startswith("More like") and last(more).ephemeral
    assert first_title not in {e.title for e in last(more).embeds}


async def test_prefs_commands(media_bot: MediaBot) -> None:
    add = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "prefs add", add, what="Dark", how="like")
    assert last(add).content == "Noted: you like Dark (title)." and last(add).ephemeral
    bad = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "prefs add", bad, what="@everyone zzqx", how="like")
    assert "couldn't find" in last(bad).content and "@everyone" not in last(bad).content
    show = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "prefs show", show)
    assert "- likes: Dark (title)" in last(show).content
    remove = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "prefs remove", remove, what="dark")
    assert last(remove).content.startswith("Removed 1")
    empty = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "prefs show", empty)
    assert "empty" in last(empty).content


@pytest.mark.parametrize(
    ("command", "options", "limit"),
    [
        ("post", {"platform": "x"}, 280),
        ("post", {"platform": "threads"}, 500),
        ("headline", {}, 100),
        ("adcopy", {}, 160),
        ("synopsis", {}, 300),
    ],
)
async def test_content_commands(
    media_bot: MediaBot, command: str, options: dict[str, str], limit: int
) -> None:
    interaction = in_guild(media_bot, MEMBER)
    await invoke(media_bot, command, interaction, subject="Dark", **options)
    text = last(interaction).content
    body = text.split("\n-# ")[0]
    assert len(body) <= limit and "Moon Heist" not in body and "2031" not in body
    assert "@everyone" not in text
    assert text.endswith("from the catalog.")


async def test_content_subject_is_moderated(media_bot: MediaBot) -> None:
    interaction = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "headline", interaction, subject="you worthless piece of shit")
    assert len(interaction.sent()) == 1 and last(interaction).ephemeral


async def test_trivia_round_and_leaderboard(media_bot: MediaBot, catalog: Catalog) -> None:
    play = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "trivia play", play, kind="year")
    sent = last(play)
    buttons = list(sent.view.children)
    assert len(buttons) == 4 and all(type(b).__name__ == "TriviaButton" for b in buttons)
    qid = buttons[0].question_id
    media = media_bot.services.media
    assert media is not None
    options = await media.trivia.options(str(play.guild_id), qid)
    # Find the right option from the catalog itself, not from the stored answer.
    name = re.search(r"(?:film|show|title) (.+) released\?", sent.content).group(1)  # type: ignore[union-attr]
    years = {str(t.year) for t in catalog.exact(name)}
    right = next(i for i, o in enumerate(options) if o in years)
    for member, option in ((0, right), (1, (right + 1) % 4), (0, right)):
        press = in_guild(media_bot, MEMBER, member=member)
        match = re.fullmatch(
            TriviaButton.__discord_ui_compiled_template__, f"trivia:{qid}:{option}"
        )
        button = await TriviaButton.from_custom_id(press, buttons[0].item, match)  # type: ignore[arg-type]
        await button.callback(press)  # type: ignore[arg-type]
    board = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "trivia leaderboard", board)
    member0 = dpytest.get_config().members[0]
    assert last(board).embeds[0].description == f"1. <@{member0.id}>: 1"
    for task in list(media_bot.cogs["Games"]._reveals):  # type: ignore[attr-defined]
        task.cancel()


async def test_story_buttons_belong_to_their_reader(media_bot: MediaBot) -> None:
    start = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "story start", start, genre="mystery")
    sent = last(start)
    assert sent.content.startswith("**Mystery story, scene 1**")
    buttons = list(sent.view.children)
    assert [b.item.label for b in buttons] == ["1. Go left", "2. Go right"]
    assert all(type(b).__name__ == "StoryButton" for b in buttons)
    stranger = in_guild(media_bot, MEMBER, member=1)
    assert not await buttons[0].interaction_check(stranger)  # type: ignore[arg-type]
    reader = in_guild(media_bot, MEMBER)
    assert await buttons[1].interaction_check(reader)  # type: ignore[arg-type]
    await buttons[1].callback(reader)  # type: ignore[arg-type]
    assert last(reader).content.startswith("**Mystery story, scene 2**")
    stale = in_guild(media_bot, MEMBER)
    await buttons[0].callback(stale)  # type: ignore[arg-type]
    assert "earlier scene" in last(stale).content
    end = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "story end", end)
    assert last(end).content.startswith("Your story has ended")


async def test_forget_clears_trivia_scores(media_bot: MediaBot, store: MemoryStore) -> None:
    media = media_bot.services.media
    assert media is not None
    guild = str(dpytest.get_config().guilds[0].id)
    member = dpytest.get_config().members[0]
    q = await media.question(guild, "year")
    await media.trivia.answer(guild, q.id, str(member.id), q.answer)
    assert await media.trivia.leaderboard(guild)
    interaction = in_guild(media_bot, ADMIN)
    await invoke(media_bot, "forget", interaction)
    view = last(interaction).view
    confirm = in_guild(media_bot, ADMIN)
    await view.confirm.callback(confirm)  # type: ignore[union-attr]
    assert await media.trivia.leaderboard(guild) == []


def test_every_media_command_is_registered(media_bot: MediaBot) -> None:
    names = {c.qualified_name for c in media_bot.tree.walk_commands()}
    assert names >= {"title", "search", "recommend", "prefs add", "prefs remove", "prefs show",
                     "headline", "post", "adcopy", "synopsis", "trivia play",
                     "trivia leaderboard", "story start", "story end"}  # fmt: skip


async def test_search_by_genre_person_type_and_years(media_bot: MediaBot) -> None:
    interaction = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "search", interaction, genre="horror", kind="Movie",
                 year_from=1980, year_to=1989)  # fmt: skip
    text = last(interaction).content
    rows = re.findall(r"^- (.+) \((\d{4})\), Movie", text, re.M)
    assert rows and all(1980 <= int(year) <= 1989 for _, year in rows)
    assert "The Evil Dead (1981)" in text
    by_person = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "search", by_person, person="martin scorsese")
    assert "The Irishman (2019)" in last(by_person).content
    unknown = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "search", unknown, genre="polka")
    assert "I don't know the genre 'polka'" in last(unknown).content
    nothing = in_guild(media_bot, MEMBER)
    await invoke(media_bot, "search", nothing)
    assert "at least one" in last(nothing).content
