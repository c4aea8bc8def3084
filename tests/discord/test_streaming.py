"""The Discord sink on its own: edit throttling, continuation, notices, errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import discord
import discord.ext.test as dpytest
import pytest

from bot.discord.client import ERROR_SENTENCE, MediaBot
from bot.discord.streaming import DiscordSink


@dataclass
class Posted:
    id: int
    content: str
    edits: list[str] = field(default_factory=list)
    deleted: bool = False

    async def edit(self, *, content: str, allowed_mentions: Any) -> Posted:
        assert allowed_mentions.to_dict() == {"parse": []}
        assert not self.deleted
        self.edits.append(content)
        self.content = content
        return self

    async def delete(self) -> None:
        self.deleted = True


class Channel:
    def __init__(self) -> None:
        self.posted: list[Posted] = []

    async def send(self, content: str) -> Posted:
        assert 0 < len(content) <= 2000
        self.posted.append(Posted(len(self.posted) + 1, content))
        return self.posted[-1]


async def test_edits_are_throttled_to_the_interval() -> None:
    channel = Channel()
    sink = DiscordSink(channel.send, channel.send, edit_interval=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(60):
        await sink.piece(f"word{i} ")
        await asyncio.sleep(0.01)
    elapsed = loop.time() - start
    reply_id = await sink.finish("".join(f"word{i} " for i in range(60)))
    message = channel.posted[0]
    updates = 1 + len(message.edits)  # the first send, then edits
    # At most one update per interval while streaming, plus the final one.
    assert updates <= elapsed / 0.2 + 2
    assert updates >= 2
    assert message.content.endswith("word59")
    assert reply_id == "1"


async def test_text_past_2000_continues_in_new_messages() -> None:
    channel = Channel()
    sink = DiscordSink(channel.send, channel.send, edit_interval=0.2)
    text = ("A sentence about a film. " * 200).strip()
    for i in range(0, len(text), 500):
        await sink.piece(text[i : i + 500])
    await sink.finish(text)
    assert len(channel.posted) == 3
    assert "".join(p.content for p in channel.posted).replace(" ", "") == text.replace(" ", "")


async def test_notices_follow_the_reply_or_stand_alone() -> None:
    channel = Channel()
    sink = DiscordSink(channel.send, channel.send, edit_interval=0.2)
    await sink.notice("I couldn't save this exchange.")
    await sink.piece("Hello")
    await sink.finish("Hello")
    assert channel.posted[0].content == "Hello\n-# I couldn't save this exchange."

    alone = Channel()
    refused = DiscordSink(alone.send, alone.send, edit_interval=0.2)
    await refused.notice("Say something and I'll answer.")
    await refused.close()
    assert [p.content for p in alone.posted] == ["-# Say something and I'll answer."]


async def test_a_failure_in_the_pipeline_is_one_sentence_for_the_user(
    bot: MediaBot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: Any, sink: Any) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(bot.services.assistant, "reply", broken)
    assert bot.user is not None
    await dpytest.message(f"<@{bot.user.id}> hello")
    assert dpytest.get_message().content == f"-# {ERROR_SENTENCE}"
    assert any("simulated bug" in (r.exc_text or "") for r in caplog.records)


async def test_commands_sync_to_the_dev_guild_when_one_is_set(
    bot: MediaBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Any] = []

    async def sync(*, guild: discord.abc.Snowflake | None = None) -> list[Any]:
        synced.append(guild)
        return []

    monkeypatch.setattr(bot.tree, "sync", sync)
    monkeypatch.setattr(bot, "load_cogs", lambda: asyncio.sleep(0))
    bot.settings.discord.dev_guild_id = 1234
    await bot.setup_hook()
    assert [g.id for g in synced] == [1234]
    assert bot.tree.get_commands(guild=discord.Object(1234))  # copied for instant updates
    bot.settings.discord.dev_guild_id = None
    await bot.setup_hook()
    assert synced[-1] is None  # global sync


async def test_a_retracted_reply_becomes_one_line_and_its_continuations_go() -> None:
    channel = Channel()
    sink = DiscordSink(channel.send, channel.send, edit_interval=0.2)
    await sink.piece("word " * 900)  # 4,500 characters: three messages
    assert len(channel.posted) == 3
    await sink.notice("A note.")
    await sink.retract("Withheld.")
    await sink.close()
    first, *rest = channel.posted
    assert first.content == "Withheld.\n-# A note."
    assert all(p.deleted for p in rest)


async def test_the_place_in_line_shows_until_the_reply_starts() -> None:
    channel = Channel()
    sink = DiscordSink(channel.send, channel.send, edit_interval=0.2)
    sink.position(3)
    await asyncio.sleep(0.05)
    assert channel.posted[0].content == "-# You are #3 in line for a reply…"
    sink.position(1)
    await asyncio.sleep(0.3)
    assert channel.posted[0].content == "-# You are #1 in line for a reply…"
    sink.position(0)
    await sink.piece("Here is your answer.")
    await sink.finish("Here is your answer.")
    await sink.close()
    assert [p.content for p in channel.posted] == ["Here is your answer."]
