"""Grounded chat end to end: real Redis, the real catalog, the real embedded model, the
real pipeline (`Assistant.reply`), in the terminal and on Discord."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import discord.ext.test as dpytest
import pytest

from bot.assistant import Assistant, ReplyRequest
from bot.discord.client import MediaBot
from bot.generation.base import GenerationParams
from bot.generation.local import LocalGenerator
from bot.grounding.check import ReplyCheck, sentence_ends
from bot.grounding.finder import Finder
from bot.grounding.service import FACTS_HEADER
from bot.media.catalog import Catalog
from bot.media.library import Library
from bot.media.service import Media
from bot.moderation.moderator import Moderator
from bot.settings import GroundingSettings
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import ScriptedGenerator, make_settings
from tests.discord.conftest import build_bot
from tests.discord.test_commands import MEMBER, in_guild, invoke
from tests.test_assistant import RecordingSink, request

SCOPE = Scope("4242")


def media_for(store: MemoryStore, catalog: Catalog, generator: Any) -> Media:
    media = Media(
        Library(store._redis, store.keys, fixed=catalog),
        store,
        generator,
        blurb_params=GenerationParams(max_new_tokens=30, temperature=0.0),
    )
    return media


def assistant_for(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: Any, **settings: Any
) -> Assistant:
    config = make_settings(keys, max_new_tokens=48)
    if settings:
        config.grounding = GroundingSettings(**settings)
    return Assistant(settings=config, memory=store, generator=generator,
                     media=media_for(store, catalog, generator))  # fmt: skip


@pytest.fixture
def grounded(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: LocalGenerator
) -> Assistant:
    return assistant_for(store, keys, catalog, generator)


def ask(text: str, user: str = "u1") -> ReplyRequest:
    return request(text, user=user, scope=SCOPE)


# One question of each kind, with what the catalog's answer must say.
KINDS = [
    ("Who directed Okja?", ["Bong Joon Ho"]),
    ("what year did jaws come out?", ["1975"]),
    ("who stars in Stranger Things?", ["Winona Ryder"]),
    ("what genre is Okja?", ["Action & Adventure"]),
    ("how long is okja?", ["121 min"]),
    ("is Dark a film or a show?", ["TV show"]),
    ("what has Tilda Swinton been in?", ["Snowpiercer (2013)"]),
    ("who directed The Godfathr?", ["don't have", "in my catalog"]),
]


@pytest.mark.model
@pytest.mark.parametrize(("message", "expected"), KINDS)
async def test_each_kind_of_question_is_answered_from_the_catalog(
    grounded: Assistant, store: MemoryStore, message: str, expected: list[str]
) -> None:
    sink = RecordingSink()
    outcome = await grounded.reply(ask(message), sink)
    assert outcome.stored and outcome.generated
    shown = "".join(sink.kinds("piece"))
    for word in expected:
        assert word in shown, (word, shown)
    history = await store.history(SCOPE, "u1")
    assert [h["text"] for h in history] == [message, outcome.text]
    assert outcome.text == shown.strip()  # what is stored is what was shown


@pytest.mark.model
async def test_a_follow_up_with_it_and_he_uses_the_last_exchange(grounded: Assistant) -> None:
    said = []
    for message in ["Who directed Okja?", "and when did it come out?", "what else did he make?"]:
        outcome = await grounded.reply(ask(message, user="u2"), RecordingSink())
        said.append(outcome.text)
    assert "Bong Joon Ho" in said[0]
    assert "2017" in said[1]
    assert "Snowpiercer" in said[2]


@pytest.mark.model
async def test_titles_like_a_named_one_are_picked_with_it_as_the_seed(
    grounded: Assistant, catalog: Catalog
) -> None:
    sink = RecordingSink()
    outcome = await grounded.reply(ask("Hi! What should I watch tonight if I liked Okja?"), sink)
    assert outcome.stored
    picks = re.findall(r"^\d\. \*\*(.+?)\*\*", outcome.text, re.MULTILINE)
    assert len(picks) == 5 and "Okja" not in picks
    assert "popular in the catalog" not in outcome.text
    # Every pick says what ties it to Okja (a director, cast, genres or a country).
    okja = Finder.of(catalog).titles_named("Okja")[0]
    for line in outcome.text.splitlines()[1:]:
        assert "Okja" in line, line
    for name in picks:
        title = Finder.of(catalog).titles_named(name)[0]
        shared = (title.concepts & okja.concepts) or (set(title.people) & set(okja.people))
        assert shared, name


@pytest.mark.model
async def test_chat_about_a_title_has_its_facts_in_the_window_and_a_checked_reply(
    grounded: Assistant, catalog: Catalog, store: MemoryStore
) -> None:
    sink = RecordingSink()
    outcome = await grounded.reply(ask("tell me about okja, is it any good?", user="u3"), sink)
    assert sink.window is not None and sink.window.facts == 1
    last = sink.window.messages[-1]["content"]
    assert last.index(FACTS_HEADER) < last.index("tell me about okja")  # beside the message
    assert "Bong Joon Ho" in last and "2017" in last
    assert sink.window.messages[0]["content"].count("Catalog facts") == 0  # not in the system
    # Whatever the model wrote, every sentence shown passes the check as it stands.
    check = ReplyCheck(Finder.of(catalog), Finder.of(catalog).titles_named("Okja")[:1])
    text = outcome.text
    start = 0
    for end in [*sentence_ends(text), len(text)]:
        sentence = text[start:end].strip()
        start = end
        if sentence:
            assert check.review(sentence).text == sentence
    history = await store.history(SCOPE, "u3")
    assert history[-2]["text"] == "tell me about okja, is it any good?"  # not the facts


async def test_a_contradicting_reply_is_repaired_or_dropped_before_it_is_shown(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: LocalGenerator
) -> None:
    wrong = ScriptedGenerator(generator, [
        "Okja is directed by the Japanese filmmaker ", "Akira Kurosura. It is a 2019 ",
        "Japanese horror-drama film about survivors. Okja came out in 2019. ",
        "Have you seen *The Moon Heist*? I think you'd like it!",
    ])  # fmt: skip
    assistant = assistant_for(store, keys, catalog, wrong)
    sink = RecordingSink()
    outcome = await assistant.reply(ask("tell me about Okja", user="u4"), sink)
    shown = "".join(sink.kinds("piece"))
    assert shown.strip() == outcome.text
    assert outcome.text == (
        "Okja is directed by Bong Joon Ho. Okja came out in 2017. I think you'd like it!"
    )
    for invented in ("Kurosura", "2019", "Japanese", "Moon Heist"):
        assert invented not in shown
    history = await store.history(SCOPE, "u4")
    assert history[-1]["text"] == outcome.text  # nothing stored that was not shown
    assert assistant.grounding is not None and assistant.grounding.stats.dropped == 2


async def test_the_bot_claims_no_name_no_life_and_no_projects(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: LocalGenerator
) -> None:
    persona = ScriptedGenerator(generator, [
        "I'm Sarah, the AI here to help with your film projects. I've been working on my ",
        "latest series about the history of the internet. What would you like to watch?",
    ])  # fmt: skip
    outcome = await assistant_for(store, keys, catalog, persona).reply(ask("Hi there"),
                                                                       RecordingSink())  # fmt: skip
    assert outcome.text == "What would you like to watch?"


async def test_when_nothing_of_a_reply_survives_the_facts_speak(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: LocalGenerator
) -> None:
    wrong = ScriptedGenerator(generator, ["It is a 1999 Japanese film by Akira Kurosawa."])
    outcome = await assistant_for(store, keys, catalog, wrong).reply(
        ask("tell me about Okja", user="u5"), RecordingSink()
    )
    assert outcome.text.startswith("Here's what my catalog says: Okja (film, 2017)")
    assert "Bong Joon Ho" in outcome.text and "1999" not in outcome.text


async def test_grounding_off_is_chat_as_before(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: LocalGenerator
) -> None:
    wrong = ScriptedGenerator(generator, ["Okja came out in 2019."])
    assistant = assistant_for(store, keys, catalog, wrong, enabled=False)
    sink = RecordingSink()
    outcome = await assistant.reply(ask("Who directed Okja?", user="u6"), sink)
    assert outcome.text == "Okja came out in 2019."  # the model, unchecked
    assert sink.window is not None and sink.window.facts == 0


async def test_without_memory_the_message_is_still_grounded(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: LocalGenerator
) -> None:
    from memory.errors import MemoryUnavailable

    assistant = assistant_for(store, keys, catalog, generator)

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise MemoryUnavailable("gone")

    store.load = down  # type: ignore[method-assign]
    sink = RecordingSink()
    outcome = await assistant.reply(ask("Who directed Jaws?", user="u7"), sink)
    assert "Steven Spielberg" in outcome.text and not outcome.stored
    assert sink.kinds("notice")[0].startswith("I can't reach my memory")


# --- the front ends ---------------------------------------------------------------------


@pytest.fixture
async def grounded_bot(
    store: MemoryStore, keys: Keys, generator: LocalGenerator, moderator: Moderator,
    catalog: Catalog,
) -> AsyncIterator[MediaBot]:  # fmt: skip
    media = media_for(store, catalog, generator)
    client = build_bot(store, keys, generator, moderator=moderator, media=media)
    await client._async_setup_hook()
    await client.load_cogs()
    dpytest.configure(client, guilds=1, text_channels=1, members=1)
    yield client
    await dpytest.empty_queue()


@pytest.mark.model
async def test_discord_mentions_and_slash_chat_are_grounded(grounded_bot: MediaBot) -> None:
    assert grounded_bot.user is not None
    await dpytest.message(f"<@{grounded_bot.user.id}> who directed okja?")
    reply = dpytest.get_message()
    assert "Bong Joon Ho" in reply.content
    interaction = in_guild(grounded_bot, MEMBER)
    await invoke(grounded_bot, "chat", interaction, prompt="what year did jaws come out?")
    assert any("1975" in (s.content or "") for s in interaction.sent())


async def test_a_stored_message_teaches_taste_and_its_edit_teaches_it_again(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: LocalGenerator
) -> None:
    said = ScriptedGenerator(generator, ["Noted, thanks."])
    assistant = assistant_for(store, keys, catalog, said)
    asked = ask("I loved Dark, honestly")
    assert (await assistant.reply(asked, RecordingSink())).stored
    # Taste is the pipeline's step after the turn is stored, tied to the message.
    assert [(i.polarity, i.value, i.source, i.message_id) for i in await store.taste(
        SCOPE, "u1")] == [("like", "Dark", "chat", asked.message_id)]  # fmt: skip
    # A retried message stores nothing and learns nothing twice.
    await store.remove_taste(SCOPE, "u1", message_id=asked.message_id)
    await assistant.reply(asked, RecordingSink())
    assert await store.taste(SCOPE, "u1") == []
    # An edit replaces what was learned from the message.
    assert await assistant.message_edited(SCOPE, "u1", asked.message_id, "I can't stand horror")
    assert [(i.polarity, i.value, i.message_id) for i in await store.taste(SCOPE, "u1")] == [
        ("dislike", "horror", asked.message_id)
    ]
    assert not await assistant.message_edited(SCOPE, "u1", "never-stored", "I loved Dark")
