"""The commands of both front ends, below them, as `Assistant` is for chat.

Each command takes who calls it and where (`Caller`), runs screen -> feature -> review
once, and returns its result or a `Refused` sentence; the terminal and the Discord cogs
only parse what was typed and render what comes back. Every sentence is in `messages`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.commands.base import Caller, Done, Refused
from bot.commands.catalog import CatalogCommands
from bot.commands.content import ContentCommands
from bot.commands.games import GameCommands
from bot.commands.memory import MemoryCommands
from bot.moderation.moderator import Moderator
from memory.store import MemoryStore

if TYPE_CHECKING:
    from bot.media.service import Media

__all__ = ["Caller", "Commands", "Done", "Refused"]


class Commands:
    """Every command, by feature; built once, beside the `Assistant`."""

    def __init__(self, memory: MemoryStore, media: Media | None, moderator: Moderator) -> None:
        self.catalog = CatalogCommands(memory, media, moderator)
        self.content = ContentCommands(memory, media, moderator)
        self.games = GameCommands(memory, media, moderator)
        self.memory = MemoryCommands(memory, media, moderator)
