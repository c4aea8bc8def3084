"""Taste profiles: what a member likes, dislikes and has seen, learned from what they
say ("I loved Dark", "I can't stand horror") and set with /prefs.

The extractor is deterministic: a sentence pattern gives the polarity, and the object
must resolve against the catalog (a genre concept, a title, a person), so a passing
"I love it when…" never becomes a preference. The items live in Redis with the rest of
the user's memory (`MemoryStore.add_taste`), so /memory shows them, /export includes
them and /forget deletes them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from bot.media.catalog import Catalog, concept_of, fold, genre_words
from memory.records import Polarity, TasteItem

_VERB_LIKE = (
    r"(?:really |absolutely |just |totally |so )?(?:love|loved|like|liked|enjoy|enjoyed|adore|"
    r"adored|dig|am into|'m into|am a (?:big |huge )?fan of|'m a (?:big |huge )?fan of)"
)
_VERB_DISLIKE = (
    r"(?:really |absolutely |just |totally )?(?:hate|hated|dislike|disliked|can't stand|"
    r"cannot stand|can not stand|don't like|didn't like|do not like|did not like|"
    r"don't enjoy|didn't enjoy|am not into|'m not into|am not a fan of|'m not a fan of|"
    r"couldn't stand|could not stand|can't bear|loathe)"
)
_VERB_SEEN = (
    r"(?:'ve|have)? ?(?:just |already |finally |recently )?(?:watched|seen|saw|finished|"
    r"binged|rewatched|read|played|beat|completed)"
)
_OBJECT = r"([^.!?;\n]{1,120})"
PATTERNS: list[tuple[Polarity, re.Pattern[str]]] = [
    ("dislike", re.compile(rf"\bI ?{_VERB_DISLIKE} {_OBJECT}", re.I)),
    ("dislike", re.compile(rf"\bnot (?:a|much of a) fan of {_OBJECT}", re.I)),
    ("like", re.compile(rf"\bI ?{_VERB_LIKE} {_OBJECT}", re.I)),
    ("like", re.compile(rf"\bmy fav(?:ou?rite)? (?:\w+ ){{0,2}}(?:is|was|are) {_OBJECT}", re.I)),
    ("seen", re.compile(rf"\bI ?{_VERB_SEEN} {_OBJECT}", re.I)),
]
# Where an object stops: a clause that says something else.
_STOP = re.compile(
    r"\s+(?:because|but|since|when|while|though|although|so|if|which|that was|"
    r"last|yesterday|today|tonight|this week|again|too|lol|haha|honestly|actually)\b.*$",
    re.I,
)
_LEAD = re.compile(r"^(?:the (?:film|movie|show|series|tv show|documentary|anime) |watching |"
                   r"reading |playing )", re.I)  # fmt: skip
_TAIL = re.compile(
    r"\s+(?:films?|movies?|shows?|series|stuff|things|ones|a lot|so much|very much|"
    r"the most|in general)$",
    re.I,
)
_SPLIT = re.compile(r"\s*(?:,|\band\b|\bor\b|&(?!\s*(?:fantasy|adventure|musicals)))\s*", re.I)
_NOT_OBJECTS = {"it", "that", "this", "them", "you", "u", "one", "those", "these", "him", "her"}


@dataclass(frozen=True, slots=True)
class Learned:
    polarity: Polarity
    kind: str
    key: str
    value: str


def resolve(catalog: Catalog, phrase: str) -> tuple[str, str, str] | None:
    """(kind, key, shown) for a phrase that names a genre, title or person of the
    catalog; None otherwise."""
    clean = _TAIL.sub("", _LEAD.sub("", phrase.strip(" \"'“”‘’*_"))).strip(" \"'“”‘’*_")
    folded = fold(clean)
    if not folded or folded in _NOT_OBJECTS or len(folded) > 100:
        return None
    concept = concept_of(clean)
    if concept is None and len(folded.split()) <= 3:
        words = genre_words(clean)
        concept = words[0] if len(words) == 1 else None
    if concept is not None and concept in catalog.concepts:
        return "genre", concept, concept
    exact = catalog.exact(clean)
    if exact:
        return "title", exact[0].id, exact[0].title
    person = catalog.person_names.get(folded)
    if person is not None:
        return "person", person, person
    if len(folded) >= 8 and " " in folded:  # a typo in a longer title
        near = catalog.best(clean, cutoff=92.0)
        if near is not None:
            return "title", near.id, near.title
    return None


def extract(catalog: Catalog, text: str) -> list[Learned]:
    """Every preference stated in `text` that resolves against the catalog."""
    found: dict[tuple[str, str], Learned] = {}
    taken: list[tuple[int, int]] = []
    for polarity, pattern in PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span(1)
            if any(s <= start < e for s, e in taken):
                continue  # "I don't like X" is not also "I like X"
            taken.append((match.start(), end))
            obj = _STOP.sub("", match.group(1))
            for part in _SPLIT.split(obj):
                hit = resolve(catalog, part)
                if hit is not None:
                    kind, key, shown = hit
                    found[(kind, key)] = Learned(polarity, kind, key, shown)
    return list(found.values())


def learn(catalog: Catalog, text: str, *, message_id: str | None, at: float) -> list[TasteItem]:
    """The taste items a chat message states (source "chat"), tied to the message and
    its time, so that deleting or editing it takes them back."""
    return [
        TasteItem(
            polarity=item.polarity,
            kind=item.kind,  # type: ignore[arg-type]
            key=item.key,
            value=item.value,
            source="chat",
            message_id=message_id,
            time=at,
        )
        for item in extract(catalog, text[:4000])
    ]


def item(polarity: Polarity, kind: str, key: str, value: str, source: str = "prefs") -> TasteItem:
    return TasteItem(
        polarity=polarity,
        kind=kind,  # type: ignore[arg-type]
        key=key,
        value=value,
        source=source,  # type: ignore[arg-type]
        time=time.time(),
    )
