"""Generation under load: continuous batching with the real model (every token a
batched greedy reply picks is transformers' own greedy choice, joining mid-stream,
prompts read in chunks, rows coming and going and cancellations included), and the
fair queue (round-robin order, queue-full and per-member answers, positions,
cancellation)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any
from unittest.mock import ANY

import pytest
import torch

from bot.generation.base import GenerationParams, Owner
from bot.generation.batch import BatchEngine, BatchRequest, PrefixCache, _Row
from bot.generation.local import LocalGenerator
from bot.generation.queue import QUEUE_FULL, FairQueue, QueueFull, too_many
from bot.generation.sampling import choose_next
from bot.settings import ModelSettings
from tests.conftest import model_settings, pin_ways, read_in_full

GREEDY = GenerationParams(max_new_tokens=40, temperature=0.0)
QUESTIONS = [
    "Recommend a heist film.",
    "Who directed Jaws?",
    "What is a good podcast about space? Answer in detail, please, with a few reasons.",
    "Tell me about the band Radiohead.",
    "Is Dark worth watching?",
    "Suggest a cozy game for a rainy evening with friends who do not play much.",
]


def chat(question: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful assistant for films, music and games."},
        {"role": "user", "content": question},
    ]


def float32() -> ModelSettings:
    return model_settings().model_copy(update={"dtype": "float32"})


# How far below the reference's top logit a chosen token may be. A batched row is
# computed with other rows beside it, and the CPU's matrix kernels round differently
# for different row counts (a 1-row product differs from a 6-row one in the last bits
# here), so two logits within rounding of each other can swap. Measured: logits of the
# engine and of transformers differ by at most 4e-5 in float32.
TIE = 1e-3


@pytest.fixture(scope="module")
def lone() -> Iterator[LocalGenerator]:
    """One request at a time through transformers' own `generate` and model: the
    reference."""
    gen = LocalGenerator.load(float32(), max_batch=1)
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def exact() -> Iterator[LocalGenerator]:
    """The bot's generator (batching, prefix reuse), in float32, the ways of computing
    pinned (each way is checked on its own in test_ways.py), the model's own weights in
    every pass: its greedy replies are transformers'."""
    gen = pin_ways(LocalGenerator.load(float32(), max_batch=8, prefix_mb=96), narrow=False)
    yield gen
    gen.close()


async def text_of(gen: LocalGenerator, question: str, owner: Owner | None = None) -> str:
    return "".join([p async for p in gen.stream(chat(question), GREEDY, owner=owner)])


async def decode(
    engine: BatchEngine | None, prompt: list[int], params: GenerationParams
) -> list[int]:
    """Submit straight to the engine; the token ids it chose."""
    assert engine is not None
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[BaseException | None] = loop.create_future()
    ids: list[int] = []
    engine.submit(
        BatchRequest(
            prompt=prompt, params=params, max_new_tokens=params.max_new_tokens,
            on_token=ids.append,
            done=lambda e: loop.call_soon_threadsafe(finished.set_result, e),
        )
    )  # fmt: skip
    assert await finished is None
    return ids


def assert_greedy(
    reference: LocalGenerator, prompt: list[int], chosen: list[int], limit: int | None = None
) -> None:
    """Every token chosen is the top token of transformers' own forward pass over the
    same text (repetition penalty applied as `generate` does), up to a rounding tie;
    and a reply that stopped early stopped at an end token."""
    model = reference._model
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + chosen])).logits[0, len(prompt) - 1 :].float()
    seen = list(prompt)
    for step, token in enumerate([*chosen, None]):
        scores = logits[step].clone()
        index = torch.tensor(sorted(set(seen)))
        picked = scores[index]
        penalty = GREEDY.repetition_penalty
        scores[index] = torch.where(picked < 0, picked * penalty, picked / penalty)
        if token is None:
            if len(chosen) < (limit or GREEDY.max_new_tokens):
                eos = max(float(scores[e]) for e in reference._eos_ids)
                assert float(scores.max()) - eos <= TIE, "stopped before an end token"
            break
        gap = float(scores.max() - scores[token])
        assert gap <= TIE, f"token {step} was not the greedy choice (gap {gap:.4f})"
        seen.append(token)


async def test_batched_replies_are_the_reference_greedy_replies(
    exact: LocalGenerator, lone: LocalGenerator
) -> None:
    assert exact.engine is not None
    exact.engine.stats.widest = 0
    prompts = [exact.render(chat(q)) for q in QUESTIONS]
    got = await asyncio.gather(*(decode(exact.engine, p, GREEDY) for p in prompts))
    assert exact.engine.stats.widest >= 4  # they really decoded together
    for prompt, ids in zip(prompts, got, strict=True):
        assert ids
        assert_greedy(lone, prompt, ids)
    # Most replies are the very text `generate` writes alone (a rounding tie can part
    # one from it, and from then on it is another, equally greedy, reply).
    expected = [await text_of(lone, q) for q in QUESTIONS]
    same = sum(exact.decode(ids) == text for ids, text in zip(got, expected, strict=True))
    assert same >= len(QUESTIONS) - 2


async def test_a_request_joining_a_running_batch_decodes_the_same(
    exact: LocalGenerator, lone: LocalGenerator
) -> None:
    # A short prompt starts; a longer one (and then a shorter one) joins mid-stream:
    # rows of different lengths, one reading its prompt while the others decode.
    first, longer, shorter = (exact.render(chat(q)) for q in (QUESTIONS[1], QUESTIONS[5], "Hi!"))
    started = asyncio.Event()
    assert exact.engine is not None
    steps = exact.engine.stats.passes

    async def run_first() -> list[int]:
        task = asyncio.create_task(decode(exact.engine, first, GREEDY))
        while exact.engine is not None and exact.engine.stats.passes < steps + 3:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # the engine's thread counts passes: poll it
        started.set()
        return await task

    async def join_later(prompt: list[int]) -> list[int]:
        await started.wait()
        return await decode(exact.engine, prompt, GREEDY)

    got = await asyncio.gather(run_first(), join_later(longer), join_later(shorter))
    for prompt, ids in zip((first, longer, shorter), got, strict=True):
        assert_greedy(lone, prompt, ids)


def small_engine(exact: LocalGenerator, prefix_tokens: int) -> BatchEngine:
    """A second engine on the same weights: 4 slots, prompts read 16 tokens a pass."""
    assert exact.fast is not None
    return BatchEngine(
        exact.fast, eos_ids=exact._eos_ids, context_length=exact.context_length,
        max_batch=4, prefix_tokens=prefix_tokens, chunk=16,
    )  # fmt: skip


def sharing_a_start(exact: LocalGenerator, repeats: int) -> tuple[list[int], list[int]]:
    """Two prompts with the same long system prompt and different questions."""
    shared = "You are a helpful assistant for films, music and games. " * repeats
    first, second = (
        exact.render([{"role": "system", "content": shared}, {"role": "user", "content": q}])
        for q in (QUESTIONS[2], QUESTIONS[4])
    )
    return first, second


async def test_prompts_read_in_chunks_while_rows_come_and_go(
    exact: LocalGenerator, lone: LocalGenerator
) -> None:
    """A small engine (4 slots, prompts read 16 tokens per pass) under churn: more
    requests than slots, replies of different lengths, so rows leave (the last one
    moving into the freed slot), prompts are read over several passes beside decoding
    rows, and a row done reading trades slots with one still reading."""
    engine = small_engine(exact, prefix_tokens=512)
    try:
        prompts = [exact.render(chat(q)) for q in QUESTIONS + QUESTIONS[:2]]
        lengths = [5, 30, 12, 40, 8, 25, 3, 18]
        params = [replace(GREEDY, max_new_tokens=n) for n in lengths]
        got = await asyncio.gather(
            *(decode(engine, p, k) for p, k in zip(prompts, params, strict=True))
        )
        assert engine.stats.prefix_hits >= 2  # the last two repeat earlier prompts
        for prompt, ids, n in zip(prompts, got, lengths, strict=True):
            assert_greedy(lone, prompt, ids, limit=n)
        assert engine.running == 0
    finally:
        engine.close()


async def test_a_reply_cancelled_while_its_prompt_is_read_frees_its_slot(
    exact: LocalGenerator, lone: LocalGenerator
) -> None:
    """A long prompt read 16 tokens a pass is cancelled half-way; a second prompt
    sharing its start was waiting to copy that start from it, and reads it alone
    instead: its reply is still the greedy one, and no slot stays taken."""
    engine = small_engine(exact, prefix_tokens=0)
    try:
        first, second = sharing_a_start(exact, repeats=12)
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[BaseException | None] = loop.create_future()
        cancelled = BatchRequest(
            prompt=first, params=GREEDY, max_new_tokens=GREEDY.max_new_tokens,
            on_token=lambda _: None,
            done=lambda e: loop.call_soon_threadsafe(ended.set_result, e),
        )  # fmt: skip
        engine.submit(cancelled)
        follower = asyncio.create_task(decode(engine, second, GREEDY))
        while engine.stats.passes < 2:  # noqa: ASYNC110 (the engine's thread counts passes)
            await asyncio.sleep(0.005)
        cancelled.stop.set()
        assert await asyncio.wait_for(ended, 60) is None
        ids = await asyncio.wait_for(follower, 60)  # not left waiting for the cancelled one
        assert_greedy(lone, second, ids)
        assert engine.running == 0
        assert engine.stats.prefix_hits == 0  # it could not copy from the cancelled one
    finally:
        engine.close()


async def test_a_short_prompt_is_read_before_a_long_one_that_came_first(
    exact: LocalGenerator, lone: LocalGenerator
) -> None:
    """A conversation's next message does not wait behind a new member's whole
    history: in a small engine (16 prompt tokens a pass) a short prompt submitted
    while a long one is being read has its first token first; both replies are the
    greedy ones."""
    engine = small_engine(exact, prefix_tokens=0)
    try:
        history = "I love slow science fiction films and long jazz records. " * 10
        long = exact.render([{"role": "system", "content": history},
                             {"role": "user", "content": QUESTIONS[2]}])  # fmt: skip
        short = exact.render(chat(QUESTIONS[1]))
        assert len(long) > 4 * len(short)
        firsts: dict[str, int] = {}

        async def timed(name: str, prompt: list[int]) -> list[int]:
            loop = asyncio.get_running_loop()
            finished: asyncio.Future[BaseException | None] = loop.create_future()
            ids: list[int] = []

            def token(t: int) -> None:
                firsts.setdefault(name, engine.stats.passes)
                ids.append(t)

            engine.submit(
                BatchRequest(
                    prompt=prompt, params=GREEDY, max_new_tokens=GREEDY.max_new_tokens,
                    on_token=token,
                    done=lambda e: loop.call_soon_threadsafe(finished.set_result, e),
                )
            )  # fmt: skip
            assert await asyncio.wait_for(finished, 120) is None
            return ids

        first = asyncio.create_task(timed("long", long))
        while engine.stats.passes < 2:  # noqa: ASYNC110 (the engine's thread counts passes)
            await asyncio.sleep(0.005)
        second = asyncio.create_task(timed("short", short))
        long_ids, short_ids = await first, await second
        assert firsts["short"] < firsts["long"]
        assert_greedy(lone, long, long_ids)
        assert_greedy(lone, short, short_ids)
    finally:
        engine.close()


def test_the_prefix_cache_keeps_each_sequence_once_within_its_capacity() -> None:
    cache = PrefixCache(capacity=100)
    start = list(range(20))
    cache.add(start + [1] * 10, "a")
    cache.add(start + [1] * 10 + [2] * 10, "b")  # the conversation went on: replaces a
    assert cache.tokens == 40
    assert cache.covers(start + [1] * 5)  # a row that stopped earlier adds nothing
    assert not cache.covers(start + [3] * 5)
    cache.add(start + [3] * 30, "c")
    assert cache.tokens == 90
    entry, n = cache.longest(start + [1] * 10 + [2] * 10 + [9])
    assert entry is not None and entry.states == "b" and n == 40
    entry, n = cache.longest(start + [3] * 30)  # the last prompt token is always run
    assert entry is not None and entry.states == "c" and n == 49
    assert cache.longest(list(range(100, 140))) == (None, 0)
    cache.add(list(range(200, 230)), "d")  # over capacity: the least recently used goes
    assert cache.tokens <= 100
    entry, n = cache.longest(start + [1] * 10 + [2] * 10 + [9])
    assert entry is not None and entry.states == "c" and n == 20  # b is gone: the start
    assert [e.states for e in cache._entries] == ["c", "d"]


def test_the_oldest_prompt_keeps_a_share_of_every_pass() -> None:
    """Shortest left first, but the row waiting longest always reads a quarter of the
    chunk, however many short prompts there are."""

    def row(total: int, read: int = 0) -> SimpleNamespace:
        return SimpleNamespace(request=SimpleNamespace(prompt=[1] * total), length=read)

    oldest, shorts = row(500, 100), [row(20), row(30, 5), row(40)]
    shares = BatchEngine._shares(SimpleNamespace(chunk=64), [oldest, *shorts])  # type: ignore[arg-type]
    counts = {id(r): n for r, n in shares}
    assert counts[id(oldest)] == 16  # a quarter of 64
    assert counts[id(shorts[0])] == 20 and counts[id(shorts[1])] == 25  # shortest first
    assert counts[id(shorts[2])] == 3  # what is left
    assert sum(counts.values()) == 64
    # Alone, or first in line with room to spare, it reads as much as fits.
    assert BatchEngine._shares(SimpleNamespace(chunk=64), [row(500)]) == [(ANY, 64)]  # type: ignore[arg-type]
    short_oldest = row(10)
    shares = BatchEngine._shares(SimpleNamespace(chunk=64), [short_oldest, row(300)])  # type: ignore[arg-type]
    assert [n for _, n in shares] == [10, 54]


def test_tokens_chosen_together_are_each_rows_own_choice() -> None:
    """Greedy rows are chosen in one go per repetition penalty, beside a sampled row;
    each gets the token its own scores give (the penalty on its own tokens only, as
    `generate` applies it), also as the rows grow."""
    g = torch.Generator().manual_seed(3)
    vocab = 500

    def row(penalty: float, temperature: float = 0.0) -> _Row:
        params = GenerationParams(temperature=temperature, repetition_penalty=penalty)
        request = BatchRequest(
            prompt=[], params=params, max_new_tokens=10, on_token=print, done=print
        )
        tokens = torch.randint(0, vocab, (int(torch.randint(5, 60, (1,), generator=g)),))
        rng = torch.Generator().manual_seed(7)
        return _Row(request, tokens.tolist(), slot=0, length=0, rng=rng)

    def alone(row: _Row, scores: torch.Tensor) -> int:
        scores = scores.float().clone()
        penalty = row.request.params.repetition_penalty
        seen = torch.tensor(row.tokens)
        picked = scores[seen]
        scores[seen] = torch.where(picked < 0, picked * penalty, picked / penalty)
        return int(scores.argmax())

    rows = [row(1.1), row(1.0), row(1.3), row(1.1), row(1.2, temperature=0.7), row(1.1)]
    for _ in range(4):
        logits = torch.randn(len(rows) + 2, vocab, generator=g).to(torch.bfloat16)
        # Make the penalty matter: each row's best token is one it has seen.
        for i, r in enumerate(rows):
            logits[i + 2, r.tokens[-1]] = logits[i + 2].max() + 0.05
        at = [i + 2 for i in range(len(rows))]
        got = choose_next(rows, at, logits)
        for r, i, token in zip(rows, at, got, strict=True):
            if r.request.params.greedy:
                assert token == alone(r, logits[i])
            else:
                assert 0 <= token < vocab
        assert got[1] == rows[1].tokens[-1]  # no penalty: its seen token stays first
        for r, token in zip(rows, got, strict=True):
            r.tokens.append(token)


async def test_a_prompt_copies_its_start_from_a_row_decoding_now(
    exact: LocalGenerator, lone: LocalGenerator
) -> None:
    """A member's second message sent while the first reply streams shares that
    prompt's start: it is copied from the decoding row's slot (the prefix cache is
    off here), and the reply is still the greedy one."""
    engine = small_engine(exact, prefix_tokens=0)
    try:
        first, second = sharing_a_start(exact, repeats=6)
        streaming: asyncio.Event = asyncio.Event()
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[BaseException | None] = loop.create_future()
        engine.submit(
            BatchRequest(
                prompt=first, params=GREEDY, max_new_tokens=GREEDY.max_new_tokens,
                on_token=lambda _: loop.call_soon_threadsafe(streaming.set),
                done=lambda e: loop.call_soon_threadsafe(finished.set_result, e),
            )
        )  # fmt: skip
        await asyncio.wait_for(streaming.wait(), 60)
        ids = await decode(engine, second, GREEDY)
        assert await finished is None
        shared_tokens = next(
            i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b
        )
        stats = engine.snapshot()
        assert stats.prefix_lookups == 2 and stats.prefix_hits == 1
        assert stats.prefix_hit_tokens == shared_tokens
        assert stats.read == len(first) + len(second) - shared_tokens
        assert stats.prefix_query_tokens == len(first) + len(second)
        assert stats.prefix_hit_ratio == shared_tokens / (len(first) + len(second))
        assert_greedy(lone, second, ids)
    finally:
        engine.close()


async def test_the_slab_holds_slots_for_the_rows_that_run_and_grows_under_them(
    exact: LocalGenerator, lone: LocalGenerator
) -> None:
    """An engine 16 rows wide holds keys and values for as many rows as it runs, in
    steps of 4 slots, not for 16: three replies hold 4 slots. Three more, submitted
    when the first reply has its fifth token (from the engine's thread, so while the
    first three still decode), grow it to 8: the running rows' keys and values are
    copied into the grown slab, and every reply is still the greedy one."""
    assert exact.fast is not None
    engine = BatchEngine(
        exact.fast, eos_ids=[], context_length=exact.context_length, max_batch=16, chunk=32
    )
    loop = asyncio.get_running_loop()
    prompts = [exact.render(chat(q)) for q in QUESTIONS[:6]]
    params = replace(GREEDY, max_new_tokens=24)
    replies: list[list[int]] = [[] for _ in prompts]
    ended = [loop.create_future() for _ in prompts]
    held_before: list[int] = []
    bytes_before: list[tuple[int, int]] = []  # (the engine's count, the slab's 4 slots)

    def request(i: int) -> BatchRequest:
        def token(t: int) -> None:
            replies[i].append(t)
            if i == 0 and len(replies[0]) == 5:  # (on the engine's thread)
                held_before.append(engine.stats.slab_slots)
                c, slab = exact.fast.config, engine._slab
                per_slot = 2 * c.kv_heads * slab.capacity * c.head_dim * slab.layers[0].itemsize
                bytes_before.append((engine.stats.slab_bytes, c.layers * 4 * per_slot))
                for j in range(3, 6):
                    engine.submit(request(j))

        return BatchRequest(
            prompt=prompts[i], params=params, max_new_tokens=params.max_new_tokens,
            on_token=token,
            done=lambda e: loop.call_soon_threadsafe(ended[i].set_result, e),
        )  # fmt: skip

    try:
        for i in range(3):
            engine.submit(request(i))
        assert await asyncio.wait_for(asyncio.gather(*ended), 300) == [None] * 6
        assert held_before == [4]
        ((counted, four_slots),) = bytes_before
        assert counted == four_slots > 0
        assert engine.stats.slab_slots == 8 and engine.stats.widest >= 5
        for _ in range(600):  # idle again, the slab is given back (`/metrics` shows 0)
            if engine.stats.slab_bytes == 0:
                break
            await asyncio.sleep(0.05)
        assert engine.stats.slab_bytes == 0
    finally:
        engine.close()
    for prompt, ids in zip(prompts, replies, strict=True):
        assert len(ids) == params.max_new_tokens
        assert_greedy(lone, prompt, ids, limit=params.max_new_tokens)


async def test_a_slab_that_cannot_grow_fails_every_reply_and_the_engine_goes_on(
    exact: LocalGenerator, lone: LocalGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory runs out while the slab grows for a joining reply (its start copied from
    the row decoding now, its prompt longer than the slab): some layers grown and some
    not, no row's keys and values can be trusted, so both replies end with the error
    instead of going on from a broken cache; the next reply is the greedy one."""
    engine = small_engine(exact, prefix_tokens=0)
    loop = asyncio.get_running_loop()
    first, _ = sharing_a_start(exact, repeats=6)
    system = exact.render(
        [{"role": "system", "content": "You are a helpful assistant for films, music and "
                                       "games. " * 6},
         {"role": "user", "content": " ".join(QUESTIONS) * 6}]
    )  # fmt: skip
    assert len(system) > -(-len(first) // 128) * 128  # (longer than the slab holds)
    zeros = torch.zeros
    armed: list[int] = []

    def scarce(*shape: object, **kw: object) -> torch.Tensor:
        dims = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if armed and len(dims) == 5:  # a layer of the slab
            armed.append(1)
            if len(armed) == 3:  # (the first layer grows, the second does not; once)
                raise RuntimeError("DefaultCPUAllocator: not enough memory")
        return zeros(*shape, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "zeros", scarce)
    ended: list[asyncio.Future[BaseException | None]] = [loop.create_future() for _ in "ab"]

    def request(i: int, prompt: list[int], on_token: Any) -> BatchRequest:
        return BatchRequest(
            prompt=prompt, params=GREEDY, max_new_tokens=GREEDY.max_new_tokens,
            on_token=on_token, done=lambda e: loop.call_soon_threadsafe(ended[i].set_result, e),
        )  # fmt: skip

    def first_token(_: int) -> None:  # (on the engine's thread)
        if not armed:
            armed.append(1)
            engine.submit(request(1, system, lambda _: None))

    try:
        engine.submit(request(0, first, first_token))
        errors = await asyncio.wait_for(asyncio.gather(*ended), 120)
        assert [str(e) for e in errors] == ["DefaultCPUAllocator: not enough memory"] * 2
        assert engine.running == 0
        monkeypatch.setattr(torch, "zeros", zeros)
        prompt = exact.render(chat(QUESTIONS[1]))
        assert_greedy(lone, prompt, await decode(engine, prompt, GREEDY))
    finally:
        engine.close()


async def test_the_streamed_text_is_the_decoded_tokens(exact: LocalGenerator) -> None:
    prompt = exact.render(chat(QUESTIONS[3]))
    await read_in_full(exact)
    ids = await decode(exact.engine, prompt, GREEDY)
    await read_in_full(exact)  # (the same computation again: see `read_in_full`)
    assert await text_of(exact, QUESTIONS[3]) == exact.decode(ids)


async def test_a_cancelled_request_leaves_the_batch_and_frees_its_slot(
    generator: LocalGenerator,
) -> None:
    assert generator.engine is not None
    long = GenerationParams(max_new_tokens=400, temperature=0.0)
    stream = generator.stream(chat(QUESTIONS[0]), long, owner=Owner("x"))
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert generator.queue.running == 0
    for _ in range(100):  # the row goes at the engine's next step
        if generator.engine.running == 0:
            break
        await asyncio.sleep(0.05)
    assert generator.engine.running == 0


# -- the fair queue, on its own --------------------------------------------------------


async def hold(queue: FairQueue, owner: Owner, gate: asyncio.Event) -> None:
    async with queue.turn(owner):
        await gate.wait()


async def test_a_flooding_member_does_not_starve_others() -> None:
    queue = FairQueue(1, max_waiting=100, per_user=10)
    gate = asyncio.Event()
    flood = Owner("flood", "g1")
    other = Owner("other", "g1")
    tasks = [asyncio.create_task(hold(queue, flood, gate)) for _ in range(6)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(hold(queue, other, gate)))
    await asyncio.sleep(0)
    # One of the flood runs; the other member is next, ahead of five more of the flood.
    assert queue.position(other) == 1
    gate.set()
    await asyncio.gather(*tasks)
    users = [o.user for o in queue.admitted_order]
    assert users[:3] == ["flood", "other", "flood"]


async def test_round_robin_goes_across_servers_first() -> None:
    queue = FairQueue(1, max_waiting=100, per_user=10)
    gate = asyncio.Event()
    busy = [Owner(f"u{i}", "busy-server") for i in range(4)]
    quiet = Owner("q", "quiet-server")
    running = asyncio.create_task(hold(queue, Owner("first", "busy-server"), gate))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(hold(queue, o, gate)) for o in busy]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(hold(queue, quiet, gate)))
    await asyncio.sleep(0)
    # The busy server has a reply running: the quiet server's member goes first, not
    # after the four waiting on the busy one.
    assert queue.position(quiet) == 1
    assert [queue.position(o) for o in busy] == [2, 3, 4, 5]
    gate.set()
    await asyncio.gather(running, *tasks)
    assert [o.user for o in queue.admitted_order] == ["first", "q", "u0", "u1", "u2", "u3"]


async def test_a_full_queue_and_a_member_over_their_share_are_told_at_once() -> None:
    queue = FairQueue(1, max_waiting=3, per_user=2)
    gate = asyncio.Event()
    tasks = [asyncio.create_task(hold(queue, Owner(f"u{i}"), gate)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(hold(queue, Owner("u0"), gate)))  # u0's second
    await asyncio.sleep(0)
    assert queue.running == 1 and queue.waiting == 3
    with pytest.raises(QueueFull) as full:
        await hold(queue, Owner("late"), gate)
    assert str(full.value) == QUEUE_FULL
    with pytest.raises(QueueFull) as mine:
        await hold(queue, Owner("u0"), gate)  # u0's third
    assert str(mine.value) == too_many(2)
    gate.set()
    await asyncio.gather(*tasks)
    assert queue.running == 0 and queue.waiting == 0


async def test_waiting_requests_hear_their_place_and_cancelling_frees_it() -> None:
    queue = FairQueue(1, max_waiting=10, per_user=5)
    gate = asyncio.Event()
    heard: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    owners = {k: Owner(k, on_position=heard[k].append) for k in heard}
    first = asyncio.create_task(hold(queue, owners["a"], gate))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold(queue, owners["b"], gate))
    third = asyncio.create_task(hold(queue, owners["c"], gate))
    await asyncio.sleep(0)
    assert heard == {"a": [0], "b": [1], "c": [2]}
    second.cancel()  # b's message was deleted while it waited
    await asyncio.sleep(0)
    assert heard["c"] == [2, 1] and queue.waiting == 1
    gate.set()
    await asyncio.gather(first, third)
    assert heard["c"] == [2, 1, 0]
    assert [o.user for o in queue.admitted_order] == ["a", "c"]
    assert queue.running == 0 and not queue.busy


async def test_prefix_reuse_decodes_the_same_and_skips_the_shared_start(
    exact: LocalGenerator, lone: LocalGenerator
) -> None:
    """Prompts sharing a system prompt, and a conversation's next turn, start from
    cached KV: every token is still the reference's greedy choice (up to a rounding
    tie), and the shared part is not run again."""
    assert exact.engine is not None
    prefixes, stats = exact.engine.prefixes, exact.engine.stats
    await read_in_full(exact)
    hits, reused = stats.prefix_hits, stats.prefix_hit_tokens
    first_prompt = exact.render(chat(QUESTIONS[0]))
    first = await decode(exact.engine, first_prompt, GREEDY)
    assert_greedy(lone, first_prompt, first)
    second_prompt = exact.render(chat(QUESTIONS[4]))  # same system prompt
    assert_greedy(lone, second_prompt, await decode(exact.engine, second_prompt, GREEDY))
    system_tokens = exact.count_prompt_tokens(chat(""))
    assert stats.prefix_hits == hits + 1
    assert stats.prefix_hit_tokens - reused >= system_tokens - 8
    # The next turn of the first conversation reuses the prompt and the reply.
    turn = [*chat(QUESTIONS[0]), {"role": "assistant", "content": exact.decode(first)},
            {"role": "user", "content": "And another one?"}]  # fmt: skip
    turn_prompt = exact.render(turn)
    before = stats.prefix_hit_tokens
    assert_greedy(lone, turn_prompt, await decode(exact.engine, turn_prompt, GREEDY))
    # (the reply too: its KV is kept before the request hears it has finished)
    first_exchange = exact.count_prompt_tokens(chat(QUESTIONS[0])) + exact.count_tokens(
        exact.decode(first)
    )
    assert stats.prefix_hit_tokens - before >= first_exchange - 2
    assert prefixes.tokens <= prefixes.capacity
