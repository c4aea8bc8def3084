"""Per-user conversation memory in Redis: load, atomic append, reset, export, forget.

Every multi-key write is one Lua script (see `memory/lua/`), so a crash or a second bot
process never leaves half an exchange behind, and a retried write is a no-op.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from memory import profile as fact_rules
from memory.connection import RedisClient
from memory.errors import MemoryUnavailable, redis_errors
from memory.keys import Keys, Scope
from memory.recall import Candidate, Corpus, index_entry
from memory.records import Fact, StoredTurn, Summary, TasteItem, Turn
from memory.scripts import load_script

log = logging.getLogger(__name__)

FORGET_RETRIES = 10


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """What memory holds for one reply: recent turns (oldest first), older user turns
    that recall may bring back, profile facts and the rolling summary."""

    turns: list[StoredTurn]
    candidates: list[Candidate] = field(default_factory=list)
    corpus: Corpus = field(default_factory=Corpus)
    facts: list[Fact] = field(default_factory=list)
    summary: Summary | None = None
    skipped: int = 0
    taste: list[TasteItem] = field(default_factory=list)

    @property
    def summary_text(self) -> str:
        return self.summary.text if self.summary else ""


class UpkeepBusy(Exception):
    """Another task or process holds this scope's upkeep lock."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    stored: bool
    user_turn_id: int
    assistant_turn_id: int | None = None


LOCK_MS = 30_000
# The keys each script takes, in its order (see the script's header).
LOAD_KINDS = ("turns", "turn", "terms", "profile", "summary", "postings", "stats", "taste")
MAX_TASTE_ITEMS = 500
DELETE_KINDS = ("turns", "turn", "msg", "terms", "profile", "summary", "postings", "stats")
EDIT_KINDS = ("turn", "msg", "terms", "profile", "summary", "postings", "stats")


_WITH_INDEX = frozenset({"append", "delete_message", "edit_message"})


def _script(name: str) -> str:
    """A script of memory/lua; those that change turns get the shared index helpers."""
    return load_script("memory", name, helpers=("_index",) if name in _WITH_INDEX else ())


class MemoryStore:
    """The narrow async interface the rest of the bot uses for memory."""

    def __init__(
        self,
        client: RedisClient,
        *,
        keys: Keys | None = None,
        max_turns: int = 500,
        retention_seconds: int | None = None,
    ) -> None:
        self._redis = client
        self.keys = keys or Keys()
        self.max_turns = max_turns
        self.retention_seconds = retention_seconds
        self._append: AsyncScript = client.register_script(_script("append"))
        self._load: AsyncScript = client.register_script(_script("load"))
        self._forget: AsyncScript = client.register_script(_script("forget"))
        self._reset: AsyncScript = client.register_script(_script("reset"))
        self._delete: AsyncScript = client.register_script(_script("delete_message"))
        self._edit: AsyncScript = client.register_script(_script("edit_message"))
        self._profile_set: AsyncScript = client.register_script(_script("profile_set"))
        self._summary_set: AsyncScript = client.register_script(_script("summary_set"))
        self._unlock: AsyncScript = client.register_script(_UNLOCK)
        self._taste_set: AsyncScript = client.register_script(_script("taste_set"))
        self._taste_remove: AsyncScript = client.register_script(_script("taste_remove"))
        self._history: AsyncScript = client.register_script(_script("history"))
        self._story_set: AsyncScript = client.register_script(_script("story_set"))

    @property
    def client(self) -> RedisClient:
        """The Redis client, for what shares the connection (the catalog, trivia)."""
        return self._redis

    async def ping(self) -> None:
        with redis_errors():
            await self._redis.ping()

    async def load(
        self,
        scope: Scope,
        user_id: str,
        *,
        token_budget: int,
        max_turns: int = 256,
        max_candidates: int = 0,
        query_terms: Sequence[str] = (),
    ) -> MemorySnapshot:
        """In one round trip: the newest turns that fit `token_budget` (oldest first);
        of the next `max_candidates` older user turns, those sharing a term with
        `query_terms` (recall candidates) and statistics of all of them; the profile
        facts and the summary."""
        k = self.keys
        keys = [k.scope_key(user_id, scope, kind) for kind in LOAD_KINDS]
        with redis_errors():
            recent, older, profile, summary, stats, taste = await self._load(
                keys=keys, args=[max_turns, token_budget, max_candidates, *query_terms]
            )
        turns, skipped = self._parse(recent, where=keys[1])
        turns.reverse()
        candidates = Candidate.parse_lines(_text(older))
        docs, words = (int(x) for x in _text(stats).split())
        return MemorySnapshot(
            turns=turns,
            candidates=candidates,
            corpus=Corpus(docs, words),
            facts=self._facts(profile, where=keys[3]),
            summary=self._summary(summary, where=keys[4]),
            skipped=skipped,
            taste=self._taste(taste, where=keys[7]),
        )

    async def turns_by_id(self, scope: Scope, user_id: str, ids: list[int]) -> list[StoredTurn]:
        """These turns (as far as they still exist), in the order asked."""
        if not ids:
            return []
        key = self.keys.scope_key(user_id, scope, "turn")
        with redis_errors():
            raws = await self._redis.hmget(key, [str(i) for i in ids])  # type: ignore[misc]
        flat = [x for i, raw in zip(ids, raws, strict=True) if raw is not None for x in (i, raw)]
        return self._parse(flat, where=key)[0]

    async def turns_between(
        self, scope: Scope, user_id: str, first: int, last: int
    ) -> list[StoredTurn]:
        """Stored turns with ids from `first` to `last`, oldest first."""
        order = self.keys.scope_key(user_id, scope, "turns")
        with redis_errors():
            ids = await self._redis.zrangebyscore(order, first, last)
        return await self.turns_by_id(scope, user_id, [int(_text(i)) for i in ids])  # type: ignore[arg-type]

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
            index_entry("user", user_turn.time, user_turn.tokens, user_turn.text),
            index_entry("assistant", assistant_turn.time, assistant_turn.tokens, ""),
        ]
        with redis_errors():
            result = await self._append(keys=keys, args=args)
        if int(result[0]) == 0:
            return AppendResult(stored=False, user_turn_id=int(result[1]))
        uid = int(result[1])
        # Facts go in after the turn: a crash between the two loses only the facts, and
        # a retry (same message id) does not reach here twice.
        await self._set_facts(scope, user_id, uid, user_turn)
        return AppendResult(stored=True, user_turn_id=uid, assistant_turn_id=int(result[2]))

    async def _set_facts(self, scope: Scope, user_id: str, turn_id: int, turn: Turn) -> int:
        found = fact_rules.extract(turn.text)
        if not found:
            return 0
        args: list[str | int] = [turn_id, self.retention_seconds or 0]
        for statement in found:
            fact = Fact(
                label=statement.label,
                value=statement.value,
                message_id=turn.message_id,
                turn_id=turn_id,
                time=turn.time,
            )
            args += [statement.field, fact.model_dump_json()]
        key = self.keys.scope_key(user_id, scope, "profile")
        with redis_errors():
            return int(await self._profile_set(keys=[key], args=args))

    async def reset(self, scope: Scope, user_id: str) -> int:
        """Clear one scope of one user; returns how many turns went."""
        keys = [self.keys.index(user_id), *self.keys.scope_keys(user_id, scope)]
        with redis_errors():
            return int(await self._reset(keys=keys, args=[]))

    async def delete_message(self, scope: Scope, user_id: str, message_id: str) -> bool:
        """Remove the turn of a message its author deleted, with its recall entry and the
        facts it stated; a summary that covered it goes stale. False if none was stored."""
        keys = [self.keys.scope_key(user_id, scope, k) for k in DELETE_KINDS]
        with redis_errors():
            deleted = bool(await self._delete(keys=keys, args=[message_id]))
        if deleted:
            await self.remove_taste(scope, user_id, message_id=message_id)
        return deleted

    async def edit_message(
        self, scope: Scope, user_id: str, message_id: str, text: str, tokens: int
    ) -> bool:
        """Replace the stored text of a message its author edited, and what was drawn
        from it (recall entry, facts; its taste items go, for the caller to learn
        again); a summary that covered it goes stale."""
        keys = [self.keys.scope_key(user_id, scope, k) for k in EDIT_KINDS]
        now = time.time()
        with redis_errors():
            turn_id = int(
                await self._edit(
                    keys=keys,
                    args=[message_id, text, tokens, index_entry("user", now, tokens, text)[2:]],
                )
            )
        if not turn_id:
            return False
        await self.remove_taste(scope, user_id, message_id=message_id)
        edited = Turn(role="user", text=text, time=now, message_id=message_id, tokens=tokens)
        await self._set_facts(scope, user_id, turn_id, edited)
        return True

    async def _hash(self, key: str) -> list[Any]:
        """A hash as a flat field, value, … list (as the Lua scripts return one)."""
        with redis_errors():
            raw = await self._redis.hgetall(key)  # type: ignore[misc]
        return [x for kv in raw.items() for x in kv]

    async def facts(self, scope: Scope, user_id: str) -> list[Fact]:
        key = self.keys.scope_key(user_id, scope, "profile")
        return self._facts(await self._hash(key), where=key)

    async def taste(self, scope: Scope, user_id: str) -> list[TasteItem]:
        key = self.keys.scope_key(user_id, scope, "taste")
        return self._taste(await self._hash(key), where=key)

    async def add_taste(self, scope: Scope, user_id: str, items: Sequence[TasteItem]) -> int:
        """Record taste items in one atomic write; returns how many were written (a
        profile holds at most MAX_TASTE_ITEMS)."""
        if not items:
            return 0
        args: list[str | int] = [self.retention_seconds or 0, MAX_TASTE_ITEMS]
        for item in items:
            args += [item.field, item.model_dump_json(), item.opposite or ""]
        keys = [self.keys.index(user_id), self.keys.scope_key(user_id, scope, "taste")]
        with redis_errors():
            return int(await self._taste_set(keys=keys, args=args))

    async def remove_taste(
        self,
        scope: Scope,
        user_id: str,
        fields: Sequence[str] = (),
        *,
        message_id: str | None = None,
    ) -> int:
        """Remove taste items by field, or every item learned from one message."""
        if message_id is None and not fields:
            return 0
        args = ["message", message_id] if message_id is not None else ["field", *fields]
        keys = [self.keys.index(user_id), self.keys.scope_key(user_id, scope, "taste")]
        with redis_errors():
            return int(await self._taste_remove(keys=keys, args=args))

    async def summary(self, scope: Scope, user_id: str) -> Summary | None:
        key = self.keys.scope_key(user_id, scope, "summary")
        with redis_errors():
            raw = await self._redis.get(key)
        return self._summary(raw, where=key)

    async def set_summary(self, scope: Scope, user_id: str, summary: Summary, read: int) -> bool:
        """Write a new summary unless another writer replaced version `read` meanwhile."""
        key = self.keys.scope_key(user_id, scope, "summary")
        body = summary.model_dump_json(exclude={"version"})
        with redis_errors():
            version = await self._summary_set(
                keys=[key], args=[read, body, self.retention_seconds or 0]
            )
        return bool(int(version))

    @contextlib.asynccontextmanager
    async def upkeep_lock(self, scope: Scope, user_id: str) -> AsyncIterator[None]:
        """Serialises background upkeep of one scope across tasks and bot processes.
        Raises `UpkeepBusy` at once when it is held; expires by itself if a holder dies."""
        key = self.keys.scope_key(user_id, scope, "lock")
        token = secrets.token_hex(16)
        with redis_errors():
            acquired = await self._redis.set(key, token, nx=True, px=LOCK_MS)
        if not acquired:
            raise UpkeepBusy(key)
        try:
            yield
        finally:
            with contextlib.suppress(RedisError):
                await self._unlock(keys=[key], args=[token])

    async def has_message(self, scope: Scope, user_id: str, message_id: str) -> bool:
        """Whether a turn for this message id is stored in the scope."""
        key = self.keys.scope_key(user_id, scope, "msg")
        with redis_errors():
            return bool(await self._redis.hexists(key, message_id))  # type: ignore[misc]

    async def scopes(self, user_id: str) -> list[Scope]:
        """Every scope this user has memory in."""
        with redis_errors():
            members = await self._redis.smembers(self.keys.index(user_id))  # type: ignore[misc]
        found = {self.keys.scope_of(user_id, _text(m)) for m in members}
        return sorted((s for s in found if s is not None), key=lambda s: s.name)

    async def history(self, scope: Scope, user_id: str) -> list[dict[str, Any]]:
        """Every record stored in one scope, oldest first, unreadable ones included
        as their raw text (it is still the user's data)."""
        keys = [self.keys.scope_key(user_id, scope, k) for k in ("turn", "turns")]
        with redis_errors():
            *records, order = await self._history(keys=keys, args=[])
        by_id = {_text(records[i]): _text(records[i + 1]) for i in range(0, len(records), 2)}
        ordered = [_text(i) for i in order if _text(i) in by_id]
        ordered += sorted(set(by_id) - set(ordered), key=lambda s: (len(s), s))
        return [self._export_entry(tid, by_id[tid]) for tid in ordered]

    async def export(self, user_id: str) -> dict[str, Any]:
        """Everything stored about this user, in every scope, as JSON-ready data."""
        scopes: dict[str, Any] = {}
        for scope in await self.scopes(user_id):
            summary = await self.summary(scope, user_id)
            scopes[scope.name] = {
                "where": str(scope),
                "guild_id": scope.guild_id,
                "turns": await self.history(scope, user_id),
                "profile": [f.model_dump() for f in await self.facts(scope, user_id)],
                "summary": summary.model_dump() if summary else None,
                "taste": [t.model_dump() for t in await self.taste(scope, user_id)],
                "story": await self.story(scope, user_id),
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
        # Only the user's own keys are passed: they share the index's hash tag, so the
        # script keeps to one cluster slot whatever an index was made to hold.
        own = self.keys.user_tag(user_id) + ":"
        for _ in range(FORGET_RETRIES):
            with redis_errors():
                members = sorted(_text(m) for m in await self._redis.smembers(index))  # type: ignore[misc]
                mine = [m for m in members if m.startswith(own)]
                result = int(await self._forget(keys=[index, *mine], args=[len(members)]))
            if result >= 0:
                return result
        raise MemoryUnavailable("the memory index kept changing while it was being deleted")

    def _parse(self, flat: list[Any], *, where: str) -> tuple[list[StoredTurn], int]:
        turns: list[StoredTurn] = []
        skipped = 0
        for i in range(0, len(flat), 2):
            tid, raw = str(_text(flat[i]) if isinstance(flat[i], bytes) else flat[i]), flat[i + 1]
            data = raw if isinstance(raw, bytes) else str(raw).encode()
            try:
                # The record is a JSON object of our own: add its id and validate once.
                if not data.rstrip().endswith(b"}") or not tid.isdigit():
                    raise ValueError("not a JSON object")
                turns.append(
                    StoredTurn.model_validate_json(
                        data.rstrip()[:-1] + b',"id":' + tid.encode() + b"}"
                    )
                )
            except (ValueError, ValidationError) as exc:
                skipped += 1
                log.warning("skipped an unreadable turn %s in %s: %s", tid, where, _short(exc))
        return turns, skipped

    @staticmethod
    def _facts(flat: list[Any], *, where: str) -> list[Fact]:
        found: list[Fact] = []
        for i in range(0, len(flat), 2):
            try:
                found.append(Fact.model_validate_json(flat[i + 1]))
            except ValidationError as exc:
                log.warning("skipped an unreadable fact in %s: %s", where, _short(exc))
        return sorted(found, key=lambda f: (f.turn_id, f.label))

    @staticmethod
    def _taste(flat: list[Any], *, where: str) -> list[TasteItem]:
        found: list[TasteItem] = []
        for i in range(0, len(flat or []), 2):
            try:
                found.append(TasteItem.model_validate_json(flat[i + 1]))
            except ValidationError as exc:
                log.warning("skipped an unreadable taste item in %s: %s", where, _short(exc))
        return sorted(found, key=lambda t: (t.polarity, t.time, t.value.casefold()))

    async def story(self, scope: Scope, user_id: str) -> Any:
        """The interactive story in progress here (its JSON), or None."""
        key = self.keys.scope_key(user_id, scope, "story")
        with redis_errors():
            raw = await self._redis.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {"unreadable": _text(raw)}

    async def set_story(self, scope: Scope, user_id: str, state: str | None) -> None:
        """Save (or with None, end) the story in progress; it is part of the user's
        memory, so /export shows it and /forget deletes it."""
        keys = [self.keys.index(user_id), self.keys.scope_key(user_id, scope, "story")]
        with redis_errors():
            await self._story_set(keys=keys, args=[state or "", self.retention_seconds or 0])

    @staticmethod
    def _summary(raw: bytes | str | None, *, where: str) -> Summary | None:
        if not raw:
            return None
        try:
            return Summary.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("skipped an unreadable summary in %s: %s", where, _short(exc))
            return None


_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]
