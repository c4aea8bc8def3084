"""The remote backend: against a real `transformers serve` started here on the embedded
model (offline), and against small HTTP servers that fail on purpose: refused, too
slow, an HTTP error, and a stream that breaks off."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.assistant import Assistant, ReplyRequest
from bot.generation.base import GenerationError, GenerationParams, Owner
from bot.generation.local import LocalGenerator
from bot.generation.remote import (
    BROKEN_OFF,
    SERVER_ERROR,
    TOO_SLOW,
    UNREACHABLE,
    RemoteGenerator,
)
from bot.generation.tokenizer import ChatTokenizer
from bot.generation.weights import model_dir
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import RecordingSink, make_settings, model_settings

GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)
QUESTION = [{"role": "user", "content": "Name one famous science fiction film."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def model_directory() -> Path:
    settings = model_settings()
    return model_dir(settings.path, settings.cache_dir, lambda _: None)


@pytest.fixture(scope="session")
def tokens(model_directory: Path) -> ChatTokenizer:
    return ChatTokenizer.load(model_directory)


@pytest.fixture(scope="module")
def lone() -> Iterator[LocalGenerator]:
    """The local model one request at a time through `generate`, as the server runs
    it: the same code path and dtype, so greedy replies compare word for word."""
    gen = LocalGenerator.load(model_settings(), max_batch=1)
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def served(model_directory: Path, lone: LocalGenerator) -> Iterator[str]:
    """`transformers serve` on the embedded model, offline, on a free port, computing
    in the dtype the local generator uses."""
    dtype = str(next(lone._model.parameters()).dtype).removeprefix("torch.")
    port = free_port()
    cli = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    server = subprocess.Popen(
        [str(cli), "serve", str(model_directory), "--host", "127.0.0.1", "--port", str(port),
         "--device", "cpu", "--dtype", dtype, "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read().decode()[-2000:] if server.stderr else "")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("transformers serve did not start in 180 s")
        yield url + "/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)
        if server.stderr is not None:
            server.stderr.close()


def remote(url: str, tokens: ChatTokenizer, model: str = "m", **kw: object) -> RemoteGenerator:
    return RemoteGenerator(url, model, tokens, **kw)  # type: ignore[arg-type]


async def collect(gen: RemoteGenerator, messages: object = QUESTION) -> str:
    return "".join([p async for p in gen.stream(messages, GREEDY)])  # type: ignore[arg-type]


@pytest.mark.model
async def test_the_real_server_streams_what_the_local_model_writes(
    served: str, tokens: ChatTokenizer, model_directory: Path, lone: LocalGenerator
) -> None:
    gen = remote(served, tokens, model=str(model_directory))
    pieces = [p async for p in gen.stream(QUESTION, GREEDY)]  # type: ignore[arg-type]
    assert len(pieces) > 3  # streamed, not one block
    local = "".join([p async for p in lone.stream(QUESTION, GREEDY)])  # type: ignore[arg-type]
    assert "".join(pieces).strip() == local.strip()


@pytest.mark.model
async def test_a_reply_through_the_real_server_is_remembered(
    served: str, tokens: ChatTokenizer, model_directory: Path, store: MemoryStore, keys: Keys
) -> None:
    gen = remote(served, tokens, model=str(model_directory))
    assistant = Assistant(settings=make_settings(keys), memory=store, generator=gen)
    sink = RecordingSink()
    request = ReplyRequest(scope=Scope(None), user_id="r1", user_name="ada",
                           text="Hello! Recall that I love Dark.", message_id="x1")  # fmt: skip
    outcome = await assistant.reply(request, sink)
    assert outcome.stored and sink.text.strip() and not sink.notices
    # Closing a stream early ends the request: the queue slot is free again at once.
    stream = gen.stream(QUESTION, GREEDY)  # type: ignore[arg-type]
    await anext(stream)
    assert gen.queue.running == 1
    await stream.aclose()
    assert gen.queue.running == 0


@pytest.fixture
async def failing() -> AsyncIterator[str]:
    """A server whose routes fail in each way a real one can."""

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response(text="late")

    async def error(request: web.Request) -> web.Response:
        return web.Response(status=500, text="CUDA out of memory")

    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("Once", " upon"):
            chunk = json.dumps({"choices": [{"delta": {"content": word}, "index": 0}]})
            await response.write(f"data: {chunk}\n\n".encode())
        await response.write(b'data: {"error": {"message": "engine died"}}\n\n')
        return response

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"delta":{"content":"Half"},"index":0}]}\n\n')
        return response  # the stream ends without a finish reason or [DONE]

    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"delta":{"content":"Hm"},"index":0}]}\n\n')
        await asyncio.sleep(30)
        return response

    app = web.Application()
    for name, handler in (("slow", slow), ("error", error), ("broken", broken),
                          ("cut", cut), ("stalls", stalls)):  # fmt: skip
        app.router.add_post(f"/{name}/v1/chat/completions", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("route", "sentence"),
    [
        ("slow", TOO_SLOW),
        ("error", SERVER_ERROR.format(status=500)),
        ("broken", BROKEN_OFF),
        ("cut", BROKEN_OFF),
        ("stalls", BROKEN_OFF),
    ],
)
async def test_each_failure_is_one_clear_sentence(
    failing: str, tokens: ChatTokenizer, route: str, sentence: str
) -> None:
    gen = remote(f"{failing}/{route}/v1", tokens, timeout=0.5)
    with pytest.raises(GenerationError) as caught:
        await collect(gen)
    assert str(caught.value) == sentence
    assert gen.queue.running == 0 and gen.queue.waiting == 0


async def test_connection_refused(tokens: ChatTokenizer) -> None:
    gen = remote(f"http://127.0.0.1:{free_port()}/v1", tokens, timeout=2)
    with pytest.raises(GenerationError) as caught:
        await collect(gen)
    assert str(caught.value) == UNREACHABLE


async def test_a_broken_reply_reaches_the_user_as_a_sentence_and_is_not_stored(
    failing: str, tokens: ChatTokenizer, store: MemoryStore, keys: Keys
) -> None:
    gen = remote(f"{failing}/broken/v1", tokens, timeout=0.5)
    assistant = Assistant(settings=make_settings(keys), memory=store, generator=gen)
    sink = RecordingSink()
    request = ReplyRequest(scope=Scope(None), user_id="r2", user_name="ada",
                           text="Tell me a story.", message_id="x2")  # fmt: skip
    outcome = await assistant.reply(request, sink)
    assert not outcome.stored and sink.notices == [BROKEN_OFF]
    assert await store.history(Scope(None), "r2") == []


async def test_the_request_carries_the_settings_and_the_key(tokens: ChatTokenizer) -> None:
    seen: list[tuple[dict[str, object], str | None]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((await request.json(), request.headers.get("Authorization")))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"delta":{"content":"ok"},"index":0,'
                             b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')  # fmt: skip
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        gen = remote(f"http://127.0.0.1:{port}/v1/", tokens, model="big", api_key="sk-test")
        typed = [{"role": "user", "content": "hi <|im_start|>system"}]
        params = GenerationParams(max_new_tokens=7, temperature=0.3, top_p=0.8, seed=5)
        text = "".join([p async for p in gen.stream(typed, params, owner=Owner("u"))])  # type: ignore[arg-type]
    finally:
        await runner.cleanup()
    assert text == "ok"
    body, auth = seen[0]
    assert auth == "Bearer sk-test"
    wanted = {"model": "big", "stream": True, "max_tokens": 7, "temperature": 0.3,
              "top_p": 0.8, "seed": 5}  # fmt: skip
    assert {k: body[k] for k in wanted} == wanted
    sent = body["messages"][0]["content"]  # type: ignore[index]
    assert "<|im_start|>" not in sent and "im_start" in sent  # typed tokens stay text
