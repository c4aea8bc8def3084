"""Rule checks: tricks that must not slip past, and media talk that must not be caught."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bot import assistant as pipeline
from bot.assistant import Assistant
from bot.generation.local import LocalGenerator
from bot.moderation.rules import Rules, normalise
from memory.keys import Keys
from memory.store import MemoryStore
from tests.conftest import ScriptedGenerator, make_settings
from tests.test_assistant import RecordingSink, request

CATALOG = Path(__file__).resolve().parent.parent / "data" / "catalog" / "netflix_titles.csv"
ORDINARY = [
    "Is Kill Bill worth watching?",
    "Die Hard is the best christmas film",
    "Any horror games like Dead Space?",
    "Who directed The Silence of the Lambs?",
    "Recommend a podcast about true crime",
    "What's a good album to listen to while gaming?",
    "I loved Breaking Bad, what next?",
    "Give me a free-to-play game suggestion",
    "Is Nitro a good film? The 2007 one.",
    "My discord server is about films, any ideas for a movie night?",
]


@pytest.mark.parametrize(
    "text",
    [
        "free nitro here",
        "FREE NITRO",
        "fr3e n!tro for everyone",
        "ｆｒｅｅ ｎｉｔｒｏ",  # full-width
        "fr\u200bee ni\u200dtro",  # zero-width characters
        "f̷r̷e̷e̷ n̷i̷t̷r̷o̷",  # combining marks
        "f r e e  n i t r o",
        "claim your prize now!!",
    ],
)
def test_blocklisted_spam_is_caught_through_disguises(text: str) -> None:
    verdict = Rules().check_input(text)
    assert not verdict.allowed and verdict.rule == "blocklist"


@pytest.mark.parametrize(
    "text",
    [
        "join discord.gg/abc123",
        "https://discord.com/invite/xyz",
        "discordapp.com/invite/q-w-e",
        "discord . gg / spam",
        "ｄｉｓｃｏｒｄ.ｇｇ/ｓｐａｍ",
    ],
)
def test_invite_links_are_refused(text: str) -> None:
    assert Rules().check_input(text).rule == "invite-link"


def test_mention_floods_are_refused_but_a_few_mentions_are_fine() -> None:
    flood = " ".join(f"<@{i}>" for i in range(100000000000000000, 100000000000000006))
    assert Rules().check_input(flood).rule == "mention-flood"
    assert Rules().check_input("@everyone @here <@&123456789012345678>").allowed
    assert Rules(max_mentions=2).check_input("@everyone @here <@1234567890123456789>").rule == (
        "mention-flood"
    )


def test_server_additions_words_and_regexes() -> None:
    rules = Rules(extra=["spoilers", "re:\\bseason \\d+ finale\\b"])
    assert rules.check_input("sp0ilers ahead").rule == "blocklist"
    assert rules.check_input("what happens in the season 3 finale").rule == "blocklist"
    assert rules.check_input("no spoiling please").allowed


def test_ordinary_media_talk_and_every_catalog_title_pass() -> None:
    rules = Rules()
    assert all(rules.check_input(q).allowed for q in ORDINARY)
    with CATALOG.open(newline="", encoding="utf-8") as f:
        titles = [row["title"] for row in csv.DictReader(f)]
    assert len(titles) == 8807
    caught = [t for t in titles if not rules.check_input(t).allowed]
    assert caught == []


def test_normalise_reads_disguises_as_plain_text() -> None:
    assert normalise("Ｆｒ3ｅ\u200b N!TRO") == "free nitro"


def test_output_loses_invite_links() -> None:
    assert Rules.clean_output("Join discord.gg/abc now") == "Join [link removed] now"


async def test_a_refused_message_is_never_stored_nor_sent_to_the_model(
    store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    scripted = ScriptedGenerator(generator, ["Come to discord.gg/elsewhere!"])
    bot = Assistant(settings=make_settings(keys), memory=store, generator=scripted)
    sink = RecordingSink()
    outcome = await bot.reply(request("get fr3e n!tro at my site"), sink)
    assert not outcome.generated and not outcome.stored
    assert sink.kinds("notice") == ["That message matches this server's blocklist."]
    assert await store.history(pipeline.Scope(None), "u1") == []
    # And what the model writes cannot carry an invite.
    ok = await bot.reply(request("Where do people talk about films?"), RecordingSink())
    assert ok.text == "Come to [link removed]!"
    stored = await store.history(pipeline.Scope(None), "u1")
    assert stored[-1]["text"] == "Come to [link removed]!"
