"""Factual questions about titles and people, read from a message and answered from
the catalog: who directed X, when did X come out, who is in X, what genre, how long,
film or show, rating, country, and what else a person made.

The answer is built from the catalog's facts, not written by the model: a 135M model
garbles a name or a year even with the facts in front of it. A title the catalog does
not hold gets an honest "not in my catalog", with a "did you mean" when one is close.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bot.media.catalog import Catalog, Title, concept_of, fold

Ask = Literal[
    "director", "year", "cast", "genre", "is_genre", "runtime", "type", "rating", "country",
    "works",
]  # fmt: skip
CAST_SHOWN = 5
WORKS_SHOWN = 8
SUGGESTIONS = 3
SUGGEST_RATIO = 70.0  # a "did you mean" is at least this near in plain edit ratio
CLOSE_RATIO = 90.0  # and this near when it shares no longer word with what was asked
MAX_SLOT_WORDS = 10

# A slot is what the question asks about: a title, a person, or a word pointing back.
_X = r"(?P<x>[^?!.\n]{1,120}?)"
_P = r"(?P<x>[^?!.\n]{1,80}?)"
_END = r"\s*(?:[?!.]|$|,|\s+(?:again|btw|by the way|exactly|anyway|though|please)\b)"
_KIND = r"(?:films?|movies?|shows?|series|tv shows?|tv series|documentar(?:y|ies)|anime)"
_YEAR_VERB = (
    r"(?:come out|came out|get released|released|release|premiere|premiered|air|aired|"
    r"first air|debut|made|filmed|out|start|begin|launch)"
)
_GENRE_WORD = (
    r"(?P<g>scary|funny|horror|comedy|comedies|a comedy|a horror|drama|a drama|thriller|"
    r"a thriller|romantic|a romance|romance|sci-fi|science fiction|fantasy|animated|anime|"
    r"a documentary|documentary|crime|a crime|kids|for kids|family|action|an action|mystery|"
    r"a mystery|musical|a musical|romcom|a romcom)"
)

_PATTERN_TEXTS: list[tuple[Ask, str]] = [
    ("works", rf"\bwhat (?:else )?(?:has|did|have|does) {_P} (?:directed|direct|made|"
              rf"make|done|do|been in|starred in|star in|acted in|act in|appeared in|"
              rf"appear in|worked on|work on){_END}"),
    ("works", rf"\b(?:what|which|any) (?:other |more )?(?:{_KIND}|titles|work) "
              rf"(?:by|from|with|starring|directed by|has|did|have) {_P}"
              rf"(?: (?:directed|made|done|been in|starred in|acted in))?{_END}"),
    ("works", rf"\b(?:filmography|films|movies|work|titles) of {_P}{_END}"),
    ("works", rf"^\s*(?:any |other |more )?(?:{_KIND}|titles|anything|something|stuff) "
              rf"(?:else )?(?:by|directed by|starring|with) {_P}{_END}"),
    ("director", rf"\bwho (?:directed|made|helmed|shot|was behind|is behind) {_X}{_END}"),
    ("director", rf"\bwho(?:'s| is| was)? the director (?:of|for|behind) {_X}{_END}"),
    ("director", rf"^\s*(?:the )?director (?:of|for) {_X}{_END}"),
    ("director", rf"\bwho was {_X} directed by{_END}"),
    ("year", rf"\b(?:when|what year) (?:did|was|is|does|were) {_X} {_YEAR_VERB}{_END}"),
    ("year", rf"\bwhat year (?:is|was) {_X} (?:from|set)?{_END}"),
    ("year", rf"\b(?:release date|release year|year) (?:of|for) {_X}{_END}"),
    ("year", rf"\bhow old is {_X}{_END}"),
    ("cast", rf"\bwho (?:is|was|are|were|stars|starred|acts|acted|plays|played|"
             rf"appears|appeared) in {_X}{_END}"),
    ("cast", rf"\bwho(?:'s| is) in {_X}{_END}"),
    ("cast", rf"\b(?:the )?(?:cast|actors|stars|starring cast) (?:of|in|for) {_X}{_END}"),
    ("cast", rf"\bwho stars in {_X}{_END}"),
    ("genre", rf"\bwhat (?:genre|genres|kind of {_KIND}|type of {_KIND}|sort of {_KIND}) "
              rf"(?:is|was|are) {_X}{_END}"),
    ("genre", rf"\b(?:genre|genres) (?:of|for) {_X}{_END}"),
    ("type", rf"\bis {_X} (?:a |an )?(?:film|movie|show|series|tv show|tv series)"
             rf"(?: or (?:a |an )?(?:film|movie|show|series|tv show|tv series))?{_END}"),
    ("is_genre", rf"\b(?:is|was) {_X} (?:too |very |really |a bit |at all )?"
                 rf"{_GENRE_WORD}(?: {_KIND})?{_END}"),
    ("runtime", rf"\bhow long is {_X}{_END}"),
    ("runtime", rf"\b(?:runtime|running time|length|duration) (?:of|for) {_X}{_END}"),
    ("runtime", rf"\bhow many (?:seasons|minutes|hours|episodes) (?:does|did|has|is|are in)"
                rf" {_X}(?: have| had| got| run| last)?{_END}"),
    ("rating", rf"\bwhat(?:'s| is) {_X} rated{_END}"),
    ("rating", rf"\b(?:age rating|rating|rated) (?:of|for) {_X}{_END}"),
    ("rating", rf"\bis {_X} (?:ok|okay|suitable|appropriate|safe|fine) for "
               rf"(?:kids|children|a \w+-year-old|my kids){_END}"),
    ("country", rf"\bwhere (?:is|was|does) {_X} (?:from|made|filmed|produced|come from)"
                rf"{_END}"),
    ("country", rf"\bwhat country (?:is|was) {_X} (?:from|made in){_END}"),
    ("country", rf"\bwhich country (?:is|was) {_X} (?:from|made in){_END}"),
]  # fmt: skip
PATTERNS = [(ask, re.compile(pattern, re.IGNORECASE)) for ask, pattern in _PATTERN_TEXTS]

# Slots that point back at the conversation: "who directed it?".
TITLE_POINTERS = frozenset(
    [
        "it", "that", "this", "this one", "that one", "the film", "the movie", "the show",
        "the series", "that film", "that movie", "that show", "that series", "this film",
        "this movie", "this show", "this series",
    ]
)  # fmt: skip
PERSON_POINTERS = frozenset({"he", "she", "him", "they", "them", "that director", "that actor"})


@dataclass(frozen=True, slots=True)
class Question:
    ask: Ask
    slot: str  # as written
    genre: str = ""  # for is_genre: the concept asked about
    other: bool = False  # "what else…": not the title just talked about

    @property
    def about_person(self) -> bool:
        return self.ask == "works"

    @property
    def points_back(self) -> bool:
        folded = fold(self.slot)
        return folded in (PERSON_POINTERS if self.about_person else TITLE_POINTERS)


def read_question(text: str) -> Question | None:
    """The factual question `text` asks, if it asks one of the kinds above."""
    for ask, pattern in PATTERNS:
        match = pattern.search(text)
        if match is None:
            continue
        slot = _clean_slot(match.group("x"))
        if not slot or len(slot.split()) > MAX_SLOT_WORDS:
            continue
        genre = ""
        if ask == "is_genre":
            genre = concept_of(match.group("g").removeprefix("a ").removeprefix("an ")) or ""
            word = fold(match.group("g"))
            if word in ("for kids", "kids"):
                genre = "family"
            elif word == "animated":
                genre = "anime"
            if not genre:
                continue
        other = re.search(r"\b(?:else|other|more)\b", text, re.IGNORECASE) is not None
        return Question(ask, slot, genre, other)
    return None


def _clean_slot(slot: str) -> str:
    slot = slot.strip().strip("\"“”'‘’*_`")
    slot = re.sub(r"^(?:the (?:film|movie|show|series|documentary) )(?=\S)", "", slot, flags=re.I)
    slot = re.sub(r"\s+(?:exactly|again|anyway|actually|originally|first)$", "", slot, flags=re.I)
    return slot.strip().strip("\"“”'‘’*_`")


# --- answers --------------------------------------------------------------------------

KIND_NAMES = {"Movie": "film", "TV Show": "TV show"}


def kind_name(title: Title) -> str:
    return KIND_NAMES.get(title.type, title.type.lower())


def _and(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def labelled(title: Title) -> str:
    """ "Okja (2017 film)": the title with what tells it apart."""
    what = kind_name(title)
    return f"{title.title} ({title.year} {what})" if title.year else f"{title.title} ({what})"


def _duration(title: Title) -> str:
    d = title.duration.strip()
    return re.sub(r"\bSeasons?\b", lambda m: m.group().lower(), d) if d else ""


def answer(question: Question, titles: Sequence[Title], catalog: Catalog) -> str:
    """The catalog's answer about `titles` (all of one name: the first is meant, the
    others are mentioned)."""
    if not titles:
        return ""
    t = titles[0]
    text = _answer_one(question, t)
    others = [o for o in titles[1:3] if o.id != t.id]
    if others and question.ask in ("director", "year", "cast", "runtime", "type"):
        also = "; ".join(f"{labelled(o)}: {_answer_one(question, o)}" for o in others)
        text += f" My catalog also has another title of that name: {also}"
    return text


def _answer_one(question: Question, t: Title) -> str:
    name, what = t.title, kind_name(t)
    match question.ask:
        case "director":
            if t.directors:
                return f"{labelled(t)} was directed by {_and(t.directors[:4])}."
            lead = f" Its cast starts with {_and(t.cast[:3])}." if t.cast else ""
            return f"My catalog doesn't list a director for {labelled(t)}.{lead}"
        case "year":
            if not t.year:
                return f"My catalog doesn't give a year for {name} ({what})."
            if t.type == "TV Show":
                return f"{name} is a TV show; my catalog lists it under {t.year}."
            return f"{name} ({what}) came out in {t.year}."
        case "cast":
            if not t.cast:
                return f"My catalog doesn't list the cast of {labelled(t)}."
            more = " among others" if len(t.cast) > CAST_SHOWN else ""
            return f"{labelled(t)} stars {_and(t.cast[:CAST_SHOWN])}{more}."
        case "genre":
            if not t.genres:
                return f"My catalog doesn't list genres for {labelled(t)}."
            return f"My catalog files {labelled(t)} under {_and(t.genres)}."
        case "is_genre":
            labels = _and(t.genres) or "no genre"
            has = question.genre in t.concepts or any(question.genre in fold(g) for g in t.genres)
            if has:
                return f"Yes: my catalog files {labelled(t)} under {labels}."
            return f"Not by my catalog's genres: {labelled(t)} is filed under {labels}."
        case "runtime":
            d = _duration(t)
            if not d:
                return f"My catalog doesn't give the length of {labelled(t)}."
            if "season" in d:
                return f"{labelled(t)} has {d}."
            return f"{labelled(t)} runs {d}."
        case "type":
            return f"{name} is a {what}" + (f" from {t.year}." if t.year else ".")
        case "rating":
            if not t.rating:
                return f"My catalog doesn't give a rating for {labelled(t)}."
            return f"{labelled(t)} is rated {t.rating}."
        case "country":
            if not t.country:
                return f"My catalog doesn't say where {labelled(t)} comes from."
            return f"{labelled(t)} comes from {_and([c.strip() for c in t.country.split(',')])}."
        case _:
            return ""


def works(person: str, catalog: Catalog, *, exclude: Sequence[Title] = ()) -> str:
    """What the catalog credits `person` with, directing first."""
    skip = {t.id for t in exclude}
    titles = [t for t in catalog.by_person(person) if t.id not in skip]
    titles.sort(key=lambda t: (-(t.year or 0), t.title))
    directed = [t for t in titles if person in t.directors]
    acted = [t for t in titles if person not in t.directors]
    if not titles:
        if skip:
            return f"My catalog has nothing else with {person}."
        return f"My catalog has nothing with {person}."
    parts = []
    if directed:
        shown = [t.label for t in directed[:WORKS_SHOWN]]
        more = f" and {len(directed) - WORKS_SHOWN} more" if len(directed) > WORKS_SHOWN else ""
        parts.append(f"directed {_and(shown)}{more}")
    if acted:
        room = max(WORKS_SHOWN - len(parts and directed[:WORKS_SHOWN]), 3)
        shown = [t.label for t in acted[:room]]
        more = f" and {len(acted) - room} more" if len(acted) > room else ""
        parts.append(f"appears in {_and(shown)}{more}")
    lead = "Besides that, in my catalog" if skip else "In my catalog"
    return f"{lead} {person} {'; and '.join(parts)}."


def not_found(slot: str, catalog: Catalog, *, person: bool = False) -> str:
    """An honest miss, with the closest names when one is close."""
    shown = " ".join(slot.split())[:80]
    if person:
        hit = catalog.person(slot, cutoff=80.0)
        text = f"I don't have anyone called “{shown}” in my catalog."
        return text + (f" Did you mean {hit}?" if hit and fold(hit) != fold(slot) else "")
    # Close in letters and sharing a longer word, or very close: "the godfather" may
    # mean The Black Godfather; "The Other" is only alike in letters.
    words = {w for w in fold(slot).split() if len(w) > 3}
    near = [
        m.title.title
        for m in catalog.near(slot, cutoff=SUGGEST_RATIO, limit=SUGGESTIONS * 2)
        if m.score >= CLOSE_RATIO or words & set(fold(m.title.title).split())
    ]
    near = list(dict.fromkeys(n for n in near if fold(n) != fold(slot)))[:SUGGESTIONS]
    text = f"I don't have “{shown}” in my catalog, so I can't tell you about it without guessing."
    if near:
        text += " Did you mean " + _or([f"“{n}”" for n in near]) + "?"
    return text


def _or(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]
