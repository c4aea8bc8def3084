"""Checks of model text against the catalog: what a sentence claims about titles
(their years, who made them, which titles exist) must be what the catalog says.

A 135M model invents titles, years and cast freely; every sentence it writes about a
catalog title passes through here before anyone sees it.
"""

from __future__ import annotations

import re

from bot.media.catalog import Catalog, Title, concept_of, fold

QUOTED = re.compile(r"[\"“”]([^\"“”]{2,80})[\"“”]|\*([^*]{2,80})\*|_([^_]{2,80})_")
# Two or more capitalised words (small joining words allowed between): a name.
CAPS = re.compile(
    r"(?<![.!?:]\s)(?<!^)\b([A-Z][\w'’-]+(?:\s+(?:(?:of|the|and|a|in|on)\s+)*[A-Z][\w'’-]+)+)"
)
YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")
CREDIT = re.compile(
    r"\b(?:directed by|starring|stars|featuring|from director|with actors?|created by)\s+"
    r"([A-Z][\w'’.-]+(?:\s+[A-Z][\w'’.-]+){0,3})"
)
SENTENCE = re.compile(r"(?<=[.!?…])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE.split(text) if s.strip()]


def without_title(sentence: str, title: str) -> str:
    """`sentence` with every mention of `title` (any case, any punctuation between its
    words) replaced by a neutral word."""
    words = re.findall(r"\w+", title)
    if not words:
        return sentence
    pattern = r"\b" + r"\W+".join(re.escape(w) for w in words) + r"\b"
    return re.sub(pattern, "it", sentence, flags=re.IGNORECASE)


def unsupported(
    catalog: Catalog, sentence: str, subject: Title | None, *, strict_names: bool = False
) -> str | None:
    """Why `sentence` is not supported by the catalog, or None when it is.

    Titles involved are `subject` and the catalog titles the sentence names (as the
    catalog writes them). A year must be one of theirs; a credit ("directed by X",
    "starring X") must name one of their people; a quoted name must be one of them.
    With `strict_names`, any other capitalised name is refused too (the sentence is
    meant to be about `subject` alone)."""
    named = catalog.mentioned(sentence, cased=True)
    if subject is not None and strict_names:
        # Another title named anywhere but inside the subject's own name ("Stranger
        # Things" is part of "Beyond Stranger Things", and another title beside it).
        own = fold(subject.title)
        rest = without_title(sentence, subject.title)
        others = [t for t in catalog.mentioned(rest, cased=True) if fold(t.title) != own]
        if others:
            return f"names another title: {others[0].title}"
    involved = ([subject] if subject else []) + named
    titles = {fold(t.title) for t in involved}
    people = {fold(p) for t in involved for p in t.people}
    years = {t.year for t in involved if t.year}
    for match in QUOTED.finditer(sentence):
        quoted = fold(next(g for g in match.groups() if g))
        if quoted and quoted not in titles:
            return f"quotes a name the catalog does not give: {quoted}"
    for year in YEAR.findall(sentence):
        if involved and int(year) not in years:
            return f"a year the catalog does not give: {year}"
    for credit in CREDIT.findall(sentence):
        folded = fold(credit)
        if involved and not any(folded in p or p in folded for p in people):
            return f"a credit the catalog does not give: {credit}"
    if strict_names and subject is not None:
        countries = {fold(c) for c in subject.country.split(",")}
        for run in CAPS.findall(sentence):
            folded = fold(run)
            if any(folded in t or t in folded for t in titles) or folded in countries:
                continue
            if concept_of(run) or any(folded in p for p in people):
                continue
            return f"a name the catalog does not give: {run}"
    return None
