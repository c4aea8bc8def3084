"""Memory commands: what is remembered of the caller here, reset, export and forget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.commands import messages
from bot.commands.base import MEMORY_DOWN, Caller, Done, Feature, Refused
from memory.errors import MemoryUnavailable
from memory.records import Fact


@dataclass(frozen=True, slots=True)
class Remembered:
    """The conversation kept here (oldest first) and the facts learnt from it."""

    records: list[dict[str, object]]
    facts: list[Fact]


class MemoryCommands(Feature):
    async def show(self, caller: Caller) -> Remembered | Refused:
        try:
            records = await self.memory.history(caller.scope, caller.user_id)
            facts = await self.memory.facts(caller.scope, caller.user_id)
        except MemoryUnavailable:
            return MEMORY_DOWN
        return Remembered(records, facts)

    async def reset(self, caller: Caller) -> Done | Refused:
        """Forget the conversation here, and the taste profile here."""
        try:
            count = await self.memory.reset(caller.scope, caller.user_id)
        except MemoryUnavailable:
            return MEMORY_DOWN
        return Done(messages.forgot_here(count))

    async def export(self, caller: Caller) -> dict[str, Any] | Refused:
        """Everything stored about the caller, in every scope, as JSON-ready data."""
        try:
            return await self.memory.export(caller.user_id)
        except MemoryUnavailable:
            return MEMORY_DOWN

    async def forget(self, caller: Caller, servers: Sequence[str] = ()) -> Done | Refused:
        """Delete everything stored about the caller, everywhere (the front end asks
        first): memory, and the trivia scores of `servers` and of DMs, which are kept
        per server beside memory."""
        try:
            count = await self.memory.forget(caller.user_id)
            if self.media is not None:
                await self.media.trivia.forget_user(caller.user_id, [*servers, None])
        except MemoryUnavailable:
            return MEMORY_DOWN
        return Done(messages.forgot_everything(count))
