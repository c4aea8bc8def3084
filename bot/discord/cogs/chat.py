"""Chat: answers mentions, DMs, replies to the bot and chat channels, and `/chat`;
keeps memory in step when a user edits or deletes a message."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.assistant import ReplyRequest
from bot.discord.client import ERROR_SENTENCE, MediaBot
from bot.discord.interactions import scope_of
from bot.discord.streaming import NO_PINGS, DiscordSink
from bot.textclean import clean_input
from memory.errors import MemoryUnavailable

log = logging.getLogger(__name__)

QUOTE_CHARS = 300
_USER = re.compile(r"<@!?(\d+)>")
_ROLE = re.compile(r"<@&(\d+)>")
_CHANNEL = re.compile(r"<#(\d+)>")
ANSWERED_TYPES = (discord.MessageType.default, discord.MessageType.reply)


def readable(message: discord.Message, me: int) -> str:
    """The message text for the model: the bot's own mention removed, other mentions
    shown as names (the model never sees an id it could echo back as a ping)."""
    text = re.sub(rf"<@!?{me}>", "", message.content)
    users = {m.id: m.display_name for m in message.mentions}
    roles = {r.id: r.name for r in message.role_mentions}
    guild = message.guild
    text = _USER.sub(lambda m: "@" + users.get(int(m.group(1)), "someone"), text)
    text = _ROLE.sub(lambda m: "@" + roles.get(int(m.group(1)), "a role"), text)

    def channel_name(m: re.Match[str]) -> str:
        channel = guild.get_channel(int(m.group(1))) if guild else None
        return "#" + (channel.name if channel is not None else "a channel")

    return _CHANNEL.sub(channel_name, text).strip()


class Chat(commands.Cog):
    """Conversations with the bot, in channels and DMs."""

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot
        # Replies being prepared, by the id of the message they answer: deleting the
        # message cancels its reply (out of the queue, or out of the batch).
        self._replying: dict[int, asyncio.Task[Any]] = {}

    def _mentions_me(self, message: discord.Message) -> bool:
        me = self.bot.user
        return me is not None and bool(re.search(rf"<@!?{me.id}>", message.content))

    def _replied_bot_message(self, message: discord.Message) -> discord.Message | None:
        ref = message.reference
        resolved = ref.resolved if ref is not None else None
        if isinstance(resolved, discord.Message) and resolved.author == self.bot.user:
            return resolved
        return None

    async def _should_answer(self, message: discord.Message) -> bool:
        if message.author.bot or message.webhook_id is not None:
            return False  # other bots and webhooks: two bots must never loop
        if message.type not in ANSWERED_TYPES:
            return False
        if message.guild is None:
            return True
        me = message.guild.me
        if me is not None and not message.channel.permissions_for(me).send_messages:
            return False  # a channel the bot may not write in
        if self._mentions_me(message) or self._replied_bot_message(message):
            return True
        if not self.bot.chat_channels_enabled:
            return False
        try:
            return await self.bot.guild_config.is_chat_channel(
                str(message.guild.id), str(message.channel.id)
            )
        except MemoryUnavailable:
            return False

    async def _prompt(self, message: discord.Message) -> str:
        assert self.bot.user is not None
        text = readable(message, self.bot.user.id)
        replied = self._replied_bot_message(message)
        if replied is None:
            return text
        # Continuing a reply of the bot: quote it unless it is already in this user's
        # memory (it answered someone else, or was said before memory was kept).
        try:
            known = await self.bot.services.memory.has_message(
                scope_of(message.guild), str(message.author.id), str(replied.id)
            )
        except MemoryUnavailable:
            known = False
        if known or not replied.content:
            return text
        quote = " ".join(replied.content.split())[:QUOTE_CHARS]
        return f'(Replying to your earlier message: "{quote}")\n{text}'

    async def _persona(self, guild: discord.Guild | None, channel_id: int) -> str | None:
        if guild is None:
            return None
        try:
            return await self.bot.guild_config.persona(str(guild.id), str(channel_id))
        except MemoryUnavailable:
            return None

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not await self._should_answer(message):
            return
        channel = message.channel

        async def first(text: str) -> discord.Message:
            try:
                return await message.reply(text, mention_author=False, allowed_mentions=NO_PINGS)
            except discord.HTTPException:  # the message was deleted meanwhile
                return await channel.send(text, allowed_mentions=NO_PINGS)

        async def more(text: str) -> discord.Message:
            return await channel.send(text, allowed_mentions=NO_PINGS)

        sink = DiscordSink(
            first,
            more,
            edit_interval=self.bot.settings.discord.edit_interval,
            typing=channel.typing,
        )
        request = ReplyRequest(
            scope=scope_of(message.guild),
            user_id=str(message.author.id),
            user_name=message.author.display_name,
            text=await self._prompt(message),
            message_id=str(message.id),
            persona=await self._persona(message.guild, channel.id),
            channel_id=str(channel.id),
        )
        task = asyncio.current_task()
        if task is not None:
            self._replying[message.id] = task
        try:
            await self._run(request, sink)
        except asyncio.CancelledError:
            if task is None or not task.cancelling():
                raise
            task.uncancel()
            await sink.discard()
            log.info("a reply was cancelled: its message was deleted")
        finally:
            self._replying.pop(message.id, None)

    async def _run(self, request: ReplyRequest, sink: DiscordSink) -> None:
        try:
            await self.bot.services.assistant.reply(request, sink)
        except Exception:
            log.exception("reply failed")
            await sink.notice(ERROR_SENTENCE)
        finally:
            await sink.close()

    @app_commands.command(name="chat", description="Ask me something about films, TV, music…")
    @app_commands.describe(prompt="What you want to ask or say")
    async def chat(self, interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.defer(thinking=True)

        async def send(text: str) -> discord.WebhookMessage:
            return await interaction.followup.send(text, wait=True, allowed_mentions=NO_PINGS)

        sink = DiscordSink(send, send, edit_interval=self.bot.settings.discord.edit_interval)
        request = ReplyRequest(
            scope=scope_of(interaction.guild),
            user_id=str(interaction.user.id),
            user_name=interaction.user.display_name,
            text=prompt,
            message_id=f"interaction:{interaction.id}",
            persona=await self._persona(interaction.guild, interaction.channel_id or 0),
            channel_id=str(interaction.channel_id) if interaction.channel_id else None,
            always_answer=True,
        )
        await self._run(request, sink)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        replying = self._replying.pop(payload.message_id, None)
        if replying is not None:
            replying.cancel()
        cached = payload.cached_message
        if cached is None or cached.author.bot:
            return  # without the cache the author is unknown (see docs/memory.md)
        guild = cached.guild
        try:
            await self.bot.services.memory.delete_message(
                scope_of(guild), str(cached.author.id), str(payload.message_id)
            )
        except MemoryUnavailable:
            log.warning("could not forget a deleted message: memory unavailable")

    @commands.Cog.listener()
    async def on_message_edit(self, before: discord.Message, after: discord.Message) -> None:
        if after.author.bot or before.content == after.content or self.bot.user is None:
            return
        text = clean_input(
            readable(after, self.bot.user.id), self.bot.settings.memory.max_message_chars
        ).text
        if not text:
            return
        try:
            await self.bot.services.assistant.message_edited(
                scope_of(after.guild), str(after.author.id), str(after.id), text
            )
        except MemoryUnavailable:
            log.warning("could not update an edited message: memory unavailable")


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(Chat(bot))
