"""Long-term memory against a real Redis: recall beyond the window, profile facts,
the rolling summary (invalidation, locking, versions), and forgetting all of it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bot.context.window import WindowPolicy, assemble_window
from bot.generation.base import GenerationParams, GeneratorBusy
from bot.generation.local import LocalGenerator
from bot.upkeep import Upkeep, summary_lines
from memory import profile
from memory.connection import RedisClient
from memory.keys import Keys, Scope
from memory.recall import Candidate, Corpus, rank, terms
from memory.records import Summary, Turn
from memory.store import MemoryStore, UpkeepBusy
from tests.conftest import REDIS_CLUSTER

pytestmark = REDIS_CLUSTER

GUILD = Scope("42")
OTHER = Scope("43")
SYSTEM = "You are mediabot."
FILLER = "What do you think about the soundtrack of that new space opera everyone mentions?"
REPLY = "Critics liked its score a lot; the main theme is the part people remember most."


async def chat(store: MemoryStore, gen: LocalGenerator, scope: Scope, user: str,
               texts: list[str], start: float = 0.0) -> None:  # fmt: skip
    for i, text in enumerate(texts):
        now = (start or time.time() - 86400) + i * 60
        await store.append(
            scope,
            user,
            Turn(role="user", text=text, time=now, message_id=f"{scope.name}-m{i}",
                 tokens=gen.count_tokens(text)),
            Turn(role="assistant", text=REPLY, time=now + 1, message_id=None,
                 tokens=gen.count_tokens(REPLY)),
        )  # fmt: skip


def window_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


async def test_a_fact_far_beyond_the_window_is_recalled(
    store: MemoryStore, generator: LocalGenerator
) -> None:
    texts = [FILLER] * 120
    texts[3] = "By the way, my sister is named Ingrid and she adores thrillers."
    await chat(store, generator, GUILD, "u1", texts)
    policy = WindowPolicy(budget=600)
    window, snapshot = await assemble_window(
        store, generator, policy, scope=GUILD, user_id="u1", system=SYSTEM,
        message="What is my sister's name?", now=time.time(),
    )  # fmt: skip
    assert snapshot.turns[0].id > 8  # the fact's turn is far outside the recent turns
    assert window.recalled >= 1
    # In the user's message, before what they ask now: they are the user's own words.
    assert "Ingrid" in window.messages[-1]["content"]
    assert window.messages[-1]["content"].endswith("What is my sister's name?")
    assert "Ingrid" not in window.messages[0]["content"]
    assert window.tokens <= 600
    # The same question with recall off: the fact is gone.
    plain = WindowPolicy(budget=600, recall_limit=0).build(generator, SYSTEM, "hi", snapshot)
    assert "Ingrid" not in window_text(plain.messages)


async def test_recall_never_crosses_scopes(store: MemoryStore, generator: LocalGenerator) -> None:
    texts = [FILLER] * 60
    texts[0] = "My secret code word is marmalade."
    await chat(store, generator, OTHER, "u1", texts)
    await chat(store, generator, GUILD, "u1", [FILLER] * 60)
    window, _ = await assemble_window(
        store, generator, WindowPolicy(budget=600), scope=GUILD, user_id="u1",
        system=SYSTEM, message="What is my secret code word?", now=time.time(),
    )  # fmt: skip
    assert "marmalade" not in window_text(window.messages)


def test_the_threshold_is_exact_and_recency_decays() -> None:
    now = 1_000_000.0
    fresh = Candidate(1, now, tuple(terms("my dog is called Biscuit")))
    old = Candidate(2, now - 90 * 86400, tuple(terms("my dog is called Pepper")))
    ranked = rank("what is my dog called", [fresh, old], now=now, threshold=0.0,
                  half_life_days=90, limit=5)  # fmt: skip
    assert [r.turn_id for r in ranked] == [1, 2]
    assert ranked[1].score == pytest.approx(ranked[0].score / 2)  # one half-life older
    exact = ranked[0].score
    kept = rank("what is my dog called", [fresh], now=now, threshold=exact,
                half_life_days=90, limit=5)  # fmt: skip
    assert [r.turn_id for r in kept] == [1]  # >= threshold
    dropped = rank("what is my dog called", [fresh], now=now, threshold=exact + 1e-9,
                   half_life_days=90, limit=5)  # fmt: skip
    assert dropped == []
    assert rank("", [fresh], now=now, threshold=0, half_life_days=90, limit=5) == []
    # Statistics of a larger corpus lower a common term's weight.
    wide = rank("dog", [fresh], now=now, threshold=0, half_life_days=0, limit=5,
                corpus=Corpus(docs=100, terms=500))  # fmt: skip
    assert wide[0].score > 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hi, my name is Ada Lovelace.", {("name", "Ada Lovelace")}),
        ("My name is Ada.", {("name", "Ada")}),
        ("call me Sam please", {("name", "Sam")}),
        ("My pronouns are she/her.", {("pronouns", "she/her")}),
        ("My favourite film is Heat, obviously.", {("favourite film", "Heat")}),
        (
            "my favorite band is Massive Attack and that's final",
            {("favourite band", "Massive Attack")},
        ),
        ("I finished Dark last week.", {("has seen", "Dark")}),
        ("I've seen Severance twice", {("has seen", "Severance twice")}),
        ("My dog is called Biscuit.", {("dog", "Biscuit")}),
        ("I live in Lisbon.", {("lives in", "Lisbon")}),
        ("I can't stand horror.", {("can't stand", "horror")}),
        ("What is a good film?", set()),
        ("my name is", set()),
    ],
)
def test_profile_facts_are_extracted_by_rules(text: str, expected: set[tuple[str, str]]) -> None:
    assert {(s.label, s.value) for s in profile.extract(text)} == expected


async def test_a_newer_statement_replaces_the_older_fact(
    store: MemoryStore, generator: LocalGenerator
) -> None:
    await chat(store, generator, GUILD, "u1", ["My favourite film is Heat.", "Hello again"])
    await chat(store, generator, GUILD, "u2", ["x"])  # another user keeps their own
    await store.append(
        GUILD, "u1",
        Turn(role="user", text="Actually my favourite film is Arrival now.", time=time.time(),
             message_id="later", tokens=9),
        Turn(role="assistant", text="Noted!", time=time.time(), tokens=2),
    )  # fmt: skip
    facts = await store.facts(GUILD, "u1")
    films = [f for f in facts if f.label == "favourite film"]
    assert [(f.value, f.message_id) for f in films] == [("Arrival", "later")]
    # An older statement arriving late (a retry of an old message) does not win.
    stale = profile.extract("My favourite film is Jaws.")
    old = '{"label":"favourite film","value":"Jaws","turn_id":1,"time":0}'
    args: list[Any] = [1, 0, stale[0].field, old]
    key = store.keys.scope_key("u1", GUILD, "profile")
    assert await store._profile_set(keys=[key], args=args) == 0
    window, _ = await assemble_window(
        store, generator, WindowPolicy(budget=800), scope=GUILD, user_id="u1",
        system=SYSTEM, message="hi", now=time.time(),
    )  # fmt: skip
    assert "- favourite film: Arrival" in window.messages[0]["content"]


async def test_deleting_or_editing_a_message_removes_its_facts(
    store: MemoryStore, generator: LocalGenerator
) -> None:
    await chat(store, generator, DM := Scope(None), "u1",
               ["My dog is called Biscuit.", "I live in Porto."])  # fmt: skip
    assert await store.delete_message(DM, "u1", "dm-m0")
    assert [f.label for f in await store.facts(DM, "u1")] == ["lives in"]
    assert await store.edit_message(DM, "u1", "dm-m1", "I live in Osaka now.", 6)
    assert [(f.label, f.value) for f in await store.facts(DM, "u1")] == [("lives in", "Osaka")]


async def summarised(store: MemoryStore, generator: LocalGenerator, n: int) -> Upkeep:
    texts = [f"I watched Heat for the {i}th time with my friend Rafael." for i in range(n)]
    await chat(store, generator, GUILD, "u1", texts)
    upkeep = Upkeep(store, generator, summary_cap=200)
    assert await upkeep.run(GUILD, "u1", oldest_in_window=2 * n - 5)
    return upkeep


async def test_turns_leaving_the_window_fold_into_a_capped_summary(
    store: MemoryStore, generator: LocalGenerator
) -> None:
    await summarised(store, generator, 40)
    summary = await store.summary(GUILD, "u1")
    assert summary is not None and summary.upto == 74 and not summary.stale
    assert summary.covers == list(range(1, 75))
    assert generator.count_tokens(summary.text) <= 200
    assert "Rafael" in summary.text
    window, _ = await assemble_window(
        store, generator, WindowPolicy(budget=800), scope=GUILD, user_id="u1",
        system=SYSTEM, message="hi", now=time.time(),
    )  # fmt: skip
    assert "Summary of your earlier conversation" in window.messages[0]["content"]


async def test_deleting_or_editing_a_covered_turn_makes_the_summary_stale_then_rebuilt(
    store: MemoryStore, generator: LocalGenerator
) -> None:
    upkeep = await summarised(store, generator, 20)
    before = await store.summary(GUILD, "u1")
    assert before is not None
    edited = "I rewatched Alien with my friends Soraya and Margot in 2019."
    assert await store.edit_message(GUILD, "u1", "g42-m0", edited, 14)
    stale = await store.summary(GUILD, "u1")
    assert stale is not None and stale.stale
    assert await upkeep.run(GUILD, "u1", oldest_in_window=35)
    rebuilt = await store.summary(GUILD, "u1")
    assert rebuilt is not None and not rebuilt.stale and rebuilt.version == before.version + 1
    assert "Soraya" in rebuilt.text

    assert await store.delete_message(GUILD, "u1", "g42-m0")
    assert (await store.summary(GUILD, "u1")).stale  # type: ignore[union-attr]
    assert await upkeep.run(GUILD, "u1", oldest_in_window=35)
    again = await store.summary(GUILD, "u1")
    assert again is not None and "Soraya" not in again.text and 1 not in again.covers


async def test_upkeep_is_serialised_and_never_overwrites_a_newer_summary(
    store: MemoryStore, generator: LocalGenerator
) -> None:
    await chat(
        store, generator, GUILD, "u1", [f"My friend Yuki loves film {i}." for i in range(12)]
    )
    async with store.upkeep_lock(GUILD, "u1"):
        with pytest.raises(UpkeepBusy):
            async with store.upkeep_lock(GUILD, "u1"):
                pass
        busy = Upkeep(store, generator, summary_cap=200)
        assert not await busy.run(GUILD, "u1", oldest_in_window=20)  # gives way
    # Version check: a writer that read version 0 loses to one that wrote meanwhile.
    assert await store.set_summary(GUILD, "u1", Summary(text="first", upto=3), read=0)
    assert not await store.set_summary(GUILD, "u1", Summary(text="late", upto=5), read=0)
    current = await store.summary(GUILD, "u1")
    assert current is not None and (current.text, current.version) == ("first", 1)


async def test_forget_removes_recall_index_summary_and_profile(
    store: MemoryStore, generator: LocalGenerator, redis_client: RedisClient, keys: Keys
) -> None:
    await summarised(store, generator, 12)
    await chat(store, generator, OTHER, "u1", ["My name is Ada."])
    exported = await store.export("u1")
    assert exported["scopes"]["g42"]["summary"]["text"]
    assert exported["scopes"]["g43"]["profile"][0]["value"] == "Ada"
    await store.forget("u1")
    left = [k async for k in redis_client.scan_iter(match=keys.user_tag("u1") + ":*")]
    assert left == []


async def test_background_generation_gives_way_to_a_live_reply(
    generator: LocalGenerator,
) -> None:
    events: list[tuple[str, float]] = []
    running = asyncio.Event()
    clock = asyncio.get_running_loop().time
    prompt = [{"role": "user", "content": "Summarise: I like films about space and dogs."}]

    async def background() -> None:
        try:
            async for _ in generator.stream_background(
                prompt, GenerationParams(max_new_tokens=300, temperature=0.0)
            ):
                if not running.is_set():
                    events.append(("background running", clock()))
                    running.set()
        except GeneratorBusy:
            events.append(("background stopped", clock()))

    task = asyncio.create_task(background())
    await running.wait()
    events.append(("live asked", clock()))
    async for _ in generator.stream(prompt, GenerationParams(max_new_tokens=4, temperature=0)):
        events.append(("live first piece", clock()))
        break
    await task
    order = [e for e, _ in events]
    assert order == ["background running", "live asked", "background stopped", "live first piece"]
    asked = dict(events)["live asked"]
    # The live reply waited one decoding step at most, not for 300 background tokens.
    assert dict(events)["live first piece"] - asked < 5
    # And background work is refused outright while a live request holds the model.
    live = generator.stream(prompt, GenerationParams(max_new_tokens=30, temperature=0))
    await anext(live)
    with pytest.raises(GeneratorBusy):
        await anext(generator.stream_background(prompt, GenerationParams(max_new_tokens=5)))
    await live.aclose()  # type: ignore[attr-defined]


async def test_model_summaries_fall_back_to_extractive_when_the_model_is_busy(
    store: MemoryStore, generator: LocalGenerator
) -> None:
    await chat(
        store,
        generator,
        GUILD,
        "u1",
        [f"My friend Tobias recommended film {i}." for i in range(12)],
    )
    upkeep = Upkeep(store, generator, summary_cap=200, mode="model", generator=generator)
    live = generator.stream([{"role": "user", "content": "hi"}],
                            GenerationParams(max_new_tokens=40, temperature=0))  # fmt: skip
    await anext(live)  # a live reply holds the model
    assert await upkeep.run(GUILD, "u1", oldest_in_window=20)
    await live.aclose()  # type: ignore[attr-defined]
    summary = await store.summary(GUILD, "u1")
    assert summary is not None
    assert summary.text.splitlines()[0].startswith("- (")  # the extractive form
    assert "Tobias" in summary.text


def test_summary_lines_keep_what_the_user_said_about_themselves() -> None:
    turns = [
        Turn(role="user", text="My dog is called Biscuit. ok.", time=0, tokens=5),
        Turn(role="assistant", text="I love dogs, my favourite is Lassie.", time=0, tokens=5),
    ]
    stored = [t.model_copy(update={}) for t in turns]
    from memory.records import StoredTurn

    lines = summary_lines([StoredTurn(**t.model_dump(), id=i + 1) for i, t in enumerate(stored)])
    assert lines == ["- (1970-01-01) My dog is called Biscuit."]


async def test_replies_schedule_upkeep_that_folds_old_turns(
    store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    from bot.assistant import Assistant
    from tests.conftest import ScriptedGenerator, make_settings
    from tests.test_assistant import RecordingSink, request

    scripted = ScriptedGenerator(generator, ["Noted, that sounds lovely."])
    bot = Assistant(settings=make_settings(keys, max_context_tokens=400), memory=store,
                    generator=scripted)  # fmt: skip
    for i in range(25):
        await bot.reply(
            request(f"I watched film number {i} with my friend Declan."), RecordingSink()
        )
    await bot.upkeep.drain()
    summary = await store.summary(Scope(None), "u1")
    assert summary is not None and "Declan" in summary.text and summary.upto > 0


async def test_the_memory_benchmark_runs_and_cleans_up(
    store: MemoryStore, generator: LocalGenerator, redis_client: RedisClient, keys: Keys
) -> None:
    from bench.memory import report, run

    result = await run(store, generator.tokens, budget=1024, sizes=(50, 200), conversations=1)
    sizes = result["sizes"]
    assert set(sizes) == {"50", "200"} and result["model_calls_in_build"] == 0
    assert sizes["200"]["recall"] >= sizes["200"]["baseline_last_k_recall"]
    assert sizes["200"]["recall"] >= 0.8
    assert 0 < sizes["200"]["build_ms_p50"] <= sizes["200"]["build_ms_p95"]
    assert "recall" in report(result)
    assert [k async for k in redis_client.scan_iter(match=f"{keys.prefix}:*")] == []


async def test_the_benchmark_compares_embedding_recall(
    store: MemoryStore, generator: LocalGenerator
) -> None:
    from bench.memory import Embedder, report, run

    result = await run(store, generator.tokens, budget=1024, sizes=(50,), conversations=1,
                       embedder=Embedder())  # fmt: skip
    embeddings = result["sizes"]["50"]["embeddings"]
    assert 0 <= embeddings["recall"] <= 1 and embeddings["build_ms_p50"] > 0
    assert embeddings["embed_ms_per_turn_at_write"] > 0
    assert "all-MiniLM" in report(result)


async def test_the_recall_index_follows_trims_deletes_and_edits(
    redis_client: RedisClient, keys: Keys, generator: LocalGenerator
) -> None:
    store = MemoryStore(redis_client, keys=keys, max_turns=6)
    texts = ["my sister Ingrid", "my brother Tobias", "my cousin Yuki", "my aunt Margot"]
    await chat(store, generator, GUILD, "u1", texts)
    postings = keys.scope_key("u1", GUILD, "postings")
    stats = keys.scope_key("u1", GUILD, "stats")

    async def index() -> dict[str, str]:
        raw = await redis_client.hgetall(postings)  # type: ignore[misc]
        return {k.decode(): v.decode() for k, v in raw.items()}

    # Four exchanges, six turns kept: the first exchange was trimmed away.
    assert "ingrid" not in await index() and (await index())["tobia"] == "3"
    assert await redis_client.hget(stats, "docs") == b"3"  # type: ignore[misc]
    assert await store.delete_message(GUILD, "u1", "g42-m2")
    assert "yuki" not in await index()
    assert await store.edit_message(GUILD, "u1", "g42-m3", "my uncle Rafael", 4)
    assert "margot" not in await index() and (await index())["rafael"] == "7"
    assert await redis_client.hget(stats, "docs") == b"2"  # type: ignore[misc]


async def test_upkeep_waits_for_a_batch_of_turns_unless_the_summary_is_stale(
    store: MemoryStore, generator: LocalGenerator
) -> None:
    from bot.upkeep import FOLD_BATCH

    upkeep = Upkeep(store, generator, summary_cap=200)
    folded = Summary(text="x", upto=20)
    upkeep.schedule(GUILD, "u1", 20 + FOLD_BATCH, folded)  # one turn short of a batch
    assert not upkeep._tasks
    upkeep.schedule(GUILD, "u1", 21 + FOLD_BATCH, folded)
    assert len(upkeep._tasks) == 1
    upkeep.schedule(GUILD, "u1", 22, folded.model_copy(update={"stale": True}))
    assert len(upkeep._tasks) == 2
    await upkeep.drain()
