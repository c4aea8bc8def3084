"""What every command shares: who calls it and where (`Caller`), the sentence it gives
instead of a result (`Refused`), and the moderation steps around each feature: screen
what the member typed, review what the model wrote, under that server's policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.commands import messages
from bot.generation.base import Owner
from bot.moderation.moderator import Moderator, Where
from bot.moderation.policy import GuildPolicy
from memory.keys import Scope
from memory.store import MemoryStore

if TYPE_CHECKING:
    from bot.media.service import Media


@dataclass(frozen=True, slots=True)
class Caller:
    """Who runs a command, and where: a Discord member in a server or DMs, or the
    terminal's one user (the DM scope, so the default policy, as in its chat)."""

    scope: Scope
    user_id: str
    name: str
    channel_id: str | None = None
    # What the terminal types is not counted towards flood limits: its piped lines
    # arrive all at once, as they do for its chat.
    floods: bool = True

    @property
    def where(self) -> Where:
        return Where(self.scope.guild_id, self.channel_id, self.user_id, self.name)

    def owner(self, on_position: Callable[[int], None] | None = None) -> Owner:
        """This caller's place in the model's fair queue."""
        return Owner(self.user_id, self.scope.guild_id, on_position)


@dataclass(frozen=True, slots=True)
class Done:
    """A command whose whole result is one sentence ("Noted: you like horror")."""

    text: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A command's answer when it has no result: one sentence for the member."""

    text: str
    # The moderation rule when moderation refused the input or withheld the output;
    # such a reason concerns only the member (Discord shows it only to them).
    rule: str = ""

    @property
    def moderated(self) -> bool:
        return bool(self.rule)


MEMORY_DOWN = Refused(messages.MEMORY_DOWN)
NO_CATALOG = Refused(messages.NO_CATALOG)


class Feature:
    """The services a group of commands needs, and the two moderation steps."""

    def __init__(self, memory: MemoryStore, media: Media | None, moderator: Moderator) -> None:
        self.memory = memory
        self.media = media
        self.moderator = moderator

    async def policy(self, caller: Caller) -> GuildPolicy:
        return await self.moderator.policy(caller.where)

    async def screen(self, caller: Caller, text: str, policy: GuildPolicy) -> Refused | None:
        """Moderate what the member typed, as a chat message is moderated; the refusal,
        or None when it may go on. Nothing typed is nothing to screen."""
        if not text.strip():
            return None
        check = await self.moderator.check_input(caller.where, text, policy, floods=caller.floods)
        # Every refusal of moderation names its rule and says why.
        return None if check.allowed else Refused(check.reason, check.rule)

    async def review(self, policy: GuildPolicy, text: str) -> Refused | None:
        """Moderate generated text before it is shown, as a reply is."""
        verdict = await self.moderator.review(policy, text)
        return None if verdict.allowed else Refused(verdict.reason, verdict.rule)
