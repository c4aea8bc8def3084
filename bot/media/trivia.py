"""Trivia from catalog facts: who directed it, which year, which genre, odd one out.

The answer is correct by construction: it is read from the catalog, and every wrong
option is checked against the catalog to be wrong (a distractor director did not
direct the title, a distractor year is not its year, the odd one out is the only
option outside the genre). No model is involved.

In Redis, per server: a question is a hash with its answer and deadline, the members
who answered are a set beside it, and the leaderboard is a sorted set. One Lua script
stores a question with its expiry; another takes an answer: it refuses a second answer
and a late one, and scores a right one, atomically (`bot/media/lua/trivia_answer.lua`).
"""

from __future__ import annotations

import json
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from bot.media.catalog import Catalog, Title, fold, genre_concept
from memory.connection import RedisClient
from memory.errors import redis_errors
from memory.keys import Keys
from memory.scripts import load_script

KINDS = ("director", "year", "genre", "odd")
LETTERS = "ABCD"
Outcome = Literal["right", "wrong", "again", "late", "gone"]
BOARD_SIZE = 10


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    kind: str
    text: str
    options: tuple[str, ...]
    answer: int  # index into options
    title_id: str

    @property
    def correct(self) -> str:
        return self.options[self.answer]

    def as_text(self) -> str:
        lines = [self.text]
        lines += [f"  {LETTERS[i]}) {opt}" for i, opt in enumerate(self.options)]
        return "\n".join(lines)


class NoQuestion(Exception):
    """The catalog has too little in it for this kind of question."""


def _shuffle(rng: random.Random, right: str, wrong: list[str]) -> tuple[tuple[str, ...], int]:
    options = [right, *wrong]
    rng.shuffle(options)
    return tuple(options), options.index(right)


def _director(catalog: Catalog, rng: random.Random) -> Question:
    pool = [t for t in catalog.titles.values() if len(t.directors) == 1 and t.year]
    if len(pool) < 4:
        raise NoQuestion("director")
    for _ in range(50):
        title = rng.choice(pool)
        right = title.directors[0]
        others = list({d for t in rng.sample(pool, min(len(pool), 60)) for d in t.directors})
        wrong = [d for d in others if fold(d) != fold(right)
                 and title.id not in {x.id for x in catalog.by_person(d)}]  # fmt: skip
        if len(wrong) >= 3:
            options, answer = _shuffle(rng, right, rng.sample(wrong, 3))
            return Question(_qid(), "director", f"Who directed {title.label}?", options,
                            answer, title.id)  # fmt: skip
    raise NoQuestion("director")


def _year(catalog: Catalog, rng: random.Random) -> Question:
    pool = [t for t in catalog.titles.values() if t.year]
    if not pool:
        raise NoQuestion("year")
    title = rng.choice(pool)
    assert title.year is not None
    near = [title.year + d for d in (-6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6)]
    # No option later than the catalog's newest title: it would give itself away.
    newest = max(t.year or 0 for t in pool)
    wrong = [str(y) for y in near if 1850 <= y <= min(newest, time.gmtime().tm_year)]
    if len(wrong) < 3:
        raise NoQuestion("year")
    options, answer = _shuffle(rng, str(title.year), rng.sample(wrong, 3))
    what = {"Movie": "film", "TV Show": "show"}.get(title.type, title.type.lower())
    return Question(_qid(), "year", f"In which year was the {what} {title.title} released?",
                    options, answer, title.id)  # fmt: skip


def _genre(catalog: Catalog, rng: random.Random) -> Question:
    pool = [t for t in catalog.titles.values() if t.concepts]
    if not pool or len(catalog.concepts) < 4:
        raise NoQuestion("genre")
    for _ in range(50):
        title = rng.choice(pool)
        own = title.concepts
        right_label = next(g for g in title.genres if genre_concept(g) in own)
        wrong = [catalog.labels[c] for c in catalog.concepts if c not in own]
        if len(wrong) >= 3:
            options, answer = _shuffle(rng, right_label, rng.sample(wrong, 3))
            return Question(_qid(), "genre", f"Which genre is {title.label} listed under?",
                            options, answer, title.id)  # fmt: skip
    raise NoQuestion("genre")


def _odd(catalog: Catalog, rng: random.Random) -> Question:
    concepts = [c for c in catalog.concepts if len(catalog.by_concept(c)) >= 3]
    if not concepts:
        raise NoQuestion("odd")
    for _ in range(50):
        concept = rng.choice(concepts)
        inside = _distinct(rng, catalog.by_concept(concept), 3)
        outside_pool = [t for t in rng.sample(list(catalog.titles.values()),
                                              min(len(catalog), 200))
                        if concept not in t.concepts]  # fmt: skip
        if len(inside) < 3 or not outside_pool:
            continue
        odd = outside_pool[0]
        names = [t.title for t in inside]
        if fold(odd.title) in {fold(n) for n in names}:
            continue
        options, answer = _shuffle(rng, odd.title, names)
        # The genre as a concept ("horror"), not one label of it ("TV Horror"): the
        # three others may carry any of its labels.
        return Question(_qid(), "odd", f"Which of these is NOT a {concept} title?",
                        options, answer, odd.id)  # fmt: skip
    raise NoQuestion("odd")


def _distinct(rng: random.Random, titles: list[Title], n: int) -> list[Title]:
    seen: set[str] = set()
    out = []
    for t in rng.sample(titles, len(titles)):
        if fold(t.title) not in seen:
            seen.add(fold(t.title))
            out.append(t)
        if len(out) == n:
            break
    return out


MAKERS = {"director": _director, "year": _year, "genre": _genre, "odd": _odd}


def _qid() -> str:
    return secrets.token_hex(6)


def make_question(catalog: Catalog, rng: random.Random | None = None,
                  kind: str | None = None) -> Question:  # fmt: skip
    """A question of `kind` (any kind the catalog supports when None)."""
    rng = rng or random.Random()
    kinds = [kind] if kind else rng.sample(KINDS, len(KINDS))
    for k in kinds:
        try:
            return MAKERS[k](catalog, rng)
        except NoQuestion:
            continue
    raise NoQuestion("the catalog is too small for trivia")


def is_correct(catalog: Catalog, q: Question, option: int) -> bool:
    """The catalog's own verdict on an option, independent of how it was built (the
    tests check every question against this)."""
    title = catalog.get(q.title_id)
    assert title is not None
    chosen = q.options[option]
    if q.kind == "director":
        return fold(chosen) in {fold(d) for d in title.directors}
    if q.kind == "year":
        return chosen == str(title.year)
    if q.kind == "genre":
        return chosen in title.genres or any(
            genre_concept(chosen) == genre_concept(g) for g in title.genres
        )
    concept = q.text.removeprefix("Which of these is NOT a ").removesuffix(" title?")
    named = catalog.exact(chosen)
    return bool(named) and all(concept not in t.concepts for t in named)


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: Outcome
    correct: int  # the right option's index (-1 when the question is gone)
    score: int  # the member's points on this server after the answer


class Trivia:
    """Questions, answers and leaderboards in Redis."""

    def __init__(self, client: RedisClient, keys: Keys, *, seconds: float = 30.0) -> None:
        self._redis = client
        self.keys = keys
        self.seconds = seconds
        self._answer = client.register_script(load_script("bot.media", "trivia_answer"))
        self._post = client.register_script(load_script("bot.media", "trivia_post"))

    def _guild(self, guild_id: str | None) -> str:
        return guild_id or "dm"

    async def post(self, guild_id: str | None, q: Question, *, now: float | None = None) -> float:
        """Store a question; returns its deadline."""
        deadline = (now or time.time()) + self.seconds
        key = self.keys.trivia_key(self._guild(guild_id), q.id)
        record: dict[str, str | float | int] = {
            "answer": q.answer,
            "deadline": deadline,
            "title_id": q.title_id,
            "options": json.dumps(q.options),
            "text": q.text,
        }
        args: list[str | float | int] = [int(self.seconds) + 3600]
        for name, value in record.items():
            args += [name, value]
        with redis_errors():
            await self._post(keys=[key], args=args)
        return deadline

    async def answer(
        self, guild_id: str | None, question_id: str, user_id: str, option: int,
        *, now: float | None = None,
    ) -> Answer:  # fmt: skip
        guild = self._guild(guild_id)
        keys = [
            self.keys.trivia_key(guild, question_id),
            self.keys.trivia_key(guild, question_id) + ":answered",
            self.keys.guild_key(guild, "trivia_board"),
        ]
        with redis_errors():
            outcome, correct, score = await self._answer(
                keys=keys, args=[user_id, option, now or time.time(), 1]
            )
        text = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        return Answer(text, int(correct), int(score))  # type: ignore[arg-type]

    async def options(self, guild_id: str | None, question_id: str) -> list[str]:
        """A stored question's options ([] once it expired)."""
        key = self.keys.trivia_key(self._guild(guild_id), question_id)
        with redis_errors():
            raw = await self._redis.hget(key, "options")  # type: ignore[misc]
        if raw is None:
            return []
        try:
            return [str(o) for o in json.loads(raw)]
        except ValueError:
            return []

    async def leaderboard(self, guild_id: str | None, n: int = BOARD_SIZE) -> list[tuple[str, int]]:
        key = self.keys.guild_key(self._guild(guild_id), "trivia_board")
        with redis_errors():
            rows = await self._redis.zrevrange(key, 0, n - 1, withscores=True)
        pairs: list[tuple[Any, Any]] = list(rows)  # type: ignore[arg-type]
        return [(m.decode() if isinstance(m, bytes) else str(m), int(s)) for m, s in pairs]

    async def forget_user(self, user_id: str, guild_ids: list[str | None]) -> int:
        """Remove a member from the leaderboards of these servers (for /forget)."""
        removed = 0
        with redis_errors():
            for guild in guild_ids:
                key = self.keys.guild_key(self._guild(guild), "trivia_board")
                removed += int(await self._redis.zrem(key, user_id))
        return removed
