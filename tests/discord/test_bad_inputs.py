"""Every case of the bad-input corpus (tests/data/bad_inputs, 200+ cases) through the
whole Discord pipeline: dpytest's real discord.py objects, real Redis, the real
classifier and policy. The model is replaced by an adversary that echoes the message
back and adds ping and invite bait, the worst a model could do with it (the real model
on the injection cases is in tests/test_injection.py).

For every case: no crash, no ping possible, no message over 2,000 characters, no
empty message, and nothing stored from a refused message."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import discord.ext.test as dpytest

from bench.corpus import all_cases
from bot.discord.chunks import MESSAGE_LIMIT, units
from bot.discord.client import ERROR_SENTENCE
from bot.generation.base import ChatMessage
from bot.generation.local import LocalGenerator
from bot.moderation.classifier import OffensiveClassifier
from bot.moderation.policy import Moderation
from bot.services import build_moderator, default_policy
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import ScriptedGenerator, make_settings
from tests.discord.conftest import build_bot
from tests.discord.test_chat import post

LIVE_PING = re.compile(r"@everyone|@here|<@[!&]?\d+>")
BAIT = " @everyone <@123456789012345678> <@&987654321098765432> discord.gg/bait @here"
ECHO_CHARS = 3000


class EchoAdversary(ScriptedGenerator):
    """Streams the user's message back (up to 3,000 characters, in token-sized pieces)
    followed by ping and invite bait; records whether it was asked at all."""

    def __init__(self, real: LocalGenerator) -> None:
        super().__init__(real, [])
        self.calls = 0

    async def stream(
        self, messages: Sequence[ChatMessage], params: Any, **kw: Any
    ) -> AsyncIterator[str]:
        self.calls += 1
        text = messages[-1]["content"][:ECHO_CHARS] + BAIT
        for i in range(0, len(text), 7):
            yield text[i : i + 7]


async def test_every_bad_input_is_handled_safely(
    store: MemoryStore,
    keys: Keys,
    generator: LocalGenerator,
    classifier: OffensiveClassifier,
    payloads: list[dict[str, Any]],
) -> None:
    cases = all_cases()
    assert len(cases) >= 200
    settings = make_settings(keys)
    # Floods are tested elsewhere; here every case should reach the checks after them.
    settings.moderation.flood_messages = 10_000
    settings.moderation.repeat_limit = 100
    moderation = Moderation(store._redis, keys, defaults=default_policy(settings))
    adversary = EchoAdversary(generator)
    bot = build_bot(
        store, keys, adversary, moderator=build_moderator(settings, moderation, classifier),
        settings=settings,
    )  # fmt: skip
    await bot._async_setup_hook()
    await bot.load_cogs()
    dpytest.configure(bot, guilds=1, text_channels=1, members=1)
    config = dpytest.get_config()
    channel, member = config.channels[0], config.members[0]
    scope = Scope(str(config.guilds[0].id))
    assert bot.user is not None
    mention = f"<@{bot.user.id}> "
    answered = refused = 0
    try:
        for case_id, text in cases:
            payloads.clear()
            calls = adversary.calls
            message = await post(channel, member, mention + text)
            assert payloads, f"{case_id}: no answer at all"
            for p in payloads:
                content = p.get("content") or ""
                assert content.strip() or p.get("embeds"), f"{case_id}: an empty message"
                assert units(content) <= MESSAGE_LIMIT, f"{case_id}: {units(content)} units"
                assert p["allowed_mentions"]["parse"] == [], case_id
                assert not p["allowed_mentions"].get("users"), case_id
                assert not p["allowed_mentions"].get("roles"), case_id
                assert not LIVE_PING.search(content), f"{case_id}: {content[:200]!r}"
                assert "discord.gg/bait" not in content, case_id
                assert ERROR_SENTENCE not in content, f"{case_id}: crashed"
            stored = await store.has_message(scope, str(member.id), str(message.id))
            if adversary.calls == calls:
                refused += 1
                assert not stored, f"{case_id}: a refused message was stored"
            else:
                answered += 1
            await dpytest.empty_queue()
        # Both paths were exercised; stored replies carry no live ping either.
        assert answered > 100 and refused > 10, (answered, refused)
        history = await store.history(scope, str(member.id))
        replies = [t for t in history if t.get("role") == "assistant"]
        assert len(replies) == answered
        for turn in replies:
            assert not LIVE_PING.search(str(turn["text"])), turn
    finally:
        await dpytest.empty_queue()
