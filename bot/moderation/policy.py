"""Each server's moderation policy and records, in Redis.

The policy is a pydantic model. Redis holds only the fields a server's admins changed
(one JSON string, replaced by compare and set so two admins cannot undo each other);
the rest comes from the settings, so changing a default reaches every server that kept
it.
Strikes, cool-downs, flood counters and generation slots are one Lua call each, and
every moderation action is appended to a bounded Redis stream.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.exceptions import RedisError

from memory.connection import RedisClient
from memory.errors import redis_errors
from memory.keys import Keys
from memory.scripts import load_script

log = logging.getLogger(__name__)

Level = Literal["off", "standard", "strict"]
Action = Literal["refuse", "log", "cooldown"]
DM = "dm"  # the "server" whose policy and records cover direct messages
MAX_BLOCKLIST = 200
MAX_ENTRY_CHARS = 100
MAX_IDS = 1000
_ID = re.compile(r"^\d{1,20}$")


class GuildPolicy(BaseModel):
    """What a server's moderation does. See docs/moderation.md for each field."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    level: Level = "standard"
    action: Action = "log"
    standard_threshold: float = Field(default=0.90, gt=0.0, le=1.0)
    strict_threshold: float = Field(default=0.75, gt=0.0, le=1.0)
    strike_limit: int = Field(default=3, ge=1, le=100)
    strike_decay_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    cooldown_minutes: float = Field(default=10.0, gt=0, le=60 * 24 * 30)
    log_channel: str | None = None
    blocked_users: list[str] = Field(default_factory=list, max_length=MAX_IDS)
    allowed_channels: list[str] = Field(default_factory=list, max_length=MAX_IDS)
    blocklist: list[str] = Field(default_factory=list, max_length=MAX_BLOCKLIST)

    @field_validator("blocked_users", "allowed_channels")
    @classmethod
    def _ids(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _ID.match(value):
                raise ValueError(f"{value!r} is not a Discord id")
        return list(dict.fromkeys(values))

    @field_validator("log_channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        if value is not None and not _ID.match(value):
            raise ValueError(f"{value!r} is not a Discord id")
        return value

    @field_validator("blocklist")
    @classmethod
    def _entries(cls, values: list[str]) -> list[str]:
        for value in values:
            check_blocklist_entry(value)
        return list(dict.fromkeys(values))

    @property
    def threshold(self) -> float | None:
        """The classifier's threshold at this level; None when moderation is off."""
        if self.level == "off":
            return None
        return self.strict_threshold if self.level == "strict" else self.standard_threshold

    def allows_channel(self, channel_id: str | None) -> bool:
        return (
            not self.allowed_channels or channel_id is None or (channel_id in self.allowed_channels)
        )


def check_blocklist_entry(entry: str) -> str:
    """A blocklist entry as stored, or ValueError with a sentence for the admin."""
    if not entry.strip() or len(entry) > MAX_ENTRY_CHARS:
        raise ValueError(f"a blocklist entry has 1 to {MAX_ENTRY_CHARS} characters")
    if entry.startswith("re:"):
        try:
            re.compile(entry[3:])
        except re.error as exc:
            raise ValueError(f"that regex does not compile: {exc}") from exc
    return entry


@dataclass(frozen=True, slots=True)
class Strike:
    count: int  # strikes within the decay window, this one included
    cooldown_left: float  # seconds; 0 when the member is not on a cool-down


@dataclass(frozen=True, slots=True)
class Flood:
    messages: int  # messages within the window, this one included
    same: int  # of them with this same text


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Moderation:
    """Redis side of moderation for every server: policies and records."""

    def __init__(
        self,
        client: RedisClient,
        keys: Keys | None = None,
        *,
        defaults: GuildPolicy | None = None,
        log_max: int = 1000,
    ) -> None:
        self._redis = client
        self.keys = keys or Keys()
        self.defaults = defaults or GuildPolicy()
        self.log_max = log_max
        self._strike = client.register_script(load_script("bot.moderation", "strike"))
        self._flood = client.register_script(load_script("bot.moderation", "flood"))
        self._inflight = client.register_script(load_script("bot", "inflight"))
        self._set_policy = client.register_script(load_script("bot.moderation", "policy_set"))

    # -- policy ----------------------------------------------------------------

    def _merge(self, stored: dict[str, Any]) -> GuildPolicy:
        return GuildPolicy.model_validate({**self.defaults.model_dump(), **stored})

    async def policy(self, guild_id: str) -> GuildPolicy:
        with redis_errors():
            raw = await self._redis.get(self.keys.guild_key(guild_id, "modpolicy"))
        if raw is None:
            return self.defaults
        try:
            return self._merge(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            # Never fail open to "off": a damaged policy reads as the defaults.
            log.error("server %s has an unreadable moderation policy: %s", guild_id, exc)
            return self.defaults

    async def update(self, guild_id: str, change: Callable[[dict[str, Any]], None]) -> GuildPolicy:
        """Apply `change` to the stored overrides and save them, validated; a
        ValueError (from the change or validation) leaves the policy as it was."""
        key = self.keys.guild_key(guild_id, "modpolicy")
        while True:
            with redis_errors():
                raw = await self._redis.get(key)
            stored: dict[str, Any] = {}
            if raw is not None:
                try:
                    stored = dict(json.loads(raw))
                except ValueError:
                    stored = {}
            change(stored)
            try:
                merged = self._merge(stored)
            except ValidationError as exc:
                raise ValueError(exc.errors()[0]["msg"]) from exc
            # Keep only what differs from the defaults.
            base = self.defaults.model_dump()
            kept = {k: v for k, v in merged.model_dump().items() if base.get(k) != v}
            # A script, not WATCH/MULTI: redis-py's asyncio cluster transactions send
            # each command through a thread of its own (see docs/scaling.md).
            with redis_errors():
                written = await self._set_policy(
                    keys=[key],
                    args=["0" if raw is None else "1", raw or "", json.dumps(kept) if kept else ""],
                )
            if int(written):
                return merged

    # -- records about members -------------------------------------------------

    async def strike(self, guild_id: str, user_id: str, policy: GuildPolicy) -> Strike:
        limit = policy.strike_limit if policy.action == "cooldown" else 0
        with redis_errors():
            count, left = await self._strike(
                keys=[
                    self.keys.guild_user_key(guild_id, "strikes", user_id),
                    self.keys.guild_user_key(guild_id, "cooldown", user_id),
                ],
                args=[
                    uuid.uuid4().hex,
                    int(policy.strike_decay_hours * 3_600_000),
                    limit,
                    int(policy.cooldown_minutes * 60_000),
                ],
            )
        return Strike(int(count), int(left) / 1000)

    async def strikes(self, guild_id: str, user_id: str, policy: GuildPolicy) -> int:
        since = (time.time() - policy.strike_decay_hours * 3600) * 1000
        key = self.keys.guild_user_key(guild_id, "strikes", user_id)
        with redis_errors():
            return int(await self._redis.zcount(key, since, "+inf"))

    async def cooldown_left(self, guild_id: str, user_id: str) -> float:
        key = self.keys.guild_user_key(guild_id, "cooldown", user_id)
        with redis_errors():
            left = int(await self._redis.pttl(key))
        return max(0, left) / 1000

    async def clear(self, guild_id: str, user_id: str) -> bool:
        """Strikes, cool-down and flood record of a member gone; True if any existed."""
        keys = [
            self.keys.guild_user_key(guild_id, kind, user_id)
            for kind in ("strikes", "cooldown", "flood", "notified")
        ]
        with redis_errors():
            return bool(await self._redis.delete(*keys))

    async def notify_once(self, guild_id: str, user_id: str, seconds: float) -> bool:
        """True the first time in `seconds`: a refused member is told once, not each
        message (the bot must not be made to answer a flood)."""
        key = self.keys.guild_user_key(guild_id, "notified", user_id)
        with redis_errors():
            return bool(await self._redis.set(key, 1, nx=True, px=max(1, int(seconds * 1000))))

    async def flood(self, guild_id: str, user_id: str, digest: str, window: float) -> Flood:
        key = self.keys.guild_user_key(guild_id, "flood", user_id)
        with redis_errors():
            messages, same = await self._flood(
                keys=[key], args=[digest, max(1, int(window * 1000)), 100]
            )
        return Flood(int(messages), int(same))

    # -- generation slots per server -----------------------------------------

    async def acquire_slot(self, guild_id: str, request_id: str, slots: int, lease: float) -> bool:
        with redis_errors():
            return bool(
                await self._inflight(
                    keys=[self.keys.guild_key(guild_id, "inflight")],
                    args=[request_id, slots, max(1, int(lease * 1000))],
                )
            )

    async def acquire_member(self, user_id: str, request_id: str, slots: int, lease: float) -> bool:
        """One of a member's in-flight leases, counted across every server, DM and bot
        process (the same script as a server's slots, on the member's own key)."""
        with redis_errors():
            return bool(
                await self._inflight(
                    keys=[self.keys.member_inflight_key(user_id)],
                    args=[request_id, slots, max(1, int(lease * 1000))],
                )
            )

    async def release_member(self, user_id: str, request_id: str) -> None:
        try:
            await self._redis.zrem(self.keys.member_inflight_key(user_id), request_id)
        except RedisError as exc:
            log.warning("could not release a member's lease (it runs out by itself): %s", exc)

    async def release_slot(self, guild_id: str, request_id: str) -> None:
        try:
            await self._redis.zrem(self.keys.guild_key(guild_id, "inflight"), request_id)
        except RedisError as exc:
            log.warning("could not release a generation slot (its lease will): %s", exc)

    # -- the log ---------------------------------------------------------------

    async def record(self, guild_id: str, fields: dict[str, str]) -> str:
        """Append one action to the server's bounded log stream; returns its id."""
        key = self.keys.guild_key(guild_id, "modlog")
        with redis_errors():
            entry = await self._redis.xadd(
                key, cast("dict[Any, Any]", fields), maxlen=self.log_max, approximate=False
            )
        return _s(entry)

    async def recent(self, guild_id: str, count: int = 20) -> list[dict[str, str]]:
        key = self.keys.guild_key(guild_id, "modlog")
        with redis_errors():
            rows = await self._redis.xrevrange(key, count=count)
        return [
            {"id": _s(i), **{_s(k): _s(v) for k, v in (f or {}).items()}} for i, f in rows or []
        ]
