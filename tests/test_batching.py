"""Generation under load: continuous batching with the real model (a batched reply is
the text a lone greedy request produces, joining mid-stream included), and the fair
queue (round-robin order, queue-full and per-member answers, positions, cancellation)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bot.generation.base import GenerationParams, Owner
from bot.generation.local import LocalGenerator
from bot.generation.queue import QUEUE_FULL, FairQueue, QueueFull, too_many
from bot.settings import ModelSettings
from tests.conftest import model_settings

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
    # Exact equality is a float32 property: in bf16 (the default on CPUs with AMX) the
    # rounding of a matrix product depends on how many rows it has, so a batched greedy
    # reply can part from a lone one after a few tokens.
    return model_settings().model_copy(update={"dtype": "float32"})


@pytest.fixture(scope="module")
def lone() -> Iterator[LocalGenerator]:
    """One request at a time through transformers' own `generate`: the reference."""
    gen = LocalGenerator.load(float32(), max_batch=1)
    yield gen
    gen.close()


@pytest.fixture(scope="module")
def exact() -> Iterator[LocalGenerator]:
    """The bot's generator (batching, prefix reuse), in float32."""
    gen = LocalGenerator.load(float32(), max_batch=8, prefix_tokens=2048)
    yield gen
    gen.close()


async def text_of(gen: LocalGenerator, question: str, owner: Owner | None = None) -> str:
    return "".join([p async for p in gen.stream(chat(question), GREEDY, owner=owner)])


async def test_batched_replies_equal_lone_greedy_replies(
    exact: LocalGenerator, lone: LocalGenerator
) -> None:
    expected = [await text_of(lone, q) for q in QUESTIONS]
    assert exact.engine is not None
    widest = exact.engine.widest = 0
    owners = [Owner(f"user{i}") for i in range(len(QUESTIONS))]
    got = await asyncio.gather(
        *(text_of(exact, q, o) for q, o in zip(QUESTIONS, owners, strict=True))
    )
    widest = exact.engine.widest
    assert widest >= 4  # they really decoded together
    assert got == expected


async def test_a_request_joining_a_running_batch_decodes_the_same(
    exact: LocalGenerator, lone: LocalGenerator
) -> None:
    # A short prompt starts; a longer one (and then a shorter one) joins mid-stream,
    # so the cache is padded on both sides at some point.
    first, longer, shorter = QUESTIONS[1], QUESTIONS[5], "Hi!"
    expected = [await text_of(lone, q) for q in (first, longer, shorter)]
    started = asyncio.Event()

    async def run_first() -> str:
        out = []
        async for piece in exact.stream(chat(first), GREEDY, owner=Owner("a")):
            out.append(piece)
            if len(out) == 3:
                started.set()
        return "".join(out)

    async def join_later(question: str, who: str) -> str:
        await started.wait()
        return await text_of(exact, question, Owner(who))

    got = await asyncio.gather(run_first(), join_later(longer, "b"), join_later(shorter, "c"))
    assert list(got) == expected


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
    cached KV: the text is what a full prefill gives, and the shared part is not run
    again."""
    assert exact.engine is not None
    prefixes = exact.engine.prefixes
    prefixes.clear()
    hits, reused = prefixes.hits, prefixes.reused
    first = await text_of(exact, QUESTIONS[0])
    assert first == await text_of(lone, QUESTIONS[0])
    second = await text_of(exact, QUESTIONS[4])  # same system prompt
    assert second == await text_of(lone, QUESTIONS[4])
    system_tokens = exact.count_prompt_tokens(chat(""))
    assert prefixes.hits == hits + 1 and prefixes.reused - reused >= system_tokens - 8
    # The next turn of the first conversation reuses the prompt and the reply.
    turn = [*chat(QUESTIONS[0]), {"role": "assistant", "content": first},
            {"role": "user", "content": "And another one?"}]  # fmt: skip
    before = prefixes.reused
    again = "".join([p async for p in exact.stream(turn, GREEDY)])
    assert again == "".join([p async for p in lone.stream(turn, GREEDY)])
    assert prefixes.reused - before >= exact.count_prompt_tokens(chat(QUESTIONS[0]))
    assert prefixes.tokens <= prefixes.capacity
