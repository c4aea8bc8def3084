"""Recommendations from the catalog: retrieve, rank, diversify; the model only phrases.

`Recommender.pick` is deterministic and model-free: candidates come from the request
(genres, people, titles "like X", type, years, words of the title fields) and the
taste profile (liked genres, people and titles), minus what the user has seen or
dislikes; they are ranked by overlap, then chosen greedily so that five picks are not
one franchise or one genre. `write_blurbs` asks the model for one sentence per pick
and keeps a sentence only when it names no title, person or year the catalog does not
give for that pick; anything else is replaced by a sentence built from the facts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bot.generation.base import GenerationError, GenerationParams, Generator, Owner
from bot.media.catalog import (
    TYPE_WORDS,
    Catalog,
    Title,
    concept_of,
    fold,
    genre_concept,
    genre_words,
)
from bot.media.facts import unsupported
from bot.moderation.rules import Rules
from memory.records import TasteItem

PICKS = 5
LEADS = 4  # a seed's first-billed cast members, whose other titles are likely kin
MIN_LINK = 1.0  # what a pick must share with a named title (see `Recommender._link`)
# Moderation of generated text: True when it may be shown.
Check = Callable[[str], Awaitable[bool]]
_WORD = re.compile(r"[a-z0-9']+")
_STOP_TEXT = (
    "a an the and or of to in on for with about me my i we us you something some any "
    "anything what should could would can watch see tonight today good great new "
    "show shows movie movies film films series tv recommend recommendation "
    "recommendations suggest please like similar want mood feel feeling kind sort "
    "type give get find one ones this that is are be it to from by into than more "
    "less really very bit lot "
)
_STOPWORDS = frozenset(_STOP_TEXT.split())
_YEARS = re.compile(r"\b(?:(19|20)?(\d)0'?s)\b", re.I)
_LIKE = re.compile(r"\b(?:like|similar to|in the vein of|more like)\s+([^,.;!?]{2,80})", re.I)
# Asking for a recommendation, not giving one: "can you recommend…", "recommend me a
# film", "any suggestions?", "what should I watch?"; "I recommend Dark" is chat.
RECOMMEND_INTENT = re.compile(
    r"\b(?:can|could|would|will) you (?:please )?(?:recommend|suggest)\b|"
    r"(?<!i )(?<!we )\b(?:recommend|suggest)(?: me| us)? (?:a|an|some|something|anything|"
    r"any|films?|movies?|shows?|series|titles?|one|more)\b|"
    r"^\s*(?:please )?(?:recommend|suggest)\b|"
    r"\b(?:any|some|your|got any|give me) (?:good )?(?:recommendations?|suggestions?|recs)\b|"
    r"\bwhat (?:should|could|can|shall) (?:i|we) (?:watch|see|binge|stream)\b|"
    r"\b(?:anything|something) (?:good )?(?:to|I could|we could|I can|we can) "
    r"(?:watch|binge|stream)\b|"
    r"\bgive me (?:a |some )?(?:film|movie|show|series)s?\b",
    re.I,
)


def wants_recommendation(text: str) -> bool:
    return bool(RECOMMEND_INTENT.search(text))


@dataclass(frozen=True, slots=True)
class Mood:
    """What a request asks for, read from its words against the catalog."""

    text: str = ""
    concepts: tuple[str, ...] = ()
    kind: str | None = None
    people: tuple[str, ...] = ()
    seeds: tuple[Title, ...] = ()
    year_from: int | None = None
    year_to: int | None = None
    words: tuple[str, ...] = ()

    @classmethod
    def read(cls, catalog: Catalog, text: str) -> Mood:
        low = text.lower()
        concepts = tuple(c for c in genre_words(text) if c in catalog.concepts)
        kind = next(
            (TYPE_WORDS[w] for w in sorted(TYPE_WORDS, key=len, reverse=True)
             if re.search(rf"\b{re.escape(w)}\b", low) and TYPE_WORDS[w] in catalog.types),
            None,
        )  # fmt: skip
        seeds: list[Title] = []
        for match in _LIKE.finditer(text):
            phrase = match.group(1)
            hit = catalog.exact(phrase) or [t for t in catalog.mentioned(phrase)]
            if not hit:
                best = catalog.best(phrase, cutoff=90.0)
                hit = [best] if best else []
            seeds += hit[:1]
        seeds += [t for t in catalog.mentioned(text) if t not in seeds]
        found = (catalog.person_names.get(fold(run), "") for run in _name_runs(text))
        people = tuple(dict.fromkeys(name for name in found if name))
        year_from = year_to = None
        decade = _YEARS.search(text)
        if decade:
            century = decade.group(1) or ("19" if int(decade.group(2)) >= 3 else "20")
            year_from = int(f"{century}{decade.group(2)}0")
            year_to = year_from + 9
        elif re.search(r"\b(?:recent|new|latest|newer)\b", low):
            year_from = 2018
        elif re.search(r"\b(?:old|older|classic|vintage)\b", low):
            year_to = 1999
        seed_words = {w for t in seeds for w in _WORD.findall(fold(t.title))}
        words = tuple(
            w for w in dict.fromkeys(_WORD.findall(fold(text)))
            if w not in _STOPWORDS and len(w) > 2 and w not in seed_words
            and concept_of(w) is None
        )  # fmt: skip
        return cls(text, concepts, kind, people, tuple(seeds[:3]), year_from, year_to, words)

    def seeded(self, seeds: Sequence[Title]) -> Mood:
        """This mood with `seeds` as its titles "like X" (found by the chat's finder);
        the seeds' own words no longer count as words asked for."""
        seed_words = {w for t in seeds for w in _WORD.findall(fold(t.title))}
        words = tuple(w for w in self.words if w not in seed_words)
        return dataclasses.replace(self, seeds=tuple(seeds[:3]), words=words)


def _name_runs(text: str) -> list[str]:
    """Runs of two or three capitalised words: candidate person names."""
    runs = re.findall(r"\b[A-Z][\w'.-]+(?: [A-Z][\w'.-]+){1,2}\b", text)
    out = []
    for run in runs:
        parts = run.split()
        out.append(run)
        if len(parts) == 3:
            out += [" ".join(parts[:2]), " ".join(parts[1:])]
    return out


@dataclass(frozen=True, slots=True)
class Taste:
    """A taste profile, resolved against the catalog."""

    liked_concepts: Counter[str] = field(default_factory=Counter)
    disliked_concepts: frozenset[str] = frozenset()
    liked_people: frozenset[str] = frozenset()
    disliked_people: frozenset[str] = frozenset()
    liked_titles: tuple[Title, ...] = ()
    excluded: frozenset[str] = frozenset()  # seen or disliked title ids

    @classmethod
    def of(cls, catalog: Catalog, items: Sequence[TasteItem]) -> Taste:
        liked: Counter[str] = Counter()
        titles = []
        for i in items:
            if i.polarity == "like" and i.kind == "genre":
                liked[i.key] += 3
            if i.polarity == "like" and i.kind == "title" and (t := catalog.get(i.key)):
                titles.append(t)
                for c in t.concepts:
                    liked[c] += 1
        return cls(
            liked_concepts=liked,
            disliked_concepts=frozenset(
                i.key for i in items if i.polarity == "dislike" and i.kind == "genre"
            ),
            liked_people=frozenset(
                fold(i.key) for i in items if i.polarity == "like" and i.kind == "person"
            ),
            disliked_people=frozenset(
                fold(i.key) for i in items if i.polarity == "dislike" and i.kind == "person"
            ),
            liked_titles=tuple(titles),
            excluded=frozenset(
                i.key for i in items if i.kind == "title" and i.polarity in ("seen", "dislike")
            )
            | frozenset(t.id for t in titles),
        )


@dataclass(frozen=True, slots=True)
class Pick:
    title: Title
    score: float
    reason: str
    blurb: str = ""
    blurb_from_model: bool = False


def franchise(title: Title) -> str:
    """Titles of one franchise share this: "Narcos: Mexico" and "Narcos" -> "narcos"."""
    head = re.split(r"[:(\-–]| \d+$| part ", title.title, maxsplit=1)[0]
    words = fold(head).removeprefix("the ").split()
    return " ".join(words[:2]) if words else fold(title.title)


class Recommender:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._tokens: dict[str, set[str]] = {}
        # Per title, computed once: genre concepts, folded people and countries.
        self._concepts = {t.id: t.concepts for t in catalog.titles.values()}
        self._people = {t.id: frozenset(map(fold, t.people)) for t in catalog.titles.values()}
        self._countries = {t.id: countries(t) for t in catalog.titles.values()}
        # A rare genre shared with a seed says more than "International Movies" does.
        counts: Counter[str] = Counter(c for cs in self._concepts.values() for c in cs)
        size = max(len(catalog), 1)
        self._concept_idf = {c: math.log(size / n) for c, n in counts.items()}
        df: Counter[str] = Counter()
        self._newest = max((t.year or 0 for t in catalog.titles.values()), default=0)
        for t in catalog.titles.values():
            words = set(_WORD.findall(fold(f"{t.title} {' '.join(t.genres)} {t.country}")))
            self._tokens[t.id] = words
            df.update(words)
        n = max(len(catalog), 1)
        self._idf = {w: math.log(n / c) for w, c in df.items()}
        pops = [t.popularity for t in catalog.titles.values() if t.popularity is not None]
        self._max_pop = max(pops) if pops else None

    def popularity(self, title: Title) -> float:
        """0..1: the catalog's popularity column when it has one; otherwise recency and
        the size of the cast (titles with many credited people are the big releases)."""
        if self._max_pop:
            return (title.popularity or 0.0) / self._max_pop
        recency = max(0.0, 1 - (self._newest - (title.year or 0)) / 30) if title.year else 0
        return 0.6 * recency + 0.4 * min(len(title.cast), 15) / 15

    def popular(self, k: int = PICKS, *, exclude: frozenset[str] = frozenset()) -> list[Title]:
        """The popularity baseline: the same most-popular titles for everyone."""
        ranked = sorted(
            (t for t in self.catalog.titles.values() if t.id not in exclude),
            key=lambda t: (-self.popularity(t), t.title),
        )
        return ranked[:k]

    def pick(
        self,
        mood: Mood,
        taste: Taste,
        *,
        k: int = PICKS,
        salt: str = "",
        exclude: frozenset[str] = frozenset(),
    ) -> list[Pick]:
        """The top `k` titles for this request and profile, diverse, with a reason each.
        When the request's filters leave fewer than `k`, they are relaxed in turn: the
        type, then the years, then the genres (which then only rank). With seeds ("like
        Okja"), every pick shares something with a seed and says what; `exclude` (title
        ids) and the seeds themselves are never picked."""
        relaxations = [
            mood,
            dataclasses.replace(mood, kind=None),
            dataclasses.replace(mood, kind=None, year_from=None, year_to=None),
        ]
        picks: list[Pick] = []
        for attempt in relaxations:
            picks = self._pick(attempt, taste, k=k, salt=salt, exclude=exclude)
            if len(picks) >= k:
                return picks
        soft = self._pick(
            relaxations[-1], taste, k=k, salt=salt, strict_genres=False, exclude=exclude
        )
        return soft if len(soft) > len(picks) else picks

    def _pick(  # noqa: PLR0915 - one scoring pass, read top to bottom
        self,
        mood: Mood,
        taste: Taste,
        *,
        k: int,
        salt: str,
        strict_genres: bool = True,
        exclude: frozenset[str] = frozenset(),
    ) -> list[Pick]:
        catalog = self.catalog
        wanted_people = {fold(p) for p in mood.people}
        skip = exclude | {s.id for s in mood.seeds}
        liked_total = sum(taste.liked_concepts.values()) or 1
        scored: list[tuple[float, str, Title]] = []
        for t in catalog.titles.values():
            if t.id in taste.excluded or t.id in skip:
                continue
            if mood.kind and t.type != mood.kind:
                continue
            if mood.year_from and (t.year is None or t.year < mood.year_from):
                continue
            if mood.year_to and (t.year is None or t.year > mood.year_to):
                continue
            concepts = self._concepts[t.id]
            asked = concepts.intersection(mood.concepts)
            if strict_genres and mood.concepts and not asked:
                continue
            disliked = (concepts & taste.disliked_concepts) - set(mood.concepts)
            people = self._people[t.id]
            if disliked or people & taste.disliked_people:
                continue
            score, reason = 0.0, ""
            if asked:
                score += 3.0 * len(asked)
                reason = f"you asked for {' and '.join(sorted(asked))}"
            hits = people & wanted_people
            if hits:
                score += 4.0
                reason = (
                    f"it has {catalog.person_names.get(next(iter(hits)), 'them')}, as you asked"
                )
            if mood.seeds:
                link = self._link(t, mood.seeds)
                if link is None:
                    continue  # like a named title means sharing something with it
                score += link[0]
                reason = link[1]
            if mood.words:
                text_score = sum(
                    self._idf.get(w, 0.0) for w in mood.words if w in self._tokens[t.id]
                )
                score += 0.4 * text_score
            taste_score = sum(taste.liked_concepts[c] for c in concepts) / liked_total
            if taste_score:
                score += 3.0 * taste_score
                if not reason:
                    top = max(concepts, key=lambda c: taste.liked_concepts[c])
                    reason = f"you like {top}"
            liked_people = people & taste.liked_people
            if liked_people:
                score += 2.5
                reason = reason or (
                    f"it has {catalog.person_names.get(next(iter(liked_people)), 'someone')}, "
                    "whom you like"
                )
            for liked in taste.liked_titles:
                if people & self._people.get(liked.id, frozenset()):
                    score += 1.0
                    reason = reason or f"it shares people with {liked.title}, which you liked"
                    break
            score += 0.8 * self.popularity(t) + _jitter(salt, t.id)
            scored.append((score, reason or "it's popular in the catalog", t))
        scored.sort(key=lambda s: (-s[0], s[2].title))
        return self._diverse(
            scored[: k * 40], k, self._concepts, single_genre=len(mood.concepts) == 1
        )

    def _link(self, t: Title, seeds: Sequence[Title]) -> tuple[float, str] | None:
        """How much `t` shares with the closest seed, and a reason that says what: its
        director, its leading cast, rarer genres first, a country. None when it shares
        too little (one minor cast member is not a likeness)."""
        best: tuple[float, str] | None = None
        directing = {fold(d) for d in t.directors}
        people = self._people[t.id]
        for seed in seeds:
            directors = [d for d in seed.directors if fold(d) in directing]
            leads = [c for c in seed.cast[:LEADS] if fold(c) in people]
            others = [c for c in seed.cast[LEADS:] if fold(c) in people]
            shared = sorted(
                self._concepts[t.id] & self._concepts.get(seed.id, seed.concepts),
                key=lambda c: (-self._concept_idf.get(c, 0.0), c),
            )
            genre_score = sum(self._concept_idf.get(c, 0.0) for c in shared)
            score = 3.0 * bool(directors) + 1.5 * len(leads) + 0.5 * len(others) + genre_score
            if score < MIN_LINK:
                continue
            if directors:
                reason = f"it's also directed by {directors[0]}, like {seed.title}"
            elif leads:
                reason = f"it also has {_and(leads[:2])}, like {seed.title}"
            elif shared:
                reason = f"it shares {_and(shared[:2])} with {seed.title}"
            else:
                reason = f"it also has {_and(others[:2])}, like {seed.title}"
            places = self._countries[t.id] & self._countries.get(seed.id, countries(seed))
            if places:
                score += 0.5
                if not directors and not leads:
                    place = sorted(places)[0]
                    shown = next(
                        (c.strip() for c in seed.country.split(",") if fold(c) == place), ""
                    )
                    reason += f", and is also from {shown}"
            if t.type == seed.type:
                score += 0.5
            if best is None or score > best[0]:
                best = (score, reason)
        return best

    @staticmethod
    def _diverse(
        ranked: list[tuple[float, str, Title]],
        k: int,
        concepts: dict[str, frozenset[str]],
        *,
        single_genre: bool,
    ) -> list[Pick]:
        chosen: list[Pick] = []
        franchises: set[str] = set()
        leading: Counter[str] = Counter()
        pool = list(ranked)
        while pool and len(chosen) < k:
            best_i, best_value = 0, -math.inf
            for i, (score, _, t) in enumerate(pool[: k * 8]):
                if franchise(t) in franchises:
                    continue
                penalty = 0.0
                for c in concepts[t.id]:
                    penalty = max(penalty, 0.9 * leading[c] / max(len(chosen), 1))
                value = score - (0.5 if single_genre else 1.5) * penalty
                if value > best_value:
                    best_i, best_value = i, value
            if best_value == -math.inf:
                pool = [p for p in pool if franchise(p[2]) not in franchises]
                continue
            score, reason, t = pool.pop(best_i)
            chosen.append(Pick(t, score, reason))
            franchises.add(franchise(t))
            leading.update(concepts[t.id])
        return chosen


def countries(title: Title) -> frozenset[str]:
    return frozenset(fold(c) for c in title.country.split(",") if c.strip())


def _and(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _jitter(salt: str, title_id: str) -> float:
    """A small, stable tiebreak per user and day, so two people asking the same thing
    are not handed the same list."""
    if not salt:
        return 0.0
    digest = hashlib.blake2b(f"{salt}|{title_id}".encode(), digest_size=2).digest()
    return int.from_bytes(digest, "big") / 65535 * 0.3


# --- Phrasing -------------------------------------------------------------------------

BLURB_SYSTEM = (
    "You write one short, friendly sentence recommending a film or show. Use only the "
    "facts given. Do not name any other title, person or year."
)
MAX_BLURB = 280
MIN_BLURB_WORDS = 8
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


def fact_blurb(pick: Pick) -> str:
    """A sentence from the facts alone."""
    t = pick.title
    kinds = {"Movie": "film", "TV Show": "TV show", "Title": "title"}
    what = kinds.get(t.type, t.type)
    genres = [g for g in t.genres if genre_concept(g)][:2]
    text = f"A {t.year} {what}" if t.year else f"A {what}"
    if genres:
        text += f" ({', '.join(genres)})"
    if t.directors:
        text += f" directed by {t.directors[0]}"
    elif t.cast:
        text += f" starring {', '.join(t.cast[:2])}"
    return text + f"; picked because {pick.reason}."


def check_blurb(catalog: Catalog, title: Title, text: str) -> str | None:
    """The sentence, cleaned, if it names nothing the catalog does not give for this
    title (see `bot.media.facts`) and reads as a recommendation; None otherwise."""
    line = Rules.clean_output(" ".join(text.split())).strip(" -*#")
    line = re.sub(r"^\d+[.)]\s*", "", line)
    if not line or len(line) > MAX_BLURB or line.count("\n"):
        return None
    if unsupported(catalog, line, title, strict_names=True):
        return None
    if fold(line).startswith(("i ", "as an ai", "sorry")):
        return None
    if "?" in line or len(line.split()) < MIN_BLURB_WORDS or line[-1] not in ".!":
        return None  # a question, a fragment or an exclamation is not a recommendation
    return line


async def write_blurbs(
    generator: Generator,
    catalog: Catalog,
    picks: Sequence[Pick],
    *,
    request: str,
    params: GenerationParams,
    owner: Owner | None = None,
    check: Check | None = None,
) -> list[Pick]:
    """One sentence per pick from the model; a sentence that fails `check_blurb`, or a
    generation that failed or found the queue full, becomes `fact_blurb` (so under
    load a member still gets picks, only plainer). The picks of one request are
    written one after another: a request takes one place in the fair queue, like a
    chat reply, and other members' requests decode beside it."""

    async def one(pick: Pick) -> Pick:
        t = pick.title
        messages = [
            {"role": "system", "content": BLURB_SYSTEM},
            {
                "role": "user",
                "content": f"Someone asked: {request[:300]}\nFacts: {t.facts()}.\n"
                f"Why it fits: {pick.reason}.\n"
                f"Write one sentence telling them why {t.title} is worth watching.",
            },
        ]
        text = ""
        try:
            stream = generator.stream(messages, params, owner=owner)
            try:
                async for piece in stream:
                    text += piece
                    # Only the first sentence is kept: stop decoding once it ends.
                    if _SENTENCE_END.search(text.strip() + " ") or len(text) > MAX_BLURB:
                        break
            finally:
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()
        except GenerationError:
            text = ""
        first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0] if text.strip() else ""
        checked = check_blurb(catalog, t, first)
        if checked is not None and check is not None and not await check(checked):
            checked = None  # moderation held it: the facts speak instead
        if checked is None:
            return Pick(t, pick.score, pick.reason, fact_blurb(pick), False)
        return Pick(t, pick.score, pick.reason, checked, True)

    return [await one(p) for p in picks]
