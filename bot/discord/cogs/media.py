"""Catalog commands: /title, /recommend (with buttons that teach the profile) and
/prefs. Every title shown comes from the catalog; the model only writes the sentence
under it, and that sentence is checked (see `bot.media.recommend`)."""

from __future__ import annotations

import re
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.client import MediaBot, respond
from bot.discord.cogs.chat import scope_of
from bot.generation.base import Owner
from bot.generation.queue import QueueFull
from bot.media.catalog import Title, search_text
from bot.media.recommend import NOTHING_FOUND, Check, Pick
from bot.media.service import Media
from bot.moderation.moderator import OUTPUT_WITHHELD, Where
from bot.moderation.rules import defuse_mentions
from memory.profile import render_taste
from memory.store import MemoryUnavailable

MEMORY_DOWN = "I can't reach my memory right now; please try again in a moment."
NO_CATALOG = "The catalog isn't loaded, so I can't look titles up right now."
BUSY = "I'm busy with other replies right now: please try again in a moment."


async def begin(
    bot: MediaBot, interaction: discord.Interaction, *, ephemeral: bool = False
) -> Media | None:
    """Defer the interaction (commands may wait on the model) and return the media
    service; None, after saying so, when the catalog is not loaded."""
    await interaction.response.defer(ephemeral=ephemeral, thinking=True)
    media = bot.services.media
    if media is None:
        await interaction.followup.send(NO_CATALOG, ephemeral=ephemeral)
    return media


def where_of(interaction: discord.Interaction) -> Where:
    return Where(
        str(interaction.guild_id) if interaction.guild_id else None,
        str(interaction.channel_id) if interaction.channel_id else None,
        str(interaction.user.id),
        interaction.user.display_name,
    )


async def allows(bot: MediaBot, interaction: discord.Interaction) -> Check:
    """Moderation of generated sentences for this interaction's server."""
    moderator = bot.services.moderator
    return moderator.allows(await moderator.policy(where_of(interaction)))


async def screen(bot: MediaBot, interaction: discord.Interaction, text: str) -> bool:
    """Moderate what a member typed into a command, as a chat message is moderated;
    False (after telling them why) when it is refused."""
    if not text.strip():
        return True
    moderator = bot.services.moderator
    where = where_of(interaction)
    policy = await moderator.policy(where)
    check = await moderator.check_input(where, text, policy)
    if not check.allowed:
        await respond(interaction, check.reason or "I can't help with that.", ephemeral=True)
    return check.allowed


async def review(bot: MediaBot, interaction: discord.Interaction, text: str) -> bool:
    """Moderate generated text before it is posted; False (after saying so) when held."""
    moderator = bot.services.moderator
    verdict = await moderator.review(await moderator.policy(where_of(interaction)), text)
    if not verdict.allowed:
        await respond(interaction, verdict.reason or OUTPUT_WITHHELD, ephemeral=True)
    return verdict.allowed


def _cut(text: str, limit: int) -> str:
    text = defuse_mentions(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def title_embed(title: Title, blurb: str = "", reason: str = "") -> discord.Embed:
    """An embed of catalog facts; `blurb` is a checked sentence about it."""
    embed = discord.Embed(
        title=_cut(title.label, 256), description=_cut(blurb, 4096) or None, colour=0x5865F2
    )
    embed.add_field(name="Type", value=_cut(title.type, 1024))
    if title.genres:
        embed.add_field(name="Genres", value=_cut(", ".join(title.genres), 1024))
    if title.directors:
        embed.add_field(name="Directed by", value=_cut(", ".join(title.directors[:5]), 1024),
                        inline=False)  # fmt: skip
    if title.cast:
        more = f" and {len(title.cast) - 6} more" if len(title.cast) > 6 else ""
        embed.add_field(name="Cast", value=_cut(", ".join(title.cast[:6]) + more, 1024),
                        inline=False)  # fmt: skip
    for name, value in (("Country", title.country), ("Rating", title.rating),
                        ("Duration", title.duration)):  # fmt: skip
        if value:
            embed.add_field(name=name, value=_cut(value, 1024))
    if reason:
        embed.set_footer(text=_cut(f"Why: {reason}", 2048))
    return embed


def pick_embeds(picks: list[Pick]) -> list[discord.Embed]:
    return [title_embed(p.title, p.blurb, p.reason) for p in picks[:10]]


ACTIONS = {"seen": "Seen it", "no": "Not for me", "more": "More like this"}


class RecButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"rec:(?P<action>seen|no|more):(?P<title>[^\s]{1,80})",
):
    """A button under a recommendation. Its custom id holds the action and the title,
    so it keeps working after a restart; it updates the profile of whoever presses."""

    def __init__(self, action: str, title_id: str, number: int = 0) -> None:
        label = ACTIONS[action] if not number else f"{number}. {ACTIONS[action]}"
        style = discord.ButtonStyle.primary if action == "more" else discord.ButtonStyle.secondary
        super().__init__(
            discord.ui.Button(label=label, style=style, custom_id=f"rec:{action}:{title_id}")
        )
        self.action = action
        self.title_id = title_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> RecButton:
        return cls(match["action"], match["title"])

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = interaction.client
        assert isinstance(bot, MediaBot)
        await press(bot, interaction, self.action, self.title_id)


async def press(
    bot: MediaBot, interaction: discord.Interaction, action: str, title_id: str
) -> None:
    """What a recommendation button does, for the member who pressed it."""
    media = bot.services.media
    await interaction.response.defer(ephemeral=True, thinking=True)
    if media is None:
        await interaction.followup.send(NO_CATALOG, ephemeral=True)
        return
    scope, user = scope_of(interaction.guild), str(interaction.user.id)
    try:
        if action == "more":
            title = (await media.current()).get(title_id)
            if title is None:
                await interaction.followup.send("That title is no longer in the catalog.",
                                                ephemeral=True)  # fmt: skip
                return
            picks = await media.recommend(
                scope, user, f"more like {title.title}", seed=title,
                owner=Owner(user, scope.guild_id), check=await allows(bot, interaction),
            )  # fmt: skip
            await interaction.followup.send(
                _cut(f"More like {title.title}:" if picks else NOTHING_FOUND, 2000),
                embeds=pick_embeds(picks),
                ephemeral=True,
            )
            return
        polarity: Literal["seen", "dislike"] = "seen" if action == "seen" else "dislike"
        change = await media.add_title_pref(scope, user, polarity, title_id, source="button")
        await interaction.followup.send(_cut(change.message, 2000), ephemeral=True)
    except MemoryUnavailable:
        await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
    except QueueFull:
        await interaction.followup.send(BUSY, ephemeral=True)


def pick_view(picks: list[Pick]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for n, pick in enumerate(picks[:5], 1):
        for action in ACTIONS:
            button = RecButton(action, pick.title.id, n)
            button.item.row = n - 1
            view.add_item(button)
    return view


class MediaCommands(commands.Cog):
    """Titles, recommendations and taste profiles."""

    prefs = app_commands.Group(name="prefs", description="Your taste profile here")

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(RecButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(RecButton)

    @app_commands.command(name="title", description="Look a title up in the catalog")
    @app_commands.describe(name="The title, as you remember it (typos are fine)")
    async def title(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 200]
    ) -> None:
        media = await begin(self.bot, interaction)
        if media is None:
            return
        found = await media.lookup(name)
        if not found:
            await interaction.followup.send(_cut(f"Nothing in the catalog matches {name!r}.", 2000))
            return
        others = ", ".join(t.label for t in found[1:4])
        await interaction.followup.send(
            _cut(f"Also close: {others}", 2000) if others else "",
            embed=title_embed(found[0]),
        )

    @app_commands.command(name="search", description="Titles by genre, person, type and years")
    @app_commands.describe(
        genre="e.g. horror, comedy, sci-fi", person="a director or cast member",
        kind="Movie, TV Show, or your catalog's own types", year_from="from this year",
        year_to="up to this year",
    )  # fmt: skip
    async def search(  # noqa: PLR0917 - slash command options arrive as arguments
        self,
        interaction: discord.Interaction,
        genre: app_commands.Range[str, 1, 60] | None = None,
        person: app_commands.Range[str, 1, 120] | None = None,
        kind: app_commands.Range[str, 1, 40] | None = None,
        year_from: app_commands.Range[int, 1800, 2100] | None = None,
        year_to: app_commands.Range[int, 1800, 2100] | None = None,
    ) -> None:
        media = await begin(self.bot, interaction)
        if media is None:
            return
        text = search_text(await media.current(), genre=genre, person=person, kind=kind,
                           year_from=year_from, year_to=year_to)  # fmt: skip
        await interaction.followup.send(_cut(text, 2000))

    @app_commands.command(name="recommend", description="Titles from the catalog for you")
    @app_commands.describe(mood="What you're in the mood for, e.g. 'a scary film from the 80s'")
    async def recommend(
        self, interaction: discord.Interaction, mood: app_commands.Range[str, 0, 300] = ""
    ) -> None:
        media = await begin(self.bot, interaction)
        if media is None:
            return
        if not await screen(self.bot, interaction, mood):
            return
        scope, user = scope_of(interaction.guild), str(interaction.user.id)
        try:
            picks = await media.recommend(
                scope, user, mood or "something good", owner=Owner(user, scope.guild_id),
                check=await allows(self.bot, interaction),
            )  # fmt: skip
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN)
            return
        except QueueFull:
            await interaction.followup.send(BUSY)
            return
        if not picks:
            await interaction.followup.send(NOTHING_FOUND)
            return
        await interaction.followup.send(
            _cut(f"Picks for {interaction.user.display_name}" + (f": {mood}" if mood else ""),
                 2000),
            embeds=pick_embeds(picks),
            view=pick_view(picks),
        )  # fmt: skip

    @prefs.command(name="add", description="Tell me something you like, dislike or have seen")
    @app_commands.describe(what="A genre, title or person", how="like, dislike or seen")
    async def prefs_add(
        self,
        interaction: discord.Interaction,
        what: app_commands.Range[str, 1, 200],
        how: Literal["like", "dislike", "seen"] = "like",
    ) -> None:
        media = await begin(self.bot, interaction, ephemeral=True)
        if media is None:
            return
        try:
            change = await media.add_pref(
                scope_of(interaction.guild), str(interaction.user.id), how, what
            )
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        await interaction.followup.send(_cut(change.message, 2000), ephemeral=True)

    @prefs.command(name="remove", description="Remove a genre, title or person from your profile")
    async def prefs_remove(
        self, interaction: discord.Interaction, what: app_commands.Range[str, 1, 200]
    ) -> None:
        media = await begin(self.bot, interaction, ephemeral=True)
        if media is None:
            return
        try:
            change = await media.remove_pref(
                scope_of(interaction.guild), str(interaction.user.id), what
            )
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        await interaction.followup.send(_cut(change.message, 2000), ephemeral=True)

    @prefs.command(name="show", description="Your taste profile here")
    async def prefs_show(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            items = await self.bot.services.memory.taste(
                scope_of(interaction.guild), str(interaction.user.id)
            )
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        if not items:
            text = ("Your taste profile here is empty. Tell me what you like in chat "
                    "(\"I loved Dark\") or with /prefs add.")  # fmt: skip
        else:
            text = "Your taste profile here:\n" + render_taste(items)
            text += "\nChange it with /prefs add and /prefs remove; /forget deletes it."
        await interaction.followup.send(_cut(text, 2000), ephemeral=True)


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(MediaCommands(bot))
