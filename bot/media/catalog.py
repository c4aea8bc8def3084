"""The media catalog: titles as facts, and an in-process index to find them.

Facts about titles come from here, never from the model: a 135M model invents titles
freely. The index is built once from the stored catalog (see `bot.media.library`):
normalised titles for exact lookups, rapidfuzz over them for typos ("intersteller"),
and genre, person, type and year filters. Genres are matched as *concepts*: "horror"
covers both "Horror Movies" and "TV Horror".
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from rapidfuzz import fuzz, process

# A typo is forgiven down to this WRatio score (0-100) against a normalised title.
FUZZY_CUTOFF = 86.0

# Words people use for a genre, to the concept they mean. A catalog's own labels are
# reduced to concepts by `genre_concept`; words not here match a concept by name.
GENRE_ALIASES: dict[str, str] = {
    "comedy": "comedy", "comedies": "comedy", "funny": "comedy", "sitcom": "comedy",
    "sitcoms": "comedy",
    "drama": "drama", "dramas": "drama",
    "thriller": "thriller", "thrillers": "thriller", "suspense": "thriller",
    "horror": "horror", "scary": "horror",
    "documentary": "documentary", "documentaries": "documentary", "docuseries": "documentary",
    "docs": "documentary",
    "romance": "romance", "romantic": "romance", "romcom": "romance", "rom-com": "romance",
    "love story": "romance",
    "crime": "crime", "heist": "crime", "detective": "crime",
    "kids": "family", "kid": "family", "kids'": "family", "children": "family",
    "children & family": "family", "family": "family",
    "sci-fi": "sci-fi & fantasy", "scifi": "sci-fi & fantasy",
    "science fiction": "sci-fi & fantasy", "fantasy": "sci-fi & fantasy",
    "sci-fi & fantasy": "sci-fi & fantasy",
    "action": "action & adventure", "adventure": "action & adventure",
    "action & adventure": "action & adventure",
    "anime": "anime", "stand-up": "stand-up", "standup": "stand-up",
    "stand-up comedy": "stand-up", "stand-up comedy & talk shows": "stand-up",
    "talk show": "stand-up", "talk shows": "stand-up",
    "music": "music & musicals", "musical": "music & musicals", "musicals": "music & musicals",
    "music & musicals": "music & musicals",
    "mystery": "mystery", "mysteries": "mystery", "whodunit": "mystery",
    "reality": "reality", "reality tv": "reality",
    "sports": "sports", "sport": "sports",
    "independent": "independent", "indie": "independent",
    "international": "international", "foreign": "international",
    "classic": "classic", "classics": "classic", "classic & cult": "classic",
    "cult": "cult",
    "lgbtq": "lgbtq", "lgbt": "lgbtq", "queer": "lgbtq",
    "teen": "teen", "teens": "teen",
    "faith & spirituality": "faith & spirituality", "faith": "faith & spirituality",
    "spiritual": "faith & spirituality",
    "science & nature": "science & nature", "nature": "science & nature",
    "british": "british", "korean": "korean", "k-drama": "korean", "kdrama": "korean",
    "spanish-language": "spanish-language", "spanish": "spanish-language",
}  # fmt: skip
# Labels that say only what kind of title it is.
_KIND_ONLY = {"movies", "tv shows", "tv", "shows", "films", ""}
_LABEL_NOISE = re.compile(r"^tv |\b(?:movies|tv shows|tv|series|features|shows|films)\b", re.I)
_SPACE = re.compile(r"\s+")
_NON_WORD = re.compile(r"[^\w&'+-]+")

TYPE_WORDS = {
    "movie": "Movie", "movies": "Movie", "film": "Movie", "films": "Movie",
    "show": "TV Show", "shows": "TV Show", "series": "TV Show", "tv show": "TV Show",
    "tv shows": "TV Show", "tv": "TV Show",
}  # fmt: skip


def fold(text: str) -> str:
    """Lower case without accents or punctuation, single spaces: the lookup form."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    bare = bare.replace("&", " and ")
    return _SPACE.sub(" ", re.sub(r"[^\w]+", " ", bare)).strip()


@functools.lru_cache(maxsize=4096)
def genre_concept(label: str) -> str:
    """ "Horror Movies" and "TV Horror" -> "horror"; an unknown label is its own concept."""
    low = _SPACE.sub(" ", label.strip().lower())
    if low in GENRE_ALIASES:
        return GENRE_ALIASES[low]
    core = _SPACE.sub(" ", _LABEL_NOISE.sub(" ", low)).strip()
    if core in _KIND_ONLY:
        return ""
    return GENRE_ALIASES.get(core, core)


class Title(BaseModel):
    """One catalog entry. Only `id`, `title` and `type` are required."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(min_length=1, max_length=80)
    title: str = Field(min_length=1, max_length=300)
    type: str = Field(default="Title", min_length=1, max_length=40)
    year: int | None = Field(default=None, ge=1800, le=2100)
    genres: tuple[str, ...] = ()
    directors: tuple[str, ...] = ()
    cast: tuple[str, ...] = ()
    country: str = ""
    rating: str = ""
    duration: str = ""
    popularity: float | None = None

    @property
    def people(self) -> tuple[str, ...]:
        return self.directors + self.cast

    @property
    def concepts(self) -> frozenset[str]:
        return frozenset(c for c in map(genre_concept, self.genres) if c)

    @property
    def label(self) -> str:
        """ "Dark (2017)": how a title is named in replies."""
        return f"{self.title} ({self.year})" if self.year else self.title

    def facts(self) -> str:
        """One line of facts, for prompts and plain-text answers."""
        parts = [self.type]
        if self.year:
            parts.append(str(self.year))
        if self.genres:
            parts.append(", ".join(self.genres))
        line = f"{self.title}: " + "; ".join(parts)
        if self.directors:
            line += f"; directed by {', '.join(self.directors[:3])}"
        if self.cast:
            line += f"; starring {', '.join(self.cast[:3])}"
        return line


@dataclass(frozen=True, slots=True)
class Match:
    title: Title
    score: float  # 100 for an exact (normalised) match


class Catalog:
    """An immutable in-process index over a list of titles."""

    def __init__(self, titles: Iterable[Title]) -> None:
        self.titles: dict[str, Title] = {}
        for t in titles:
            self.titles[t.id] = t
        self._by_name: dict[str, list[str]] = defaultdict(list)
        self._by_person: dict[str, list[str]] = defaultdict(list)
        self._by_concept: dict[str, list[str]] = defaultdict(list)
        self.person_names: dict[str, str] = {}  # folded -> as written
        self.labels: dict[str, str] = {}  # concept -> a label of it, as the catalog writes it
        for t in self.titles.values():
            self._by_name[fold(t.title)].append(t.id)
            for person in t.people:
                key = fold(person)
                if key:
                    self._by_person[key].append(t.id)
                    self.person_names.setdefault(key, person)
            for label in t.genres:
                concept = genre_concept(label)
                if concept:
                    self._by_concept[concept].append(t.id)
                    self.labels.setdefault(concept, label)
        self._names = list(self._by_name)
        # A multi-word title's folded form, for spotting titles inside free text.
        self.multiword = {n for n in self._names if " " in n}
        self.types = sorted({t.type for t in self.titles.values()})

    def __len__(self) -> int:
        return len(self.titles)

    def get(self, title_id: str) -> Title | None:
        return self.titles.get(title_id)

    @property
    def concepts(self) -> list[str]:
        return sorted(self._by_concept)

    def by_concept(self, concept: str) -> list[Title]:
        return [self.titles[i] for i in self._by_concept.get(concept, ())]

    def by_person(self, name: str) -> list[Title]:
        return [self.titles[i] for i in self._by_person.get(fold(name), ())]

    def exact(self, name: str) -> list[Title]:
        """Titles whose normalised name is exactly `name`'s, newest first."""
        found = [self.titles[i] for i in self._by_name.get(fold(name), ())]
        return sorted(found, key=lambda t: -(t.year or 0))

    def find(self, name: str, *, limit: int = 5, cutoff: float = FUZZY_CUTOFF) -> list[Match]:
        """Best matches for a title as typed: exact matches first, then near spellings."""
        key = fold(name)
        if not key:
            return []
        matches = [Match(t, 100.0) for t in self.exact(name)]
        if len(matches) >= limit:
            return matches[:limit]
        seen = {m.title.id for m in matches}
        # rapidfuzz's native WRatio shortlists; the length-aware score decides.
        shortlist = process.extract(
            key, self._names, scorer=fuzz.WRatio, limit=limit * 8, score_cutoff=cutoff
        )
        rescored = sorted(
            ((found, _title_score(key, found)) for found, _, _ in shortlist),
            key=lambda pair: -pair[1],
        )
        for found, score in rescored:
            if score < cutoff:
                continue
            for tid in self._by_name[found]:
                if tid not in seen:
                    seen.add(tid)
                    matches.append(Match(self.titles[tid], float(score)))
        return matches[:limit]

    def near(self, name: str, *, cutoff: float, limit: int = 3) -> list[Match]:
        """Titles whose whole normalised name is within `cutoff` plain edit ratio of
        `name`'s (a misspelling of the whole name, not a shared fragment): fast enough
        for every message, unlike `find`'s weighted ratio."""
        key = fold(name)
        if not key:
            return []
        shortlist = process.extract(key, self._names, scorer=fuzz.ratio, limit=limit * 10,
                                    score_cutoff=cutoff)  # fmt: skip
        # Of names alike in letters, those sharing whole words first: "the godfather" is
        # nearer "The Black Godfather" than "The Other".
        ranked = sorted(shortlist, key=lambda f: (-fuzz.token_set_ratio(key, f[0]), -f[1]))
        out: list[Match] = []
        for folded, score, _ in ranked:
            for tid in self._by_name[folded]:
                out.append(Match(self.titles[tid], float(score)))
        return out[:limit]

    def best(self, name: str, *, cutoff: float = FUZZY_CUTOFF) -> Title | None:
        found = self.find(name, limit=1, cutoff=cutoff)
        return found[0].title if found else None

    def person(self, name: str, *, cutoff: float = 90.0) -> str | None:
        """A person of the catalog, as it writes the name, for a name as typed."""
        key = fold(name)
        if key in self.person_names:
            return self.person_names[key]
        if len(key) < 5:
            return None
        hit = process.extractOne(key, self.person_names.keys(), scorer=fuzz.ratio,
                                 score_cutoff=cutoff)  # fmt: skip
        return self.person_names[hit[0]] if hit else None

    def search(
        self,
        *,
        text: str | None = None,
        genre: str | None = None,
        person: str | None = None,
        kind: str | None = None,
        year_from: int | None = None,
        year_to: int | None = None,
        limit: int = 10,
    ) -> list[Title]:
        """Titles passing every filter given; with `text`, ordered by title match."""
        pool: Sequence[Title]
        if text:
            pool = [m.title for m in self.find(text, limit=max(limit * 5, 25), cutoff=60.0)]
        elif person:
            pool = self.by_person(self.person(person) or person)
        elif genre:
            pool = self.by_concept(concept_of(genre) or "")
        else:
            pool = list(self.titles.values())
        concept = concept_of(genre) if genre else None
        who = fold(self.person(person) or person) if person else None
        out = []
        for t in pool:
            if genre and concept not in t.concepts:
                continue
            if who and who not in {fold(p) for p in t.people}:
                continue
            if kind and t.type.lower() != kind.lower():
                continue
            if year_from and (t.year is None or t.year < year_from):
                continue
            if year_to and (t.year is None or t.year > year_to):
                continue
            out.append(t)
        if not text:
            out.sort(key=lambda t: (-(t.year or 0), t.title.casefold()))
        return out[:limit]

    def mentioned(self, text: str, *, cased: bool = False) -> list[Title]:
        """Catalog titles of two or more words named in `text` (whole words), longest
        first; one-word titles are too often ordinary words to spot this way. With
        `cased`, only titles written as the catalog writes them count ("The End" is a
        title, "to the end" is not)."""
        padded = f" {fold(text)} "
        found: list[Title] = []
        words = padded.split()
        seen: set[str] = set()
        for size in range(min(len(words), 12), 1, -1):
            for i in range(len(words) - size + 1):
                phrase = " ".join(words[i : i + size])
                if phrase in self.multiword and phrase not in seen:
                    seen.add(phrase)
                    hits = self.exact(phrase)
                    if cased:
                        hits = [t for t in hits if _written(t.title, text)]
                    found.extend(hits[:1])
        return found


def _written(title: str, text: str) -> bool:
    """Whether `text` writes `title` with the catalog's capitals (punctuation aside)."""
    words = re.findall(r"\w+", title)
    pattern = r"\W+".join(re.escape(w) for w in words)
    return bool(words) and re.search(rf"\b{pattern}\b", text) is not None


def concept_of(word: str) -> str | None:
    """The genre concept a user's word means, if any ("scary" -> "horror")."""
    low = _SPACE.sub(" ", word.strip().lower())
    if low in GENRE_ALIASES:
        return GENRE_ALIASES[low]
    concept = genre_concept(low)
    if concept and concept != low:
        return concept
    singular = low[:-1] if low.endswith("s") else low
    return GENRE_ALIASES.get(singular)


def _title_score(query: str, choice: str, **kwargs: object) -> float:
    """WRatio, but a short string must not match a long one by a fragment alone
    ("amelie" is not "Eli")."""
    score = float(fuzz.WRatio(query, choice))
    short, long_ = sorted((len(query), len(choice)))
    if short < 8 or long_ > 2 * short + 4:
        score = min(score, float(fuzz.ratio(query, choice)) + 5)
    return score


def genre_words(text: str) -> list[str]:
    """Genre concepts named in free text, longer phrases first ("a scary comedy" ->
    horror, comedy; "stand-up comedy" -> stand-up only)."""
    low = " " + _NON_WORD.sub(" ", text.lower()) + " "
    found: list[str] = []
    for word, concept in sorted(GENRE_ALIASES.items(), key=lambda kv: -len(kv[0])):
        if f" {word} " in low and concept not in found:
            found.append(concept)
            low = low.replace(f" {word} ", " ")
    return found
