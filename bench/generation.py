"""`python -m bench generation` (`mediabot bench`): generation under load, in one
process and one run.

1. Baseline: the 8-member workload one request at a time through transformers'
   `generate` (the `GENERATION_MAX_BATCH=1` path: sequential, no batching), on the
   same weights.
2. The bot's generator (continuous batching, the fair queue) with 1, 4, 8 and 16
   simulated members at once, each level for the same time. Each member has a
   remembered conversation in a real Redis (their own) and sends a message, reads the
   reply, sends the next; every prompt is built by the real context builder and every
   exchange stored as the bot stores it, so a conversation grows as it goes.
3. A long conversation: one member past the context window sends messages one after
   another (how much of each prompt the model reads, and the time to a first token).
4. Cold start, process start to first token, in a child process: with the converted
   weights cached, and with an empty cache (conversion included).

Reported: aggregate tokens/s (tokens streamed within the level's time) and its ratio
to the baseline, time to first token p50 and p95 (and p95 for members' first messages
and for their later ones apart), per-token latency, peak RSS; as JSON, and a PNG of
throughput and TTFT against concurrency. The figures are for comparison within one
run on one machine.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.llamacpp import table as llamacpp_table
from bench.stats import percentile
from bot.context.build import context_budget
from bot.context.window import WindowPolicy, assemble_window
from bot.generation.base import GenerationError, GenerationParams, Owner
from bot.generation.batch import BatchRequest
from bot.generation.local import LocalGenerator
from bot.generation.tokenizer import load_tokenizer
from bot.generation.weights import model_dir, quiet_transformers
from bot.settings import Settings
from memory.keys import Keys, Scope
from memory.records import Turn
from memory.store import MemoryStore

if TYPE_CHECKING:
    from bot.generation.llama import LlamaModel

SYSTEM = (
    "You are mediabot, a friendly and concise assistant for films, TV shows, music, games, "
    "books and podcasts. Answer in a few sentences."
)
MESSAGES = [
    "Can you recommend a heist film with a clever twist?",
    "What should I watch after finishing Dark?",
    "Tell me about the band Radiohead and where to start with them.",
    "Is Elden Ring a good first soulslike game?",
    "I want a cozy mystery novel for a rainy weekend.",
    "Which podcast explains the history of cinema well?",
    "What is a good animated film for a family evening?",
    "Who composed the music for Interstellar, and what else did they score?",
]
# Each simulated member's remembered conversation is drawn from these (a different
# draw per member, and their own name), so members share only the system prompt.
HISTORY = [
    ("I love science fiction films, especially slow ones.", "Then try Arrival or Solaris."),
    ("I watched Arrival last week and loved the ending.", "Its ending rewards a rewatch."),
    ("My favourite band is Radiohead.", "OK Computer is a great place to start."),
    ("I don't like horror much.", "Noted: I'll keep horror out of suggestions."),
    ("I play a lot of strategy games on weekends.", "Civilization VI or Into the Breach?"),
    ("My favourite book is Dune.", "Then the audiobook and the two new films are worth it."),
    ("I listen to history podcasts on my commute.", "Hardcore History is a long classic."),
    ("I finished Dark and Severance this month.", "Both reward a second watch."),
    ("My favourite director is Denis Villeneuve.", "Sicario and Prisoners are his tensest."),
    ("I can't stand musicals.", "Understood: no musicals."),
    ("My daughter loves Studio Ghibli films.", "My Neighbor Totoro is a gentle start."),
    ("I'm into jazz lately, mostly Coltrane.", "A Love Supreme is essential listening."),
    ("I prefer short books I can finish in a weekend.", "Novellas it is, then."),
    ("I've been replaying Hollow Knight.", "Silksong continues that world."),
]
HISTORY_TURNS = 10  # exchanges remembered per member before the benchmark starts
CONVERSATION_TURNS = 4  # messages a member sends before starting a new conversation
LONG_HISTORY_EXCHANGES = 120  # remembered by the member of `long_conversation`


@dataclass
class Rig:
    """What every simulated request uses: memory, the window rules, the parameters."""

    store: MemoryStore
    policy: WindowPolicy
    params: GenerationParams
    history: bool  # members have a remembered conversation before they speak


@dataclass
class Result:
    ttft: float  # seconds from asking to the first piece
    duration: float  # seconds from asking to the last piece
    tokens: int
    prompt_tokens: int
    first: bool  # the first message of a conversation (nothing of it cached)
    opening: bool  # the member's first message in the level (all members at once)


def rss_peak_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM: `ru_maxrss` of a process
    started by another also counts the parent's memory when it forked (it is carried
    across exec), so a child of this benchmark would report the benchmark's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def seed_conversation(
    store: MemoryStore, scope: Scope, who: str, seed: int, counter: LocalGenerator
) -> None:
    """What a member said before the benchmark: a name and a draw of `HISTORY`."""
    rng = random.Random(seed)
    history = [(f"Hi, I'm Member{seed}.", f"Nice to meet you, Member{seed}!")]
    history += [rng.choice(HISTORY) for _ in range(HISTORY_TURNS - 1)]
    for i, (said, answer) in enumerate(history):
        at = 1_700_000_000.0 + i * 60
        await store.append(
            scope, who,
            Turn(role="user", text=said, time=at, message_id=f"{who}-{i}",
                 tokens=counter.count_tokens(said)),
            Turn(role="assistant", text=answer, time=at + 1,
                 tokens=counter.count_tokens(answer)),
        )  # fmt: skip


def message(user: int, turn: int) -> str:
    """A member's `turn`-th message (the same in the baseline and in each level)."""
    return random.Random(user * 1000 + turn).choice(MESSAGES)


async def one_request(
    gen: LocalGenerator, rig: Rig, scope: Scope, user: int, *, turn: int, deadline: float,
    who: str | None = None,
) -> Result:  # fmt: skip
    """One chat message as the bot handles it: the window built from memory, the reply
    streamed, then both turns stored (so the member's next prompt extends this one).
    Tokens streamed after `deadline` are not counted, and the reply is stopped there
    (once its first token came: every request's waiting time is measured). With `who`,
    the message continues that conversation, whatever its length."""
    # A member's conversation lasts CONVERSATION_TURNS messages, then they start
    # another: conversations are as long in every level and in the baseline, however
    # fast each goes.
    conversation, position = divmod(turn, CONVERSATION_TURNS)
    if who is not None:
        position = 1
    else:
        who = f"user{user}-{conversation}"
    if position == 0 and rig.history:
        await seed_conversation(rig.store, scope, who, user * 1000 + conversation, gen)
    asked = time.perf_counter()
    text = message(user, turn)
    window, _ = await assemble_window(
        rig.store, gen, rig.policy, scope=scope, user_id=who, system=SYSTEM,
        message=text, now=time.time(),
    )  # fmt: skip
    first = 0.0
    pieces = []
    owner = Owner(f"user{user}", "bench")
    stream = gen.stream(window.messages, rig.params, owner=owner)
    try:
        async for piece in stream:
            now = time.perf_counter()
            if not first:
                first = now
            if now > deadline:
                break
            pieces.append(piece)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    end = min(time.perf_counter(), deadline)
    reply = "".join(pieces)
    if time.perf_counter() <= deadline:
        stamp = time.time()
        await rig.store.append(
            scope, who,
            Turn(role="user", text=text, time=stamp, message_id=uuid.uuid4().hex,
                 tokens=gen.count_tokens(text)),
            Turn(role="assistant", text=reply or "…", time=stamp,
                 tokens=gen.count_tokens(reply)),
        )  # fmt: skip
    return Result(
        ttft=(first or end) - asked, duration=max(end - asked, 0.0),
        tokens=gen.count_tokens(reply), prompt_tokens=len(gen.render(window.messages)),
        first=position == 0, opening=turn == 0,
    )  # fmt: skip


async def run_level(
    gen: LocalGenerator, rig: Rig, scope: Scope, users: int, seconds: float, *,
    at_least: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """`users` members at once for `seconds`: each sends a message, reads the reply,
    sends the next, until the time is up. With `at_least`, each member's first that
    many messages are answered whole however long they take (the level then lasts as
    long as they do: a slow machine gives slower figures, never empty ones)."""
    start = time.perf_counter()
    deadline = start + seconds

    async def member(u: int) -> list[Result]:
        results: list[Result] = []
        turn = 0
        while time.perf_counter() < deadline or turn < at_least:
            until = deadline if turn >= at_least else math.inf
            results.append(await one_request(gen, rig, scope, u, turn=turn, deadline=until))
            turn += 1
        return results

    per_user = await asyncio.gather(*(member(u) for u in range(users)))
    wall = max(seconds, time.perf_counter() - start)
    return summarise([r for rs in per_user for r in rs], wall, users)


def summarise(results: list[Result], wall: float, users: int) -> dict[str, Any]:
    tokens = sum(r.tokens for r in results)
    ttfts = [r.ttft for r in results]
    firsts = [r.ttft for r in results if r.first]
    laters = [r.ttft for r in results if not r.first]
    # Past the level's opening, when every member sent their first message at the same
    # instant and those prompts queue behind each other however they are scheduled.
    settled = [r.ttft for r in results if not r.opening]
    per_token = [(r.duration - r.ttft) / (r.tokens - 1) for r in results if r.tokens > 1]
    return {
        "users": users,
        "requests": len(results),
        "prompt_tokens_mean": round(sum(r.prompt_tokens for r in results) / len(results)),
        "tokens": tokens,
        "seconds": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1) if wall else 0.0,
        "ttft_p50_s": round(percentile(ttfts, 0.50), 3),
        "ttft_p95_s": round(percentile(ttfts, 0.95), 3),
        # A member's first message (nothing of it cached) and their later ones (the
        # conversation so far read already), apart.
        "ttft_first_p95_s": round(percentile(firsts, 0.95), 3) if firsts else None,
        "ttft_later_p95_s": round(percentile(laters, 0.95), 3) if laters else None,
        "ttft_after_opening_p95_s": round(percentile(settled, 0.95), 3) if settled else None,
        # Below CONVERSATION_TURNS the level was too short to reach its steady mix of
        # first and later messages (raise --seconds).
        "requests_per_member": round(len(results) / users, 1),
        "per_token_ms": round(1000 * sum(per_token) / len(per_token), 1) if per_token else 0.0,
        "peak_rss_mb": round(rss_peak_mb(), 1),
    }


async def baseline(
    gen: LocalGenerator, rig: Rig, scope: Scope, users: int, seconds: float, *,
    at_least: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """The `users`-member workload (the same conversations, the same messages) strictly
    one request after another through `generate`, for `seconds` (and `at_least` whole
    messages of each member, as `run_level`)."""
    start = time.perf_counter()
    deadline = start + seconds
    results: list[Result] = []
    turn = 0
    while time.perf_counter() < deadline or turn < at_least:
        for u in range(users):
            if time.perf_counter() >= deadline and turn >= at_least:
                break
            until = deadline if turn >= at_least else math.inf
            results.append(await one_request(gen, rig, scope, u, turn=turn, deadline=until))
        turn += 1
    summary = summarise(results, max(seconds, time.perf_counter() - start), 1)
    summary["requests_per_member"] = round(len(results) / users, 1)
    return summary


async def long_conversation(
    gen: LocalGenerator, rig: Rig, scope: Scope, messages: int
) -> dict[str, Any]:
    """One member alone, deep in a conversation longer than the context window
    (LONG_HISTORY_EXCHANGES exchanges remembered), sending `messages` messages one
    after another: how much of each prompt the model has to read, and how long the
    first token takes. Every window drops the conversation's oldest turns, and older
    turns matching the message are recalled."""
    who = "long-member"
    rng = random.Random(7)
    for i in range(LONG_HISTORY_EXCHANGES):
        said, answer = rng.choice(HISTORY)
        at = 1_700_000_000.0 + i * 60
        await rig.store.append(
            scope, who,
            Turn(role="user", text=said, time=at, message_id=f"{who}-{i}",
                 tokens=gen.count_tokens(said)),
            Turn(role="assistant", text=answer, time=at + 1, tokens=gen.count_tokens(answer)),
        )  # fmt: skip
    results, read = [], []
    for turn in range(messages):
        before = prompt_tokens_read(gen)
        result = await one_request(
            gen, rig, scope, 0, turn=turn, deadline=time.perf_counter() + 600, who=who
        )
        results.append(result)
        read.append(prompt_tokens_read(gen) - before)
    ttfts = [r.ttft for r in results]
    prompt = sum(r.prompt_tokens for r in results)
    return {
        "messages": messages,
        "prompt_tokens_mean": round(prompt / messages),
        "read_tokens_mean": round(sum(read) / messages),
        # The share of the prompts' tokens the model read; the rest came from its cache.
        "read_share": round(sum(read) / max(prompt, 1), 3),
        "read_tokens": read,
        "prompt_tokens": [r.prompt_tokens for r in results],
        "ttft_p50_s": round(percentile(ttfts, 0.50), 3),
        "ttft_p95_s": round(percentile(ttfts, 0.95), 3),
    }


def progress(text: str) -> None:
    """A step worth a line (the model's first conversion), on stderr: stdout is JSON.
    (Not bot.cli's: the cold-start child imports this module, and only what the bot's
    loading needs.)"""
    print(text, file=sys.stderr, flush=True)


def prompt_tokens_read(gen: LocalGenerator) -> int:
    stats = gen.engine_stats()
    return stats.read if stats is not None else 0


def cold_start(cache_dir: Path) -> tuple[float, float]:
    """Seconds from starting a Python process to its first generated token, and that
    process's peak RSS in MB."""
    env = {**os.environ, "MODEL_CACHE_DIR": str(cache_dir)}
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "bench.generation", "--first-token"],
        env=env, capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    first, rss = (float(x) for x in out.stdout.strip().splitlines()[-1].split())
    return round(first - started, 2), round(rss, 1)


def reset_rss_peak() -> bool:
    """Start this process's peak resident memory (VmHWM) again from what it holds now
    (Linux's /proc/self/clear_refs); False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def serving_memory(
    members: int, seconds: float, max_new_tokens: int, history: bool
) -> dict[str, float | None]:
    """A fresh process loaded as the bot loads (no transformers model) serving
    `members` members for `seconds`: the whole process's peak RSS in MB
    (`serving_peak_rss_mb`) and, apart, its peak from the end of its start on
    (`serving_after_start_peak_rss_mb`; None where the peak cannot be reset). The start
    checks the remembered ways of computing with an 8-row KV slab, held for a moment."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.generation", "--serve", str(members), str(seconds),
         str(max_new_tokens), "1" if history else "0"],
        capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    whole, after = out.stdout.strip().splitlines()[-1].split()
    return {
        "serving_peak_rss_mb": round(float(whole), 1),
        "serving_after_start_peak_rss_mb": None if after == "-" else round(float(after), 1),
    }


def _serve(members: int, seconds: float, max_new_tokens: int, history: bool) -> None:
    from memory.connection import open_redis

    settings = Settings.from_env()
    gen = LocalGenerator.load(
        settings.model, max_batch=settings.generation.max_batch,
        prefix_mb=settings.generation.prefix_cache_mb,
    )  # fmt: skip
    budget = context_budget(gen.context_length, max_new_tokens, 16,
                            settings.generation.max_context_tokens)  # fmt: skip
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    url = settings.redis.url.get_secret_value() if settings.redis.url else None
    prefix = "mbbench" + uuid.uuid4().hex[:8]
    started = rss_peak_mb()
    apart = reset_rss_peak()

    async def go() -> None:
        async with open_redis(url, data_dir=settings.redis.data_dir) as client:
            store = MemoryStore(client, keys=Keys(prefix))
            rig = Rig(store, WindowPolicy(budget=budget), params, history)
            try:
                await run_level(gen, rig, Scope("serve"), members, seconds)
            finally:
                async for key in client.scan_iter(match=f"{prefix}:*"):
                    await client.delete(key)

    asyncio.run(go())
    gen.close()
    peak = rss_peak_mb()
    # The whole process's peak, and the peak since the start where it could be reset.
    print(f"{max(started, peak):.1f} {f'{peak:.1f}' if apart else '-'}", flush=True)


def _first_token() -> None:
    """In a fresh process: load as the bot does and print when the first piece came."""
    settings = Settings.from_env()
    gen = LocalGenerator.load(settings.model, max_batch=settings.generation.max_batch)

    async def go() -> None:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi!"}]
        params = GenerationParams(max_new_tokens=4, temperature=0.0)
        async for _ in gen.stream(messages, params):
            print(f"{time.time():.3f} {rss_peak_mb():.1f}", flush=True)
            break

    asyncio.run(go())
    gen.close()


async def against_generate_batch(
    settings: Settings, prompts: int = 8, tokens: int = 64
) -> dict[str, Any]:
    """The same short prompts at once, `tokens` greedy tokens each (no end token), through
    transformers' own continuous batching (`generate_batch`) and through this engine."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    gen = LocalGenerator.load(settings.model, max_batch=prompts, prefix_mb=0)
    assert gen.engine is not None
    directory = model_dir(settings.model.path, settings.model.cache_dir, progress)
    model = transformers_model(gen, directory)
    tokenizer = load_tokenizer(directory)
    pad = tokenizer.pad_token_id
    ids = [gen.render([{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": m}]) for m in MESSAGES[:prompts]]  # fmt: skip
    config = GenerationConfig(
        max_new_tokens=tokens, do_sample=False, eos_token_id=-1,
        pad_token_id=pad if pad is not None else tokenizer.eos_token_id,
    )  # fmt: skip
    # transformers sizes its paged cache by the memory free on the device, which on a CPU
    # is the machine's: left to it, the process grew past 15 GB for two prompts. It gets
    # room for this workload: every prompt with its new tokens, all read in one batch.
    batching = ContinuousBatchingConfig(max_requests_per_batch=len(ids))
    page = batching.page_size
    batching.num_blocks = sum(-(-(len(p) + tokens) // page) for p in ids) + 1
    batching.max_batch_tokens = sum(len(p) for p in ids)

    def theirs() -> float:
        import torch

        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate_batch(
                ids, generation_config=config, continuous_batching_config=batching,
                progress_bar=False,
            )  # fmt: skip
        made = sum(len(o.generated_tokens) for o in out.values())
        return made / (time.perf_counter() - started)

    async def ours() -> float:
        loop = asyncio.get_running_loop()
        params = GenerationParams(max_new_tokens=tokens, temperature=0.0,
                                  repetition_penalty=1.0)  # fmt: skip
        made = [0] * len(ids)
        futures = []
        started = time.perf_counter()
        for i, prompt in enumerate(ids):
            done: asyncio.Future[None] = loop.create_future()
            futures.append(done)

            def count(_: int, i: int = i) -> None:
                made[i] += 1

            def finish(_: BaseException | None, done: asyncio.Future[None] = done) -> None:
                loop.call_soon_threadsafe(done.set_result, None)

            assert gen.engine is not None
            gen.engine.submit(BatchRequest(prompt, params, tokens, count, finish))
        await asyncio.gather(*futures)
        return sum(made) / (time.perf_counter() - started)

    try:
        await ours()  # warm-up, both
        await asyncio.wrap_future(gen.engine.call(theirs))
        result = {
            "prompts": len(ids),
            "new_tokens": tokens,
            "generate_batch_tokens_per_s": round(
                await asyncio.wrap_future(gen.engine.call(theirs)), 1
            ),
            "engine_tokens_per_s": round(await ours(), 1),
        }
    finally:
        gen.close()
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["batched"]
    users = [lv["users"] for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(users, [lv["tokens_per_s"] for lv in levels], marker="o", label="batched")
    left.axhline(result["baseline"]["tokens_per_s"], color="grey", linestyle="--",
                 label="sequential generate")  # fmt: skip
    left.set_xlabel("concurrent users")
    left.set_ylabel("aggregate tokens/s")
    left.legend()
    right.plot(users, [lv["ttft_p50_s"] for lv in levels], marker="o", label="p50")
    right.plot(users, [lv["ttft_p95_s"] for lv in levels], marker="o", label="p95")
    right.set_xlabel("concurrent users")
    right.set_ylabel("time to first token (s)")
    right.legend()
    fig.suptitle("mediabot generation under load")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def main(  # noqa: PLR0915 - the benchmark's steps, read top to bottom
    settings: Settings,
    *,
    levels: list[int],
    seconds: float,
    max_new_tokens: int,
    cold: bool,
    out: Path | None,
    png: Path | None,
    history: bool = True,
    long_messages: int = 0,
    at_least: int = 0,
    llamacpp: Any = None,  # bench/llamacpp.py's SideBySide: llama.cpp after each level
) -> dict[str, Any]:
    """The benchmark (see the module's docstring); `at_least`: each member's first
    messages answered whole in every level and in the baseline, whatever the clock
    says (for the tests, which must not depend on the machine's speed)."""
    from memory.connection import open_redis

    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    # Cold start first, while this process has loaded nothing: afterwards torch's idle
    # worker threads here would compete with the child for the cores (measured: 7.7 s
    # after the levels against 4.5-4.8 s on an idle machine).
    cold_start_s: dict[str, float] = {}
    if cold:
        cached, rss = await asyncio.to_thread(cold_start, settings.model.cache_dir)
        cold_start_s["cold_start_cached_s"] = cached
        cold_start_s["cold_start_peak_rss_mb"] = rss
        with tempfile.TemporaryDirectory() as empty:
            uncached, _ = await asyncio.to_thread(cold_start, Path(empty))
            cold_start_s["cold_start_uncached_s"] = uncached
    width = max(settings.generation.max_batch, *levels)
    batched = LocalGenerator.load(
        settings.model, max_batch=width, per_user=2, queue_max=max(64, 4 * max(levels)),
        prefix_mb=settings.generation.prefix_cache_mb,
    )  # fmt: skip
    # The baseline shares the loaded weights: one request at a time through generate().
    lone = sequential(batched, model_dir(settings.model.path, settings.model.cache_dir, progress))
    budget = context_budget(batched.context_length, max_new_tokens, 16,
                            settings.generation.max_context_tokens)  # fmt: skip
    policy = WindowPolicy(budget=budget)
    url = settings.redis.url.get_secret_value() if settings.redis.url else None
    prefix = "mbbench" + uuid.uuid4().hex[:8]
    result: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "seconds_per_level": seconds,
        "batch_width": width,
        "torch_threads": __import__("torch").get_num_threads(),
        "dtype": str(batched.fast.dtype).removeprefix("torch.") if batched.fast else None,
        "weight_products": batched.fast.products if batched.fast else None,
        "attention": batched.fast.attention if batched.fast else None,
        "int4_rows": batched.fast.int4_rows if batched.fast else None,
        "remembered_history": history,
    }
    if llamacpp is not None:
        result["llamacpp"] = await llamacpp.prepare(
            threads=result["torch_threads"], prompt_budget=budget, params=params
        )
    try:
        async with open_redis(url, data_dir=settings.redis.data_dir) as client:
            store = MemoryStore(client, keys=Keys(prefix))
            rig = Rig(store, policy, params, history)
            try:
                # Warm-up: the first forward passes are slower.
                await one_request(
                    batched, rig, Scope("warm-up"), 0, turn=0, deadline=time.perf_counter() + 60
                )
                # The baseline runs the 8-member workload (the same conversations and
                # messages as the 8-member level), one request at a time.
                members = min(max(levels), 8)
                result["baseline"] = base = await baseline(
                    lone, rig, Scope("baseline"), members, seconds, at_least=at_least
                )
                result["batched"] = await run_levels(
                    batched, rig, levels, seconds, base["tokens_per_s"], at_least=at_least,
                    llamacpp=llamacpp,
                )  # fmt: skip
                if long_messages:
                    if batched.engine is not None:
                        batched.engine.prefixes.clear()
                    result["long_conversation"] = await long_conversation(
                        batched, rig, Scope("long"), long_messages
                    )
            finally:
                async for key in client.scan_iter(match=f"{prefix}:*"):
                    await client.delete(key)
    finally:
        lone.close()
        batched.close()
    result.update(ttft_ratios(result["batched"]))
    result["peak_rss_mb"] = round(rss_peak_mb(), 1)
    result.update(cold_start_s)
    if cold:
        # What a server admin sees: the bot's process (its engine, no transformers
        # model, no baseline) with eight members talking, measured apart.
        members = min(max(levels), 8)
        result["serving_members"] = members
        result.update(
            await asyncio.to_thread(
                serving_memory, members, min(seconds, 20.0), max_new_tokens, history
            )
        )
    if out is not None:
        await asyncio.to_thread(out.write_text, json.dumps(result, indent=2) + "\n")
    if png is not None:
        await asyncio.to_thread(plot, result, png)
    return result


def ttft_ratios(levels: list[dict[str, Any]]) -> dict[str, float]:
    """The 8-user TTFT over the 1-user TTFT: p95, p50 and p95 after the opening."""
    out: dict[str, float] = {}
    single = next((lv for lv in levels if lv["users"] == 1), None)
    eight = next((lv for lv in levels if lv["users"] == 8), None)
    if single and eight:
        # Like for like: the 8-user p95 over the 1-user p95, and the medians; the 1-user
        # median is a conversation's later turn (its prefix cached), the p95 a first one.
        out["ttft_p95_8_users_over_1_user"] = round(
            eight["ttft_p95_s"] / max(single["ttft_p95_s"], 1e-6), 2
        )
        out["ttft_p50_8_users_over_1_user"] = round(
            eight["ttft_p50_s"] / max(single["ttft_p50_s"], 1e-6), 2
        )
        if eight["ttft_after_opening_p95_s"] and single["ttft_after_opening_p95_s"]:
            out["ttft_after_opening_p95_8_users_over_1_user"] = round(
                eight["ttft_after_opening_p95_s"] / max(single["ttft_after_opening_p95_s"], 1e-6),
                2,
            )
    return out


async def run_levels(
    batched: LocalGenerator, rig: Rig, levels: list[int], seconds: float, base: float, *,
    at_least: int = 0, llamacpp: Any = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Each concurrency level, in its own conversations (seeded alike), with the prefix
    cache's share of the prompts."""
    engine = batched.engine
    out = []
    for users in levels:
        scope = Scope(f"level-{users}")
        # Each level starts with an empty prefix cache: conservative, and levels do not
        # depend on their order.
        if engine is not None:
            engine.prefixes.clear()
        before = batched.engine_stats()
        level = await run_level(batched, rig, scope, users, seconds, at_least=at_least)
        after = batched.engine_stats()
        if before is not None and after is not None:
            counts = {k: v - asdict(before)[k] for k, v in asdict(after).items()}
            level["prefix_hits"] = counts["prefix_hits"]
            level["prefix_reused_tokens"] = counts["prefix_hit_tokens"]
            level["prompt_tokens_read"] = counts["read"]
            level["passes"] = counts["passes"]
            level["rows_per_pass"] = round(counts["decoded"] / max(counts["passes"], 1), 2)
            # Share of the level's time the model was computing (the rest: waiting for
            # members' next messages, building windows, storing turns).
            level["model_busy"] = round(counts["busy_s"] / level["seconds"], 2)
        level["ratio_to_baseline"] = round(level["tokens_per_s"] / base, 2) if base else None
        if llamacpp is not None and llamacpp.available:
            # The same members, conversations and messages against llama.cpp's server;
            # and the engine's memory as the bot serves that many (a fresh process).
            other = await llamacpp.level(
                users, lambda gen, u=users: run_level(gen, rig, Scope(f"llamacpp-{u}"), u, seconds)
            )
            side_by_side_ratios(level, other, base)
            level["llamacpp"] = other
            level.update(
                await asyncio.to_thread(
                    serving_memory, users, min(seconds, 20.0), rig.params.max_new_tokens,
                    rig.history,
                )
            )  # fmt: skip
        out.append(level)
    return out


def side_by_side_ratios(
    level: dict[str, Any], other: dict[str, Any] | None, base: float | None
) -> None:
    """The yardsticks of the engine beside llama.cpp, both ways: the engine's tok/s as a
    share of llama.cpp's (`level["ratio_to_llamacpp"]`) and llama.cpp's own over the
    sequential baseline (`other["ratio_to_baseline"]`). Nothing when llama.cpp's level
    failed (an error, or no tokens)."""
    if other is None or not other.get("tokens_per_s"):
        return
    theirs = other["tokens_per_s"]
    level["ratio_to_llamacpp"] = round(level["tokens_per_s"] / theirs, 2)
    other["ratio_to_baseline"] = round(theirs / base, 2) if base else None


def sequential(batched: LocalGenerator, directory: Path) -> LocalGenerator:
    """The baseline: transformers' model of the same prepared directory, on the batched
    generator's weights (see `transformers_model`), replying one `generate` at a time
    on the engine's thread (the only one computing, as in the bot)."""
    model = transformers_model(batched, directory)
    return LocalGenerator(load_tokenizer(directory), model=model, runner=batched.engine)


def transformers_model(gen: LocalGenerator, directory: Path) -> Any:
    """transformers' own model of `directory`, loaded on `gen`'s engine thread in its
    dtype and on its device, its weights then those of the engine's model wherever
    they are plain tensors (packed ones cannot be shared), so no second copy stays."""
    engine, fast = gen.engine, gen.fast
    if engine is None or fast is None:
        raise GenerationError("The baseline needs the batch engine (GENERATION_MAX_BATCH > 1).")

    def load() -> Any:
        from transformers import AutoModelForCausalLM

        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                str(directory), dtype=fast.dtype, local_files_only=True
            )
        model.to(fast.device)
        share_weights(model, fast)
        return model.eval()

    return engine.call(load).result()


def share_weights(model: Any, fast: LlamaModel) -> None:
    """Point a transformers Llama model's weights at the engine model's (the reverse of
    `bot.generation.weights.llama_from_transformers`): q, k and v (and gate and up)
    become views of the joined matrices. A packed matrix keeps transformers' own."""
    c = fast.config
    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    pairs: list[tuple[Any, Any]] = [
        (model.model.embed_tokens.weight, fast.embed), (model.model.norm.weight, fast.norm),
    ]  # fmt: skip
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        pairs.append((model.lm_head.weight, fast.lm_head))
    for layer, theirs in zip(fast.layers, model.model.layers, strict=True):
        attention, mlp = theirs.self_attn, theirs.mlp
        pairs += [
            (theirs.input_layernorm.weight, layer.attention_norm),
            (theirs.post_attention_layernorm.weight, layer.mlp_norm),
            (attention.o_proj.weight, layer.out), (mlp.down_proj.weight, layer.down),
        ]  # fmt: skip
        if layer.out_bias is not None:
            pairs.append((attention.o_proj.bias, layer.out_bias))
        if not layer.qkv.is_mkldnn:
            pairs += [
                (attention.q_proj.weight, layer.qkv[:q]),
                (attention.k_proj.weight, layer.qkv[q : q + kv]),
                (attention.v_proj.weight, layer.qkv[q + kv :]),
            ]
        if layer.qkv_bias is not None:
            pairs += [
                (attention.q_proj.bias, layer.qkv_bias[:q]),
                (attention.k_proj.bias, layer.qkv_bias[q : q + kv]),
                (attention.v_proj.bias, layer.qkv_bias[q + kv :]),
            ]
        if not layer.gate_up.is_mkldnn:
            pairs += [
                (mlp.gate_proj.weight, layer.gate_up[: c.intermediate]),
                (mlp.up_proj.weight, layer.gate_up[c.intermediate :]),
            ]
    for parameter, tensor in pairs:
        if not tensor.is_mkldnn and parameter.shape == tensor.shape:
            parameter.data = tensor


def report(result: dict[str, Any]) -> str:
    base = result["baseline"]
    lines = [
        f"sequential generate: {base['tokens_per_s']} tok/s, TTFT p50 {base['ttft_p50_s']} s",
        "users  tok/s  x baseline  TTFT p50  TTFT p95  p95 after opening  ms/token",
    ]
    short = []
    for lv in result["batched"]:
        lines.append(
            f"{lv['users']:>5}  {lv['tokens_per_s']:>5}  {lv['ratio_to_baseline'] or '-':>10}  "
            f"{lv['ttft_p50_s']:>8}  {lv['ttft_p95_s']:>8}  "
            f"{lv['ttft_after_opening_p95_s'] or '-':>17}  {lv['per_token_ms']:>8}"
        )
        if lv["requests_per_member"] < CONVERSATION_TURNS:
            short.append(str(lv["users"]))
    if short:
        lines.append(
            f"note: at {', '.join(short)} users, members sent fewer than {CONVERSATION_TURNS} "
            "messages each: too short a level for a steady mix of new and running "
            "conversations (raise --seconds)"
        )
    lines += llamacpp_table(result)
    if "long_conversation" in result:
        lc = result["long_conversation"]
        lines.append(
            f"long conversation, one member: {lc['messages']} messages of "
            f"{lc['prompt_tokens_mean']} prompt tokens, {lc['read_tokens_mean']} read each "
            f"({100 * lc['read_share']:.0f}%), TTFT p50 {lc['ttft_p50_s']} s, "
            f"p95 {lc['ttft_p95_s']} s"
        )
    for key in (
        "cold_start_cached_s", "cold_start_uncached_s", "cold_start_peak_rss_mb", "peak_rss_mb",
        "serving_peak_rss_mb", "serving_after_start_peak_rss_mb",
    ):  # fmt: skip
        if key in result:
            lines.append(f"{key}: {result[key]}")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:] == ["--first-token"]:
    _first_token()
elif __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
