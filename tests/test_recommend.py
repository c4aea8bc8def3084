"""Taste profiles and recommendations: extraction from chat, storage with the rest of a
user's memory (export, forget, deleted messages), ranking, diversity, the held-out
precision check against popularity, and no invented titles from the real model."""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from bench.recommend import run as precision_run
from bot.assistant import Assistant, ReplyRequest
from bot.context.profile import profile_slot
from bot.generation.base import GenerationParams
from bot.generation.local import LocalGenerator
from bot.media.catalog import Catalog
from bot.media.facts import without_title
from bot.media.library import Library
from bot.media.recommend import (
    Mood,
    Pick,
    Recommender,
    Taste,
    check_blurb,
    franchise,
    wants_recommendation,
)
from bot.media.service import Media
from bot.media.taste import extract, item
from bot.moderation.moderator import Moderator
from memory.keys import Keys, Scope
from memory.records import Turn
from memory.store import MemoryStore
from tests.conftest import (
    REDIS_CLUSTER,
    RecordingSink,
    ScriptedGenerator,
    make_settings,
    model_settings,
    pin_ways,
)

pytestmark = REDIS_CLUSTER

SCOPE = Scope("g1")

# Sentence -> the (polarity, kind, shown value) items it states.
EXTRACTION = [
    ("I loved Dark, and I can't stand horror.",
     {("like", "title", "Dark"), ("dislike", "genre", "horror")}),
    ("I've seen Stranger Things twice", {("seen", "title", "Stranger Things")}),
    ("I'm a big fan of Martin Scorsese films and sci-fi",
     {("like", "person", "Martin Scorsese"), ("like", "genre", "sci-fi & fantasy")}),
    ("my favourite genre is anime", {("like", "genre", "anime")}),
    ("I hated the show Narcos because it was slow", {("dislike", "title", "Narcos")}),
    ("I don't like comedies", {("dislike", "genre", "comedy")}),
    ("honestly I just watched The Irishman last night", {("seen", "title", "The Irishman")}),
    ("I really enjoyed Breaking Bad and Narcos: Mexico",
     {("like", "title", "Breaking Bad"), ("like", "title", "Narcos: Mexico")}),
    ("not a fan of reality tv", {("dislike", "genre", "reality")}),
    # Nothing the catalog can resolve: no preference is invented.
    ("I love it when you talk about films", set()),
    ("I like my coffee strong", set()),
    ("I hate mondays", set()),
    ("I watched the sunset with my dog", set()),
    ("What do you think of horror?", set()),
]  # fmt: skip


@pytest.mark.parametrize(("sentence", "expected"), EXTRACTION)
def test_extraction(catalog: Catalog, sentence: str, expected: set[tuple[str, str, str]]) -> None:
    found = {(i.polarity, i.kind, i.value) for i in extract(catalog, sentence)}
    assert found == expected


def make_media(store: MemoryStore, catalog: Catalog, generator: object) -> Media:
    media = Media(
        Library(store._redis, store.keys, fixed=catalog),
        store,
        generator,  # type: ignore[arg-type]
        blurb_params=GenerationParams(max_new_tokens=40, temperature=0.0),
    )
    return media


async def test_chat_teaches_the_profile_which_export_shows_and_forget_deletes(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: LocalGenerator
) -> None:
    media = make_media(store, catalog, generator)
    said = Turn(role="user", text="I loved Dark but I can't stand horror", time=5.0,
                message_id="m1", tokens=9)  # fmt: skip
    reply = Turn(role="assistant", text="Noted!", time=6.0, tokens=2)
    await store.append(SCOPE, "u1", said, reply)
    # The reply pipeline's step after storing the turn (see test_grounded_chat.py).
    await media.learn_taste(SCOPE, "u1", said.text, message_id=said.message_id, at=said.time)
    items = await media.taste(SCOPE, "u1")
    assert {(i.polarity, i.value, i.source, i.message_id) for i in items} == {
        ("like", "Dark", "chat", "m1"),
        ("dislike", "horror", "chat", "m1"),
    }
    # The profile slot of the next window shows it.
    snapshot = await store.load(SCOPE, "u1", token_budget=1000)
    assert "- likes: Dark (title)" in profile_slot(snapshot.facts, snapshot.taste)
    assert "- dislikes: horror (genre)" in profile_slot(snapshot.facts, snapshot.taste)
    # Liking horror later replaces disliking it.
    change = await media.add_pref(SCOPE, "u1", "like", "scary")
    assert change.outcome == "added" and change.item is not None
    assert change.item.value == "horror"
    assert {(i.polarity, i.key) for i in await media.taste(SCOPE, "u1")} == {
        ("like", "s2328"), ("like", "horror")
    }  # fmt: skip
    # /prefs remove, and a phrase that resolves to nothing.
    assert (await media.remove_pref(SCOPE, "u1", "horror")).outcome == "removed"
    assert (await media.remove_pref(SCOPE, "u1", "jazz")).outcome == "absent"
    assert (await media.add_pref(SCOPE, "u1", "like", "zzqx wibble")).outcome == "unknown"
    exported = await store.export("u1")
    assert [t["value"] for t in exported["scopes"]["gg1"]["taste"]] == ["Dark"]
    # Deleting the message removes what was learned from it.
    await store.delete_message(SCOPE, "u1", "m1")
    assert await media.taste(SCOPE, "u1") == []
    await media.add_pref(SCOPE, "u1", "seen", "The Irishman")
    await store.forget("u1")
    assert await media.taste(SCOPE, "u1") == []
    assert await store.scopes("u1") == []


async def test_prefs_alone_make_a_scope_that_export_and_forget_see(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: LocalGenerator
) -> None:
    media = make_media(store, catalog, generator)
    await media.add_pref(Scope(None), "u2", "like", "anime")
    assert await store.scopes("u2") == [Scope(None)]
    assert (await store.export("u2"))["scopes"]["dm"]["taste"][0]["key"] == "anime"
    await store.forget("u2")
    left = [k async for k in store._redis.scan_iter(match=keys.user_tag("u2") + ":*")]
    assert left == []


def test_seen_and_disliked_are_never_recommended(catalog: Catalog) -> None:
    rec = Recommender(catalog)
    mood = Mood.read(catalog, "a scary film from the 80s")
    first = rec.pick(mood, Taste())
    assert len(first) == 5
    assert all("horror" in p.title.concepts and p.title.type == "Movie" for p in first)
    assert all(1980 <= (p.title.year or 0) <= 1989 for p in first)
    items = [item("seen", "title", p.title.id, p.title.title) for p in first[:2]]
    items.append(item("dislike", "title", first[2].title.id, first[2].title.title))
    again = rec.pick(mood, Taste.of(catalog, items))
    assert not {p.title.id for p in again} & {p.title.id for p in first[:3]}
    # A disliked genre stays out unless asked for.
    hates = Taste.of(catalog, [item("dislike", "genre", "comedy", "comedy")])
    assert all("comedy" not in p.title.concepts for p in rec.pick(Mood(), hates))


def test_picks_are_diverse(catalog: Catalog) -> None:
    rec = Recommender(catalog)
    picks = rec.pick(Mood.read(catalog, "something like Narcos"), Taste())
    assert len({franchise(p.title) for p in picks}) == len(picks) == 5
    # The seed itself is not offered back.
    assert "Narcos" not in {p.title.title for p in picks}
    liked = Taste.of(catalog, [item("like", "genre", "comedy", "comedy")])
    generic = rec.pick(Mood(), liked)
    leading = [sorted(p.title.concepts) for p in generic]
    assert len({tuple(x) for x in leading}) > 1


@pytest.mark.parametrize("seed", ["Okja", "Dark", "Kill Bill: Vol. 1", "Jaws"])
def test_titles_like_a_seed_share_something_with_it_and_say_what(
    catalog: Catalog, seed: str
) -> None:
    rec = Recommender(catalog)
    named = catalog.exact(seed)[:1]
    series = [t for t in catalog.titles.values() if t.title.startswith("Kill Bill")]
    mood = Mood.read(catalog, f"what should I watch if I liked {seed.lower()}?").seeded(named)
    picks = rec.pick(mood, Taste(), salt="u|day", exclude=frozenset(t.id for t in series))
    assert len(picks) == 5
    for p in picks:
        assert p.title.id not in {t.id for t in [*named, *series]}  # named: never picked
        assert seed in p.reason and "popular" not in p.reason
        shares = (p.title.concepts & named[0].concepts) or (
            set(p.title.people) & set(named[0].people)
        )
        assert shares, (p.title.title, p.reason)
    # The seed's own words do not pull in titles that merely share them.
    if seed == "Dark":
        assert not any("dark" in p.title.title.lower() for p in picks)


def test_profile_steers_the_picks(catalog: Catalog) -> None:
    rec = Recommender(catalog)
    fan = Taste.of(catalog, [item("like", "person", "Adam Sandler", "Adam Sandler")])
    picks = rec.pick(Mood(), fan)
    assert sum("Adam Sandler" in p.title.people for p in picks) >= 3
    assert "Adam Sandler" in picks[0].reason


def test_filters_relax_rather_than_come_back_empty(catalog: Catalog) -> None:
    picks = Recommender(catalog).pick(Mood.read(catalog, "a heist movie"), Taste())
    assert len(picks) == 5 and all("crime" in p.title.concepts for p in picks)


def test_precision_beats_popularity(catalog: Catalog) -> None:
    result = precision_run(catalog, users=50)
    assert result["precision_at_5"] >= 0.6
    assert result["precision_at_5"] > 2 * result["popularity_precision_at_5"]


@pytest.mark.parametrize(
    ("sentence", "kept"),
    [
        ("A gripping story of family secrets that keeps you guessing to the end.", True),
        ("Fans of The Irishman will love this one, it is just as tense.", False),
        ('It is just like the classic film "Midnight Harbor" but darker and bolder.', False),
        ("Released in 1999, it is a gripping ride from start to finish for fans.", False),
        ("Directed by Steven Spielberg, this is a gripping ride from start to finish.", False),
        ("Starring Louis Hofmann, this is a gripping time-travel mystery for you.", True),
        ("Like Stranger Things, Dark is a gripping mystery about a missing boy and time.", False),
        ("What's your favourite movie of all time and why do you like it?", False),
        ("Incredible!", False),
        ("A must-see thriller @everyone should watch tonight with their friends.", True),
    ],
)
def test_blurb_check(catalog: Catalog, sentence: str, kept: bool) -> None:
    dark = catalog.exact("Dark")[0]
    checked = check_blurb(catalog, dark, sentence)
    assert (checked is not None) == kept
    if checked:
        assert "@everyone" not in checked


def test_intent() -> None:
    for text in ("what should I watch tonight?", "can you recommend a film?",
                 "any suggestions for a show", "Give me a movie", "recommend me something",
                 "Recommend a heist film", "got any recs?", "suggest an anime"):  # fmt: skip
        assert wants_recommendation(text), text
    for text in ("I watched Dark", "what is Dark about?", "I recommend you sleep",
                 "I recommend Dark to everyone", "we suggest a break",
                 "what is a suggestion?"):  # fmt: skip
        assert not wants_recommendation(text), text


REQUESTS = [
    "what should I watch tonight?", "a scary film from the 80s", "something like Stranger Things",
    "recommend a Korean romance show", "anything with Adam Sandler", "a funny documentary",
    "suggest an anime series", "a British crime show", "something for the kids",
    "a classic movie from the 70s",
]  # fmt: skip


@pytest.mark.model
async def test_no_invented_titles_across_100_requests_with_the_real_model(
    store: MemoryStore, catalog: Catalog
) -> None:
    # 16 requests decode at once (a wider batch than the bot's default: the same
    # check in about half the time); one pick a request (its sentence is the model's
    # work) keeps this near a minute on two cores without AVX-512; the ranking of all
    # five is tested above without the model.
    wide = pin_ways(LocalGenerator.load(model_settings(), max_batch=16, prefix_mb=96))
    media = make_media(store, catalog, wide)
    media.blurb_params = GenerationParams(max_new_tokens=32, temperature=0.8, top_p=0.95,
                                          top_k=50, seed=11)  # fmt: skip
    rng = random.Random(3)
    gate = asyncio.Semaphore(16)

    async def one(n: int) -> list[Pick]:
        async with gate:
            return await media.recommend(SCOPE, f"u{n % 9}", rng.choice(REQUESTS), k=1)

    try:
        results = await asyncio.gather(*(one(n) for n in range(100)))
    finally:
        wide.close()
    from_model = 0
    for picks in results:
        assert len(picks) == 1
        for p in picks:
            assert catalog.get(p.title.id) == p.title  # every title shown is a catalog entry
            assert p.blurb
            if p.blurb_from_model:
                # No other catalog title in the model's sentence, and no wrong year.
                rest = without_title(p.blurb, p.title.title)
                others = {t.id for t in catalog.mentioned(rest, cased=True)} - {p.title.id}
                assert not others, p.blurb
                assert all(
                    int(y) == p.title.year for y in re.findall(r"\b(?:19|20)\d\d\b", p.blurb)
                ), p.blurb
                from_model += 1
            else:
                assert p.blurb.endswith(f"picked because {p.reason}.")
    # The check does not simply reject everything the model writes. How many pass
    # varies with the sampled sentences, which vary with the machine's kernels (the
    # ways of computing are pinned) and with how the requests share passes: 15% to 22%
    # in runs on one machine (of two picks a request then), so the floor stays well
    # below that.
    print(f"{from_model} of 100 sentences written by the model passed the check")
    assert from_model >= 5


async def test_recommendation_asked_in_chat(
    store: MemoryStore, keys: Keys, catalog: Catalog, generator: LocalGenerator
) -> None:
    """A chat message asking for a recommendation is answered from the catalog, with the
    profile taken into account, and stored like any exchange."""
    invented = ScriptedGenerator(generator, ['Watch "The Moon Heist" (2031), it is great fun!'])
    media = make_media(store, catalog, invented)
    await media.add_pref(SCOPE, "u3", "seen", "Stranger Things")
    assistant = Assistant(settings=make_settings(keys), memory=store, generator=invented,
                          media=media)  # fmt: skip

    sink = RecordingSink()
    request = ReplyRequest(scope=SCOPE, user_id="u3", user_name="ada",
                           text="what should I watch tonight? something like Dark",
                           message_id="m9")  # fmt: skip
    outcome = await assistant.reply(request, sink)
    assert outcome.stored and outcome.generated and sink.notices == []
    assert "Moon Heist" not in sink.text and "2031" not in sink.text
    assert sink.text.count("picked because") == 5  # every invented sentence replaced
    assert "Stranger Things**" not in sink.text  # seen titles are not offered
    assert "**Dark**" not in sink.text
    history = await store.history(SCOPE, "u3")
    assert history[-1]["text"] == sink.text.strip()


async def test_a_sentence_moderation_holds_is_replaced_by_the_facts(
    store: MemoryStore, catalog: Catalog, generator: LocalGenerator, moderator: Moderator
) -> None:
    rude = ScriptedGenerator(
        generator, ["Only a worthless piece of shit would skip this gripping story."]
    )
    media = make_media(store, catalog, rude)
    picks = await media.recommend(SCOPE, "u5", "a scary film from the 80s", k=2,
                                  check=moderator.allows(moderator.defaults))  # fmt: skip
    assert [p.blurb_from_model for p in picks] == [False, False]
    assert all("shit" not in p.blurb and "picked because" in p.blurb for p in picks)
    # Without the check the same sentence passes the fact checks: moderation made the
    # difference.
    unchecked = await media.recommend(SCOPE, "u5", "a scary film from the 80s", k=1)
    assert unchecked[0].blurb_from_model
