"""`python -m bot bench`: generation under load, in one process and one run.

1. Baseline: the same requests one at a time through transformers' `generate`
   (`GENERATION_MAX_BATCH=1` path: sequential, no batching).
2. The bot's generator (continuous batching, the fair queue) with 1, 4, 8 and 16
   simulated users at once. Each user has a remembered conversation in a real Redis
   and sends chat messages in turn; every prompt is built by the real context builder.
3. Cold start, process start to first token, in a child process: with the converted
   weights cached, and with an empty cache (conversion included).

Reported: aggregate tokens/s and its ratio to the baseline, time to first token p50
and p95, per-token latency, peak RSS; as JSON, and a PNG of throughput and TTFT
against concurrency. The figures are for comparison within one run on one machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.bench_memory import percentile
from bot.generation.base import GenerationParams, Owner
from bot.generation.local import LocalGenerator
from bot.settings import Settings
from memory.context import context_budget
from memory.keys import Keys, Scope
from memory.records import Turn
from memory.store import MemoryStore
from memory.window import WindowPolicy, assemble_window

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
HISTORY = [
    ("I love science fiction films, especially slow ones.", "Then try Arrival or Solaris."),
    ("I watched Arrival last week and loved the ending.", "Its ending rewards a rewatch."),
    ("My favourite band is Radiohead.", "OK Computer is a great place to start."),
    ("I don't like horror much.", "Noted: I'll keep horror out of suggestions."),
]


@dataclass
class Rig:
    """What every simulated request uses: memory, the window rules, the parameters."""

    store: MemoryStore
    policy: WindowPolicy
    params: GenerationParams


@dataclass
class Result:
    ttft: float  # seconds from asking to the first piece
    duration: float  # seconds from asking to the last piece
    tokens: int


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def seed_memory(store: MemoryStore, users: int, counter: LocalGenerator) -> None:
    for u in range(users):
        turns = []
        for i, (said, answer) in enumerate(HISTORY * 3):
            at = 1_700_000_000.0 + i * 60
            turns.append(Turn(role="user", text=said, time=at, message_id=f"m{u}-{i}",
                              tokens=counter.count_tokens(said)))  # fmt: skip
            turns.append(Turn(role="assistant", text=answer, time=at + 1, message_id=None,
                              tokens=counter.count_tokens(answer)))  # fmt: skip
        for j in range(0, len(turns), 2):
            await store.append(Scope("bench"), f"user{u}", turns[j], turns[j + 1])


async def one_request(gen: LocalGenerator, rig: Rig, user: int, message: str) -> Result:
    asked = time.perf_counter()
    window, _ = await assemble_window(
        rig.store, gen, rig.policy, scope=Scope("bench"), user_id=f"user{user}", system=SYSTEM,
        message=message, now=time.time(),
    )  # fmt: skip
    first = 0.0
    pieces = []
    owner = Owner(f"user{user}", "bench")
    async for piece in gen.stream(window.messages, rig.params, owner=owner):
        if not first:
            first = time.perf_counter()
        pieces.append(piece)
    end = time.perf_counter()
    text = "".join(pieces)
    return Result(first - asked if first else end - asked, end - asked, gen.count_tokens(text))


async def run_level(
    gen: LocalGenerator, rig: Rig, users: int, requests_per_user: int
) -> dict[str, Any]:
    """`users` users at once, each sending `requests_per_user` messages in turn."""

    async def user_loop(u: int) -> list[Result]:
        rng = random.Random(u)
        return [
            await one_request(gen, rig, u, rng.choice(MESSAGES)) for _ in range(requests_per_user)
        ]

    start = time.perf_counter()
    per_user = await asyncio.gather(*(user_loop(u) for u in range(users)))
    wall = time.perf_counter() - start
    return summarise([r for rs in per_user for r in rs], wall, users)


def summarise(results: list[Result], wall: float, users: int) -> dict[str, Any]:
    tokens = sum(r.tokens for r in results)
    ttfts = [r.ttft for r in results]
    per_token = [(r.duration - r.ttft) / (r.tokens - 1) for r in results if r.tokens > 1]
    return {
        "users": users,
        "requests": len(results),
        "tokens": tokens,
        "seconds": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1) if wall else 0.0,
        "ttft_p50_s": round(percentile(ttfts, 0.50), 3),
        "ttft_p95_s": round(percentile(ttfts, 0.95), 3),
        "per_token_ms": round(1000 * sum(per_token) / len(per_token), 1) if per_token else 0.0,
        "peak_rss_mb": round(rss_peak_mb(), 1),
    }


async def baseline(gen: LocalGenerator, rig: Rig, requests: int) -> dict[str, Any]:
    """The same kind of requests strictly one after another through `generate`."""
    rng = random.Random(0)
    start = time.perf_counter()
    results = [await one_request(gen, rig, i % 8, rng.choice(MESSAGES)) for i in range(requests)]
    return summarise(results, time.perf_counter() - start, 1)


def cold_start(cache_dir: Path) -> float:
    """Seconds from starting a Python process to its first generated token."""
    env = {**os.environ, "MODEL_CACHE_DIR": str(cache_dir)}
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "bot.bench_generation", "--first-token"],
        env=env, capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    first = float(out.stdout.strip().splitlines()[-1])
    return round(first - started, 2)


def _first_token() -> None:
    """In a fresh process: load as the bot does and print when the first piece came."""
    settings = Settings.from_env()
    gen = LocalGenerator.load(settings.model, max_batch=settings.generation.max_batch)

    async def go() -> None:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi!"}]
        params = GenerationParams(max_new_tokens=4, temperature=0.0)
        async for _ in gen.stream(messages, params):
            print(f"{time.time():.3f}", flush=True)
            break

    asyncio.run(go())
    gen.close()


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


async def main(
    settings: Settings,
    *,
    levels: list[int],
    requests_per_user: int,
    max_new_tokens: int,
    cold: bool,
    out: Path | None,
    png: Path | None,
    history: bool = True,
) -> dict[str, Any]:
    from memory.connection import open_redis

    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    # Cold start first, while this process has loaded nothing: afterwards torch's idle
    # worker threads here would compete with the child for the cores (measured: 7.7 s
    # after the levels against 4.5-4.8 s on an idle machine).
    cold_start_s: dict[str, float] = {}
    if cold:
        cold_start_s["cold_start_cached_s"] = await asyncio.to_thread(
            cold_start, settings.model.cache_dir
        )
        with tempfile.TemporaryDirectory() as empty:
            cold_start_s["cold_start_uncached_s"] = await asyncio.to_thread(cold_start, Path(empty))
    width = max(settings.generation.max_batch, *levels)
    batched = LocalGenerator.load(
        settings.model, max_batch=width, per_user=2, queue_max=max(64, 4 * max(levels)),
        prefix_tokens=settings.generation.prefix_cache_tokens,
    )  # fmt: skip
    # The baseline shares the loaded model: one request at a time through generate().
    lone = LocalGenerator(batched._model, batched._tokenizer, max_batch=1)
    budget = context_budget(batched.context_length, max_new_tokens, 16,
                            settings.generation.max_context_tokens)  # fmt: skip
    policy = WindowPolicy(budget=budget)
    url = settings.redis.url.get_secret_value() if settings.redis.url else None
    prefix = "mbbench" + uuid.uuid4().hex[:8]
    result: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "requests_per_user": requests_per_user,
        "batch_width": width,
        "torch_threads": __import__("torch").get_num_threads(),
        "remembered_history": history,
    }
    try:
        async with open_redis(url, data_dir=settings.redis.data_dir) as client:
            store = MemoryStore(client, keys=Keys(prefix))
            rig = Rig(store, policy, params)
            try:
                if history:
                    await seed_memory(store, max(*levels, 8), batched)
                # Warm-up: the first forward passes are slower.
                await one_request(batched, rig, 0, MESSAGES[0])
                result["baseline"] = await baseline(
                    lone, rig, requests=min(levels[-1], 8) * requests_per_user
                )
                result["batched"] = await run_levels(
                    batched, rig, levels, requests_per_user, result["baseline"]["tokens_per_s"]
                )
            finally:
                async for key in client.scan_iter(match=f"{prefix}:*"):
                    await client.delete(key)
    finally:
        lone.close()
        batched.close()
    single = next((lv for lv in result["batched"] if lv["users"] == 1), None)
    eight = next((lv for lv in result["batched"] if lv["users"] == 8), None)
    if single and eight:
        # Like for like: the 8-user p95 over the 1-user p95, and the medians; the 1-user
        # median is a conversation's later turn (its prefix cached), the p95 a first one.
        result["ttft_p95_8_users_over_1_user"] = round(
            eight["ttft_p95_s"] / max(single["ttft_p95_s"], 1e-6), 2
        )
        result["ttft_p50_8_users_over_1_user"] = round(
            eight["ttft_p50_s"] / max(single["ttft_p50_s"], 1e-6), 2
        )
    result["peak_rss_mb"] = round(rss_peak_mb(), 1)
    result.update(cold_start_s)
    if out is not None:
        await asyncio.to_thread(out.write_text, json.dumps(result, indent=2) + "\n")
    if png is not None:
        await asyncio.to_thread(plot, result, png)
    return result


async def run_levels(
    batched: LocalGenerator, rig: Rig, levels: list[int], requests_per_user: int, base: float
) -> list[dict[str, Any]]:
    """Each concurrency level, with the prefix cache's share of the prefill."""
    engine = batched.engine
    out = []
    for users in levels:
        # Each level starts with an empty prefix cache: conservative, and levels do not
        # depend on their order.
        hits = reused = 0
        if engine is not None:
            engine.prefixes.clear()
            hits, reused = engine.prefixes.hits, engine.prefixes.reused
        level = await run_level(batched, rig, users, requests_per_user)
        if engine is not None:
            level["prefix_hits"] = engine.prefixes.hits - hits
            level["prefix_reused_tokens"] = engine.prefixes.reused - reused
        level["ratio_to_baseline"] = round(level["tokens_per_s"] / base, 2)
        out.append(level)
    return out


def report(result: dict[str, Any]) -> str:
    base = result["baseline"]
    lines = [
        f"sequential generate: {base['tokens_per_s']} tok/s, TTFT p50 {base['ttft_p50_s']} s",
        "users  tok/s  x baseline  TTFT p50  TTFT p95  ms/token",
    ]
    for lv in result["batched"]:
        lines.append(
            f"{lv['users']:>5}  {lv['tokens_per_s']:>5}  {lv['ratio_to_baseline']:>10}  "
            f"{lv['ttft_p50_s']:>8}  {lv['ttft_p95_s']:>8}  {lv['per_token_ms']:>8}"
        )
    for key in ("cold_start_cached_s", "cold_start_uncached_s", "peak_rss_mb"):
        if key in result:
            lines.append(f"{key}: {result[key]}")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:] == ["--first-token"]:
    _first_token()
