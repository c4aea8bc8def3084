"""On a Redis Cluster every Lua script must keep to one hash slot, and the code runs no
MULTI/EXEC. Checked where the bot really calls them: each feature runs against a local
three-master cluster while every script object records the keys it is called with."""

from __future__ import annotations

import re
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.cluster import key_slot
from redis.commands.core import AsyncScript

from bot.distributed import IdentifyGate, Leases
from bot.media.catalog import Catalog
from bot.media.library import Library, parse_file
from bot.media.trivia import Trivia, make_question
from bot.moderation.policy import GuildPolicy, Moderation
from bot.moderation.ratelimit import Limits, RateLimiter
from memory.connection import RedisClient
from memory.errors import MemoryUnavailable
from memory.keys import Keys, Scope
from memory.records import Summary, TasteItem, Turn
from memory.scripts import load_script
from memory.store import MemoryStore
from tests.conftest import connect
from tests.redis_cluster import LocalCluster
from tests.test_catalog import DATA

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("bot", "memory", "bench")
# Every feature's scripts: a `lua/` folder in its package (see memory/scripts.py).
LUA = sorted(p for top in SOURCES for p in (REPO / top).rglob("lua/*.lua"))


def _ours(filename: str) -> str | None:
    """The path of one of the bot's own source files, relative to the repository."""
    path = Path(filename).resolve()
    if not path.is_relative_to(REPO) or path.parts[len(REPO.parts)] not in SOURCES:
        return None
    return path.relative_to(REPO).as_posix()


def _caller() -> traceback.FrameSummary:
    """The innermost frame in the bot's own code (not redis-py's, not this test's)."""
    for summary in reversed(traceback.extract_stack(sys._getframe(1))):
        if _ours(summary.filename):
            return summary
    raise AssertionError("a script was registered or called from outside the bot's code")


def _site(summary: traceback.FrameSummary) -> str:
    return f"{_ours(summary.filename)}:{summary.name}"


@dataclass
class Registered:
    name: str  # <package>/lua/<name>.lua, or inline@<file> for a script written in Python
    where: traceback.FrameSummary
    script: AsyncScript  # held, so that no later script reuses its id()
    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # site, keys


class Recorder:
    """Wraps redis-py's AsyncScript: every script the bot registers, where, and the keys
    of every call (the calls go on to the cluster unchanged)."""

    def __init__(self) -> None:
        self.scripts: dict[int, Registered] = {}
        by_text = {}
        for path in LUA:
            if path.name.startswith("_"):
                continue  # a helper (_index.lua), prepended to the scripts that use it
            package = ".".join(path.parent.parent.relative_to(REPO).parts)
            helpers = [h.stem for h in path.parent.glob("_*.lua")]
            for used in ([], *([h] for h in helpers)):
                by_text[load_script(package, path.stem, helpers=used)] = path.stem
        self._by_text = by_text

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        init, call = AsyncScript.__init__, AsyncScript.__call__
        recorder = self

        def recording_init(script: AsyncScript, client: Any, text: Any) -> None:
            init(script, client, text)
            body = text.decode() if isinstance(text, bytes) else str(text)
            where = _caller()
            name = recorder._by_text.get(body) or f"inline@{_ours(where.filename)}"
            recorder.scripts[id(script)] = Registered(name, where, script)

        async def recording_call(script: AsyncScript, keys: Any = None, **kw: Any) -> Any:
            names = tuple(k.decode() if isinstance(k, bytes) else str(k) for k in keys or ())
            recorder.scripts[id(script)].calls.append((_site(_caller()), names))
            return await call(script, keys, **kw)

        monkeypatch.setattr(AsyncScript, "__init__", recording_init)
        monkeypatch.setattr(AsyncScript, "__call__", recording_call)

    def table(self) -> str:
        """One line per script and call site: the hash tag and slot of each call's keys."""
        lines = []
        for reg in sorted(self.scripts.values(), key=lambda r: (r.name, _site(r.where))):
            sites: dict[str, set[str]] = {}
            for site, names in reg.calls:
                slots = sorted({key_slot(n.encode()) for n in names})
                tags = sorted({n[n.find("{") : n.find("}") + 1] for n in names})
                sites.setdefault(site, set()).add(f"{' '.join(tags)} slot {slots}")
            for site, seen in sorted(sites.items()) or [("(never called)", set())]:
                lines.append(f"{reg.name:15} {site:40} {'; '.join(sorted(seen))}")
        return "\n".join(lines)


def register_sites() -> set[tuple[str, int]]:
    """Every line of the bot's code that registers a script, found in the source."""
    found = set()
    for top in SOURCES:
        for path in (REPO / top).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if "register_script(" in line and not line.lstrip().startswith("#"):
                    found.add((path.relative_to(REPO).as_posix(), n))
    return found


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder()
    rec.install(monkeypatch)
    yield rec


@pytest.fixture
def redis_url(cluster_redis_url: str) -> str:
    """This module runs on the cluster only (the `keys` fixture cleans up there too)."""
    return cluster_redis_url


async def run_every_feature(client: RedisClient, keys: Keys, catalog: Catalog) -> None:
    """Each part of the bot that keeps state in Redis, through its own methods."""
    store = MemoryStore(client, keys=keys, retention_seconds=3600)
    guild, dm = Scope("g1"), Scope(None)
    now = time.time()
    for n, scope in enumerate((guild, dm, guild)):
        said = Turn(role="user", text=f"My name is Ada and I love horror {n}", time=now,
                    message_id=f"m{n}", tokens=8)  # fmt: skip
        answer = Turn(role="assistant", text="Noted.", time=now, message_id=f"r{n}", tokens=2)
        await store.append(scope, "u1", said, answer)
        # What the pipeline learns from "I love horror": taste items with the turn.
        liked = TasteItem(polarity="like", kind="genre", key="horror", value="horror",
                          source="chat", message_id=f"m{n}", time=now)  # fmt: skip
        await store.add_taste(scope, "u1", [liked])
    await store.load(guild, "u1", token_budget=100, max_candidates=5, query_terms=["horror"])
    await store.edit_message(guild, "u1", "m0", "My name is Bea", 4)
    await store.delete_message(guild, "u1", "m2")
    read = await store.summary(guild, "u1")
    await store.set_summary(
        guild, "u1", Summary(text="Ada likes horror."), read.version if read else 0
    )
    async with store.upkeep_lock(guild, "u1"):
        pass
    await store.remove_taste(guild, "u1", ["like:genre:horror"])
    await store.set_story(guild, "u1", '{"step": 1}')
    await store.set_story(guild, "u1", None)
    await store.export("u1")
    await store.reset(dm, "u1")
    await store.forget("u1")

    moderation = Moderation(client, keys)
    policy = await moderation.update("g1", lambda p: p.update(action="cooldown"))
    assert isinstance(policy, GuildPolicy)
    await moderation.strike("g1", "u1", policy)
    await moderation.flood("g1", "u1", "digest", 10.0)
    await moderation.acquire_slot("g1", "r1", 2, 30.0)
    await moderation.acquire_member("u1", "r1", 2, 30.0)

    leases = Leases(client, keys.remote_slots_key(), cap=2, lease_s=30.0)
    await leases.take("r1")
    await leases.renew("r1")
    await IdentifyGate(client, keys).wait(0)

    await RateLimiter(client, Limits(), keys).take("u1", "g1")

    library = Library(client, keys)
    titles, _ = parse_file(DATA / "games.csv")
    await library.store(titles, source="games.csv")
    await library.load()

    trivia = Trivia(client, keys, seconds=60)
    question = make_question(catalog)
    await trivia.post("g1", question)
    await trivia.answer("g1", question.id, "u1", question.answer)


async def test_every_script_keeps_to_one_slot_at_every_call_site(
    recorder: Recorder, redis_client: RedisClient, keys: Keys, catalog: Catalog
) -> None:
    await run_every_feature(redis_client, keys, catalog)
    table = recorder.table()
    print("\n" + table)  # the list of scripts, call sites and slots (pytest -s shows it)

    # Every script the code registers was run: a new one without a run here fails.
    registered = {(_ours(r.where.filename), r.where.lineno) for r in recorder.scripts.values()}
    assert register_sites() <= {(f, n) for f, n in registered}, table
    assert len({p.stem for p in LUA}) == len(LUA), "two scripts share a name"
    assert {p.stem for p in LUA if not p.stem.startswith("_")} <= {
        r.name for r in recorder.scripts.values()
    }, table
    never = [r.name for r in recorder.scripts.values() if not r.calls]
    assert not never, f"registered but never called: {never}\n{table}"
    for reg in recorder.scripts.values():
        for site, names in reg.calls:
            slots = {key_slot(n.encode()) for n in names}
            assert len(slots) == 1, f"{reg.name} at {site} spans slots {slots}: {names}"


def test_the_code_runs_no_multi_exec_transactions() -> None:
    """redis-py's asyncio cluster pipeline runs every command queued in a transaction
    (and every command after WATCH) through a new thread with its own event loop:
    it blocks the bot's loop, and breaks the client if the cluster must be rediscovered
    meanwhile. Atomic steps are Lua scripts; a pipeline must say transaction=False."""
    banned = re.compile(r"\.(pipeline\((?![^)]*transaction=False)|watch\(|transaction\()")
    found = []
    for top in SOURCES:
        for path in (REPO / top).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if banned.search(line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == []


async def test_scan_visits_every_master(redis_client: RedisClient, keys: Keys) -> None:
    """SCAN on one node sees that node's keys only; redis-py's cluster scan_iter walks
    every master, which the test cleanup (the `keys` fixture) and the benchmarks'
    cleanups rely on. Forget needs no scan: it reads the user's index."""
    assert isinstance(redis_client, RedisCluster)
    names = {f"{keys.user_tag(str(n))}:k" for n in range(30)}
    for name in names:
        await redis_client.set(name, 1, ex=60)
    owners = {redis_client.get_node_from_key(name).name for name in names}
    assert len(owners) == 3  # the keys sit on every master
    found = {k.decode() async for k in redis_client.scan_iter(match=f"{keys.prefix}:*", count=5)}
    assert found == names


async def test_a_cluster_gone_mid_run_is_memory_unavailable_as_one_server_is(
    tmp_path: Path,
) -> None:
    """With no node answering, redis-py's cluster client raises RedisClusterException,
    which is no RedisError; the bot's client turns it into a ConnectionError, so memory
    reads and writes fail with MemoryUnavailable and replies go on without memory."""
    own = LocalCluster(tmp_path)  # not the session's cluster: this one is stopped
    try:
        client = await connect(own.start())
        store = MemoryStore(client, keys=Keys("mbt-gone"))
        said = Turn(role="user", text="hi", time=time.time(), message_id="m1", tokens=1)
        reply = Turn(role="assistant", text="hello", time=time.time(), tokens=1)
        await store.append(Scope(None), "u1", said, reply)
        own.stop()
        with pytest.raises(MemoryUnavailable):
            await store.load(Scope(None), "u1", token_budget=100)  # a script
        with pytest.raises(MemoryUnavailable):
            await store.summary(Scope(None), "u1")  # a plain command
        await client.aclose()
    finally:
        own.stop()
