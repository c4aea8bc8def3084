"""`/mod` through the bot's real command tree, and its effect on the next message
through dpytest: permission refusals, policy changes, the mod-log embed."""

from __future__ import annotations

from typing import Any

import discord
import discord.ext.test as dpytest

from bot.discord.client import NEEDS_MANAGE_SERVER, MediaBot
from bot.discord.cogs.moderation import mod_log_embed
from bot.moderation import moderator as mod
from bot.moderation.moderator import ModerationEvent, Where
from memory.keys import Scope
from memory.store import MemoryStore
from tests.discord.test_chat import post
from tests.discord.test_commands import ADMIN, MEMBER, in_guild, invoke


def calls(member: Any, channel: Any) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("mod show", {}),
        ("mod level", {"level": "off"}),
        ("mod action", {"action": "cooldown"}),
        ("mod threshold", {"level": "strict", "value": 0.5}),
        ("mod log-channel", {"channel": channel}),
        ("mod strikes", {"user": member}),
        ("mod clear", {"user": member}),
        ("mod block", {"user": member}),
        ("mod unblock", {"user": member}),
        ("mod blocklist add", {"entry": "spoiler"}),
        ("mod blocklist remove", {"entry": "spoiler"}),
        ("mod blocklist list", {}),
        ("mod channel allow", {"channel": channel}),
        ("mod channel remove", {"channel": channel}),
        ("mod channel list", {}),
    ]


async def test_every_mod_command_refuses_members_without_manage_server(bot: MediaBot) -> None:
    config = dpytest.get_config()
    member, channel = config.members[1], config.channels[0]
    for path, kwargs in calls(member, channel):
        interaction = in_guild(bot, MEMBER)
        await invoke(bot, path, interaction, **kwargs)
        assert [s.content for s in interaction.sent()] == [NEEDS_MANAGE_SERVER], path
        assert interaction.sent()[0].ephemeral
    moderation = bot.services.moderator.moderation
    assert moderation is not None
    assert await moderation.policy(str(config.guilds[0].id)) == moderation.defaults


async def test_every_mod_command_answers_an_admin_privately(bot: MediaBot) -> None:
    config = dpytest.get_config()
    member, channel = config.members[1], config.channels[0]
    for path, kwargs in calls(member, channel):
        interaction = in_guild(bot, ADMIN)
        await invoke(bot, path, interaction, **kwargs)
        assert interaction.log[0] == ("defer", True), path
        sent = interaction.sent()
        assert len(sent) == 1 and sent[0].ephemeral and sent[0].content, path
        assert NEEDS_MANAGE_SERVER not in (sent[0].content or ""), path


async def test_a_blocklist_entry_takes_effect_on_the_next_message(
    bot: MediaBot, store: MemoryStore
) -> None:
    config = dpytest.get_config()
    channel, member = config.channels[0], config.members[0]
    me = bot.user
    assert me is not None
    interaction = in_guild(bot, ADMIN)
    await invoke(bot, "mod blocklist add", interaction, entry="re:season\\s*\\d+ finale")
    assert "1 entries" in (interaction.sent()[0].content or "")
    await post(channel, member, f"<@{me.id}> what happens in the season 3 finale?")
    reply = dpytest.get_message()
    assert "blocklist" in reply.content
    scope = Scope(str(config.guilds[0].id))
    assert (await store.load(scope, str(member.id), token_budget=1000)).turns == []
    # A bad regex is refused with a sentence and changes nothing.
    interaction = in_guild(bot, ADMIN)
    await invoke(bot, "mod blocklist add", interaction, entry="re:(oops")
    assert (interaction.sent()[0].content or "").startswith("Not changed: ")
    interaction = in_guild(bot, ADMIN)
    await invoke(bot, "mod blocklist list", interaction)
    listed = interaction.sent()[0].content or ""
    assert listed.startswith("- `re:season") and listed.count("- `") == 1


async def test_a_refusal_is_posted_to_the_mod_log_channel_as_an_embed(bot: MediaBot) -> None:
    config = dpytest.get_config()
    channel, log_channel, member = config.channels[0], config.channels[1], config.members[0]
    me = bot.user
    assert me is not None
    interaction = in_guild(bot, ADMIN)
    await invoke(bot, "mod log-channel", interaction, channel=log_channel)
    await post(channel, member, f"<@{me.id}> you are a stupid idiot @everyone")
    posted = [dpytest.get_message(), dpytest.get_message()]
    embeds = [m for m in posted if m.embeds]
    replies = [m for m in posted if not m.embeds]
    assert [r.content for r in replies] == [f"-# {mod.OFFENSIVE}"]
    [logged] = embeds
    assert logged.channel.id == log_channel.id
    embed = logged.embeds[0]
    assert embed.title == "Moderation: offensive"
    assert embed.description is not None and "@\u200beveryone" in embed.description
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Member"].startswith(f"<@{member.id}>")
    assert fields["Channel"] == f"<#{channel.id}>" and fields["Strikes"] == "1"


async def test_blocking_a_member_silences_the_bot_for_them(bot: MediaBot) -> None:
    config = dpytest.get_config()
    channel, member = config.channels[0], config.members[1]
    me = bot.user
    assert me is not None
    typed: list[Any] = []

    async def on_typing(channel: Any) -> None:
        typed.append(channel)

    dpytest.callbacks.set_callback(on_typing, "send_typing")
    interaction = in_guild(bot, ADMIN)
    await invoke(bot, "mod block", interaction, user=member)
    await post(channel, member, f"<@{me.id}> hello")
    assert dpytest.get_message().content == f"-# {mod.BLOCKED}"
    await post(channel, member, f"<@{me.id}> hello?")
    assert dpytest.verify().message().nothing()
    assert typed == []  # not even "typing…" for a refused message
    interaction = in_guild(bot, ADMIN)
    await invoke(bot, "mod strikes", interaction, user=member)
    assert "blocked" in (interaction.sent()[0].content or "")


def test_the_embed_never_carries_a_live_ping() -> None:
    event = ModerationEvent(
        where=Where("1", "2", "3", "@everyone"), rule="blocklist", action="refused",
        excerpt=mod.excerpt("free nitro @here <@&9>"), strikes=2,
    )  # fmt: skip
    embed = mod_log_embed(event)
    text = " ".join([embed.description or ""] + [str(f.value) for f in embed.fields])
    assert "@everyone" not in text and "@here" not in text and "<@&9>" not in text
    assert isinstance(embed, discord.Embed)
