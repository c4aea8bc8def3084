"""`/mod`: each server's moderation policy, for members with Manage Server, and the
mod-log channel where every moderation action is posted as an embed."""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands.messages import MEMORY_DOWN
from bot.discord.client import MediaBot
from bot.discord.streaming import NO_PINGS
from bot.moderation.moderator import ModerationEvent
from bot.moderation.policy import GuildPolicy, check_blocklist_entry
from bot.moderation.rules import defuse_mentions
from memory.errors import MemoryUnavailable

log = logging.getLogger(__name__)

LEVELS = {
    "off": "off: only mention floods are refused (replies are still checked for leaks)",
    "standard": "standard: blocklist, spam, floods and the classifier at its standard threshold",
    "strict": "strict: as standard, with the classifier's stricter threshold",
}
ACTIONS = {
    "refuse": "refuse with a short reason (logged in Redis only)",
    "log": "refuse and post to the mod-log channel",
    "cooldown": "refuse, post to the mod-log, and put repeat offenders on a cool-down",
}
LIST_LIMIT = 1900


def mod_log_embed(event: ModerationEvent) -> discord.Embed:
    """Who, where, which rule, what was done, and an excerpt with mentions defused."""
    colour = discord.Colour.orange() if event.action.startswith("refused") else discord.Colour.red()
    embed = discord.Embed(
        title=f"Moderation: {event.rule}",
        description=event.excerpt or "(no text)",
        colour=colour,
        timestamp=datetime.datetime.fromtimestamp(event.at, tz=datetime.UTC),
    )
    where = event.where
    name = defuse_mentions(discord.utils.escape_markdown(where.user_name))[:64]
    embed.add_field(name="Member", value=f"<@{where.user_id}> ({name})", inline=True)
    if where.channel_id:
        embed.add_field(name="Channel", value=f"<#{where.channel_id}>", inline=True)
    embed.add_field(name="Action", value=event.action, inline=True)
    if event.strikes:
        embed.add_field(name="Strikes", value=str(event.strikes), inline=True)
    if event.score is not None:
        embed.add_field(name="Classifier score", value=f"{event.score:.2f}", inline=True)
    if event.cooldown_left > 0:
        minutes = math.ceil(event.cooldown_left / 60)
        embed.add_field(name="Cool-down", value=f"{minutes} min", inline=True)
    return embed


def describe(policy: GuildPolicy) -> str:
    lines = [
        f"**Level:** {LEVELS[policy.level]}",
        f"**On a hit:** {ACTIONS[policy.action]}",
        f"**Thresholds:** standard {policy.standard_threshold:.2f}, "
        f"strict {policy.strict_threshold:.2f}",
        f"**Cool-down:** {policy.strike_limit} strikes within {policy.strike_decay_hours:g} h "
        f"give {policy.cooldown_minutes:g} min",
        "**Mod-log:** " + (f"<#{policy.log_channel}>" if policy.log_channel else "none"),
        "**Channels:** " + (", ".join(f"<#{c}>" for c in policy.allowed_channels) or "all"),
        f"**Blocked members:** {len(policy.blocked_users)}",
        f"**Blocklist additions:** {len(policy.blocklist)}",
    ]
    return "\n".join(lines)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ModCommands(commands.GroupCog, group_name="mod", description="Moderation (Manage Server)"):
    """Every command answers privately and only to members with Manage Server."""

    blocklist = app_commands.Group(name="blocklist", description="This server's blocked words")
    channel = app_commands.Group(name="channel", description="Channels where I may answer")

    def __init__(self, bot: MediaBot) -> None:
        self.bot = bot
        self.moderator = bot.services.moderator
        super().__init__()

    async def cog_load(self) -> None:
        self.moderator.listeners.append(self.post_to_log_channel)

    async def cog_unload(self) -> None:
        if self.post_to_log_channel in self.moderator.listeners:
            self.moderator.listeners.remove(self.post_to_log_channel)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.guild is None:
            raise app_commands.NoPrivateMessage()
        if not interaction.permissions.manage_guild:
            raise app_commands.MissingPermissions(["manage_guild"])
        return True

    async def post_to_log_channel(self, event: ModerationEvent) -> None:
        if event.log_channel is None:
            return
        channel = self.bot.get_channel(int(event.log_channel))
        if not isinstance(channel, discord.TextChannel | discord.Thread):
            log.warning("the mod-log channel %s is gone or not a text channel", event.log_channel)
            return
        try:
            await channel.send(embed=mod_log_embed(event), allowed_mentions=NO_PINGS)
        except discord.HTTPException as exc:
            log.warning("could not post to the mod-log channel: %s", exc)

    # -- helpers -----------------------------------------------------------------

    async def _update(
        self,
        interaction: discord.Interaction,
        change: Callable[[dict[str, Any]], None],
        done: Callable[[GuildPolicy], str],
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild is not None
        moderation = self.moderator.moderation
        if moderation is None:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        try:
            policy = await moderation.update(str(interaction.guild.id), change)
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        except ValueError as exc:
            await interaction.followup.send(f"Not changed: {exc}.", ephemeral=True)
            return
        await interaction.followup.send(done(policy), ephemeral=True)

    async def _policy(self, interaction: discord.Interaction) -> GuildPolicy | None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild is not None
        moderation = self.moderator.moderation
        try:
            if moderation is None:
                raise MemoryUnavailable("no Redis")
            return await moderation.policy(str(interaction.guild.id))
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return None

    # -- policy ------------------------------------------------------------------

    @app_commands.command(name="show", description="This server's moderation policy")
    async def show(self, interaction: discord.Interaction) -> None:
        policy = await self._policy(interaction)
        if policy is not None:
            await interaction.followup.send(describe(policy), ephemeral=True)

    @app_commands.command(name="level", description="How strict moderation is")
    @app_commands.describe(level="off, standard or strict")
    async def level(
        self, interaction: discord.Interaction, level: Literal["off", "standard", "strict"]
    ) -> None:
        await self._update(
            interaction,
            lambda p: p.update(level=level),
            lambda p: f"Moderation level is now {LEVELS[p.level]}.",
        )

    @app_commands.command(name="action", description="What happens when a message is refused")
    @app_commands.describe(
        action="refuse, log (also post to the mod-log), or cooldown (also cool-downs)",
        strike_limit="Strikes that start a cool-down (cooldown action)",
        cooldown_minutes="How long a cool-down lasts",
        decay_hours="How long a strike counts",
    )
    async def action(
        self,
        interaction: discord.Interaction,
        action: Literal["refuse", "log", "cooldown"],
        strike_limit: app_commands.Range[int, 1, 100] | None = None,
        cooldown_minutes: app_commands.Range[float, 1.0, 43200.0] | None = None,
        decay_hours: app_commands.Range[float, 1.0, 8760.0] | None = None,
    ) -> None:
        def change(p: dict[str, Any]) -> None:
            p["action"] = action
            if strike_limit is not None:
                p["strike_limit"] = strike_limit
            if cooldown_minutes is not None:
                p["cooldown_minutes"] = cooldown_minutes
            if decay_hours is not None:
                p["strike_decay_hours"] = decay_hours

        await self._update(interaction, change, lambda p: f"On a hit I now {ACTIONS[p.action]}.")

    @app_commands.command(name="threshold", description="The classifier's threshold per level")
    @app_commands.describe(
        level="Which level's threshold", value="0.05 (refuse a lot) to 1.0 (almost nothing)"
    )
    async def threshold(
        self,
        interaction: discord.Interaction,
        level: Literal["standard", "strict"],
        value: app_commands.Range[float, 0.05, 1.0],
    ) -> None:
        await self._update(
            interaction,
            lambda p: p.update({f"{level}_threshold": value}),
            lambda p: f"The {level} threshold is now {value:.2f}.",
        )

    @app_commands.command(name="log-channel", description="Where moderation actions are posted")
    @app_commands.describe(channel="The channel (leave empty to stop posting)")
    async def log_channel(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        target = str(channel.id) if channel is not None else None

        def done(p: GuildPolicy) -> str:
            if target is None:
                return "Moderation actions are no longer posted (they are still kept in Redis)."
            text = f"Moderation actions now go to <#{target}>."
            if p.action == "refuse":
                text += " Refusals are not posted until `/mod action log` or `cooldown`."
            return text

        await self._update(interaction, lambda p: p.update(log_channel=target), done)

    # -- members -----------------------------------------------------------------

    @app_commands.command(name="strikes", description="A member's strikes and cool-down")
    async def strikes(self, interaction: discord.Interaction, user: discord.User) -> None:
        policy = await self._policy(interaction)
        moderation = self.moderator.moderation
        if policy is None or moderation is None:
            return
        assert interaction.guild is not None
        guild = str(interaction.guild.id)
        try:
            count = await moderation.strikes(guild, str(user.id), policy)
            left = await moderation.cooldown_left(guild, str(user.id))
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        text = f"<@{user.id}> has {count} strike{'s' if count != 1 else ''} "
        text += f"in the last {policy.strike_decay_hours:g} h"
        text += f" and a cool-down for {math.ceil(left / 60)} more min." if left else "."
        if str(user.id) in policy.blocked_users:
            text += " They are blocked from using me here."
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="clear", description="Clear a member's strikes and cool-down")
    async def clear(self, interaction: discord.Interaction, user: discord.User) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild is not None
        moderation = self.moderator.moderation
        try:
            if moderation is None:
                raise MemoryUnavailable("no Redis")
            had = await moderation.clear(str(interaction.guild.id), str(user.id))
        except MemoryUnavailable:
            await interaction.followup.send(MEMORY_DOWN, ephemeral=True)
            return
        text = "Cleared their strikes and cool-down." if had else "They had no strikes."
        await interaction.followup.send(text, ephemeral=True)

    @app_commands.command(name="block", description="Stop a member from using me here")
    async def block(self, interaction: discord.Interaction, user: discord.User) -> None:
        uid = str(user.id)

        def change(p: dict[str, Any]) -> None:
            p["blocked_users"] = [*p.get("blocked_users", []), uid]

        await self._update(
            interaction, change, lambda p: f"<@{uid}> is blocked from using me here."
        )

    @app_commands.command(name="unblock", description="Let a member use me again")
    async def unblock(self, interaction: discord.Interaction, user: discord.User) -> None:
        uid = str(user.id)

        def change(p: dict[str, Any]) -> None:
            p["blocked_users"] = [u for u in p.get("blocked_users", []) if u != uid]

        await self._update(interaction, change, lambda p: f"<@{uid}> may use me here again.")

    # -- blocklist ---------------------------------------------------------------

    @blocklist.command(name="add", description="Refuse messages with a word, phrase or re:regex")
    @app_commands.describe(entry="A word or phrase, or re: followed by a regular expression")
    async def blocklist_add(self, interaction: discord.Interaction, entry: str) -> None:
        def change(p: dict[str, Any]) -> None:
            p["blocklist"] = [*p.get("blocklist", []), check_blocklist_entry(entry.strip())]

        await self._update(
            interaction, change, lambda p: f"Added. The blocklist has {len(p.blocklist)} entries."
        )

    @blocklist.command(name="remove", description="Take an entry off the blocklist")
    async def blocklist_remove(self, interaction: discord.Interaction, entry: str) -> None:
        found: list[bool] = []

        def change(p: dict[str, Any]) -> None:
            before = list(p.get("blocklist", []))
            p["blocklist"] = [e for e in before if e != entry.strip()]
            found.append(len(p["blocklist"]) != len(before))

        await self._update(
            interaction,
            change,
            lambda p: "Removed." if found and found[-1] else "That entry is not on the list.",
        )

    @blocklist.command(name="list", description="This server's blocklist additions")
    async def blocklist_list(self, interaction: discord.Interaction) -> None:
        policy = await self._policy(interaction)
        if policy is None:
            return
        if not policy.blocklist:
            text = "No additions: only the built-in spam phrases are blocked."
        else:
            text = "\n".join(f"- `{e.replace('`', 'ˋ')}`" for e in policy.blocklist)
            if len(text) > LIST_LIMIT:
                text = text[:LIST_LIMIT].rsplit("\n", 1)[0] + "\n…"
        await interaction.followup.send(defuse_mentions(text), ephemeral=True)

    # -- channels ----------------------------------------------------------------

    @channel.command(name="allow", description="Answer in this channel (then only in allowed)")
    async def channel_allow(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        target = str(channel.id if channel is not None else interaction.channel_id)

        def change(p: dict[str, Any]) -> None:
            p["allowed_channels"] = [*p.get("allowed_channels", []), target]

        await self._update(
            interaction,
            change,
            lambda p: f"I answer only in: {', '.join(f'<#{c}>' for c in p.allowed_channels)}.",
        )

    @channel.command(name="remove", description="Stop answering in a channel")
    async def channel_remove(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        target = str(channel.id if channel is not None else interaction.channel_id)

        def change(p: dict[str, Any]) -> None:
            p["allowed_channels"] = [c for c in p.get("allowed_channels", []) if c != target]

        def done(p: GuildPolicy) -> str:
            if not p.allowed_channels:
                return "No channel list left: I answer in every channel again."
            return f"I answer only in: {', '.join(f'<#{c}>' for c in p.allowed_channels)}."

        await self._update(interaction, change, done)

    @channel.command(name="list", description="Channels where I may answer")
    async def channel_list(self, interaction: discord.Interaction) -> None:
        policy = await self._policy(interaction)
        if policy is None:
            return
        text = ", ".join(f"<#{c}>" for c in policy.allowed_channels) or "Every channel."
        await interaction.followup.send(text, ephemeral=True)


async def setup(bot: MediaBot) -> None:
    await bot.add_cog(ModCommands(bot))
