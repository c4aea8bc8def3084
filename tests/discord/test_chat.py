"""Message flows through dpytest: who gets an answer, and what the answer looks like."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import discord
import discord.ext.test as dpytest
from discord.ext.test import backend, factories

from bot.discord.chunks import FENCE, MESSAGE_LIMIT
from bot.discord.client import MediaBot
from bot.generation.local import LocalGenerator
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import ScriptedGenerator
from tests.discord.conftest import build_bot


def guild_scope(bot: MediaBot) -> Scope:
    return Scope(str(bot.guilds[0].id))


async def post(
    channel: Any,
    author: Any,
    content: str,
    *,
    reference: discord.Message | None = None,
    from_bot: bool = False,
    webhook_id: int | None = None,
) -> discord.Message:
    """A message arriving from Discord, with what dpytest's helper cannot set: a reply
    reference, a bot author, a webhook."""
    guild = getattr(channel, "guild", None)
    kwargs: dict[str, Any] = {}
    if webhook_id is not None:
        kwargs["webhook_id"] = webhook_id
    data = factories.make_message_dict(
        channel,
        author,
        content=content,
        # Mentions of ids no one has resolve to nothing, as on Discord.
        mentions=[m for m in backend.find_user_mentions(content, guild) if m is not None],
        type=19 if reference is not None else 0,
        **kwargs,
    )
    if reference is not None:
        data["message_reference"] = {"message_id": reference.id, "channel_id": channel.id}
        data["referenced_message"] = factories.dict_from_message(reference)
    if from_bot:
        data["author"]["bot"] = True
        user = getattr(author, "_user", author)
        user.bot = True  # discord.py keeps the cached user, not this payload's flag
    state = backend.get_state()
    state.parse_message_create(data)
    backend._cur_config.messages.setdefault(channel.id, []).append(data)
    await dpytest.run_all_events()
    message = state._get_message(data["id"])
    assert message is not None
    return message


async def final_text(message: discord.Message) -> str:
    """The content of a bot message after all its edits."""
    fetched = await message.channel.fetch_message(message.id)
    return fetched.content


async def test_a_mention_gets_a_reply_that_pings_no_one(
    bot: MediaBot, store: MemoryStore, payloads: list[dict[str, Any]]
) -> None:
    member = dpytest.get_config().members[0]
    assert bot.user is not None
    await dpytest.message(f"<@{bot.user.id}> Recommend a film about space", member=member)
    reply = dpytest.get_message()
    assert reply.content.strip()
    first = payloads[0]
    assert first["message_reference"]["message_id"]
    # Every send and every edit forbids every kind of ping.
    assert all(p["allowed_mentions"]["parse"] == [] for p in payloads)
    assert first["allowed_mentions"]["replied_user"] is False
    turns = (await store.load(guild_scope(bot), str(member.id), token_budget=5000)).turns
    # The mention itself is not part of what is remembered.
    assert turns[0].text == "Recommend a film about space"
    assert turns[1].message_id == str(reply.id)


async def test_a_plain_message_outside_chat_channels_is_not_answered(bot: MediaBot) -> None:
    await dpytest.message("just talking to my friends")
    assert dpytest.verify().message().nothing()


async def test_a_dm_is_answered_in_its_own_scope(bot: MediaBot, store: MemoryStore) -> None:
    member = dpytest.get_config().members[0]
    dm = await member.create_dm()
    await post(dm, member._user, "Hello from my DMs")
    assert dpytest.get_message().content.strip()
    dm_turns = (await store.load(Scope(None), str(member.id), token_budget=5000)).turns
    assert [t.text for t in dm_turns][:1] == ["Hello from my DMs"]
    guild_turns = await store.load(guild_scope(bot), str(member.id), token_budget=5000)
    assert guild_turns.turns == []


async def test_replying_to_the_bot_continues_without_a_mention(
    bot: MediaBot, store: MemoryStore
) -> None:
    config = dpytest.get_config()
    asker, other = config.members[0], config.members[1]
    assert bot.user is not None
    await dpytest.message(f"<@{bot.user.id}> Name a good heist film", member=asker)
    answer = dpytest.get_message()
    await post(config.channels[0], asker, "Why that one?", reference=answer)
    assert dpytest.get_message().content.strip()
    turns = (await store.load(guild_scope(bot), str(asker.id), token_budget=5000)).turns
    assert [t.text for t in turns if t.role == "user"] == [
        "Name a good heist film",
        "Why that one?",
    ]

    # Someone else replying to that answer gets it quoted: it is not in their memory.
    await post(config.channels[0], other, "And a sequel?", reference=answer)
    dpytest.get_message()
    theirs = (await store.load(guild_scope(bot), str(other.id), token_budget=5000)).turns
    assert theirs[0].text.startswith("(Replying to your earlier message:")
    assert theirs[0].text.endswith("And a sequel?")


async def test_other_bots_and_webhooks_are_ignored(bot: MediaBot) -> None:
    config = dpytest.get_config()
    assert bot.user is not None
    await post(config.channels[0], config.members[0], f"<@{bot.user.id}> hi", webhook_id=42)
    assert dpytest.verify().message().nothing()
    await post(config.channels[0], config.members[1], f"<@{bot.user.id}> hi", from_bot=True)
    assert dpytest.verify().message().nothing()


async def test_chat_channels_need_no_mention(bot: MediaBot) -> None:
    config = dpytest.get_config()
    guild, chat, other = config.guilds[0], config.channels[0], config.channels[1]
    await bot.guild_config.set_chat_channel(str(guild.id), str(chat.id), True)
    await dpytest.message("What is a good sci-fi series?", channel=chat)
    assert dpytest.get_message().content.strip()
    await dpytest.message("What is a good sci-fi series?", channel=other)
    assert dpytest.verify().message().nothing()


async def test_without_the_content_intent_chat_channels_are_off(
    store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    client = build_bot(store, keys, generator, content_intent=False)
    await client._async_setup_hook()
    await client.load_cogs()
    dpytest.configure(client, guilds=1, text_channels=1, members=1)
    config = dpytest.get_config()
    assert client.user is not None
    await client.guild_config.set_chat_channel(
        str(config.guilds[0].id), str(config.channels[0].id), True
    )
    await dpytest.message("hello there")
    assert dpytest.verify().message().nothing()
    await dpytest.message(f"<@{client.user.id}> hello there")
    assert dpytest.get_message().content.strip()
    await dpytest.empty_queue()


async def scripted_bot(
    store: MemoryStore, keys: Keys, generator: LocalGenerator, pieces: list[str]
) -> MediaBot:
    client = build_bot(store, keys, ScriptedGenerator(generator, pieces))
    await client._async_setup_hook()
    await client.load_cogs()
    dpytest.configure(client, guilds=1, text_channels=1, members=2)
    return client


async def test_a_long_reply_is_split_at_2000_with_code_fences_kept_valid(
    store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    code = "".join(f"    print('line {i} of a long example')\n" for i in range(120))
    pieces = ["Here is the script:\n", "```python\n", *code.splitlines(True), "```\n", "Enjoy!"]
    client = await scripted_bot(store, keys, generator, pieces)
    assert client.user is not None
    await dpytest.message(f"<@{client.user.id}> write me a long script")
    sent = []
    while not dpytest.sent_queue.empty():
        sent.append(await dpytest.sent_queue.get())
    texts = [await final_text(m) for m in sent]
    assert len(texts) >= 3
    assert all(0 < len(t) <= MESSAGE_LIMIT for t in texts)
    assert all(t.count(FENCE) % 2 == 0 for t in texts)
    assert texts[0].startswith("Here is the script:") and texts[-1].endswith("Enjoy!")
    assert texts[1].startswith("```python\n")
    await dpytest.empty_queue()


async def test_no_ping_is_possible_from_model_output(
    store: MemoryStore, keys: Keys, generator: LocalGenerator, payloads: list[dict[str, Any]]
) -> None:
    client = await scripted_bot(store, keys, generator, [])
    config = dpytest.get_config()
    member, role = config.members[1], config.guilds[0].roles[0]
    evil = f"Hey @everyone and @here, <@{member.id}> <@!{member.id}> <@&{role.id}> look!"
    client.services.assistant.generator.pieces = [evil[:20], evil[20:]]  # type: ignore[attr-defined]
    assert client.user is not None
    await dpytest.message(f"<@{client.user.id}> say something")
    message = dpytest.get_message()
    text = await final_text(message)
    assert "@everyone" not in text and "@here" not in text
    assert f"<@{member.id}>" not in text and f"<@&{role.id}>" not in text
    assert "everyone" in text and str(member.id) in text  # still readable
    assert payloads and all(p["allowed_mentions"]["parse"] == [] for p in payloads)
    await dpytest.empty_queue()


async def test_an_empty_generation_still_sends_a_message(
    store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    client = await scripted_bot(store, keys, generator, ["   ", "\n"])
    assert client.user is not None
    await dpytest.message(f"<@{client.user.id}> hmm")
    assert (await final_text(dpytest.get_message())).strip()
    await dpytest.empty_queue()


async def test_deleting_or_editing_a_message_updates_memory(
    bot: MediaBot, store: MemoryStore
) -> None:
    config = dpytest.get_config()
    member = config.members[0]
    assert bot.user is not None
    asked = await dpytest.message(f"<@{bot.user.id}> I love film noir", member=member)
    dpytest.get_message()
    scope = guild_scope(bot)

    data = factories.dict_from_message(asked)
    data.update(channel_id=asked.channel.id, guild_id=config.guilds[0].id)
    data["content"] = f"<@{bot.user.id}> I love westerns"
    backend.get_state().parse_message_update(data)
    await dpytest.run_all_events()
    turns = (await store.load(scope, str(member.id), token_budget=5000)).turns
    assert turns[0].text == "I love westerns" and turns[0].edited

    backend.delete_message(asked)
    await dpytest.run_all_events()
    turns = (await store.load(scope, str(member.id), token_budget=5000)).turns
    assert [t.role for t in turns] == ["assistant"]


async def test_typing_shows_while_the_reply_is_prepared(bot: MediaBot) -> None:
    typed: list[Any] = []

    async def on_typing(channel: Any) -> None:
        typed.append(channel)

    dpytest.callbacks.set_callback(on_typing, "send_typing")
    assert bot.user is not None
    await dpytest.message(f"<@{bot.user.id}> hi")
    dpytest.get_message()
    assert typed and typed[0].id == dpytest.get_config().channels[0].id


async def test_channels_the_bot_cannot_write_in_are_ignored(bot: MediaBot) -> None:
    config = dpytest.get_config()
    channel, guild = config.channels[0], config.guilds[0]
    assert bot.user is not None and guild.me is not None
    await dpytest.set_permission_overrides(guild.default_role, channel, send_messages=False)
    assert not channel.permissions_for(guild.me).send_messages
    await dpytest.message(f"<@{bot.user.id}> hello?", channel=channel)
    assert dpytest.verify().message().nothing()


async def test_deleting_a_message_cancels_its_reply(
    store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    started, closed = asyncio.Event(), asyncio.Event()

    class Slow(ScriptedGenerator):
        async def stream(self, messages: Any, params: Any, **kw: Any) -> AsyncIterator[str]:
            try:
                yield "Here is a first sentence. "
                yield "More"
                started.set()  # the first sentence is on Discord by now
                for _ in range(1000):
                    await asyncio.sleep(0.01)
                    yield "word "
            finally:
                closed.set()

    client = build_bot(store, keys, Slow(generator, []))
    await client._async_setup_hook()
    await client.load_cogs()
    dpytest.configure(client, guilds=1, text_channels=1, members=1)
    config = dpytest.get_config()
    channel, member = config.channels[0], config.members[0]
    assert client.user is not None
    data = factories.make_message_dict(channel, member, content=f"<@{client.user.id}> hello")
    # Built without dispatching it: only the handler started below answers it.
    message = discord.Message(state=backend.get_state(), channel=channel, data=data)
    cog = client.get_cog("Chat")
    deleted: list[discord.Message] = []

    async def on_delete(channel: Any, message: discord.Message, **kw: Any) -> None:
        deleted.append(message)

    dpytest.callbacks.set_callback(on_delete, "delete_message")
    task = asyncio.create_task(cog.on_message(message))  # type: ignore[union-attr]
    await asyncio.wait_for(started.wait(), 5)
    payload = discord.RawMessageDeleteEvent(
        {"id": str(message.id), "channel_id": str(channel.id), "guild_id": str(channel.guild.id)}
    )
    await cog.on_raw_message_delete(payload)  # type: ignore[union-attr]
    await asyncio.wait_for(task, 5)  # finishes quietly, long before 1,000 words
    assert closed.is_set()
    # The part of the reply already shown was deleted with it.
    assert [m.content for m in deleted] == ["Here is a first sentence."]
    scope = Scope(str(channel.guild.id))
    assert (await store.load(scope, str(member.id), token_budget=1000)).turns == []
    await dpytest.empty_queue()
