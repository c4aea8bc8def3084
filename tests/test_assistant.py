"""The reply pipeline end to end: real Redis, real embedded model, a recording sink."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bot import assistant as pipeline
from bot.assistant import Assistant, ReplyRequest
from bot.context.build import ContextWindow
from bot.generation.base import ChatMessage, GenerationError, GenerationParams
from bot.generation.local import LocalGenerator
from memory.connection import EmbeddedRedis, client_for_url
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import make_settings

DM = Scope(None)
GUILD = Scope("9001")


@dataclass
class RecordingSink:
    reply_id: str | None = "reply-1"
    events: list[tuple[str, str]] = field(default_factory=list)
    window: ContextWindow | None = None
    on_first_piece: Callable[[], Awaitable[None]] | None = None

    async def context(self, window: ContextWindow) -> None:
        self.window = window

    async def notice(self, text: str) -> None:
        self.events.append(("notice", text))

    async def piece(self, text: str) -> None:
        if self.on_first_piece is not None and not self.kinds("piece"):
            await self.on_first_piece()
        self.events.append(("piece", text))

    async def finish(self, text: str) -> str | None:
        self.events.append(("finish", text))
        return self.reply_id

    async def retract(self, text: str) -> None:
        self.events.append(("retract", text))

    def position(self, place: int) -> None:
        self.events.append(("position", str(place)))

    def kinds(self, kind: str) -> list[str]:
        return [t for k, t in self.events if k == kind]


def request(text: str, *, user: str = "u1", scope: Scope = DM) -> ReplyRequest:
    return ReplyRequest(
        scope=scope, user_id=user, user_name="Ada", text=text, message_id=uuid.uuid4().hex
    )


@pytest.fixture
def assistant(store: MemoryStore, keys: Keys, generator: LocalGenerator) -> Assistant:
    return Assistant(settings=make_settings(keys), memory=store, generator=generator)


async def test_a_reply_streams_then_both_turns_are_stored(
    assistant: Assistant, store: MemoryStore
) -> None:
    sink = RecordingSink()
    outcome = await assistant.reply(request("Hello! My name is Ada."), sink)
    assert outcome.stored and outcome.generated
    pieces = sink.kinds("piece")
    assert pieces and sink.kinds("finish") == [outcome.text]
    assert "".join(pieces).strip() == outcome.text
    assert sink.events[-1][0] == "finish"  # stored only after the reply was shown
    turns = (await store.load(DM, "u1", token_budget=10_000)).turns
    assert [(t.role, t.text) for t in turns] == [
        ("user", "Hello! My name is Ada."),
        ("assistant", outcome.text),
    ]
    assert turns[1].message_id == "reply-1"
    assert turns[0].tokens == assistant.generator.count_tokens("Hello! My name is Ada.")


async def test_the_next_reply_sees_the_earlier_exchange(assistant: Assistant) -> None:
    await assistant.reply(request("My name is Ada and I love film noir."), RecordingSink())
    sink = RecordingSink()
    await assistant.reply(request("What kind of films do I like?"), sink)
    assert sink.window is not None
    contents = [m["content"] for m in sink.window.messages]
    assert "My name is Ada and I love film noir." in contents
    assert sink.window.turns_used == 2
    assert "Ada" in contents[0]  # the display name reaches the persona


async def test_memory_is_per_scope(assistant: Assistant) -> None:
    await assistant.reply(request("My secret word is marmalade.", scope=GUILD), RecordingSink())
    sink = RecordingSink()
    await assistant.reply(request("What is my secret word?", scope=DM), sink)
    assert sink.window is not None
    assert not any("marmalade" in m["content"] for m in sink.window.messages)


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n", "\x00\x00", "\x1b\x07"])
async def test_an_empty_message_gets_a_hint_and_no_generation(
    assistant: Assistant, store: MemoryStore, text: str
) -> None:
    sink = RecordingSink()
    outcome = await assistant.reply(request(text), sink)
    assert not outcome.generated and not outcome.stored
    assert sink.kinds("notice") == [pipeline.EMPTY_HINT]
    assert sink.kinds("piece") == []
    assert (await store.load(DM, "u1", token_budget=1000)).turns == []


async def test_a_100kb_message_is_cut_into_the_budget_and_says_so(
    store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    # A small window keeps the prefill short on a CPU; the rule is the same at 2048.
    assistant = Assistant(
        settings=make_settings(keys, max_context_tokens=512), memory=store, generator=generator
    )
    text = "I want a film like Heat. " * 4096  # ~100 KB
    sink = RecordingSink()
    outcome = await assistant.reply(request(text), sink)
    assert outcome.stored
    assert pipeline.truncated_notice() in sink.kinds("notice")
    assert sink.window is not None and sink.window.tokens <= assistant.budget
    stored = (await store.load(DM, "u1", token_budget=10_000)).turns[0]
    assert stored.text == sink.window.message and len(stored.text) < len(text)
    assert stored.tokens <= assistant.budget


async def test_a_message_over_the_character_cap_is_cut_before_tokenising(
    store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    settings = make_settings(keys)
    settings.memory.max_message_chars = 1000
    bot = Assistant(settings=settings, memory=store, generator=generator)
    sink = RecordingSink()
    await bot.reply(request("x" * 5000), sink)
    assert pipeline.cut_notice(1000) in sink.kinds("notice")


async def test_control_characters_and_bad_unicode_are_cleaned_not_fatal(
    assistant: Assistant, store: MemoryStore
) -> None:
    text = "Best\x00 film\x1b[31m of \ud800 1999?\x7f"
    sink = RecordingSink()
    outcome = await assistant.reply(request(text), sink)
    assert outcome.stored
    assert pipeline.CONTROLS_STRIPPED in sink.kinds("notice")
    stored = (await store.load(DM, "u1", token_budget=1000)).turns[0].text
    assert stored == "Best film[31m of \ufffd 1999?"


async def test_an_odd_user_id_works_end_to_end(assistant: Assistant, store: MemoryStore) -> None:
    user = "}{:* 😀 \x00"
    outcome = await assistant.reply(request("Hi there", user=user), RecordingSink())
    assert outcome.stored
    assert len((await store.load(DM, user, token_budget=1000)).turns) == 2
    assert await store.forget(user) == 2


async def test_a_corrupt_record_does_not_stop_a_reply_or_lose_turns(
    assistant: Assistant, store: MemoryStore, redis_client: Redis, keys: Keys
) -> None:
    await assistant.reply(request("First message"), RecordingSink())
    await redis_client.hset(keys.scope_key("u1", DM, "turn"), "1", "garbage")  # type: ignore[misc]
    outcome = await assistant.reply(request("Second message"), RecordingSink())
    assert outcome.stored
    history = await store.history(DM, "u1")
    assert len(history) == 4 and history[0] == {"id": 1, "unreadable": "garbage"}


class FailingGenerator:
    """The real generator's tokenizer, with a generation that fails midway."""

    def __init__(self, real: LocalGenerator) -> None:
        self.real = real
        self.context_length = real.context_length
        self.count_tokens = real.count_tokens
        self.truncate_tokens = real.truncate_tokens
        self.count_prompt_tokens = real.count_prompt_tokens

    async def stream(self, messages: list[ChatMessage], params: GenerationParams, **kw: Any):  # type: ignore[no-untyped-def]
        yield "Half a rep"
        raise GenerationError("The model failed while writing a reply.")


async def test_a_failed_generation_stores_nothing(
    store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    bot = Assistant(
        settings=make_settings(keys), memory=store, generator=FailingGenerator(generator)
    )
    sink = RecordingSink()
    outcome = await bot.reply(request("Tell me about Alien"), sink)
    assert not outcome.stored
    assert "The model failed while writing a reply." in sink.kinds("notice")
    assert (await store.load(DM, "u1", token_budget=1000)).turns == []


@dataclass
class OwnRedis:
    """A Redis server of this test's own, which the test may stop and start again."""

    server: EmbeddedRedis
    url: str
    store: MemoryStore
    bot: Assistant

    async def restart(self, tmp_path: Path) -> None:
        self.server = EmbeddedRedis(tmp_path / "redis")
        assert await self.server.start() == self.url  # same data, same socket


@pytest.fixture
async def own_redis(
    tmp_path: Path, keys: Keys, generator: LocalGenerator
) -> AsyncIterator[OwnRedis]:
    server = EmbeddedRedis(tmp_path / "redis")
    url = await server.start()
    client = client_for_url(url, socket_timeout=1, connect_timeout=1)
    store = MemoryStore(client, keys=keys)
    bot = Assistant(settings=make_settings(keys), memory=store, generator=generator)
    own = OwnRedis(server, url, store, bot)
    yield own
    await client.aclose()
    await own.server.stop()


async def test_redis_lost_mid_chat_still_replies_then_reconnects(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    bot = own_redis.bot
    assert (await bot.reply(request("My dog is called Biscuit."), RecordingSink())).stored

    await own_redis.server.stop()  # Redis goes away between two messages
    sink = RecordingSink()
    outcome = await bot.reply(request("Any films about dogs?"), sink)
    assert outcome.generated and outcome.text and not outcome.stored
    assert pipeline.MEMORY_READ_FAILED in sink.kinds("notice")
    assert pipeline.MEMORY_WRITE_FAILED in sink.kinds("notice")

    await own_redis.restart(tmp_path)
    sink = RecordingSink()
    outcome = await bot.reply(request("What is my dog called?"), sink)
    assert outcome.stored and sink.kinds("notice") == []
    assert sink.window is not None
    assert "My dog is called Biscuit." in [m["content"] for m in sink.window.messages]


async def test_redis_lost_while_the_reply_streams_is_told_and_loses_nothing_stored(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    bot = own_redis.bot
    assert (await bot.reply(request("I finished Dark last week."), RecordingSink())).stored
    # Memory was read; Redis dies while the reply is being written.
    sink = RecordingSink(on_first_piece=own_redis.server.stop)
    outcome = await bot.reply(request("What should I watch next?"), sink)
    assert outcome.generated and not outcome.stored
    assert sink.kinds("notice") == [pipeline.MEMORY_WRITE_FAILED]
    assert sink.kinds("finish") == [outcome.text]

    await own_redis.restart(tmp_path)
    history = await own_redis.store.history(DM, "u1")
    assert [h["text"] for h in history] == ["I finished Dark last week.", history[1]["text"]]
