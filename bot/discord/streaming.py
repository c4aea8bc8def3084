"""Streaming a reply into Discord: one message edited at most once per interval,
continued in new messages past 2,000 characters, never empty, never a ping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import discord

from bot.context.build import ContextWindow
from bot.discord.chunks import split_message
from bot.moderation.rules import defuse_mentions

log = logging.getLogger(__name__)

TYPING_REFRESH_S = 8.0
# Set on the client too; repeated on every call so no path can forget it.
NO_PINGS = discord.AllowedMentions.none()


class Editable(Protocol):
    id: int

    async def edit(self, *, content: str, allowed_mentions: discord.AllowedMentions) -> Any: ...

    async def delete(self) -> Any: ...


SendFirst = Callable[[str], Awaitable[Editable]]
SendMore = Callable[[str], Awaitable[Editable]]


class DiscordSink:
    """A `ReplySink` for Discord. `send_first` posts the first message (a reply to the
    user's message, or an interaction follow-up); `send_more` posts continuations."""

    def __init__(
        self,
        send_first: SendFirst,
        send_more: SendMore,
        *,
        edit_interval: float,
        typing: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self._send_first = send_first
        self._send_more = send_more
        self._interval = edit_interval
        self._typing = typing
        self._typing_task: asyncio.Task[None] | None = None
        self._text = ""
        self._notes: list[str] = []
        self._messages: list[Editable] = []
        self._shown: list[str] = []
        self._last_flush = 0.0
        self._pending: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._finished = False
        self._status = ""  # "you are #3 in line", shown until the reply starts

    async def start_typing(self) -> None:
        """Show "typing…" while the request waits and until the first text appears."""
        if self._typing is not None and self._typing_task is None:
            self._typing_task = asyncio.create_task(self._keep_typing(self._typing))

    @staticmethod
    async def _keep_typing(trigger: Callable[[], Awaitable[Any]]) -> None:
        # One trigger shows the indicator for about 10 s; renew it until stopped.
        while True:
            with contextlib.suppress(discord.HTTPException):
                await trigger()
            await asyncio.sleep(TYPING_REFRESH_S)

    async def _stop_typing(self) -> None:
        task, self._typing_task = self._typing_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def context(self, window: ContextWindow) -> None:
        # The message passed moderation and limits: a reply is coming.
        await self.start_typing()

    async def notice(self, text: str) -> None:
        self._notes.append(text)

    def position(self, place: int) -> None:
        """Show the place in line while the reply waits for the model."""
        status = f"-# You are #{place} in line for a reply…" if place > 0 else ""
        if status == self._status:
            return
        self._status = status
        if not self._text and not self._finished and self._pending is None:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._last_flush + self._interval - loop.time())
            self._pending = asyncio.create_task(self._flush_later(wait))

    async def piece(self, text: str) -> None:
        self._text += text
        loop = asyncio.get_running_loop()
        wait = self._last_flush + self._interval - loop.time()
        if wait <= 0 and self._pending is None:
            await self._flush()
        elif self._pending is None:
            self._pending = asyncio.create_task(self._flush_later(max(wait, 0.0)))

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    async def _flush_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._pending = None
        await self._flush()

    async def finish(self, text: str) -> str | None:
        self._finished = True
        self._cancel_pending()
        self._text = text
        await self._flush(final=True)
        return str(self._messages[0].id) if self._messages else None

    async def retract(self, text: str) -> None:
        """Moderation withheld the reply: whatever was shown becomes `text`."""
        self._finished = True
        self._cancel_pending()
        self._text = text
        await self._flush(final=True)

    async def discard(self) -> None:
        """The request was withdrawn (its message deleted): what was shown goes too."""
        self._finished = True
        self._cancel_pending()
        await self._stop_typing()
        async with self._lock:
            for message in self._messages:
                with contextlib.suppress(discord.HTTPException):
                    await message.delete()
            self._messages.clear()
            self._shown.clear()

    async def close(self) -> None:
        """After the pipeline returned: show notices no reply carried (a refused or
        failed request), and stop typing."""
        self._cancel_pending()
        if not self._finished and self._notes:
            await self._flush(final=True)
        await self._stop_typing()

    def _render(self, final: bool) -> list[str]:
        text = self._text.strip()
        if not text and not final and self._status:
            return [self._status]
        if final and self._notes:
            notes = "\n".join(f"-# {n}" for n in self._notes)
            text = f"{text}\n{notes}" if text else notes
        return split_message(defuse_mentions(text))

    async def _flush(self, final: bool = False) -> None:
        async with self._lock:
            chunks = self._render(final)
            if not chunks:
                return
            await self._stop_typing()
            for i, chunk in enumerate(chunks):
                if i < len(self._messages):
                    if self._shown[i] != chunk:
                        await self._messages[i].edit(content=chunk, allowed_mentions=NO_PINGS)
                        self._shown[i] = chunk
                    continue
                send = self._send_first if not self._messages else self._send_more
                self._messages.append(await send(chunk))
                self._shown.append(chunk)
            # The text got shorter (a retracted reply): continuations it no longer
            # needs are deleted.
            while len(self._messages) > len(chunks):
                extra = self._messages.pop()
                self._shown.pop()
                with contextlib.suppress(discord.HTTPException):
                    await extra.delete()
            self._last_flush = asyncio.get_running_loop().time()
