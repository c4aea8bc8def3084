"""What every command cog does with an interaction: who runs it and where (its
`Caller`), deferring it, and answering it, with a command's refusal or a short text
that can ping nobody and fits Discord's limits."""

from __future__ import annotations

import logging

import discord

from bot.commands import Caller, Refused
from bot.discord.chunks import MESSAGE_LIMIT
from bot.moderation.rules import defuse_mentions
from memory.keys import Scope

log = logging.getLogger(__name__)


def scope_of(guild: discord.Guild | None) -> Scope:
    return Scope(None) if guild is None else Scope(str(guild.id))


def caller_of(interaction: discord.Interaction) -> Caller:
    """The member, their server (or DMs) and channel."""
    guild, channel = interaction.guild_id, interaction.channel_id
    return Caller(
        Scope(str(guild) if guild else None),
        str(interaction.user.id),
        interaction.user.display_name,
        str(channel) if channel else None,
    )


def place_of(caller: Caller) -> str:
    """Where the caller's memory is, in words."""
    return "in our DMs" if caller.scope.guild_id is None else "in this server"


async def begin(interaction: discord.Interaction, *, ephemeral: bool = False) -> None:
    """Defer: a command may wait on the model or Redis past Discord's three seconds."""
    await interaction.response.defer(ephemeral=ephemeral, thinking=True)


async def respond(interaction: discord.Interaction, text: str, *, ephemeral: bool = True) -> None:
    """Answer an interaction whether or not it was deferred already."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=ephemeral)
        else:
            await interaction.response.send_message(text, ephemeral=ephemeral)
    except discord.HTTPException:
        log.warning("could not answer an interaction", exc_info=True)


async def refuse(
    interaction: discord.Interaction, refused: Refused, *, ephemeral: bool = False
) -> None:
    """A command's refusal; moderation's reasons are shown only to the member."""
    await respond(interaction, cut(refused.text), ephemeral=ephemeral or refused.moderated)


def cut(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` that pings nobody, cut to `limit` characters."""
    text = defuse_mentions(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
