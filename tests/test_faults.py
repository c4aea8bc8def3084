"""Faults real deployments meet, each against real parts started here (loopback only,
everything stopped afterwards): Redis killed under load and restarted on its AOF, Redis
paused, the disk under Redis full, the bot process killed mid-reply, and the remote
model server killed mid-stream.

Where a fault is about time (the AOF is written to disk once a second), the bound
asserted is the one Redis itself keeps, with a margin for a busy machine; no test
waits on a fixed sleep for something to happen."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot import assistant as pipeline
from bot.assistant import Assistant, ReplyRequest
from bot.generation.local import LocalGenerator
from memory.connection import EmbeddedRedis, client_for_url
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import RecordingSink, ScriptedGenerator, make_settings

# With `appendfsync everysec` Redis loses at most the writes of the last second or two
# (it delays writes when a sync falls two seconds behind); this adds room for a busy
# machine.
AOF_LOSS_BOUND_S = 3.0
MEMBERS = 8
PAUSE_S = 15
DM = Scope(None)


@dataclass
class Load:
    """Simulated members chatting through the real pipeline, each exchange's outcome
    recorded with the time it was acknowledged."""

    bot: Assistant
    acked: list[tuple[str, str, float]] = field(default_factory=list)  # user, text, time
    unstored: int = 0
    replies: int = 0
    read_notices: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def member(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            text = f"member {n} says message {i}"
            sink = RecordingSink()
            outcome = await self.bot.reply(
                ReplyRequest(scope=DM, user_id=f"m{n}", user_name=f"M{n}", text=text,
                             message_id=uuid.uuid4().hex, rate_limited=False),
                sink,
            )  # fmt: skip
            self.replies += outcome.generated
            self.read_notices += pipeline.MEMORY_READ_FAILED in sink.notices
            if outcome.stored:
                self.acked.append((f"m{n}", text, time.monotonic()))
            else:
                self.unstored += 1
            i += 1
            async with self.changed:
                self.changed.notify_all()
            await asyncio.sleep(0.01)

    async def until(self, condition: Callable[[], bool], limit: float = 120.0) -> None:
        """Wait for members' replies to make `condition` true (a hang guard: `limit`)."""
        async with asyncio.timeout(limit), self.changed:
            await self.changed.wait_for(condition)


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis")
    await server.start()
    yield server
    await server.stop()


def kill(server: EmbeddedRedis) -> None:
    assert server._proc is not None
    server._proc.send_signal(signal.SIGKILL)


async def test_redis_killed_under_load_loses_at_most_the_last_second(
    tmp_path: Path, generator: LocalGenerator
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = await server.start()
    client = client_for_url(url, socket_timeout=1.0, connect_timeout=1.0)
    keys = Keys("mbfault")
    store = MemoryStore(client, keys=keys)
    scripted = ScriptedGenerator(generator, ["Noted, ", "thanks."])
    load = Load(Assistant(settings=make_settings(keys), memory=store, generator=scripted))
    members = [asyncio.create_task(load.member(n)) for n in range(MEMBERS)]
    try:
        await load.until(lambda: len(load.acked) >= 120)
        kill(server)
        assert server._proc is not None
        await server._proc.wait()
        killed_at = time.monotonic()
        acked_before = list(load.acked)
        # Replies keep coming while Redis is gone, with the memory notice.
        replies, notices = load.replies, load.read_notices
        await load.until(lambda: load.replies >= replies + 16 and load.read_notices > notices)
        assert len(load.acked) == len(acked_before)  # nothing is acknowledged meanwhile

        await server.stop()  # releases the data directory's lock
        server = EmbeddedRedis(tmp_path / "redis")
        assert await server.start() == url  # the same socket: the bot is not restarted
        await load.until(lambda: len(load.acked) >= len(acked_before) + 40)
    finally:
        load.stop.set()
        await asyncio.gather(*members)

    for user in {u for u, _, _ in load.acked}:
        history = await store.history(DM, user)
        roles = [h["role"] for h in history]
        # Both turns of an exchange or neither: never a message without its reply.
        assert roles == ["user", "assistant"] * (len(roles) // 2), user
    missing = []
    for user, text, at in acked_before:
        stored = {h["text"] for h in await store.history(DM, user)}
        if text not in stored:
            missing.append(killed_at - at)
    print(f"{len(acked_before)} exchanges acknowledged before the kill, {len(missing)} lost")
    assert all(age <= AOF_LOSS_BOUND_S for age in missing), sorted(missing)[-3:]
    for user, text, _ in load.acked[len(acked_before) :]:  # after the restart: all kept
        assert text in {h["text"] for h in await store.history(DM, user)}
    await client.aclose()
    await server.stop()


async def test_a_paused_redis_gives_the_notice_and_nothing_hangs(
    own_server: EmbeddedRedis, generator: LocalGenerator
) -> None:
    assert own_server.socket_path is not None
    url = f"unix://{own_server.socket_path}"
    timeout = 0.5
    client = client_for_url(url, socket_timeout=timeout, connect_timeout=timeout)
    keys = Keys("mbslow")
    bot = Assistant(settings=make_settings(keys), memory=MemoryStore(client, keys=keys),
                    generator=ScriptedGenerator(generator, ["Still here."]))  # fmt: skip
    admin = Redis.from_url(url, socket_timeout=1.0)
    # Every client is paused, this one too: the pause ends by itself.
    await admin.execute_command("CLIENT", "PAUSE", str(PAUSE_S * 1000), "ALL")
    sink = RecordingSink()
    # A hang guard, well inside the pause: each Redis call gives up after its timeout
    # (and one retry), so the reply comes long before Redis answers again.
    async with asyncio.timeout(PAUSE_S - 5):
        outcome = await bot.reply(
            ReplyRequest(scope=DM, user_id="u1", user_name="U", text="hello?",
                         message_id="m1", rate_limited=False),
            sink,
        )  # fmt: skip
    assert outcome.generated and outcome.text == "Still here." and not outcome.stored
    assert sink.notices == [pipeline.MEMORY_READ_FAILED, pipeline.MEMORY_WRITE_FAILED]
    async with asyncio.timeout(PAUSE_S + 30):  # the pause is over: Redis answers again
        while True:
            with contextlib.suppress(RedisError):
                await admin.ping()
                break
    await admin.aclose()
    outcome = await bot.reply(
        ReplyRequest(scope=DM, user_id="u1", user_name="U", text="and now?", message_id="m2",
                     rate_limited=False),
        RecordingSink(),
    )  # fmt: skip
    assert outcome.stored
    await client.aclose()


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("a size-limited tmpfs needs mount permission (root) on this machine")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_full_disk_under_redis_is_a_clear_error_and_loses_nothing_kept(
    tmp_path: Path, generator: LocalGenerator
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        server = EmbeddedRedis(disk / "redis")
        url = await server.start()
        client = client_for_url(url, socket_timeout=2.0, connect_timeout=2.0)
        keys = Keys("mbdisk")
        store = MemoryStore(client, keys=keys)
        bot = Assistant(settings=make_settings(keys), memory=store,
                        generator=ScriptedGenerator(generator, ["Noted."]))  # fmt: skip

        async def say(text: str) -> tuple[bool, list[str]]:
            sink = RecordingSink()
            outcome = await bot.reply(
                ReplyRequest(scope=DM, user_id="u1", user_name="U", text=text,
                             message_id=uuid.uuid4().hex, rate_limited=False),
                sink,
            )  # fmt: skip
            assert outcome.generated  # the member is answered, whatever the disk does
            return outcome.stored, sink.notices

        kept = []
        for i in range(5):
            stored, _ = await say(f"before the disk filled {i}")
            assert stored
            kept.append(f"before the disk filled {i}")
        await asyncio.sleep(1.2)  # let the once-a-second fsync reach these
        filler = disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:
                f.write(b"\0" * 65536)
        refused = 0
        for i in range(20):
            stored, notices = await say("x" * 20_000 + f" while full {i}")
            if not stored:
                refused += 1
                assert pipeline.MEMORY_WRITE_FAILED in notices
        assert refused, "a full disk must stop writes (Redis refuses them, not silently)"
        assert server._proc is not None and server._proc.returncode is None  # no crash
        filler.unlink()
        # Redis retries its AOF writes; once it can, new exchanges are kept again.
        async with asyncio.timeout(30):
            while not (await say("after the space came back"))[0]:  # noqa: ASYNC110 - Redis's state
                await asyncio.sleep(0.2)
        await client.aclose()
        await server.stop()
        # Restarted from its files: what was kept before is intact, nothing is corrupt.
        server = EmbeddedRedis(disk / "redis")
        url = await server.start()
        client = client_for_url(url, socket_timeout=2.0, connect_timeout=2.0)
        history = [h["text"] for h in await MemoryStore(client, keys=keys).history(DM, "u1")]
        for text in [*kept, "after the space came back"]:
            assert text in history
        roles = [h["role"] for h in await MemoryStore(client, keys=keys).history(DM, "u1")]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        await client.aclose()
        await server.stop()


# One member's message on a server, through the real services and pipeline, in a
# process of its own; the reply's pieces go to stdout as they are shown.
DRIVER = """
import asyncio, sys
from bot.assistant import ReplyRequest
from bot.services import open_services
from bot.settings import Settings
from memory.keys import Scope

class Sink:
    async def context(self, window): ...
    async def notice(self, text): print("NOTICE", text, file=sys.stderr, flush=True)
    async def piece(self, text): sys.stdout.write(text); sys.stdout.flush()
    async def finish(self, text): return None
    async def retract(self, text): ...
    def position(self, place): ...

async def main():
    async with open_services(Settings.from_env()) as services:
        request = ReplyRequest(scope=Scope("777"), user_id="m1", user_name="M",
                               text=sys.argv[1], message_id=sys.argv[2], channel_id="c1")
        outcome = await services.assistant.reply(request, Sink())
        sys.exit(0 if outcome.stored else 3)

asyncio.run(main())
"""


async def test_the_bot_killed_mid_reply_stores_nothing_leaks_no_slot_and_answers_after(
    tmp_path: Path, own_server: EmbeddedRedis
) -> None:
    assert own_server.socket_path is not None
    url = f"unix://{own_server.socket_path}"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MEMORY_"))}
    env.update(REDIS_URL=url, MEMORY_KEY_PREFIX="mbkill", GENERATION_MAX_NEW_TOKENS="400",
               GENERATION_TEMPERATURE="0", GENERATION_TIMEOUT="900",
               GROUNDING_ENABLED="false", PYTHONPATH=str(Path(__file__).parents[1]))  # fmt: skip
    # GENERATION_TIMEOUT + 30: how long a server's slot is held at most. Long, so that
    # neither the second process's reply on a loaded machine nor the dead one's lease
    # running out decides the result: the test reads the lease's deadline instead.
    lease_s = 900 + 30

    def driver(text: str, message_id: str) -> subprocess.Popen[str]:
        with (tmp_path / f"{message_id}.log").open("w") as log:
            return subprocess.Popen(
                [sys.executable, str(script), text, message_id], stdout=subprocess.PIPE,
                stderr=log, text=True, env=env, cwd=tmp_path,
            )  # fmt: skip

    def said(message_id: str) -> str:
        return (tmp_path / f"{message_id}.log").read_text()[-2000:]

    proc = driver("Tell me a long story about a lighthouse keeper.", "k1")
    assert proc.stdout is not None
    try:
        first = await asyncio.to_thread(proc.stdout.read, 1)  # the reply is streaming
        assert first, said("k1")
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 30)
        proc.stdout.close()

    async with Redis.from_url(url) as client:  # closed whatever the asserts say
        keys = Keys("mbkill")
        store = MemoryStore(client, keys=keys)
        assert await store.history(Scope("777"), "m1") == []  # no partial exchange, no lone turn
        # The dead process's slot is a lease that runs out by itself, within the lease.
        held = await client.zrange(keys.guild_key("777", "inflight"), 0, -1, withscores=True)
        assert [member for member, _ in held] == [b"k1"]
        # Redis's clock to the millisecond, as the slot's script reads it (whole seconds
        # made a lease taken in the same second look longer than it is).
        seconds, micros = await client.time()
        now_ms = seconds * 1000 + micros // 1000
        assert 0 < held[0][1] - now_ms <= lease_s * 1000
        assert 0 < await client.pttl(keys.guild_key("777", "inflight")) <= lease_s * 1000

        env["GENERATION_MAX_NEW_TOKENS"] = "8"
        again = driver("Hello again.", "k2")
        assert again.stdout is not None
        out = await asyncio.to_thread(again.stdout.read)
        again.stdout.close()
        assert await asyncio.to_thread(again.wait, 300) == 0, said("k2")  # answered and stored
        assert out.strip()
        history = await store.history(Scope("777"), "m1")
        assert len(history) == 2 and history[0]["text"] == "Hello again."
        # Its own slot went back; only the dead one's lease is left, running out.
        held = await client.zrange(keys.guild_key("777", "inflight"), 0, -1)
        assert held == [b"k1"]


# An OpenAI-compatible server in a process of its own: it streams a long reply slowly,
# a word at a time, so it can be killed in the middle of one.
SERVER = """
import asyncio, json, sys
from aiohttp import web

async def chat(request):
    body = await request.json()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    words = 4 if body.get("max_tokens", 64) < 16 else 400
    for n in range(words):
        chunk = {"choices": [{"delta": {"content": f"word{n} "}, "index": 0}]}
        await response.write(f"data: {json.dumps(chunk)}\\n\\n".encode())
        await asyncio.sleep(0.02)
    done = {"choices": [{"delta": {}, "index": 0, "finish_reason": "stop"}]}
    await response.write(f"data: {json.dumps(done)}\\n\\ndata: [DONE]\\n\\n".encode())
    return response

app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


async def test_the_model_server_killed_mid_stream_is_told_and_the_next_request_works(
    tmp_path: Path, store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    from bot.generation.remote import BROKEN_OFF, RemoteGenerator
    from tests.test_assistant import RecordingSink as EventSink
    from tests.test_remote import free_port

    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = free_port()

    async def serve() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(port),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(60):  # a hang guard while it starts
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                await writer.wait_closed()
                return proc

    remote = RemoteGenerator(f"http://127.0.0.1:{port}/v1", "m", generator.tokens, timeout=10)
    bot = Assistant(settings=make_settings(keys, max_new_tokens=400), memory=store,
                    generator=remote)  # fmt: skip
    server = await serve()
    try:
        killed = False

        async def kill_on_first_piece() -> None:
            nonlocal killed
            server.send_signal(signal.SIGKILL)
            killed = True

        sink = EventSink(on_first_piece=kill_on_first_piece)
        outcome = await bot.reply(
            ReplyRequest(scope=DM, user_id="r1", user_name="R", text="Tell me a story.",
                         message_id="s1", rate_limited=False),
            sink,
        )  # fmt: skip
        assert killed and not outcome.stored and not outcome.generated
        assert sink.kinds("notice") == [BROKEN_OFF]
        assert await store.history(DM, "r1") == []  # nothing stored
        await server.wait()

        server = await serve()  # restarted on the same port; the bot is not
        bot.params = dataclasses.replace(bot.params, max_new_tokens=8)
        outcome = await bot.reply(
            ReplyRequest(scope=DM, user_id="r1", user_name="R", text="Hello again.",
                         message_id="s2", rate_limited=False),
            RecordingSink(),
        )  # fmt: skip
        assert outcome.stored and outcome.text.startswith("word0")
        history = await store.history(DM, "r1")
        assert len(history) == 2 and history[0]["text"] == "Hello again."
    finally:
        if server.returncode is None:
            server.kill()
        await server.wait()
