"""Per-user conversation memory in Redis: load, atomic append, reset, export, forget.

Every multi-key write is one Lua script (see `memory/lua/`), so a crash or a second bot
process never leaves half an exchange behind, and a retried write is a no-op.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from memory.keys import Keys, Scope
from memory.records import StoredTurn, Turn

log = logging.getLogger(__name__)

FORGET_RETRIES = 10


class MemoryUnavailable(Exception):
    """Redis could not be reached or answered with an error; nothing was written."""


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """What memory holds for one reply: recent turns (oldest first) and the slots
    the context builder fills before them."""

    turns: list[StoredTurn]
    profile: str = ""
    summary: str = ""
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class AppendResult:
    stored: bool
    user_turn_id: int
    assistant_turn_id: int | None = None


@dataclass(slots=True)
class ScopeExport:
    turns: list[dict[str, Any]] = field(default_factory=list)


def _load_script(name: str) -> str:
    return (resources.files("memory") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class MemoryStore:
    """The narrow async interface the rest of the bot uses for memory."""

    def __init__(
        self,
        client: Redis,
        *,
        keys: Keys | None = None,
        max_turns: int = 500,
        retention_seconds: int | None = None,
    ) -> None:
        self._redis = client
        self.keys = keys or Keys()
        self.max_turns = max_turns
        self.retention_seconds = retention_seconds
        self._append: AsyncScript = client.register_script(_load_script("append"))
        self._load: AsyncScript = client.register_script(_load_script("load"))
        self._forget: AsyncScript = client.register_script(_load_script("forget"))
        self._reset: AsyncScript = client.register_script(_load_script("reset"))
        self._delete: AsyncScript = client.register_script(_load_script("delete_message"))
        self._edit: AsyncScript = client.register_script(_load_script("edit_message"))

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except RedisError as exc:
            raise MemoryUnavailable(str(exc)) from exc

    async def load(
        self, scope: Scope, user_id: str, *, token_budget: int, max_turns: int = 256
    ) -> MemorySnapshot:
        """The newest turns of this scope that fit `token_budget`, oldest first."""
        turns_key = self.keys.scope_key(user_id, scope, "turns")
        turn_key = self.keys.scope_key(user_id, scope, "turn")
        try:
            flat = await self._load(keys=[turns_key, turn_key], args=[max_turns, token_budget])
        except RedisError as exc:
            raise MemoryUnavailable(str(exc)) from exc
        turns, skipped = self._parse(flat, where=turn_key)
        turns.reverse()
        return MemorySnapshot(turns=turns, skipped=skipped)

    async def append(
        self,
        scope: Scope,
        user_id: str,
        user_turn: Turn,
        assistant_turn: Turn,
    ) -> AppendResult:
        """Store one exchange atomically; a second call with the same user message id
        stores nothing and reports `stored=False`."""
        if not user_turn.message_id:
            raise ValueError("the user turn needs a message id (it makes the write idempotent)")
        if user_turn.role != "user" or assistant_turn.role != "assistant":
            raise ValueError("append takes a user turn and then an assistant turn")
        keys = [self.keys.index(user_id), *self.keys.scope_keys(user_id, scope)]
        args: list[str | int] = [
            user_turn.message_id,
            user_turn.model_dump_json(),
            assistant_turn.model_dump_json(),
            assistant_turn.message_id or "",
            self.max_turns,
            self.retention_seconds or 0,
        ]
        try:
            result = await self._append(keys=keys, args=args)
        except RedisError as exc:
            raise MemoryUnavailable(str(exc)) from exc
        if int(result[0]) == 0:
            return AppendResult(stored=False, user_turn_id=int(result[1]))
        return AppendResult(
            stored=True, user_turn_id=int(result[1]), assistant_turn_id=int(result[2])
        )

    async def reset(self, scope: Scope, user_id: str) -> int:
        """Clear one scope of one user; returns how many turns went."""
        keys = [self.keys.index(user_id), *self.keys.scope_keys(user_id, scope)]
        try:
            return int(await self._reset(keys=keys, args=[]))
        except RedisError as exc:
            raise MemoryUnavailable(str(exc)) from exc

    async def delete_message(self, scope: Scope, user_id: str, message_id: str) -> bool:
        """Remove the turn of a message its author deleted; False if none was stored."""
        keys = [self.keys.scope_key(user_id, scope, k) for k in ("turns", "turn", "msg")]
        try:
            return bool(await self._delete(keys=keys, args=[message_id]))
        except RedisError as exc:
            raise MemoryUnavailable(str(exc)) from exc

    async def edit_message(
        self, scope: Scope, user_id: str, message_id: str, text: str, tokens: int
    ) -> bool:
        """Replace the stored text of a message its author edited."""
        keys = [self.keys.scope_key(user_id, scope, k) for k in ("turn", "msg")]
        try:
            return bool(await self._edit(keys=keys, args=[message_id, text, tokens]))
        except RedisError as exc:
            raise MemoryUnavailable(str(exc)) from exc

    async def has_message(self, scope: Scope, user_id: str, message_id: str) -> bool:
        """Whether a turn for this message id is stored in the scope."""
        key = self.keys.scope_key(user_id, scope, "msg")
        try:
            return bool(await self._redis.hexists(key, message_id))  # type: ignore[misc]
        except RedisError as exc:
            raise MemoryUnavailable(str(exc)) from exc

    async def scopes(self, user_id: str) -> list[Scope]:
        """Every scope this user has memory in."""
        try:
            members = await self._redis.smembers(self.keys.index(user_id))  # type: ignore[misc]
        except RedisError as exc:
            raise MemoryUnavailable(str(exc)) from exc
        found = {self.keys.scope_of(user_id, _text(m)) for m in members}
        return sorted((s for s in found if s is not None), key=lambda s: s.name)

    async def history(self, scope: Scope, user_id: str) -> list[dict[str, Any]]:
        """Every record stored in one scope, oldest first, unreadable ones included
        as their raw text (it is still the user's data)."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.keys.scope_key(user_id, scope, "turn"))
                pipe.zrange(self.keys.scope_key(user_id, scope, "turns"), 0, -1)
                records, order = await pipe.execute()
        except RedisError as exc:
            raise MemoryUnavailable(str(exc)) from exc
        by_id = {_text(k): _text(v) for k, v in records.items()}
        ordered = [_text(i) for i in order if _text(i) in by_id]
        ordered += sorted(set(by_id) - set(ordered), key=lambda s: (len(s), s))
        return [self._export_entry(tid, by_id[tid]) for tid in ordered]

    async def export(self, user_id: str) -> dict[str, Any]:
        """Everything stored about this user, in every scope, as JSON-ready data."""
        scopes: dict[str, Any] = {}
        for scope in await self.scopes(user_id):
            scopes[scope.name] = {
                "where": str(scope),
                "guild_id": scope.guild_id,
                "turns": await self.history(scope, user_id),
            }
        return {"user_id": user_id, "exported_at": time.time(), "scopes": scopes}

    @staticmethod
    def _export_entry(tid: str, raw: str) -> dict[str, Any]:
        try:
            turn = Turn.model_validate_json(raw)
        except ValidationError:
            return {"id": int(tid) if tid.isdigit() else tid, "unreadable": raw}
        return {"id": int(tid), **turn.model_dump()}

    async def forget(self, user_id: str) -> int:
        """Delete everything stored about this user in every scope; returns the number
        of turns deleted."""
        index = self.keys.index(user_id)
        for _ in range(FORGET_RETRIES):
            try:
                members = sorted(_text(m) for m in await self._redis.smembers(index))  # type: ignore[misc]
                result = int(await self._forget(keys=[index, *members], args=[len(members)]))
            except RedisError as exc:
                raise MemoryUnavailable(str(exc)) from exc
            if result >= 0:
                return result
        raise MemoryUnavailable("the memory index kept changing while it was being deleted")

    def _parse(self, flat: list[Any], *, where: str) -> tuple[list[StoredTurn], int]:
        turns: list[StoredTurn] = []
        skipped = 0
        for i in range(0, len(flat), 2):
            tid, raw = _text(flat[i]), flat[i + 1]
            try:
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                turns.append(StoredTurn.model_validate({**data, "id": int(tid)}))
            except (ValueError, ValidationError) as exc:
                skipped += 1
                log.warning("skipped an unreadable turn %s in %s: %s", tid, where, _short(exc))
        return turns, skipped


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]
