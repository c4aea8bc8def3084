"""The grounded-chat benchmark: its questions, its scoring, and a short run through the
real pipeline and model (the figures themselves come from `mediabot bench-facts`)."""

from __future__ import annotations

import random

import pytest
from redis.asyncio import Redis

from bench.facts import (
    ANSWERABLE,
    KINDS,
    Question,
    contradiction,
    correct,
    invented,
    questions,
    run,
    typo,
)
from bot.grounding.finder import Finder
from bot.media.catalog import Catalog
from bot.settings import CatalogSettings
from memory.keys import Keys
from tests.conftest import make_settings


def test_questions_are_the_same_for_a_seed_and_cover_every_kind(catalog: Catalog) -> None:
    first = questions(catalog, 64, seed=3)
    assert first == questions(catalog, 64, seed=3)
    assert first != questions(catalog, 64, seed=4)
    assert {q.kind for q in first} == set(KINDS)
    assert any(q.typo for q in first) and any(q.popular for q in first)
    assert any(not q.popular and q.title for q in first)
    for q in first:
        assert (q.title is None) == (q.kind == "missing")
        if q.kind == "missing":
            assert not Finder.of(catalog).titles_named(q.asked_as)
        if q.kind == "followup":
            assert q.before and " it" in q.text


def test_a_typo_changes_one_letter_of_the_longest_word() -> None:
    rng = random.Random(1)
    for name in ("Stranger Things", "Okja Returns", "Breaking Bad"):
        changed = typo(name, rng)
        assert changed != name and abs(len(changed) - len(name)) <= 1
        assert sum(a != b for a, b in zip(changed.split(), name.split(), strict=False)) == 1
    assert typo("Up", rng) == "Up"


def test_scoring_reads_replies_independently_of_the_pipeline(catalog: Catalog) -> None:
    finder = Finder.of(catalog)
    okja = finder.titles_named("Okja")[0]
    ask = Question("director", "Who directed Okja?", okja, "Okja")
    assert correct(ask, "Okja (2017 film) was directed by Bong Joon Ho.")
    assert not correct(ask, "Okja was directed by Akira Kurosawa.")
    cast = Question("cast", "who is in okja?", okja, "okja")
    assert correct(cast, "It stars Tilda Swinton and Jake Gyllenhaal.")
    assert not correct(cast, "It stars Tilda Swinton.")
    assert contradiction(finder, okja, "Okja came out in 2019.") == "year 2019"
    assert contradiction(finder, okja, "Okja came out in 2017; Snowpiercer in 2013.") == ""
    assert contradiction(finder, okja, "Okja stars Tom Hanks.") == "person Tom Hanks"
    assert invented(finder, "The Godfather came out in 1972.")
    assert invented(finder, "It was directed by Francis Coppola.")
    assert not invented(finder, "I don't have “Velvet Atlas” in my catalog. Did you mean “Velvet”?")


@pytest.mark.model
async def test_a_short_run_through_the_real_pipeline(
    redis_url: str, redis_client: Redis, keys: Keys
) -> None:
    settings = make_settings(keys, redis_url, max_new_tokens=8)
    settings.catalog = CatalogSettings(blurb_tokens=8)
    prefix = keys.prefix + "facts"
    result = await run(settings, count=8, seed=5, concurrency=4, progress=lambda _: None,
                       prefix=prefix)  # fmt: skip
    grounded, plain = result["grounded"], result["ungrounded"]
    assert result["questions"] == 8 and set(result["kinds"]) == set(KINDS)
    assert grounded["errors"] == plain["errors"] == 0
    assert (
        grounded["answerable"]
        == plain["answerable"]
        == sum(result["kinds"].get(k, 0) for k in ANSWERABLE)
    )
    # Catalog-built answers: the kinds answered from the catalog are right.
    assert grounded["accuracy"] >= 0.9 and grounded["contradicting"] == 0
    assert grounded["missing_invented"] == 0 and grounded["like_seed_picked"] == 0
    assert result["answered_from_catalog"] > 0 and result["finder"]["messages"] > 0
    # The benchmark's keys are gone.
    assert not [k async for k in redis_client.scan_iter(match=f"{prefix}:*", count=1000)]
