"""The command layer, where each command's behaviour is tested once: real Redis, the
real catalog, real moderation (rules and classifier), and a scripted model where the
text it writes does not matter. The front ends are tested only for how they render."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from bot.commands import Caller, Commands, Done, Refused, messages
from bot.commands.catalog import Found, Picks
from bot.commands.games import Answer, Round
from bot.commands.memory import Remembered
from bot.generation.base import GenerationParams
from bot.generation.local import LocalGenerator
from bot.generation.queue import QUEUE_FULL, QueueFull
from bot.media.catalog import Catalog
from bot.media.content import Content, ContentRequest
from bot.media.library import Library
from bot.media.service import Media
from bot.media.story import StoryState
from bot.moderation.moderator import OFFENSIVE, OUTPUT_WITHHELD, REPEATED, Moderator
from memory.connection import client_for_url
from memory.keys import Keys, Scope
from memory.records import Turn
from memory.store import MemoryStore
from tests.conftest import ScriptedGenerator

GUILD = "4711"
MEMBER = Caller(Scope(GUILD), "u1", "Ada", "c1")
TERMINAL = Caller(Scope(None), "cli:ada", "ada", floods=False)
ABUSE = "you worthless piece of shit"
# What the scripted model writes: an invented title and year, then a story scene.
INVENTED = ['Watch "The Moon Heist" (2031) tonight!\n', "1. Go left\n2. Go right\n"]


def media_for(store: MemoryStore, catalog: Catalog, generator: Any) -> Media:
    media = Media(Library(store.client, store.keys, fixed=catalog), store, generator,
                  blurb_params=GenerationParams(max_new_tokens=16), trivia_seconds=30)  # fmt: skip
    return media


def commands_for(
    store: MemoryStore, catalog: Catalog, moderator: Moderator, generator: Any
) -> Commands:
    return Commands(store, media_for(store, catalog, generator), moderator)


@pytest.fixture
def commands(
    store: MemoryStore, catalog: Catalog, moderator: Moderator, generator: LocalGenerator
) -> Commands:
    return commands_for(store, catalog, moderator, ScriptedGenerator(generator, INVENTED))


def labels(picks: Picks | Refused) -> list[str]:
    assert isinstance(picks, Picks), picks
    return [p.title.label for p in picks.picks]


# --- catalog -----------------------------------------------------------------------------


async def test_a_title_is_found_despite_typos_and_a_miss_says_so(commands: Commands) -> None:
    found = await commands.catalog.title(MEMBER, "strnger things")
    assert isinstance(found, list) and found[0].title == "Stranger Things"
    missing = await commands.catalog.title(MEMBER, "qqzx wobble")
    assert missing == Refused(messages.no_match("qqzx wobble"))


async def test_search_by_genre_person_type_and_years(commands: Commands) -> None:
    eighties = await commands.catalog.search(
        MEMBER, genre="horror", kind="Movie", year_from=1980, year_to=1989
    )
    assert isinstance(eighties, Found) and eighties.titles
    assert all(1980 <= (t.year or 0) <= 1989 and t.type == "Movie" for t in eighties.titles)
    assert "The Evil Dead (1981)" in {t.label for t in eighties.titles}
    by_person = await commands.catalog.search(MEMBER, person="martin scorsese")
    assert isinstance(by_person, Found)
    assert "The Irishman (2019)" in {t.label for t in by_person.titles}
    many = await commands.catalog.search(MEMBER, kind="Movie")
    assert isinstance(many, Found) and len(many.titles) == 15 and many.more
    polka = await commands.catalog.search(MEMBER, genre="polka")
    assert isinstance(polka, Refused) and polka.text.startswith("I don't know the genre 'polka'")
    nothing = await commands.catalog.search(MEMBER)
    assert nothing == Refused(messages.SEARCH_NOTHING_ASKED)


async def test_recommend_picks_catalog_titles_for_the_mood_and_the_profile(
    commands: Commands, catalog: Catalog
) -> None:
    await commands.catalog.add_pref(MEMBER, "seen", "The Evil Dead")
    picks = await commands.catalog.recommend(MEMBER, "a horror film from the 80s")
    assert isinstance(picks, Picks) and len(picks.picks) == 5
    for pick in picks.picks:
        assert catalog.get(pick.title.id) is pick.title
        assert 1980 <= (pick.title.year or 0) <= 1989
        assert "Moon Heist" not in pick.blurb and "2031" not in pick.blurb
    assert "The Evil Dead (1981)" not in labels(picks)  # seen, so never offered


async def test_a_mood_is_screened_under_the_callers_server_policy(
    commands: Commands, moderator: Moderator
) -> None:
    assert moderator.moderation is not None
    await moderator.moderation.update(GUILD, lambda p: p.update(blocklist=["zorblax"]))
    refused = await commands.catalog.recommend(MEMBER, "a zorblax comedy")
    assert isinstance(refused, Refused) and refused.rule == "blocklist" and refused.moderated
    policy = await moderator.policy(MEMBER.where)
    assert await moderator.moderation.strikes(GUILD, MEMBER.user_id, policy) == 1
    # The terminal reads under the DM policy, which has no such word.
    assert isinstance(await commands.catalog.recommend(TERMINAL, "a zorblax comedy"), Picks)
    # Abuse is refused under every policy, with the same sentence.
    for caller in (MEMBER, TERMINAL):
        assert await commands.catalog.recommend(caller, ABUSE) == Refused(OFFENSIVE, "offensive")


async def test_the_terminal_is_not_counted_towards_flood_limits(commands: Commands) -> None:
    mood = "a quiet drama"
    member = [await commands.catalog.recommend(MEMBER, mood) for _ in range(3)]
    assert member[-1] == Refused(REPEATED, "repeated-message")
    terminal = [await commands.catalog.recommend(TERMINAL, mood) for _ in range(3)]
    assert all(isinstance(t, Picks) for t in terminal)


async def test_what_chat_screened_already_is_not_screened_again(
    commands: Commands, moderator: Moderator
) -> None:
    """Chat screens the whole message before it asks for titles: the command must not
    screen it again (a second strike, a second count towards flood limits)."""
    assert moderator.moderation is not None
    await moderator.moderation.update(GUILD, lambda p: p.update(blocklist=["zorblax"]))
    policy = await moderator.policy(MEMBER.where)
    picks = await commands.catalog.recommend(MEMBER, "a zorblax comedy", screened_under=policy)
    assert isinstance(picks, Picks) and picks.picks
    assert await moderator.moderation.strikes(GUILD, MEMBER.user_id, policy) == 0


async def test_seeds_and_exclusions_reach_the_recommender(
    commands: Commands, catalog: Catalog
) -> None:
    okja = catalog.exact("Okja")[0]
    seeded = await commands.catalog.recommend(MEMBER, "if I liked Okja", seeds=[okja])
    assert isinstance(seeded, Picks) and len(seeded.picks) == 5
    assert okja.label not in labels(seeded)
    assert all("Okja" in p.reason for p in seeded.picks)  # each is tied to the seed
    first = seeded.picks[0].title
    without = await commands.catalog.recommend(
        MEMBER, "if I liked Okja", seeds=[okja], exclude=[first]
    )
    assert first.label not in labels(without) and len(labels(without)) == 5


async def test_more_like_a_title_and_the_buttons_that_teach_the_profile(
    commands: Commands, store: MemoryStore
) -> None:
    dark = (await commands.catalog.title(MEMBER, "Dark"))[0]  # type: ignore[index]
    more = await commands.catalog.more_like(MEMBER, dark.id)
    assert isinstance(more, Picks) and more.like == dark and len(more.picks) == 5
    assert dark.label not in labels(more)
    assert await commands.catalog.more_like(MEMBER, "no-such-id") == Refused(messages.TITLE_GONE)
    seen = await commands.catalog.mark_title(MEMBER, "seen", dark.id)
    assert seen == Done(messages.noted_title("seen", "Dark"))
    taste = await store.taste(MEMBER.scope, MEMBER.user_id)
    assert [(i.polarity, i.key, i.source) for i in taste] == [("seen", dark.id, "button")]
    gone = await commands.catalog.mark_title(MEMBER, "dislike", "no-such-id")
    assert gone == Refused(messages.TITLE_GONE)


async def test_prefs_are_added_shown_and_removed(commands: Commands) -> None:
    assert await commands.catalog.add_pref(MEMBER, "like", "scary films") == Done(
        "Noted: you like horror (genre)."
    )
    unknown = await commands.catalog.add_pref(MEMBER, "like", "zzqx wobble")
    assert isinstance(unknown, Refused) and unknown.text.startswith("I couldn't find 'zzqx")
    taste = await commands.catalog.taste(MEMBER)
    assert isinstance(taste, list) and [(i.polarity, i.value) for i in taste] == [
        ("like", "horror")
    ]
    assert await commands.catalog.taste(TERMINAL) == []  # a profile per scope
    removed = await commands.catalog.remove_pref(MEMBER, "horror")
    assert removed == Done(messages.removed(1, "horror"))
    again = await commands.catalog.remove_pref(MEMBER, "horror")
    assert again == Refused(messages.not_in_profile("horror"))


# --- content -----------------------------------------------------------------------------


async def test_content_about_a_title_is_checked_against_the_catalog(commands: Commands) -> None:
    content = await commands.content.write(MEMBER, ContentRequest("post", "Dark"))
    assert isinstance(content, Content) and content.title is not None
    assert content.title.title == "Dark" and len(content.text) <= 280
    assert "Moon Heist" not in content.text and "2031" not in content.text


async def test_content_subject_is_screened_and_the_result_reviewed(
    store: MemoryStore, catalog: Catalog, moderator: Moderator, generator: LocalGenerator
) -> None:
    rude = ScriptedGenerator(generator, ["Only a worthless piece of shit would skip this story."])
    commands = commands_for(store, catalog, moderator, rude)
    for caller in (MEMBER, TERMINAL):
        screened = await commands.content.write(caller, ContentRequest("headline", ABUSE))
        assert screened == Refused(OFFENSIVE, "offensive")
        reviewed = await commands.content.write(caller, ContentRequest("headline", "Dark"))
        assert reviewed == Refused(OUTPUT_WITHHELD, "output-offensive")


# --- games -------------------------------------------------------------------------------


async def test_trivia_is_answered_once_scored_and_forget_clears_the_score(
    commands: Commands,
) -> None:
    for caller in (MEMBER, TERMINAL):
        trivia = await commands.games.question(caller, "year")
        assert isinstance(trivia, Round) and trivia.seconds == 30
        q = trivia.question
        right = await commands.games.answer(caller, q.id, q.answer)
        assert right == Answer("right", 1, q.answer, q.correct)
        again = await commands.games.answer(caller, q.id, (q.answer + 1) % 4)
        assert isinstance(again, Answer) and again.outcome == "again"
        assert await commands.games.leaderboard(caller) == [(caller.user_id, 1)]
    # The terminal's /forget removes its score too, as Discord's does.
    assert isinstance(await commands.memory.forget(TERMINAL), Done)
    assert await commands.games.leaderboard(TERMINAL) == []
    assert await commands.games.leaderboard(MEMBER) == [(MEMBER.user_id, 1)]


async def test_a_story_moves_on_refuses_stale_choices_and_ends(commands: Commands) -> None:
    state = await commands.games.story_start(MEMBER, "mystery")
    assert isinstance(state, StoryState) and state.choices == ["Go left", "Go right"]
    moved = await commands.games.story_choose(MEMBER, 1, 1)
    assert isinstance(moved, StoryState) and moved.step == 2
    stale = await commands.games.story_choose(MEMBER, 1, 0)
    assert stale == Refused(messages.STORY_STALE)
    assert await commands.games.story_end(MEMBER) == Done(messages.STORY_ENDED)
    assert await commands.games.story_end(MEMBER) == Done(messages.STORY_NOT_RUNNING)
    assert await commands.games.story_choose(MEMBER, 2, 0) == Refused(messages.STORY_NONE)


class BusyModel(ScriptedGenerator):
    """The model's queue turning a request away, as the real fair queue does."""

    async def stream(self, messages: Any, params: Any, **kw: Any) -> AsyncIterator[str]:
        raise QueueFull(QUEUE_FULL)
        yield ""


async def test_a_withheld_or_failed_scene_leaves_the_story_where_it_was(
    store: MemoryStore, catalog: Catalog, moderator: Moderator, generator: LocalGenerator
) -> None:
    rude = ScriptedGenerator(generator, ["You meet a worthless piece of shit.\n1. Run\n2. Hide\n"])
    withheld = await commands_for(store, catalog, moderator, rude).games.story_start(MEMBER, "noir")
    assert withheld == Refused(OUTPUT_WITHHELD, "withheld") and withheld.moderated
    busy = commands_for(store, catalog, moderator, BusyModel(generator, []))
    assert await busy.games.story_start(MEMBER, "noir") == Refused(QUEUE_FULL)
    assert await store.story(MEMBER.scope, MEMBER.user_id) is None


# --- memory ------------------------------------------------------------------------------


def exchange(text: str, msg: str) -> tuple[Turn, Turn]:
    return (
        Turn(role="user", text=text, time=1.0, message_id=msg, tokens=2),
        Turn(role="assistant", text="ok", time=1.0, message_id=None, tokens=1),
    )


async def test_memory_is_shown_reset_exported_and_forgotten(
    commands: Commands, store: MemoryStore
) -> None:
    assert await commands.memory.show(MEMBER) == Remembered([], [])
    await store.append(MEMBER.scope, MEMBER.user_id, *exchange("here", "m1"))
    await store.append(Scope(None), MEMBER.user_id, *exchange("in DMs", "m2"))
    shown = await commands.memory.show(MEMBER)
    assert isinstance(shown, Remembered) and [r["text"] for r in shown.records] == ["here", "ok"]
    exported = await commands.memory.export(MEMBER)
    assert isinstance(exported, dict) and set(exported["scopes"]) == {"dm", f"g{GUILD}"}
    assert await commands.memory.reset(MEMBER) == Done(messages.forgot_here(2))
    assert await store.scopes(MEMBER.user_id) == [Scope(None)]
    assert await commands.memory.forget(MEMBER) == Done(messages.forgot_everything(2))
    assert await store.scopes(MEMBER.user_id) == []


@pytest.fixture
async def no_redis(keys: Keys) -> AsyncIterator[MemoryStore]:
    """A store whose Redis is not there: nothing listens on port 1."""
    client: Redis = client_for_url("redis://127.0.0.1:1/0", socket_timeout=1, connect_timeout=1)
    yield MemoryStore(client, keys=keys)
    await client.aclose()


async def test_every_command_that_needs_memory_says_so_when_redis_is_down(
    no_redis: MemoryStore, catalog: Catalog, moderator: Moderator, generator: LocalGenerator
) -> None:
    commands = commands_for(no_redis, catalog, moderator, ScriptedGenerator(generator, INVENTED))
    dark = catalog.exact("Dark")[0]
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "memory": lambda: commands.memory.show(MEMBER),
        "reset": lambda: commands.memory.reset(MEMBER),
        "export": lambda: commands.memory.export(MEMBER),
        "forget": lambda: commands.memory.forget(MEMBER),
        "recommend": lambda: commands.catalog.recommend(MEMBER, "a film"),
        "more like": lambda: commands.catalog.more_like(MEMBER, dark.id),
        "prefs show": lambda: commands.catalog.taste(MEMBER),
        "prefs add": lambda: commands.catalog.add_pref(MEMBER, "like", "horror"),
        "prefs remove": lambda: commands.catalog.remove_pref(MEMBER, "horror"),
        "seen it": lambda: commands.catalog.mark_title(MEMBER, "seen", dark.id),
        "trivia": lambda: commands.games.question(MEMBER),
        "trivia answer": lambda: commands.games.answer(MEMBER, "0123456789ab", 0),
        "leaderboard": lambda: commands.games.leaderboard(MEMBER),
        "story start": lambda: commands.games.story_start(MEMBER, "noir"),
        "story end": lambda: commands.games.story_end(MEMBER),
    }
    for name, call in calls.items():
        assert await call() == Refused(messages.MEMORY_DOWN), name
    # What needs only the catalog still works.
    assert isinstance(await commands.catalog.title(MEMBER, "Dark"), list)
    assert isinstance(await commands.content.write(MEMBER, ContentRequest("post", "Dark")), Content)


async def test_without_a_catalog_the_catalog_commands_say_so(
    store: MemoryStore, moderator: Moderator
) -> None:
    commands = Commands(store, None, moderator)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: commands.catalog.title(MEMBER, "Dark"),
        lambda: commands.catalog.search(MEMBER, genre="horror"),
        lambda: commands.catalog.recommend(MEMBER, ""),
        lambda: commands.catalog.more_like(MEMBER, "s1"),
        lambda: commands.catalog.add_pref(MEMBER, "like", "horror"),
        lambda: commands.catalog.remove_pref(MEMBER, "horror"),
        lambda: commands.catalog.mark_title(MEMBER, "seen", "s1"),
        lambda: commands.content.write(MEMBER, ContentRequest("post", "Dark")),
        lambda: commands.games.question(MEMBER),
        lambda: commands.games.answer(MEMBER, "0123456789ab", 0),
        lambda: commands.games.leaderboard(MEMBER),
        lambda: commands.games.story_start(MEMBER, "noir"),
        lambda: commands.games.story_choose(MEMBER, 1, 0),
        lambda: commands.games.story_end(MEMBER),
    ]
    for call in calls:
        assert await call() == Refused(messages.NO_CATALOG)
    assert await commands.catalog.taste(MEMBER) == []  # the profile lives in memory
