"""Two bot processes (two shard groups; the Discord side simulated, the processes, Redis
and the model server real) sharing one Redis and one OpenAI-compatible server that
counts what it is sent: members in both processes at once stay within their limits,
the server never has more than REMOTE_CONCURRENCY requests, trivia answers count once,
memory stays whole, and killing a process gives its places at the server back within
their lease."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from bot.generation.queue import too_many
from bot.media.catalog import Catalog
from bot.media.trivia import Trivia, make_question
from memory.connection import EmbeddedRedis
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.test_remote import free_port

REPO = Path(__file__).resolve().parents[1]
PLACES = 3  # REMOTE_CONCURRENCY
LEASE_S = 2.0  # REMOTE_LEASE_SECONDS
BURST = 3  # RATELIMIT_USER_BURST

# The model server: streams a reply a word at a time and counts the requests it holds,
# in all and per end user (the OpenAI `user` field the bot sends).
SERVER = """
import asyncio, json, sys
from collections import Counter
from aiohttp import web

now, peak = Counter(), Counter()

async def chat(request):
    body = await request.json()
    user = body.get("user", "")
    now["all"] += 1; now[user] += 1
    peak["all"] = max(peak["all"], now["all"]); peak[user] = max(peak[user], now[user])
    try:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = 400 if "long story" in json.dumps(body) else 8
        for n in range(words):
            chunk = {"choices": [{"delta": {"content": f"word{n} "}, "index": 0}]}
            await response.write(f"data: {json.dumps(chunk)}\\n\\n".encode())
            await asyncio.sleep(0.05)
        done = {"choices": [{"delta": {}, "index": 0, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(done)}\\n\\ndata: [DONE]\\n\\n".encode())
        return response
    finally:
        now["all"] -= 1; now[user] -= 1

async def stats(request):
    return web.json_response({"peak": dict(peak), "now": dict(now)})

app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
app.router.add_get("/stats", stats)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


async def wait_for_port(port: int) -> None:
    async with asyncio.timeout(60):  # a hang guard while a process starts
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            return


@pytest.fixture
async def model_server(tmp_path: Path) -> AsyncIterator[int]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_for_port(port)
        yield port
    finally:
        proc.kill()
        await proc.wait()


@pytest.fixture
async def shared_redis(tmp_path: Path) -> AsyncIterator[str]:
    server = EmbeddedRedis(tmp_path / "redis")
    yield await server.start()
    await server.stop()


def environment(redis_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MEMORY_"))}
    env.update(
        REDIS_URL=redis_url, MEMORY_KEY_PREFIX="mbproc", GENERATION_BACKEND="remote",
        REMOTE_URL=f"http://127.0.0.1:{port}/v1", REMOTE_CONCURRENCY=str(PLACES),
        REMOTE_LEASE_SECONDS=str(LEASE_S), GENERATION_PER_USER="1",
        RATELIMIT_USER_BURST=str(BURST), RATELIMIT_USER_PER_MINUTE="0.01",
        GENERATION_MAX_NEW_TOKENS="32", RATELIMIT_GUILD_IN_FLIGHT="20", PYTHONPATH=str(REPO),
    )  # fmt: skip
    return env


async def start(plan: dict[str, Any], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "tests" / "bot_process.py"), json.dumps(plan),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip


async def result(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    last = [line for line in out.decode().splitlines() if line.startswith("{")][-1]
    return dict(json.loads(last))


async def server_stats(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/stats") as response,
    ):
        return dict(await response.json())


async def test_two_processes_share_limits_places_trivia_and_memory(
    model_server: int, shared_redis: str, catalog: Catalog
) -> None:
    client = Redis.from_url(shared_redis)
    keys = Keys("mbproc")
    question = make_question(catalog)
    await Trivia(client, keys, seconds=300).post("100", question)
    plans = []
    for group, guild in (("a", "100"), ("b", "200")):
        messages = [[f"{group}{n}", f"Tell me about a good film, {group}{n}."] for n in range(4)]
        messages += [["shared", f"What should I watch next? ({group}{n})"] for n in range(2)]
        messages += [["limited", f"Anything to say, {group}{n}?"] for n in range(3)]
        answers = [["shared", question.answer], ["quiz", (question.answer + 1) % 4]]
        plans.append({"guild": guild, "messages": messages, "answers": answers,
                      "trivia": {"guild": "100", "id": question.id}})  # fmt: skip
    env = environment(shared_redis, model_server)
    procs = [await start(plan, env) for plan in plans]
    outcomes = [await result(p) for p in procs]
    replies = [r for o in outcomes for r in o["replies"]]

    stats = await server_stats(model_server)
    assert 0 < stats["peak"]["all"] <= PLACES  # both processes, one set of places
    assert max(v for k, v in stats["peak"].items() if k != "all") <= 1  # per member
    # A member with messages in both processes never had two at once anywhere.
    shared = [r for r in replies if r["user"] == "shared"]
    assert len(shared) == 4
    refused_in_flight = [r for r in shared if too_many(1) in r["notices"]]
    assert refused_in_flight and all(r["kind"] == "busy" for r in refused_in_flight), shared
    # The rate limit holds over both processes: a burst of three in all.
    limited = [r for r in replies if r["user"] == "limited"]
    slowed = [r for r in limited if any("faster than I can answer" in n for n in r["notices"])]
    assert len(limited) == 6 and len(slowed) == 6 - BURST
    # Trivia: each member's answer counts once, whichever process took the press.
    answers = [a for o in outcomes for a in o["answers"]]
    assert Counter(answers) == Counter({"right": 1, "wrong": 1, "again": 2})
    # Memory: every stored exchange is whole, in its server's scope.
    store = MemoryStore(client, keys=keys)
    for r in replies:
        if r["stored"]:
            guild = "100" if r["user"].startswith("a") else "200"
            if r["user"] in ("shared", "limited"):
                continue  # in both servers: checked below
            roles = [h["role"] for h in await store.history(Scope(guild), r["user"])]
            assert roles == ["user", "assistant"]
    for user in ("shared", "limited"):
        stored = sum(r["stored"] for r in replies if r["user"] == user)
        turns = [h for g in ("100", "200") for h in await store.history(Scope(g), user)]
        assert len(turns) == 2 * stored
    await client.aclose()


async def test_a_killed_process_gives_its_places_at_the_server_back_within_the_lease(
    model_server: int, shared_redis: str
) -> None:
    client = Redis.from_url(shared_redis)
    places = Keys("mbproc").remote_slots_key()
    env = environment(shared_redis, model_server)
    proc = await start({"guild": "300", "messages": [["k1", "Tell me a long story."]]}, env)
    assert proc.stdout is not None
    async with asyncio.timeout(120):  # a hang guard: the reply starts streaming
        while b"STREAMING" not in await proc.stdout.readline():
            pass
    held = await client.zrange(places, 0, -1, withscores=True)
    assert len(held) == 1  # its place at the server, as a lease
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    seconds, micros = await client.time()
    killed_ms = int(seconds) * 1000 + int(micros) // 1000
    # Renewed while the reply streamed, the lease now runs out within one lease.
    ends = [score for _, score in await client.zrange(places, 0, -1, withscores=True)]
    assert ends and all(end - killed_ms <= LEASE_S * 1000 for end in ends)
    async with asyncio.timeout(30):  # a hang guard: Redis's clock runs the lease out
        while await live_leases(client, places):  # noqa: ASYNC110 - Redis's clock
            await asyncio.sleep(0.1)
    await client.aclose()


async def live_leases(client: Redis, key: str) -> int:
    seconds, micros = await client.time()
    return int(await client.zcount(key, int(seconds) * 1000 + int(micros) // 1000, "+inf"))
