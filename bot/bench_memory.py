"""`python -m bot bench-memory`: does the context window still hold what a user said
hundreds of turns ago?

Synthetic conversations of 50, 200 and 1,000 turns are written to a real Redis through
the memory store, with facts planted at random depths ("my dog is called Biscuit") among
ordinary media chat and distractors that share their words. At the end each fact is
asked about, the context window is assembled exactly as a reply would assemble it
(`memory.window.assemble_window`: load, recall, build; no model call), and a fact counts
as recalled when its value is inside the window: in a recent turn, a recalled turn, the
profile or the summary. In the same run a last-K baseline fills the same budget with
recent turns only. Reported: recall for both, assembly latency p50/p95 (real Redis),
and tokens used.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.generation.tokenizer import ChatTokenizer
from bot.upkeep import Upkeep
from memory.context import context_budget
from memory.keys import Keys, Scope
from memory.records import Turn
from memory.store import MemorySnapshot, MemoryStore
from memory.window import WindowPolicy, assemble_window
from prompts import load_persona, load_rules

SIZES = (50, 200, 1000)
FACTS_PER_CONVERSATION = 6
CONVERSATIONS_PER_SIZE = 10
UPKEEP_EVERY = 10  # exchanges between two summary folds, as replies would trigger them
DAY = 86400.0

NAMES = ["Biscuit", "Pepper", "Mochi", "Waffles", "Juniper", "Pixel", "Otis", "Luna"]
PEOPLE = ["Margot", "Tobias", "Ingrid", "Rafael", "Soraya", "Declan", "Yuki", "Anouk"]
SHOWS = ["Dark", "Severance", "Fleabag", "Shogun", "Andor", "Slow Horses", "Mr Robot"]
BANDS = ["Radiohead", "Portishead", "Khruangbin", "Massive Attack", "Phoenix", "Bjork"]
CITIES = ["Lisbon", "Glasgow", "Osaka", "Montreal", "Valencia", "Tromso", "Porto"]
JOBS = ["nurse", "carpenter", "translator", "teacher", "chemist", "paramedic"]
FOODS = ["peanuts", "shellfish", "sesame", "kiwi", "mustard", "celery"]
GENRES = ["horror", "musical", "western", "slasher", "romcom", "mockumentary"]
TITLES = ["Heat", "Alien", "Arrival", "Paddington", "Amelie", "Oldboy", "Jaws", "Rocky"]

FACTS: list[tuple[str, str, list[str]]] = [
    ("My dog is called {v}.", "What is my dog called again?", NAMES),
    (
        "I finished {v} last week and loved the ending.",
        "Which series did I finish last week?",
        SHOWS,
    ),
    ("My favourite band is {v}.", "Remind me, what is my favourite band?", BANDS),
    ("I live in {v}, so cinema trips are easy.", "Where do I live?", CITIES),
    ("My sister is named {v} and she loves thrillers.", "What is my sister's name?", PEOPLE),
    ("I'm allergic to {v}, funny detail but true.", "What am I allergic to?", FOODS),
    ("I work as a {v} so I watch things late at night.", "What do I do for work?", JOBS),
    ("Honestly I can't stand {v} films.", "Which kind of films can I not stand?", GENRES),
]
FILLER = [
    "What do you think about {t}?",
    "Any good {g} recommendations for the weekend?",
    "Is {t} worth a rewatch?",
    "My neighbour's dog barks whenever I watch {t}.",
    "Where do bands usually film their music videos?",
    "My cousin says {t} is overrated, what do you think?",
    "Do you know any podcasts about film history?",
    "I saw a poster for {t} on the bus today.",
    "Which soundtrack would you pick for a road trip?",
    "Can you suggest a short series for a sick day?",
    "My friend works at a cinema and gets free tickets.",
    "What is a good film to watch with my family?",
]
REPLIES = [
    "That's a great choice; lots of people love it for its atmosphere.",
    "I'd suggest trying something light first, then a classic.",
    "Good question! Critics are split, but audiences mostly enjoyed it.",
    "Sure, here are a couple of ideas you might like.",
]


@dataclass
class Planted:
    value: str
    question: str


def conversation(rng: random.Random, turns: int) -> tuple[list[str], list[Planted]]:
    """User messages (one per exchange) with facts planted at random depths."""
    exchanges = turns // 2
    messages = [
        rng.choice(FILLER).format(t=rng.choice(TITLES), g=rng.choice(GENRES))
        for _ in range(exchanges)
    ]
    planted: list[Planted] = []
    depths = rng.sample(range(exchanges - 1), min(FACTS_PER_CONVERSATION, exchanges - 1))
    for depth, (statement, question, pool) in zip(
        depths, rng.sample(FACTS, len(depths)), strict=False
    ):
        value = rng.choice(pool)
        messages[depth] = statement.format(v=value)
        planted.append(Planted(value, question))
    return messages, planted


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(
    store: MemoryStore,
    counter: ChatTokenizer,
    *,
    budget: int = 2048,
    sizes: tuple[int, ...] = SIZES,
    seed: int = 7,
    conversations: int = CONVERSATIONS_PER_SIZE,
) -> dict[str, Any]:
    """Run the benchmark on `store` (its key prefix is the caller's to clean up)."""
    rng = random.Random(seed)
    policy = WindowPolicy(budget=budget)
    baseline = WindowPolicy(budget=budget, profile_share=0, summary_share=0, recall_limit=0)
    system = load_persona("default").render(
        user_name="Sam", bot_name="mediabot", rules=load_rules()
    )
    upkeep = Upkeep(store, counter, summary_cap=int(budget * policy.summary_share))
    results: dict[str, Any] = {}
    for size in sizes:
        hits = base_hits = asked = 0
        latencies: list[float] = []
        tokens: list[int] = []
        for _ in range(conversations):
            user, scope = uuid.uuid4().hex, Scope("bench")
            messages, planted = conversation(rng, size)
            start = time.time() - len(messages) * 600.0
            for i, text in enumerate(messages):
                now = start + i * 600.0
                reply = rng.choice(REPLIES)
                await store.append(
                    scope,
                    user,
                    Turn(role="user", text=text, time=now, message_id=f"m{i}",
                         tokens=counter.count_tokens(text)),
                    Turn(role="assistant", text=reply, time=now + 5, message_id=f"r{i}",
                         tokens=counter.count_tokens(reply)),
                )  # fmt: skip
                if (i + 1) % UPKEEP_EVERY == 0:
                    window, _ = await assemble_window(
                        store, counter, policy, scope=scope, user_id=user,
                        system=system, message="ok", now=now,
                    )  # fmt: skip
                    if window.oldest_turn_id is not None:
                        await upkeep.run(scope, user, window.oldest_turn_id)
            for fact in planted:
                began = time.perf_counter()
                window, snapshot = await assemble_window(
                    store, counter, policy, scope=scope, user_id=user,
                    system=system, message=fact.question, now=time.time(),
                )  # fmt: skip
                latencies.append((time.perf_counter() - began) * 1000)
                tokens.append(window.tokens)
                asked += 1
                hits += any(fact.value in m["content"] for m in window.messages)
                plain = baseline.build(
                    counter, system, fact.question, MemorySnapshot(snapshot.turns)
                )
                base_hits += any(fact.value in m["content"] for m in plain.messages)
            await store.forget(user)
        results[str(size)] = {
            "questions": asked,
            "recall": round(hits / asked, 3),
            "baseline_last_k_recall": round(base_hits / asked, 3),
            "build_ms_p50": round(percentile(latencies, 0.5), 2),
            "build_ms_p95": round(percentile(latencies, 0.95), 2),
            "tokens_mean": round(statistics.fmean(tokens), 1),
        }
    return {"budget": budget, "seed": seed, "model_calls_in_build": 0, "sizes": results}


def report(result: dict[str, Any]) -> str:
    lines = [f"context budget {result['budget']} tokens; no model call while building"]
    lines.append("turns  recall  last-K  build p50  build p95  tokens")
    for size, r in result["sizes"].items():
        lines.append(
            f"{size:>5}  {r['recall']:>6.1%}  {r['baseline_last_k_recall']:>6.1%}  "
            f"{r['build_ms_p50']:>6.2f} ms  {r['build_ms_p95']:>6.2f} ms  {r['tokens_mean']:>6.0f}"
        )
    return "\n".join(lines)


async def main(settings: Any, out: Path | None) -> dict[str, Any]:
    """Benchmark against REDIS_URL or an embedded Redis, with the served tokenizer."""
    from bot.generation.weights import model_dir
    from memory.connection import open_redis

    directory = model_dir(settings.model.path, settings.model.cache_dir, print)
    counter = ChatTokenizer.load(directory)
    # The budget a reply gets with these settings.
    gen = settings.generation
    budget = context_budget(
        counter.context_length, gen.max_new_tokens, gen.context_margin, gen.max_context_tokens
    )
    url = settings.redis.url.get_secret_value() if settings.redis.url else None
    prefix = "mbbench" + uuid.uuid4().hex[:8]
    async with open_redis(url, data_dir=settings.redis.data_dir) as client:
        store = MemoryStore(client, keys=Keys(prefix), max_turns=settings.memory.max_turns)
        try:
            result = await run(store, counter, budget=budget)
        finally:
            async for key in client.scan_iter(match=f"{prefix}:*"):
                await client.delete(key)
    if out is not None:
        await asyncio.to_thread(out.write_text, json.dumps(result, indent=2) + "\n")
    return result
