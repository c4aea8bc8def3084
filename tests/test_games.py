"""Trivia (correct by construction, one answer each, late answers refused, an atomic
leaderboard) and the interactive story (parsing, and its state surviving a restart)."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from bot.generation.base import GenerationParams
from bot.generation.local import LocalGenerator
from bot.media.catalog import Catalog
from bot.media.library import Library, parse_file
from bot.media.story import GENRES, STOCK_CHOICES, Stories, StoryState, parse_scene
from bot.media.trivia import KINDS, Trivia, is_correct, make_question
from memory.connection import RedisClient
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import REDIS_CLUSTER, ScriptedGenerator, connect
from tests.test_catalog import DATA

pytestmark = REDIS_CLUSTER


@pytest.mark.parametrize("kind", KINDS)
def test_every_question_is_right_by_construction(catalog: Catalog, kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(200):
        q = make_question(catalog, rng, kind)
        assert q.kind == kind and len(q.options) == 4 and len(set(q.options)) == 4
        verdicts = [is_correct(catalog, q, i) for i in range(4)]
        assert verdicts[q.answer], q
        assert sum(verdicts) == 1, (q, verdicts)


def test_small_catalogs_still_make_questions() -> None:
    titles, _ = parse_file(DATA / "games.csv")
    small = Catalog(titles)
    q = make_question(small, random.Random(1))
    assert is_correct(small, q, q.answer)


async def test_one_answer_each_and_late_answers_refused(redis_client: RedisClient, keys: Keys,
                                                       catalog: Catalog) -> None:  # fmt: skip
    trivia = Trivia(redis_client, keys, seconds=30)
    q = make_question(catalog, random.Random(5), "year")
    await trivia.post("g1", q, now=1000.0)
    wrong = (q.answer + 1) % 4
    first = await trivia.answer("g1", q.id, "alice", q.answer, now=1001.0)
    assert (first.outcome, first.correct, first.score) == ("right", q.answer, 1)
    assert (await trivia.answer("g1", q.id, "alice", q.answer, now=1002.0)).outcome == "again"
    assert (await trivia.answer("g1", q.id, "bob", wrong, now=1003.0)).outcome == "wrong"
    late = await trivia.answer("g1", q.id, "carol", q.answer, now=1031.0)
    assert (late.outcome, late.correct) == ("late", q.answer)
    assert (await trivia.answer("g1", "000000000000", "dave", 0)).outcome == "gone"
    assert await trivia.leaderboard("g1") == [("alice", 1)]
    assert await trivia.options("g1", q.id) == list(q.options)
    # Leaderboards are per server.
    assert await trivia.leaderboard("g2") == []
    assert await trivia.forget_user("alice", ["g1", "g2"]) == 1
    assert await trivia.leaderboard("g1") == []


async def test_leaderboard_is_atomic_under_50_concurrent_answers(
    redis_url: str, keys: Keys, catalog: Catalog
) -> None:
    """50 members answer 4 questions at once, each on their own connection: every right
    answer counts exactly once, a second answer never does."""
    clients = [await connect(redis_url) for _ in range(10)]
    try:
        trivias = [Trivia(c, keys, seconds=60) for c in clients]
        questions = [make_question(catalog, random.Random(n)) for n in range(4)]
        for q in questions:
            await trivias[0].post("g9", q)
        rng = random.Random(9)
        plan = [(m, q, rng.randrange(4)) for m in range(50) for q in questions]
        plan += [(m, q, q.answer) for m, q, _ in plan[:60]]  # repeated presses
        rng.shuffle(plan)
        results = await asyncio.gather(*(
            trivias[n % 10].answer("g9", q.id, f"m{m}", choice)
            for n, (m, q, choice) in enumerate(plan)
        ))  # fmt: skip
        # Per member and question, exactly one press was taken (whichever Redis ran
        # first); it is scored by its own choice, and every other press is "again".
        expected: dict[str, int] = {}
        taken: dict[tuple[int, str], int] = {}
        for (m, q, choice), result in zip(plan, results, strict=True):
            if result.outcome == "again":
                continue
            assert (m, q.id) not in taken
            taken[(m, q.id)] = choice
            assert result.outcome == ("right" if choice == q.answer else "wrong")
            expected[f"m{m}"] = expected.get(f"m{m}", 0) + (choice == q.answer)
        assert len(taken) == 50 * len(questions)
        board = dict(await trivias[0].leaderboard("g9", n=100))
        assert board == {m: s for m, s in expected.items() if s}
    finally:
        for c in clients:
            await c.aclose()


def test_scene_parsing() -> None:
    scene, choices = parse_scene(
        "mystery",
        "The lamp flickers. A letter lies on the desk, @everyone.\n\n"
        "1. Open the letter\n2) Call the inspector\n3: Leave the house\n4. Extra",
    )
    assert scene.startswith("The lamp flickers") and "@\u200beveryone" in scene
    assert choices == ["Open the letter", "Call the inspector", "Leave the house"]
    scene, choices = parse_scene("western", "Dust everywhere and no choices at all.")
    assert choices == list(STOCK_CHOICES["western"])
    assert parse_scene("noir", "")[0]  # never an empty scene
    assert set(GENRES) == set(STOCK_CHOICES)


async def test_story_survives_a_restart(redis_url: str, keys: Keys,
                                        generator: LocalGenerator) -> None:  # fmt: skip
    scene = ["The ship drifts past a dead moon.\n", "1. Wake the crew\n", "2. Read the log\n"]
    params = GenerationParams(max_new_tokens=60)
    scope = Scope("g5")
    first = await connect(redis_url)
    stories = Stories(MemoryStore(first, keys=keys), ScriptedGenerator(generator, scene),
                      params=params)  # fmt: skip
    state = await stories.start(scope, "u1", "sci-fi")
    assert (state.step, state.choices) == (1, ["Wake the crew", "Read the log"])
    await first.aclose()  # the bot stops

    second = await connect(redis_url)  # a new process: nothing kept in memory
    try:
        store = MemoryStore(second, keys=keys)
        scene2 = ["You open the log.\n1. Read on\n", "2. Close it\n"]
        later = Stories(store, ScriptedGenerator(generator, scene2), params=params)
        again = await later.current(scope, "u1")
        assert again is not None and again.scenes == state.scenes and again.step == 1
        assert await later.choose(scope, "u1", 0, 1) == "stale"
        assert await later.choose(scope, "u1", 1, 3) == "not-offered"
        assert await later.choose(Scope("elsewhere"), "u1", 1, 1) == "none"
        moved = await later.choose(scope, "u1", 1, 1)
        assert isinstance(moved, StoryState)
        assert moved.step == 2 and moved.choices == ["Read on", "Close it"]
        assert len(moved.scenes) == 2
        exported = await store.export("u1")
        assert exported["scopes"]["gg5"]["story"]["step"] == 2
        assert await later.end(scope, "u1")
        assert await later.current(scope, "u1") is None
        assert not await later.end(scope, "u1")
        # A damaged record reads as no story, not a crash.
        await second.set(keys.scope_key("u1", scope, "story"), json.dumps({"genre": "x"}))
        assert await later.current(scope, "u1") is None
    finally:
        await second.aclose()


@pytest.mark.model
async def test_a_story_with_the_real_model(store: MemoryStore,
                                           generator: LocalGenerator) -> None:  # fmt: skip
    stories = Stories(store, generator, params=GenerationParams(max_new_tokens=120, seed=4))
    state = await stories.start(Scope(None), "u7", "fantasy")
    assert state.scenes[0] and 2 <= len(state.choices) <= 3
    assert all(0 < len(c) <= 80 for c in state.choices)
    moved = await stories.choose(Scope(None), "u7", 1, 0)
    assert isinstance(moved, StoryState) and moved.step == 2


async def test_library_serves_a_fixed_catalog(redis_client: RedisClient, keys: Keys,
                                              catalog: Catalog) -> None:  # fmt: skip
    library = Library(redis_client, keys, fixed=catalog)
    assert await library.current(every=0) is catalog
    assert await library.ensure(None) is catalog
