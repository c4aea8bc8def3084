"""Slash commands through the bot's real app_commands tree (its real checks and
callbacks), driven by a small fake Interaction: dpytest has no slash support."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import discord
import discord.ext.test as dpytest
from discord import app_commands

from bot.assistant import ReplyRequest
from bot.discord.client import NEEDS_MANAGE_SERVER, MediaBot
from bot.discord.cogs.memory import ConfirmForget
from memory.keys import Scope
from memory.records import Turn
from memory.store import MemoryStore

ADMIN = discord.Permissions(manage_guild=True, send_messages=True)
MEMBER = discord.Permissions(send_messages=True)


@dataclass
class Sent:
    content: str | None
    ephemeral: bool
    file: discord.File | None = None
    view: discord.ui.View | None = None
    allowed_mentions: discord.AllowedMentions | None = None
    embeds: list[discord.Embed] = field(default_factory=list)


@dataclass
class FakeMessage:
    id: int
    content: str

    async def edit(
        self, *, content: str, allowed_mentions: Any = None, view: Any = None
    ) -> FakeMessage:
        self.content = content
        return self

    async def delete(self) -> None:
        self.content = ""


@dataclass
class FakeInteraction:
    """What the commands use of a discord.Interaction, recording every answer."""

    client: MediaBot
    user: Any
    guild: discord.Guild | None
    channel_id: int | None
    permissions: discord.Permissions
    id: int = 990001
    log: list[tuple[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.response = _Response(self)
        self.followup = _Followup(self)

    @property
    def guild_id(self) -> int | None:
        return self.guild.id if self.guild else None

    def sent(self) -> list[Sent]:
        return [item for kind, item in self.log if kind == "send"]


class _Response:
    def __init__(self, owner: FakeInteraction) -> None:
        self.owner = owner
        self.done = False

    def is_done(self) -> bool:
        return self.done

    async def defer(self, *, ephemeral: bool = False, thinking: bool = False) -> None:
        assert not self.done
        self.done = True
        self.owner.log.append(("defer", ephemeral))

    async def send_message(self, content: str | None = None, *, ephemeral: bool = False) -> None:
        assert not self.done
        self.done = True
        self.owner.log.append(("send", Sent(content, ephemeral)))

    async def edit_message(self, *, content: str | None = None, view: Any = None) -> None:
        self.done = True
        self.owner.log.append(("edit", content))


class _Followup:
    def __init__(self, owner: FakeInteraction) -> None:
        self.owner = owner
        self.next_id = 770000

    async def send(
        self,
        content: str | None = None,
        *,
        ephemeral: bool = False,
        file: discord.File | None = None,
        view: discord.ui.View | None = None,
        wait: bool = False,
        allowed_mentions: discord.AllowedMentions | None = None,
        embed: discord.Embed | None = None,
        embeds: list[discord.Embed] | None = None,
    ) -> FakeMessage:
        assert self.owner.response.done, "a follow-up before the interaction was answered"
        shown = [embed] if embed is not None else list(embeds or [])
        self.owner.log.append(
            ("send", Sent(content, ephemeral, file, view, allowed_mentions, shown))
        )
        self.next_id += 1
        return FakeMessage(self.next_id, content or "")


async def invoke(bot: MediaBot, path: str, interaction: FakeInteraction, **kwargs: Any) -> None:
    """Run a command as the tree would: its checks, then its callback; errors go to the
    tree's error handler."""
    name, *subs = path.split(" ")
    command = bot.tree.get_command(name)
    for sub in subs:
        assert isinstance(command, app_commands.Group), path
        command = command.get_command(sub)
    assert isinstance(command, app_commands.Command), path
    try:
        if not await command._check_can_run(interaction):  # type: ignore[arg-type]
            raise app_commands.CheckFailure("check failed")
        await command.callback(command.binding, interaction, **kwargs)  # type: ignore[arg-type,misc]
    except app_commands.AppCommandError as error:
        await bot.tree.on_error(interaction, error)  # type: ignore[arg-type]


def in_guild(bot: MediaBot, permissions: discord.Permissions, member: int = 0) -> FakeInteraction:
    config = dpytest.get_config()
    return FakeInteraction(
        client=bot,
        user=config.members[member],
        guild=config.guilds[0],
        channel_id=config.channels[0].id,
        permissions=permissions,
    )


def exchange(text: str, msg: str) -> tuple[Turn, Turn]:
    return (
        Turn(role="user", text=text, time=1.0, message_id=msg, tokens=2),
        Turn(role="assistant", text="ok", time=1.0, message_id=None, tokens=1),
    )


async def test_every_command_defers_first(bot: MediaBot) -> None:
    for path in ("memory", "reset", "export", "forget", "help", "persona list",
                 "chatchannel list"):  # fmt: skip
        interaction = in_guild(bot, ADMIN)
        await invoke(bot, path, interaction)
        assert interaction.log[0] == ("defer", True), path
        assert interaction.sent() and all(s.ephemeral for s in interaction.sent()), path


async def test_memory_shows_what_is_remembered_here(bot: MediaBot, store: MemoryStore) -> None:
    interaction = in_guild(bot, MEMBER)
    await invoke(bot, "memory", interaction)
    assert "don't remember anything" in (interaction.sent()[0].content or "")
    scope = Scope(str(interaction.guild_id))
    await store.append(scope, str(interaction.user.id), *exchange("I love @everyone", "m1"))
    interaction = in_guild(bot, MEMBER)
    await invoke(bot, "memory", interaction)
    shown = interaction.sent()[0].content or ""
    assert "I remember 2 messages" in shown and "love @\u200beveryone" in shown


async def test_reset_clears_this_server_only(bot: MediaBot, store: MemoryStore) -> None:
    interaction = in_guild(bot, MEMBER)
    user = str(interaction.user.id)
    await store.append(Scope(str(interaction.guild_id)), user, *exchange("here", "m1"))
    await store.append(Scope(None), user, *exchange("in DMs", "m2"))
    await invoke(bot, "reset", interaction)
    assert interaction.sent()[0].content == "Forgot our conversation here (2 messages)."
    assert await store.scopes(user) == [Scope(None)]


async def test_export_is_a_private_json_file_of_every_scope(
    bot: MediaBot, store: MemoryStore
) -> None:
    interaction = in_guild(bot, MEMBER)
    user = str(interaction.user.id)
    await store.append(Scope(str(interaction.guild_id)), user, *exchange("here", "m1"))
    await store.append(Scope(None), user, *exchange("in DMs", "m2"))
    await invoke(bot, "export", interaction)
    sent = interaction.sent()[0]
    assert sent.ephemeral and sent.file is not None
    fp = sent.file.fp
    assert isinstance(fp, io.BytesIO)
    data = json.loads(fp.getvalue())
    assert set(data["scopes"]) == {"dm", f"g{interaction.guild_id}"}


async def test_forget_asks_first_and_only_the_asker_can_confirm(
    bot: MediaBot, store: MemoryStore
) -> None:
    interaction = in_guild(bot, MEMBER)
    user = str(interaction.user.id)
    await store.append(Scope(str(interaction.guild_id)), user, *exchange("here", "m1"))
    await store.append(Scope(None), user, *exchange("in DMs", "m2"))
    await invoke(bot, "forget", interaction)
    view = interaction.sent()[0].view
    assert type(view).__name__ == ConfirmForget.__name__  # the cog's module is loaded anew
    assert await store.scopes(user)  # nothing deleted before the confirm

    stranger = in_guild(bot, MEMBER, member=1)
    assert not await view.interaction_check(stranger)  # type: ignore[arg-type]

    press = in_guild(bot, MEMBER)
    await view.confirm.callback(press)  # type: ignore[arg-type,call-arg]
    assert press.log == [("edit", press.log[0][1])]
    assert "deleted everything" in press.log[0][1] and "4 messages" in press.log[0][1]
    assert await store.scopes(user) == []


async def test_forget_can_be_cancelled(bot: MediaBot, store: MemoryStore) -> None:
    interaction = in_guild(bot, MEMBER)
    await store.append(Scope(None), str(interaction.user.id), *exchange("in DMs", "m2"))
    await invoke(bot, "forget", interaction)
    view = interaction.sent()[0].view
    assert type(view).__name__ == ConfirmForget.__name__  # the cog's module is loaded anew
    press = in_guild(bot, MEMBER)
    await view.cancel.callback(press)  # type: ignore[arg-type,call-arg]
    assert press.log == [("edit", "Kept everything.")]
    assert await store.scopes(str(interaction.user.id)) == [Scope(None)]


async def test_admin_commands_refuse_members_without_manage_server(bot: MediaBot) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("chatchannel add", {}),
        ("chatchannel remove", {}),
        ("chatchannel list", {}),
        ("persona set", {"name": "critic"}),
    ]
    for path, kwargs in calls:
        interaction = in_guild(bot, MEMBER)
        await invoke(bot, path, interaction, **kwargs)
        assert [s.content for s in interaction.sent()] == [NEEDS_MANAGE_SERVER], path
        assert interaction.sent()[0].ephemeral
    guild = dpytest.get_config().guilds[0]
    assert await bot.guild_config.chat_channels(str(guild.id)) == set()


async def test_admin_commands_are_server_only(bot: MediaBot) -> None:
    interaction = in_guild(bot, ADMIN)
    interaction.guild = None
    await invoke(bot, "chatchannel add", interaction)
    assert interaction.sent()[0].content == "That command only works in a server."


async def test_chat_channels_are_added_listed_and_removed_by_admins(bot: MediaBot) -> None:
    config = dpytest.get_config()
    guild, channel = config.guilds[0], config.channels[0]
    add = in_guild(bot, ADMIN)
    await invoke(bot, "chatchannel add", add)
    assert add.sent()[0].content == f"<#{channel.id}> is now a chat channel."
    listed = in_guild(bot, ADMIN)
    await invoke(bot, "chatchannel list", listed)
    assert f"<#{channel.id}>" in (listed.sent()[0].content or "")
    remove = in_guild(bot, ADMIN)
    await invoke(bot, "chatchannel remove", remove)
    assert await bot.guild_config.chat_channels(str(guild.id)) == set()


async def test_a_persona_set_for_a_channel_is_used_there(bot: MediaBot, monkeypatch: Any) -> None:
    unknown = in_guild(bot, ADMIN)
    await invoke(bot, "persona set", unknown, name="pirate")
    assert "no persona called that" in (unknown.sent()[0].content or "")

    chosen = in_guild(bot, ADMIN)
    await invoke(bot, "persona set", chosen, name="critic")
    assert "now uses the critic persona" in (chosen.sent()[0].content or "")
    listed = in_guild(bot, MEMBER)
    await invoke(bot, "persona list", listed)
    assert "**critic** (this channel)" in (listed.sent()[0].content or "")

    seen: list[ReplyRequest] = []

    async def capture(request: ReplyRequest, sink: Any) -> None:
        seen.append(request)

    monkeypatch.setattr(bot.services.assistant, "reply", capture)
    assert bot.user is not None
    await dpytest.message(f"<@{bot.user.id}> hello")
    assert seen[0].persona == "critic"


async def test_chat_command_streams_a_reply_into_follow_ups(
    bot: MediaBot, store: MemoryStore
) -> None:
    interaction = in_guild(bot, MEMBER)
    await invoke(bot, "chat", interaction, prompt="Recommend a documentary")
    assert interaction.log[0] == ("defer", False)
    sent = interaction.sent()
    assert sent and sent[0].content and not sent[0].ephemeral
    assert all(s.allowed_mentions and s.allowed_mentions.to_dict() == {"parse": []} for s in sent)
    turns = await store.load(
        Scope(str(interaction.guild_id)), str(interaction.user.id), token_budget=5000
    )
    assert turns.turns[0].text == "Recommend a documentary"
    assert turns.turns[0].message_id == f"interaction:{interaction.id}"
