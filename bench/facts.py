"""`mediabot bench-facts` (or `python -m bench facts`): does chat state the catalog's
facts? Questions generated from the catalog with a fixed seed are asked through the
real pipeline (`Assistant.reply`: memory, moderation, the real model), grounded and
ungrounded (`GROUNDING_ENABLED=false`: no facts slot, no catalog answers, no check),
side by side in one run.

Kinds: director, year, cast, genre and runtime of popular and obscure titles (some
typed in lower case or with a typo), follow-ups with "it", titles the catalog does not
hold, and "if I liked X" requests. Scored, independently of the pipeline's own check:
- accuracy: the reply states the catalog's answer (the director's name, the year, two
  of the first three cast members, a genre label, the duration);
- contradicting: a reply that gives a year or names a catalog person that neither the
  title asked about nor any title the reply names has;
- invented: for a title the catalog lacks, a reply that gives any year or names anyone;
- like: the named title among the picks, and the share of picks sharing a genre with it;
- latency: per reply, and what grounding adds (finding, facts, the check).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import platform
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import percentile
from bot.assistant import Assistant, ReplyRequest
from bot.context.build import ContextWindow
from bot.grounding.finder import Finder
from bot.media.catalog import Catalog, Title, fold
from bot.media.recommend import Recommender
from bot.settings import GroundingSettings, Settings
from memory.keys import Scope

ANSWERABLE = ("director", "year", "cast", "genre", "runtime", "followup")
KINDS = (*ANSWERABLE, "missing", "like")
# Share of each kind among the questions (the rest of a round goes to "director").
MIX = {"director": 3, "year": 3, "cast": 2, "genre": 2, "runtime": 2, "followup": 2,
       "missing": 2, "like": 2}  # fmt: skip
TYPO_SHARE = 0.2
LOWER_SHARE = 0.3
YEAR = re.compile(r"\b(1[89]\d\d|20[0-3]\d)\b")
HONEST = re.compile(r"(?:don't|do not) have .{0,120} in my catalog|not in my catalog", re.I)
TEMPLATES = {
    "director": ("Who directed {t}?", "who's the director of {t}?", "Who made {t}?"),
    "year": ("What year did {t} come out?", "When was {t} released?"),
    "cast": ("Who stars in {t}?", "who is in {t}?"),
    "genre": ("What genre is {t}?", "what kind of film is {t}?"),
    "runtime": ("How long is {t}?",),
    "missing": ("Who directed {t}?", "When did {t} come out?", "Who stars in {t}?"),
    "like": ("What should I watch if I liked {t}?", "I loved {t}, what next?",
             "something like {t}, please"),
}  # fmt: skip
# Famous titles a small model has read about, checked against the catalog at run time.
FAMOUS = (
    "The Godfather", "Casablanca", "Citizen Kane", "Vertigo", "The Shawshank Redemption",
    "Spirited Away", "Jurassic Park", "Titanic", "Avatar", "The Matrix", "Gladiator",
    "Parasite", "Chinatown", "Rocky", "Alien", "Amelie", "Goodfellas", "Toy Story",
)  # fmt: skip
MADE_UP = (
    ("The", "Silent", "Crimson", "Last", "Hollow", "Iron", "Velvet", "Broken", "Distant"),
    ("Harbor", "Meridian", "Orchard", "Lantern", "Frontier", "Tides", "Reckoning", "Atlas"),
)


@dataclass(frozen=True, slots=True)
class Question:
    kind: str
    text: str
    title: Title | None  # None for a title the catalog lacks
    asked_as: str  # the name as the question writes it
    before: tuple[str, ...] = ()  # messages sent first (a follow-up's context)
    popular: bool = False
    typo: bool = False


@dataclass
class Tally:
    """One mode's scores."""

    answered: Counter[str] = field(default_factory=Counter)
    correct: Counter[str] = field(default_factory=Counter)
    replies: int = 0
    contradicting: int = 0
    contradictions: list[dict[str, str]] = field(default_factory=list)
    wrong: list[dict[str, str]] = field(default_factory=list)
    missing: int = 0
    invented: int = 0
    honest: int = 0
    like_asked: int = 0
    seed_picked: int = 0
    picks: int = 0
    picks_sharing: int = 0
    seconds: list[float] = field(default_factory=list)
    errors: int = 0

    def accuracy(self, kind: str | None = None) -> float:
        kinds = [kind] if kind else list(ANSWERABLE)
        asked = sum(self.answered[k] for k in kinds)
        return sum(self.correct[k] for k in kinds) / asked if asked else 0.0

    def summary(self) -> dict[str, Any]:
        asked = sum(self.answered[k] for k in ANSWERABLE)
        return {
            "accuracy": round(self.accuracy(), 4),
            "answerable": asked,
            "correct": sum(self.correct[k] for k in ANSWERABLE),
            "accuracy_by_kind": {k: round(self.accuracy(k), 4) for k in ANSWERABLE},
            "replies_scored": self.replies,
            "contradicting": self.contradicting,
            "contradiction_examples": self.contradictions[:5],
            "wrong_examples": self.wrong[:8],
            "missing_asked": self.missing,
            "missing_invented": self.invented,
            "missing_said_not_in_catalog": self.honest,
            "like_asked": self.like_asked,
            "like_seed_picked": self.seed_picked,
            "like_picks": self.picks,
            "like_picks_sharing_a_genre": round(self.picks_sharing / self.picks, 4)
            if self.picks
            else 0.0,
            "reply_ms_p50": round(percentile(self.seconds, 0.5) * 1000, 1),
            "reply_ms_p95": round(percentile(self.seconds, 0.95) * 1000, 1),
            "errors": self.errors,
        }


def usable(title: Title) -> bool:
    """A title whose name can be asked about plainly: no year or colon-free digits run
    in its name (they read as years), letters in it."""
    return not re.search(r"\d{4}", title.title) and any(c.isalpha() for c in title.title)


def typo(name: str, rng: random.Random) -> str:
    """One letter dropped or two swapped, inside the name's longest word."""
    words = name.split()
    longest = max(range(len(words)), key=lambda i: len(words[i]))
    word = words[longest]
    if len(word) < 5 or not word.isalpha():
        return name
    k = rng.randrange(1, len(word) - 2)
    if rng.random() < 0.5:
        word = word[:k] + word[k + 1 :]
    else:
        word = word[:k] + word[k + 1] + word[k] + word[k + 2 :]
    words[longest] = word
    return " ".join(words)


def questions(catalog: Catalog, count: int, seed: int = 11) -> list[Question]:
    """`count` questions of every kind, the same for a seed and a catalog."""
    rng = random.Random(seed)
    recommender = Recommender(catalog)
    titles = sorted((t for t in catalog.titles.values() if usable(t)), key=lambda t: t.id)
    ranked = sorted(titles, key=lambda t: -recommender.popularity(t))
    popular = ranked[: len(ranked) // 4]
    obscure = ranked[len(ranked) // 4 :]
    pools = {
        "director": [t for t in titles if t.directors],
        "year": [t for t in titles if t.year],
        "cast": [t for t in titles if len(t.cast) >= 2],
        "genre": [t for t in titles if t.genres],
        "runtime": [t for t in titles if t.duration],
        "followup": [t for t in titles if t.directors or t.year],
        "like": [t for t in titles if t.genres],
    }
    missing = _missing_names(catalog, rng)
    popular_ids = {t.id for t in popular}
    # Kinds taken in turn (director, year, cast, …), so a short run asks every kind.
    left = dict(MIX)
    plan: list[str] = []
    while any(left.values()):
        for kind in MIX:
            if left[kind]:
                plan.append(kind)
                left[kind] -= 1
    out: list[Question] = []
    while len(out) < count:
        kind = plan[len(out) % len(plan)]
        if kind == "missing":
            name = missing[len(out) % len(missing)]
            text = rng.choice(TEMPLATES["missing"]).format(t=name)
            out.append(Question("missing", text, None, name))
            continue
        source = popular if rng.random() < 0.5 else obscure
        ids = {t.id for t in pools[kind]}
        title = rng.choice([t for t in source if t.id in ids] or pools[kind])
        name, typed = title.title, False
        if kind != "like" and rng.random() < TYPO_SHARE:
            changed = typo(name, rng)
            typed = changed != name
            name = changed
        if rng.random() < LOWER_SHARE:
            name = name.lower()
        before: tuple[str, ...] = ()
        if kind == "followup":
            text = "Who directed it?" if title.directors else "And when did it come out?"
            before = (f"Tell me about {name}.",)
        elif kind == "runtime" and title.type == "TV Show":
            text = f"How many seasons does {name} have?"
        else:
            text = rng.choice(TEMPLATES[kind]).format(t=name)
        out.append(Question(kind, text, title, name, before, title.id in popular_ids, typed))
    return out


def _missing_names(catalog: Catalog, rng: random.Random) -> list[str]:
    finder = Finder.of(catalog)
    names = [n for n in FAMOUS if not finder.titles_named(n)]
    while len(names) < len(FAMOUS) + 12:
        name = " ".join(rng.choice(part) for part in MADE_UP)
        if name not in names and not finder.titles_named(name) and not catalog.exact(name):
            names.append(name)
    rng.shuffle(names)
    return names


# --- scoring ---------------------------------------------------------------------------


def expected_answer(question: Question) -> list[str]:
    """What a correct reply must state, any of each inner alternative."""
    t = question.title
    assert t is not None
    ask = question.kind
    if ask == "followup":
        ask = "director" if t.directors else "year"
    if ask == "director":
        return list(t.directors[:2])
    if ask == "year":
        return [str(t.year)]
    if ask == "runtime":
        return [t.duration]
    return []


def correct(question: Question, reply: str) -> bool:
    t = question.title
    assert t is not None
    folded = fold(reply)
    if question.kind == "cast":
        wanted = t.cast[:3]
        hits = sum(fold(c) in folded for c in wanted)
        return hits >= min(2, len(wanted))
    if question.kind == "genre":
        return any(fold(g) in folded for g in t.genres)
    return all(fold(x) in folded for x in expected_answer(question))


def contradiction(finder: Finder, subject: Title, reply: str) -> str:
    """A year or a catalog person in `reply` that neither `subject` nor a title the
    reply names has ("" when none)."""
    named = finder.find(reply, cased=True).titles
    involved = [subject, *named]
    years = {t.year for t in involved if t.year}
    for year in YEAR.findall(reply):
        if int(year) not in years:
            return f"year {year}"
    people = {fold(p) for t in involved for p in t.people}
    for person in finder.find(reply, cased=True).people:
        if fold(person) not in people:
            return f"person {person}"
    return ""


def invented(finder: Finder, reply: str) -> bool:
    """For a title the catalog lacks: any year or any name stated is invented (the
    "did you mean" names catalog titles, without years, and is left out)."""
    said = reply.split("Did you mean", 1)[0]
    if YEAR.search(said):
        return True
    if finder.find(said, cased=True).people:
        return True
    return bool(re.search(r"\b(?:directed by|starring|stars)\s+[A-Z]", said))


def picked(finder: Finder, reply: str) -> list[Title]:
    """The titles a recommendation reply offers: its bold names, else those it names."""
    bold = re.findall(r"\*\*(.+?)\*\*", reply)
    titles = [finder.titles_named(b)[0] for b in bold if finder.titles_named(b)]
    return titles or finder.find(reply, cased=True).titles


# --- running ---------------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.text = ""
        self.window: ContextWindow | None = None

    async def context(self, window: ContextWindow) -> None:
        self.window = window

    async def notice(self, text: str) -> None: ...

    async def piece(self, text: str) -> None:
        self.text += text

    async def finish(self, text: str) -> str | None:
        return None

    async def retract(self, text: str) -> None: ...

    def position(self, place: int) -> None: ...


async def ask(assistant: Assistant, user: str, text: str) -> tuple[str, float]:
    # A direct-message scope: no server's generation slots cap the benchmark's members.
    request = ReplyRequest(scope=Scope(None), user_id=user, user_name="Sam",
                           text=text, message_id=uuid.uuid4().hex, rate_limited=False)  # fmt: skip
    began = time.perf_counter()
    outcome = await assistant.reply(request, _Sink())
    return outcome.text, time.perf_counter() - began


async def run_mode(
    assistant: Assistant, finder: Finder, asked: Sequence[Question], *, concurrency: int,
    label: str,
) -> Tally:  # fmt: skip
    tally = Tally()
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int, q: Question) -> None:
        user = f"{label}-{n}"
        async with gate:
            try:
                for before in q.before:
                    await ask(assistant, user, before)
                reply, seconds = await ask(assistant, user, q.text)
            except Exception:  # a benchmark counts failures instead of stopping
                tally.errors += 1
                return
        tally.seconds.append(seconds)
        score(tally, finder, q, reply)

    await asyncio.gather(*(one(n, q) for n, q in enumerate(asked)))
    return tally


def score(tally: Tally, finder: Finder, q: Question, reply: str) -> None:
    if q.kind == "missing":
        tally.missing += 1
        made_up = invented(finder, reply)
        tally.invented += made_up
        if made_up:
            tally.wrong.append({"question": q.text, "title": "(not in catalog)",
                                "reply": reply[:300]})  # fmt: skip
        tally.honest += HONEST.search(reply) is not None
        return
    assert q.title is not None
    if q.kind == "like":
        tally.like_asked += 1
        offered = picked(finder, reply)
        tally.seed_picked += any(t.id == q.title.id for t in offered)
        others = [t for t in offered if t.id != q.title.id]
        tally.picks += len(others)
        tally.picks_sharing += sum(bool(t.concepts & q.title.concepts) for t in others)
        return
    tally.answered[q.kind] += 1
    right = correct(q, reply)
    tally.correct[q.kind] += right
    if not right:
        tally.wrong.append({"question": q.text, "title": q.title.label, "reply": reply[:300]})
    tally.replies += 1
    why = contradiction(finder, q.title, reply)
    if why:
        tally.contradicting += 1
        tally.contradictions.append({"question": q.text, "reply": reply[:300], "why": why})


def finder_times(finder: Finder, asked: Sequence[Question]) -> dict[str, float]:
    """Entity finding alone, per message, over every message of the run (five rounds,
    so one slow pass of a busy machine does not decide the p95)."""
    times = []
    for _ in range(5):
        for q in asked:
            for text in (*q.before, q.text):
                began = time.perf_counter()
                finder.find(text)
                times.append(time.perf_counter() - began)
    return {
        "messages": len(times),
        "p50_ms": round(percentile(times, 0.5) * 1000, 3),
        "p95_ms": round(percentile(times, 0.95) * 1000, 3),
        "max_ms": round(max(times) * 1000, 3),
    }


async def run(
    settings: Settings, *, count: int = 280, seed: int = 11, concurrency: int = 8,
    progress: Any = print, prefix: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The whole benchmark on a key prefix of its own, deleted afterwards."""
    from bot.services import open_services

    prefix = prefix or "mbfacts" + uuid.uuid4().hex[:8]
    settings = settings.model_copy(
        update={
            "memory": settings.memory.model_copy(update={"key_prefix": prefix}),
            "ratelimit": settings.ratelimit.model_copy(update={"enabled": False}),
        }
    )
    async with open_services(settings, progress=progress) as services:
        media = services.media
        assert media is not None
        try:
            catalog = await media.current()
            finder = Finder.of(catalog)
            asked = questions(catalog, count, seed)
            plain = Assistant(
                settings=settings.model_copy(
                    update={"grounding": GroundingSettings(enabled=False)}
                ),
                memory=services.memory, generator=services.generator,
                moderator=services.moderator, media=media,
            )  # fmt: skip
            grounded = services.assistant
            assert grounded.grounding is not None
            progress(f"Asking {len(asked)} questions, grounded…")
            began = time.perf_counter()
            with_facts = await run_mode(grounded, finder, asked, concurrency=concurrency,
                                        label="g")  # fmt: skip
            grounded_seconds = time.perf_counter() - began
            progress(f"Asking {len(asked)} questions, ungrounded…")
            began = time.perf_counter()
            without = await run_mode(plain, finder, asked, concurrency=concurrency, label="u")
            plain_seconds = time.perf_counter() - began
            stats = grounded.grounding.stats
            model_replies = max(
                sum(1 for q in asked for _ in (*q.before, q.text)) - stats.answered, 1
            )
            result: dict[str, Any] = {
                "date": dt.date.today().isoformat(),
                "machine": f"{platform.processor() or platform.machine()}, {_cores()} cores",
                "questions": len(asked),
                "kinds": dict(Counter(q.kind for q in asked)),
                "typos": sum(q.typo for q in asked),
                "popular": sum(q.popular for q in asked),
                "max_new_tokens": settings.generation.max_new_tokens,
                "grounded": with_facts.summary() | {"seconds": round(grounded_seconds, 1)},
                "ungrounded": without.summary() | {"seconds": round(plain_seconds, 1)},
                "finder": finder_times(finder, asked),
                "grounding_added_ms": {
                    "read_p50": round(percentile(stats.read_times, 0.5) * 1000, 3),
                    "read_p95": round(percentile(stats.read_times, 0.95) * 1000, 3),
                    "check_per_model_reply_mean": round(
                        stats.check_seconds / model_replies * 1000, 3
                    ),
                },
                "answered_from_catalog": stats.answered,
                "sentences_repaired": stats.repaired,
                "sentences_dropped": stats.dropped,
            }
        finally:
            client = services.memory.client
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                await client.delete(key)
    return result


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def report(result: dict[str, Any]) -> str:
    g, u = result["grounded"], result["ungrounded"]
    rows = [
        ("accuracy (catalog-answerable)", f"{g['accuracy']:.1%} of {g['answerable']}",
         f"{u['accuracy']:.1%} of {u['answerable']}"),
        ("replies contradicting the catalog", f"{g['contradicting']} of {g['replies_scored']}",
         f"{u['contradicting']} of {u['replies_scored']}"),
        ("invented facts, titles not in the catalog",
         f"{g['missing_invented']} of {g['missing_asked']}",
         f"{u['missing_invented']} of {u['missing_asked']}"),
        ("'if I liked X': X picked", f"{g['like_seed_picked']} of {g['like_asked']}",
         f"{u['like_seed_picked']} of {u['like_asked']}"),
        ("'if I liked X': picks sharing a genre", f"{g['like_picks_sharing_a_genre']:.1%}",
         f"{u['like_picks_sharing_a_genre']:.1%}"),
        ("reply p50 / p95", f"{g['reply_ms_p50']:.0f} / {g['reply_ms_p95']:.0f} ms",
         f"{u['reply_ms_p50']:.0f} / {u['reply_ms_p95']:.0f} ms"),
        ("errors", str(g["errors"]), str(u["errors"])),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'grounded':>18}  {'ungrounded':>18}"]
    lines += [f"{a:<{width}}  {b:>18}  {c:>18}" for a, b, c in rows]
    f, added = result["finder"], result["grounding_added_ms"]
    lines.append(
        f"entity finding: p50 {f['p50_ms']} ms, p95 {f['p95_ms']} ms over {f['messages']} "
        f"messages; grounding's read p95 {added['read_p95']} ms, check "
        f"{added['check_per_model_reply_mean']} ms a model reply"
    )
    return "\n".join(lines)


async def main(
    settings: Settings, *, count: int, seed: int, concurrency: int, out: Path | None
) -> dict[str, Any]:
    import sys

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = await run(settings, count=count, seed=seed, concurrency=concurrency,
                       progress=progress)  # fmt: skip
    if out is not None:
        await asyncio.to_thread(out.write_text, json.dumps(result, indent=2) + "\n")
    return result
