"""Profile facts a user states about themselves, extracted by rules (no model): name,
pronouns, favourites, what they have seen, pets, where they live, what they can't
stand. Each fact has a field; a newer statement of a field replaces the older one.

The store runs these rules on every turn it writes (and again on an edit), as it
computes a turn's recall terms: the facts are an index of what was said, deleted and
rebuilt with the turn. How they read in a prompt is `bot/context/profile.py`."""

from __future__ import annotations

import re
from dataclasses import dataclass

_END = (
    r"(?=\s*(?:[.,!?;:)]|\b(?:and|but|last|yesterday|today|this|now|again|too|though|"
    r"honestly|actually|lol)\b|$))"
)
_NAME = r"([A-Z][\w'-]{1,30}(?: [A-Z][\w'-]{1,30})?)"
_TITLE = r"([A-Z0-9][^.,!?;:\n]{0,60}?)"
KINDS = (
    "film|movie|show|series|tv show|band|song|album|artist|singer|game|video game|book|"
    "author|genre|podcast|director|actor|actress|anime|composer"
)
PETS = "dog|cat|rabbit|hamster|parrot|bird|fish|horse|pet|tortoise|guinea pig"


@dataclass(frozen=True, slots=True)
class Statement:
    field: str  # the slot a newer statement replaces, e.g. "favourite:film"
    label: str  # how it reads in the profile, e.g. "favourite film"
    value: str


def _clean(value: str) -> str:
    return " ".join(value.strip(" \"'“”‘’").split())


_RULES: list[tuple[re.Pattern[str], object]] = [
    (re.compile(rf"\b(?i:my name is) {_NAME}\b"), lambda m: ("name", "name", m.group(1))),
    (
        re.compile(rf"\b(?i:call me|I'm called|I am called) {_NAME}\b"),
        lambda m: ("name", "name", m.group(1)),
    ),
    (
        re.compile(r"\bmy pronouns are ([a-z]+ ?/ ?[a-z]+(?: ?/ ?[a-z]+)?)", re.I),
        lambda m: ("pronouns", "pronouns", m.group(1).replace(" ", "").lower()),
    ),
    (
        re.compile(rf"\bmy fav(?:ou?rite)? ({KINDS}) (?:is|was|has to be) {_TITLE}{_END}", re.I),
        lambda m: (
            f"favourite:{m.group(1).lower()}",
            f"favourite {m.group(1).lower()}",
            m.group(2),
        ),
    ),
    (
        re.compile(rf"\bmy ({PETS})(?:'s name is| is called| is named) {_NAME}\b", re.I),
        lambda m: (f"pet:{m.group(1).lower()}", m.group(1).lower(), m.group(2)),
    ),
    (
        re.compile(
            rf"\bI(?:'ve| have)? (?:just |finally |already )?(?:finished|watched|seen|saw|"
            rf"binged|completed|read|played|beat) {_TITLE}{_END}"
        ),
        lambda m: (f"seen:{_clean(m.group(1)).lower()}", "has seen", m.group(1)),
    ),
    (
        re.compile(rf"\bI live in {_TITLE}{_END}"),
        lambda m: ("lives in", "lives in", m.group(1)),
    ),
    (
        re.compile(rf"\bI (?:can't|cannot|can not) stand {_TITLE}{_END}", re.I),
        lambda m: (f"dislikes:{_clean(m.group(1)).lower()}", "can't stand", m.group(1)),
    ),
]


def extract(text: str) -> list[Statement]:
    """Every fact stated in `text`, in order; the last statement of a field wins."""
    found: dict[str, Statement] = {}
    for pattern, build in _RULES:
        for match in pattern.finditer(text):
            field, label, value = build(match)  # type: ignore[operator]
            value = _clean(value)
            if value and len(value) <= 80:
                found[field] = Statement(field, label, value)
    return list(found.values())
