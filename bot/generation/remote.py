"""A remote OpenAI-compatible backend: streaming chat completions from vLLM, TGI,
llama.cpp's server or `transformers serve`, behind the same `Generator` protocol.

The bot keeps everything else: the fair queue in front (so positions, per-member
limits and "busy" answers work as with the local model), and a local tokenizer to
count the context window (the embedded model's, or MODEL_PATH's; when the server runs
another model, set REMOTE_CONTEXT_LENGTH and treat the budget as an estimate). Every
failure becomes one sentence for the user: the server unreachable, too slow, answering
with an error, or stopping in the middle of a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from redis.exceptions import RedisError

from bot.generation.base import ChatMessage, GenerationError, GenerationParams, GeneratorBusy, Owner
from bot.generation.queue import FairQueue
from bot.generation.tokenizer import ChatTokenizer

if TYPE_CHECKING:
    from bot.distributed import Leases

log = logging.getLogger(__name__)

UNREACHABLE = "I can't reach the model server right now. Please try again in a moment."
TOO_SLOW = "The model server is taking too long to answer. Please try again in a moment."
SERVER_ERROR = "The model server answered with an error (HTTP {status}). Please try again later."
BROKEN_OFF = "The model server stopped in the middle of my reply. Please try again."
MAX_LINE = 1 << 20  # one SSE line; a longer one is a broken stream


class RemoteGenerator:
    """Streams chat completions from `url` (the API base, e.g. http://host:8000/v1)."""

    def __init__(
        self,
        url: str,
        model: str,
        tokens: ChatTokenizer,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        context_length: int | None = None,
        concurrency: int = 8,
        queue_max: int = 64,
        per_user: int = 2,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.tokens = tokens
        self._api_key = api_key
        self.timeout = timeout
        self._context_length = context_length or tokens.context_length
        self.queue = FairQueue(concurrency, max_waiting=queue_max, per_user=per_user)
        # Requests at the server from every bot process, when several share it (leases
        # in Redis, see bot/distributed.py); set by the services.
        self.shared: Leases | None = None

    @property
    def context_length(self) -> int:
        return self._context_length

    def count_tokens(self, text: str) -> int:
        return self.tokens.count_tokens(text)

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        return self.tokens.truncate_tokens(text, max_tokens)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self.tokens.count_prompt_tokens(messages)

    def close(self) -> None:
        """Nothing to release: each request opens and closes its own connection."""

    def _body(
        self, messages: Sequence[ChatMessage], params: GenerationParams, user: str = ""
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            # Special-token text a member typed stays text on the server too.
            "messages": [
                {"role": m["role"], "content": self.tokens.neutralise(m["content"])}
                for m in messages
            ],
            "stream": True,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if user:
            # OpenAI's field for telling end users apart (a server may schedule or
            # watch by it); a digest, not the Discord id.
            body["user"] = hashlib.sha256(user.encode()).hexdigest()[:16]
        return body

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        *,
        owner: Owner | None = None,
    ) -> AsyncIterator[str]:
        owner = owner or Owner("local")
        async with self.queue.turn(owner), self._shared_turn():
            async for piece in self._request(messages, params, owner.user):
                yield piece

    @contextlib.asynccontextmanager
    async def _shared_turn(self) -> AsyncIterator[None]:
        """One of the server's REMOTE_CONCURRENCY places shared by every bot process;
        without Redis, only this process's own queue limits what it sends."""
        async with contextlib.AsyncExitStack() as stack:
            if self.shared is not None:
                try:
                    await stack.enter_async_context(self.shared.holding())
                except RedisError as exc:
                    log.warning("the shared places at the model server are unknown: %s", exc)
            yield

    async def stream_background(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[str]:
        """Background work (summaries) runs only while no reply waits or runs."""
        if self.queue.busy:
            raise GeneratorBusy("The model is busy with replies.")
        async with self.queue.turn(Owner("background")), self._shared_turn():
            async for piece in self._request(messages, params):
                yield piece

    async def _request(
        self, messages: Sequence[ChatMessage], params: GenerationParams, user: str = ""
    ) -> AsyncIterator[str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        # The timeout bounds connecting and each wait for the next bytes, not the whole
        # reply: a long reply that keeps streaming is fine.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout, sock_connect=self.timeout, sock_read=self.timeout
        )
        started = False
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, read_bufsize=MAX_LINE) as session,
                session.post(
                    f"{self.url}/chat/completions",
                    json=self._body(messages, params, user),
                    headers=headers,
                ) as response,
            ):
                if response.status >= 400:
                    detail = (await response.text())[:300]
                    log.warning("model server HTTP %s: %s", response.status, detail)
                    raise GenerationError(SERVER_ERROR.format(status=response.status))
                async for piece in _events(response):
                    started = True
                    yield piece
        except TimeoutError as exc:
            raise GenerationError(BROKEN_OFF if started else TOO_SLOW) from exc
        except aiohttp.ClientConnectorError as exc:
            log.warning("model server unreachable: %s", exc)
            raise GenerationError(UNREACHABLE) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError, ValueError) as exc:  # fmt: skip
            log.warning("model server stream broke: %s", exc)
            raise GenerationError(BROKEN_OFF if started else UNREACHABLE) from exc


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The text pieces of a server-sent-events chat completion stream. An error event,
    or a stream that ends without `[DONE]` or a finish reason, is a broken reply."""
    finished = False
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {data[:80]!r}") from exc
        if not isinstance(event, dict):
            raise ValueError("an event that is not an object")
        if "error" in event:
            raise ValueError(f"error event: {str(event['error'])[:200]}")
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                yield text
            if choice.get("finish_reason"):
                finished = True
        await asyncio.sleep(0)
    if not finished:
        raise ValueError("the stream ended before the reply did")
