"""Memory against a real Redis: atomic appends, idempotency, TTLs, trim, scopes,
export and forget, corrupt records."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from memory.connection import RedisClient
from memory.keys import Keys, Scope
from memory.records import Turn
from memory.store import MemoryStore
from tests.conftest import REDIS_CLUSTER, connect

pytestmark = REDIS_CLUSTER

GUILD_A = Scope("111")
GUILD_B = Scope("222")
DM = Scope(None)


def exchange(n: int, *, tokens: int = 3, msg: str | None = None) -> tuple[Turn, Turn]:
    now = time.time()
    user = Turn(
        role="user", text=f"question {n}", time=now, message_id=msg or f"m{n}", tokens=tokens
    )
    bot = Turn(role="assistant", text=f"answer {n}", time=now, message_id=f"r{n}", tokens=tokens)
    return user, bot


async def user_keys(client: RedisClient, keys: Keys, user: str) -> list[str]:
    found = [k.decode() async for k in client.scan_iter(match=keys.user_tag(user) + ":*")]
    return sorted(found)


async def test_append_then_load_returns_turns_oldest_first(store: MemoryStore) -> None:
    for n in range(3):
        result = await store.append(GUILD_A, "u1", *exchange(n))
        assert result.stored
    snap = await store.load(GUILD_A, "u1", token_budget=1000)
    assert [t.text for t in snap.turns] == [
        "question 0", "answer 0", "question 1", "answer 1", "question 2", "answer 2",
    ]  # fmt: skip
    assert [t.role for t in snap.turns] == ["user", "assistant"] * 3
    assert all(t.tokens == 3 and t.message_id for t in snap.turns)
    assert snap.turns[0].id < snap.turns[-1].id


async def test_load_stops_at_the_token_budget_keeping_the_newest(store: MemoryStore) -> None:
    for n in range(5):
        await store.append(GUILD_A, "u1", *exchange(n, tokens=10))
    snap = await store.load(GUILD_A, "u1", token_budget=35)
    assert [t.text for t in snap.turns] == ["answer 3", "question 4", "answer 4"]
    snap = await store.load(GUILD_A, "u1", token_budget=1000, max_turns=2)
    assert [t.text for t in snap.turns] == ["question 4", "answer 4"]


async def test_retried_append_with_the_same_message_id_stores_nothing(store: MemoryStore) -> None:
    first = await store.append(DM, "u1", *exchange(1, msg="discord-42"))
    again = await store.append(DM, "u1", *exchange(2, msg="discord-42"))
    assert first.stored and not again.stored
    assert again.user_turn_id == first.user_turn_id
    snap = await store.load(DM, "u1", token_budget=1000)
    assert [t.text for t in snap.turns] == ["question 1", "answer 1"]


async def test_fifty_concurrent_writers_never_split_an_exchange(redis_url: str, keys: Keys) -> None:
    # 50 writers, each with its own connection, as 50 bot processes would have.
    clients = [await connect(redis_url) for _ in range(50)]
    try:
        stores = [MemoryStore(c, keys=keys, max_turns=1000) for c in clients]
        results = await asyncio.gather(
            *(s.append(GUILD_A, "u1", *exchange(n)) for n, s in enumerate(stores))
        )
        assert all(r.stored for r in results)
        snap = await stores[0].load(GUILD_A, "u1", token_budget=10_000, max_turns=1000)
        assert len(snap.turns) == 100
        for user, bot in zip(snap.turns[::2], snap.turns[1::2], strict=True):
            assert user.role == "user" and bot.role == "assistant"
            assert bot.text == user.text.replace("question", "answer")
            assert bot.id == user.id + 1
    finally:
        for c in clients:
            await c.aclose()


async def test_fifty_concurrent_retries_of_one_message_store_it_once(
    redis_url: str, keys: Keys
) -> None:
    clients = [await connect(redis_url) for _ in range(50)]
    try:
        stores = [MemoryStore(c, keys=keys) for c in clients]
        results = await asyncio.gather(
            *(s.append(DM, "u1", *exchange(n, msg="same")) for n, s in enumerate(stores))
        )
        assert sum(r.stored for r in results) == 1
        snap = await stores[0].load(DM, "u1", token_budget=10_000)
        assert len(snap.turns) == 2
    finally:
        for c in clients:
            await c.aclose()


async def test_every_key_gets_the_retention_ttl(
    store: MemoryStore, redis_client: RedisClient, keys: Keys
) -> None:
    await store.append(GUILD_A, "u1", *exchange(1))
    found = await user_keys(redis_client, keys, "u1")
    # index + turns, turn, msg, seq, terms, postings, stats (no facts, no summary yet)
    assert len(found) == 8
    for key in found:
        ttl = await redis_client.ttl(key)
        assert 3590 < ttl <= 3600, key


async def test_keys_expire_after_the_retention_time(redis_client: RedisClient, keys: Keys) -> None:
    store = MemoryStore(redis_client, keys=keys, retention_seconds=1)
    await store.append(GUILD_A, "u1", *exchange(1))
    assert await user_keys(redis_client, keys, "u1")
    await asyncio.sleep(2.2)
    assert await user_keys(redis_client, keys, "u1") == []


async def test_zero_retention_keeps_keys_forever_even_after_a_ttl(
    redis_client: RedisClient, keys: Keys
) -> None:
    await MemoryStore(redis_client, keys=keys, retention_seconds=60).append(DM, "u1", *exchange(1))
    await MemoryStore(redis_client, keys=keys, retention_seconds=None).append(
        DM, "u1", *exchange(2)
    )
    for key in await user_keys(redis_client, keys, "u1"):
        assert await redis_client.ttl(key) == -1, key


async def test_trim_keeps_the_newest_turns_and_drops_their_message_ids(
    redis_client: RedisClient, keys: Keys
) -> None:
    store = MemoryStore(redis_client, keys=keys, max_turns=6)
    for n in range(5):
        await store.append(DM, "u1", *exchange(n))
    snap = await store.load(DM, "u1", token_budget=1000)
    assert next(t.text for t in snap.turns) == "question 2"
    assert len(snap.turns) == 6
    msg_ids = await redis_client.hkeys(keys.scope_key("u1", DM, "msg"))  # type: ignore[misc]
    assert sorted(m.decode() for m in msg_ids) == ["m2", "m3", "m4", "r2", "r3", "r4"]


async def test_scopes_are_isolated(store: MemoryStore) -> None:
    await store.append(GUILD_A, "u1", *exchange(1))
    await store.append(GUILD_B, "u1", *exchange(2))
    await store.append(DM, "u1", *exchange(3))
    await store.append(GUILD_A, "u2", *exchange(4))
    a = await store.load(GUILD_A, "u1", token_budget=1000)
    b = await store.load(GUILD_B, "u1", token_budget=1000)
    dm = await store.load(DM, "u1", token_budget=1000)
    assert [t.text for t in a.turns] == ["question 1", "answer 1"]
    assert [t.text for t in b.turns] == ["question 2", "answer 2"]
    assert [t.text for t in dm.turns] == ["question 3", "answer 3"]


async def test_export_holds_every_scope_and_forget_removes_every_key(
    store: MemoryStore, redis_client: RedisClient, keys: Keys
) -> None:
    await store.append(GUILD_A, "u1", *exchange(1))
    await store.append(GUILD_B, "u1", *exchange(2))
    await store.append(DM, "u1", *exchange(3))
    await store.append(GUILD_A, "other", *exchange(4))

    exported = await store.export("u1")
    json.dumps(exported)  # JSON-ready
    assert exported["user_id"] == "u1"
    assert set(exported["scopes"]) == {"g111", "g222", "dm"}
    assert [t["text"] for t in exported["scopes"]["g222"]["turns"]] == ["question 2", "answer 2"]
    assert exported["scopes"]["g111"]["guild_id"] == "111"

    assert await store.forget("u1") == 6
    assert await user_keys(redis_client, keys, "u1") == []
    assert (await store.export("u1"))["scopes"] == {}
    other = await store.load(GUILD_A, "other", token_budget=1000)
    assert len(other.turns) == 2
    assert await store.forget("u1") == 0


async def test_forget_script_refuses_a_stale_index(store: MemoryStore, keys: Keys) -> None:
    await store.append(DM, "u1", *exchange(1))
    stale = await store._forget(keys=[keys.index("u1")], args=[0])
    assert stale == -1
    assert len((await store.load(DM, "u1", token_budget=100)).turns) == 2


async def test_forget_deletes_only_the_users_own_keys_whatever_the_index_holds(
    store: MemoryStore, redis_client: RedisClient, keys: Keys
) -> None:
    await store.append(DM, "u1", *exchange(1))
    await store.append(DM, "u2", *exchange(2))
    # A foreign key in u1's index (nothing the bot writes puts one there) is neither
    # deleted nor passed to the script, whose keys must keep to u1's cluster slot.
    await redis_client.sadd(keys.index("u1"), keys.scope_key("u2", DM, "turn"))  # type: ignore[misc]
    assert await store.forget("u1") == 2
    assert await user_keys(redis_client, keys, "u1") == []
    assert len((await store.load(DM, "u2", token_budget=100)).turns) == 2


async def test_reset_clears_one_scope_only(store: MemoryStore) -> None:
    await store.append(GUILD_A, "u1", *exchange(1))
    await store.append(DM, "u1", *exchange(2))
    assert await store.reset(GUILD_A, "u1") == 2
    assert (await store.load(GUILD_A, "u1", token_budget=1000)).turns == []
    assert len((await store.load(DM, "u1", token_budget=1000)).turns) == 2
    assert await store.scopes("u1") == [DM]


async def test_a_corrupt_record_is_skipped_and_logged_not_fatal(
    store: MemoryStore, redis_client: RedisClient, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    await store.append(DM, "u1", *exchange(1))
    await store.append(DM, "u1", *exchange(2))
    turn_key = keys.scope_key("u1", DM, "turn")
    await redis_client.hset(turn_key, "2", b"\xff{not json")  # type: ignore[misc]
    await redis_client.hset(turn_key, "3", json.dumps({"role": "robot", "text": 1}))  # type: ignore[misc]
    with caplog.at_level(logging.WARNING, logger="memory.store"):
        snap = await store.load(DM, "u1", token_budget=1000)
    assert [t.text for t in snap.turns] == ["question 1", "answer 2"]
    assert snap.skipped == 2
    assert sum("unreadable turn" in r.message for r in caplog.records) == 2
    # Appending still works, and nothing stored before is lost.
    await store.append(DM, "u1", *exchange(3))
    history = await store.history(DM, "u1")
    assert len(history) == 6
    assert sum("unreadable" in h for h in history) == 2


async def test_odd_user_ids_keep_keys_well_formed_and_separate(
    store: MemoryStore, redis_client: RedisClient, keys: Keys
) -> None:
    odd = ["a}b{c", "x:y", "sp ace", "ü😀", "%41", "A", "*", "u1:dm"]
    for n, user in enumerate(odd):
        await store.append(GUILD_A, user, *exchange(n))
    for n, user in enumerate(odd):
        snap = await store.load(GUILD_A, user, token_budget=1000)
        assert [t.text for t in snap.turns] == [f"question {n}", f"answer {n}"]
        for key in await user_keys(redis_client, keys, user):
            assert key.count("{") == 1 and key.count("}") == 1
            assert " " not in key
    assert await store.forget("*") == 2
    assert len((await store.load(GUILD_A, "A", token_budget=1000)).turns) == 2


async def test_deleting_a_message_removes_its_turn_only(store: MemoryStore) -> None:
    await store.append(GUILD_A, "u1", *exchange(1))
    await store.append(GUILD_A, "u1", *exchange(2))
    assert await store.delete_message(GUILD_A, "u1", "m1")
    assert not await store.delete_message(GUILD_A, "u1", "m1")
    assert not await store.delete_message(GUILD_B, "u1", "m2")  # another scope's id
    snap = await store.load(GUILD_A, "u1", token_budget=1000)
    assert [t.text for t in snap.turns] == ["answer 1", "question 2", "answer 2"]


async def test_editing_a_message_updates_its_turn(store: MemoryStore) -> None:
    await store.append(DM, "u1", *exchange(1))
    assert await store.edit_message(DM, "u1", "m1", "question one, edited", 5)
    assert not await store.edit_message(DM, "u1", "nope", "x", 1)
    first = (await store.load(DM, "u1", token_budget=1000)).turns[0]
    assert (first.text, first.tokens, first.edited) == ("question one, edited", 5, True)
