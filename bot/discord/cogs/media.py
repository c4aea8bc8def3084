"""Catalog commands: /title, /search, /recommend (with buttons that teach the profile)
and /prefs, as embeds and buttons over `bot.commands.catalog`. Every title shown comes
from the catalog; the model only writes the sentence under it, and that sentence is
checked (see `bot.media.recommend`)."""

from __future__ import annotations

import re
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands import Refused, messages
from bot.context.profile import render_taste
from bot.discord.client import MediaBot
from bot.discord.interactions import begin, caller_of, cut, refuse
from bot.media.catalog import Title
from bot.media.recommend import Pick


def title_embed(title: Title, blurb: str = "", reason: str = "") -> discord.Embed:
    """An embed of catalog facts; `blurb` is a checked sentence about it."""
    embed = discord.Embed(
        title=cut(title.label, 256), description=cut(blurb, 4096) or None, colour=0x5865F2
    )
    embed.add_field(name="Type", value=cut(title.type, 1024))
    if title.genres:
        embed.add_field(name="Genres", value=cut(", ".join(title.genres), 1024))
    if title.directors:
        embed.add_field(name="Directed by", value=cut(", ".join(title.directors[:5]), 1024),
                        inline=False)  # fmt: skip
    if title.cast:
        more = f" and {len(title.cast) - 6} more" if len(title.cast) > 6 else ""
        embed.add_field(name="Cast", value=cut(", ".join(title.cast[:6]) + more, 1024),
                        inline=False)  # fmt: skip
    for name, value in (("Country", title.country), ("Rating", title.rating),
                        ("Duration", title.duration)):  # fmt: skip
        if value:
            embed.add_field(name=name, value=cut(value, 1024))
    if reason:
        embed.set_footer(text=cut(messages.why(reason), 2048))
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
    """What a recommendation button does, for the member who pressed it (only they
    see the answer)."""
    await begin(interaction, ephemeral=True)
    catalog, caller = bot.services.commands.catalog, caller_of(interaction)
    if action == "more":
        more = await catalog.more_like(caller, title_id)
        if isinstance(more, Refused):
            await refuse(interaction, more, ephemeral=True)
            return
        intro = messages.more_like(more.like.title) if more.picks and more.like else None
        await interaction.followup.send(
            cut(intro or messages.NOTHING_FOUND), embeds=pick_embeds(more.picks), ephemeral=True
        )
        return
    done = await catalog.mark_title(caller, "seen" if action == "seen" else "dislike", title_id)
    await interaction.followup.send(cut(done.text), ephemeral=True)


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
        self.commands = bot.services.commands.catalog

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(RecButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(RecButton)

    @app_commands.command(name="title", description="Look a title up in the catalog")
    @app_commands.describe(name="The title, as you remember it (typos are fine)")
    async def title(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 200]
    ) -> None:
        await begin(interaction)
        found = await self.commands.title(caller_of(interaction), name)
        if isinstance(found, Refused):
            await refuse(interaction, found)
            return
        others = found[1:4]
        await interaction.followup.send(
            cut(messages.also_close(others)) if others else "", embed=title_embed(found[0])
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
        await begin(interaction)
        found = await self.commands.search(
            caller_of(interaction), genre=genre, person=person, kind=kind,
            year_from=year_from, year_to=year_to,
        )  # fmt: skip
        if isinstance(found, Refused):
            await refuse(interaction, found)
            return
        await interaction.followup.send(cut(messages.search_listing(found.titles, found.more)))

    @app_commands.command(name="recommend", description="Titles from the catalog for you")
    @app_commands.describe(mood="What you're in the mood for, e.g. 'a scary film from the 80s'")
    async def recommend(
        self, interaction: discord.Interaction, mood: app_commands.Range[str, 0, 300] = ""
    ) -> None:
        await begin(interaction)
        result = await self.commands.recommend(caller_of(interaction), mood)
        if isinstance(result, Refused):
            await refuse(interaction, result)
            return
        if not result.picks:
            await interaction.followup.send(messages.NOTHING_FOUND)
            return
        await interaction.followup.send(
            cut(messages.picks_for(interaction.user.display_name, mood)),
            embeds=pick_embeds(result.picks),
            view=pick_view(result.picks),
        )

    @prefs.command(name="add", description="Tell me something you like, dislike or have seen")
    @app_commands.describe(what="A genre, title or person", how="like, dislike or seen")
    async def prefs_add(
        self,
        interaction: discord.Interaction,
        what: app_commands.Range[str, 1, 200],
        how: Literal["like", "dislike", "seen"] = "like",
    ) -> None:
        await begin(interaction, ephemeral=True)
        done = await self.commands.add_pref(caller_of(interaction), how, what)
        await interaction.followup.send(cut(done.text), ephemeral=True)

    @prefs.command(name="remove", description="Remove a genre, title or person from your profile")
    async def prefs_remove(
        self, interaction: discord.Interaction, what: app_commands.Range[str, 1, 200]
    ) -> None:
        await begin(interaction, ephemeral=True)
        done = await self.commands.remove_pref(caller_of(interaction), what)
        await interaction.followup.send(cut(done.text), ephemeral=True)

    @prefs.command(name="show", description="Your taste profile here")
    async def prefs_show(self, interaction: discord.Interaction) -> None:
        await begin(interaction, ephemeral=True)
        items = await self.commands.taste(caller_of(interaction))
        if isinstance(items, Refused):
            text = items.text
        elif not items:
            text = messages.taste_empty("/prefs add")
        else:
            text = "\n".join((messages.TASTE_HEADER, render_taste(items),
                              messages.taste_help("/prefs add", "/prefs remove")))  # fmt: skip
        await interaction.followup.send(cut(text), ephemeral=True)


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(MediaCommands(bot))
