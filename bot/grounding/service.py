"""Grounding a chat message in the catalog: what it is about, the facts the model is
given, the answers built from the catalog, and the check of the reply.

`Grounding.read` runs between cleaning the message and building the context window:
it finds the titles and people the message names (or, for "who directed it?", those of
the last exchanges), reads a factual question if it asks one, and writes the compact
facts of what it found for the window's facts slot. `answer` gives a factual
question's answer from the catalog; `checker` makes the sentence-by-sentence check of a
model-written reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.grounding.check import ReplyCheck
from bot.grounding.finder import ARTICLES, Finder, Found, words_of
from bot.grounding.questions import (
    Question,
    answer,
    kind_name,
    labelled,
    not_found,
    read_question,
    works,
)
from bot.media.catalog import Catalog, Title, fold
from bot.media.service import Media
from memory.records import Turn

log = logging.getLogger(__name__)

FACT_TITLES = 3  # titles whose facts go in the window
FACT_PEOPLE = 2
FACT_CAST = 5
FACT_WORKS = 6
LOOK_BACK = 6  # turns searched for what "it" is
SLOT_RATIO = 85.0  # a question's title, misspelt, within this edit ratio of the catalog's
FACTS_HEADER = (
    "Catalog facts (state facts about these titles only from here; for any other title, "
    "say it is not in your catalog):\n"
)
# Words in a message that point back at the titles of the last exchanges.
POINTER = re.compile(
    r"\b(?:it|its|it's|this|that|the (?:film|movie|show|series|documentary|anime)|"
    r"this one|that one)\b",
    re.IGNORECASE,
)
PERSON_POINTER = re.compile(r"\b(?:he|she|him|his|her|they|them)\b", re.IGNORECASE)
# With a pointer, words that make a message about a title rather than about the weather.
ABOUT_TITLE = re.compile(
    r"\b(?:direct\w*|cast|star\w*|actors?|year|genre|scary|funny|long|rated|rating|"
    r"season\w*|episode\w*|plot|ending|good|worth|watch\w*|seen|similar|recommend\w*|"
    r"about (?:it|that|this)|come out|came out|released?|made|filmed|kids|country)\b",
    re.IGNORECASE,
)
ORDINALS = {
    "first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "fourth": 3, "4th": 3,
    "fifth": 4, "5th": 4, "last": -1,
}  # fmt: skip
ORDINAL = re.compile(
    r"\b(?:the )?(first|second|third|fourth|fifth|last|1st|2nd|3rd|4th|5th)"
    r"(?: one| pick| title| film| movie| show| suggestion)\b|(?:#|number |no\. ?)([1-5])\b",
    re.IGNORECASE,
)
# Asking for titles like a named one: "if I liked Okja", "I loved Dark, what next?".
LIKE_THIS = re.compile(
    r"\b(?:something|anything|more|others?|titles?|films?|movies?|shows?|series|stuff)"
    r"(?: \w+){0,3} (?:like|similar to)\b|\bsimilar to\b|\bwhat else (?:is |would be )?"
    r"(?:like|similar)\b|\bwhat(?:'s| is| to watch| should i watch)? next\b|"
    r"\bin the vein of\b|\bif (?:i|you|we) (?:liked|loved|enjoyed|like|love)\b|"
    r"\b(?:liked|loved|enjoyed|love|like)\b[^.?!]{1,80}?\b(?:what|anything|any|recommend|"
    r"suggest)\b[^.?!]{0,40}(?:next|else|similar|like (?:it|that|this)|watch)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Grounded:
    """What one message is about, as the catalog knows it."""

    finder: Finder | None
    found: Found = field(default_factory=Found)  # named in the message itself
    titles: tuple[Title, ...] = ()  # what the message is about, most likely first
    people: tuple[str, ...] = ()
    followed: bool = False  # the titles come from the last exchanges ("it")
    question: Question | None = None
    facts: str = ""  # the facts slot's text ("" when the catalog has nothing to say)
    excluded: tuple[Title, ...] = ()  # every title of the names used ("kill bill": both)
    respelt: bool = False  # the question's name was read as a misspelling of titles[0]


@dataclass
class GroundingStats:
    """Time spent and work done, for the benchmark and the metrics."""

    messages: int = 0
    read_seconds: float = 0.0
    check_seconds: float = 0.0
    answered: int = 0
    repaired: int = 0
    dropped: int = 0
    read_times: list[float] = field(default_factory=list)

    def record_read(self, seconds: float) -> None:
        self.messages += 1
        self.read_seconds += seconds
        if len(self.read_times) < 100_000:
            self.read_times.append(seconds)


class Grounding:
    """The catalog step of the reply pipeline; built once, follows catalog reloads."""

    def __init__(self, media: Media, *, enabled: bool = True) -> None:
        self.media = media
        self.enabled = enabled
        self.stats = GroundingStats()
        self._finder: Finder | None = None
        self._building: asyncio.Task[Finder] | None = None

    async def finder(self) -> Finder | None:
        """The mention index of the current catalog (built in a thread on first use
        and after a reload); None while grounding is off."""
        if not self.enabled:
            return None
        catalog = await self.media.current()
        if self._finder is not None and self._finder.catalog is catalog:
            return self._finder
        if self._building is None or self._building.done():
            self._building = asyncio.create_task(asyncio.to_thread(Finder.of, catalog))
        finder = await asyncio.shield(self._building)
        if finder.catalog is catalog:
            self._finder = finder
        return finder

    async def read(self, message: str, turns: Sequence[Turn]) -> Grounded:
        finder = await self.finder()
        if finder is None:
            return Grounded(None)
        started = time.perf_counter()
        grounded = ground(finder, message, turns)
        self.stats.record_read(time.perf_counter() - started)
        return grounded

    def answer(self, grounded: Grounded) -> str | None:
        """The catalog's answer to the message's factual question, or None when it asks
        none (or one the catalog cannot settle, which the model then answers)."""
        if grounded.finder is None or grounded.question is None:
            return None
        text = answer_question(grounded.finder.catalog, grounded)
        if text:
            self.stats.answered += 1
        return text

    def checker(self, grounded: Grounded, bot_name: str) -> ReplyCheck | None:
        if grounded.finder is None:
            return None
        return ReplyCheck(grounded.finder, grounded.titles, bot_name=bot_name)


def ground(finder: Finder, message: str, turns: Sequence[Turn]) -> Grounded:
    """See `Grounding.read`."""
    found = finder.find(message)
    question = _question(message, found)
    titles = list(found.titles)
    people = list(found.people)
    excluded = [t for m in found.mentions if m.kind == "title" for t in m.titles]
    followed = respelt = False
    if question is not None and not question.points_back:
        # What the question asks about is its slot, whole: "Velvet Atlas" is not the
        # title Velvet, though the finder saw Velvet in it.
        titles, people, respelt = _slot_names(finder, question, found, message)
        excluded += titles
    wants_back = (question is not None and question.points_back) or (
        not titles
        and not people
        and bool(POINTER.search(message) or ORDINAL.search(message))
        and bool(ABOUT_TITLE.search(message))
    )
    if wants_back and not titles:
        titles = _earlier_titles(finder, message, turns)
        followed = bool(titles)
    if not people and _asks_back_for_person(question):
        people = _earlier_people(finder, turns, titles)
        followed = followed or bool(people)
    titles = titles[:FACT_TITLES]
    return Grounded(
        finder=finder,
        found=found,
        titles=tuple(titles),
        people=tuple(people[:FACT_PEOPLE]),
        followed=followed,
        question=question,
        facts=facts_text(finder.catalog, titles, people[:FACT_PEOPLE]),
        excluded=tuple(dict.fromkeys(excluded)),
        respelt=respelt and bool(titles),
    )


def _question(message: str, found: Found) -> Question | None:
    """The message's factual question, read with every name the finder saw masked, so
    a title's own punctuation ("Was It Love?", "Take the Ball, Pass the Ball") does not
    end the question early; the slot comes back as the name was written."""
    masked, names = message, {}
    for n, mention in reversed(list(enumerate(found.mentions))):
        token = f"XQ{n}QX"
        start, end = mention.start, mention.end
        if mention.kind == "title":
            # The name's own marks ("Was It Love?", "¡Ay, mi madre!") are part of it.
            head = re.match(r"[^\w\s]+", mention.title.title)
            tail = re.search(r"[^\w\s]+$", mention.title.title)
            if head and message[start - len(head.group()) : start] == head.group():
                start -= len(head.group())
            if tail and message[end : end + len(tail.group())] == tail.group():
                end += len(tail.group())
        names[token.lower()] = message[start:end]
        masked = masked[:start] + token + masked[end:]
    question = read_question(masked) if names else None
    if question is not None and question.slot.lower() in names:
        return dataclasses.replace(question, slot=names[question.slot.lower()])
    return read_question(message)


def _asks_back_for_person(question: Question | None) -> bool:
    """ "What else did he make?": a question about a person named earlier."""
    if question is None or not question.about_person:
        return False
    return question.points_back or PERSON_POINTER.search(question.slot) is not None


def _slot_names(
    finder: Finder, question: Question, found: Found, message: str
) -> tuple[list[Title], list[str], bool]:
    """The titles or person a question's slot names: a mention the finder saw that is
    the whole slot (typos corrected), else the slot read on its own ("who is in the
    crown?": in a short slot an ordinary word may well be the title); and whether the
    title was read as a misspelling (then the answer says which title it took)."""
    wanted = words_of(question.slot)
    if len(wanted) > 1 and wanted[0] in ARTICLES:
        wanted = wanted[1:]
    for mention in found.mentions:
        said = words_of(message[mention.start : mention.end])
        if said and said[0] in ARTICLES and said != wanted:
            said = said[1:]
        if said == wanted or (mention.corrected and len(said) == len(wanted)):
            if mention.kind == "title" and not question.about_person:
                return list(mention.titles), [], mention.corrected > 0
            if mention.kind == "person" and question.about_person:
                return [], [mention.person], False
    return _resolve_slot(finder, question)


def _resolve_slot(finder: Finder, question: Question) -> tuple[list[Title], list[str], bool]:
    catalog = finder.catalog
    if question.about_person:
        person = catalog.person(question.slot)
        if person is None:
            found = finder.find(question.slot)
            return [], found.people[:1], False
        return [], [person], False
    named = finder.titles_named(question.slot)
    if named:
        return named[:FACT_TITLES], [], False
    # A misspelling of a whole title: near in plain edit ratio, not only by a fragment
    # ("the godfather" is not "The Black Godfather").
    near = catalog.near(question.slot, cutoff=SLOT_RATIO, limit=1)
    return ([near[0].title], [], True) if near else ([], [], False)


def _earlier_titles(finder: Finder, message: str, turns: Sequence[Turn]) -> list[Title]:
    """What "it" is: an ordinal picks from the last reply's list; otherwise, exchange by
    exchange from the newest, what the member named, else the one title the reply
    named (a reply that lists several is not about one of them)."""
    recent = list(turns)[-LOOK_BACK:]
    ordinal = ORDINAL.search(message)
    if ordinal:
        word = (ordinal.group(1) or "").lower()
        index = ORDINALS[word] if word else int(ordinal.group(2)) - 1
        for turn in reversed(recent):
            if turn.role == "assistant":
                listed = finder.find(turn.text, cased=True).titles
                if len(listed) > 1:
                    return [listed[index]] if -len(listed) <= index < len(listed) else []
    for k in range(len(recent) - 1, -1, -1):
        turn = recent[k]
        if turn.role != "user":
            continue
        found = finder.find(turn.text).titles
        if found:
            return found[:1]
        reply = recent[k + 1] if k + 1 < len(recent) else None
        if reply is not None and reply.role == "assistant":
            named = finder.find(reply.text, cased=True).titles
            if len(named) == 1:
                return named
    return []


def _earlier_people(finder: Finder, turns: Sequence[Turn], titles: Sequence[Title]) -> list[str]:
    """Who "he" is: a person the last exchanges named, else the director of what they
    were about."""
    for turn in list(turns)[-LOOK_BACK:][::-1]:
        found = finder.find(turn.text, cased=turn.role == "assistant")
        if found.people:
            return found.people[:1]
        if found.titles and found.titles[0].directors:
            return [found.titles[0].directors[0]]
    for t in titles:
        if t.directors:
            return [t.directors[0]]
    return []


def title_facts(t: Title) -> str:
    parts = [f"{t.title} ({kind_name(t)}" + (f", {t.year})" if t.year else ")")]
    if t.genres:
        parts.append("genres: " + ", ".join(t.genres))
    if t.directors:
        parts.append("directed by " + ", ".join(t.directors[:3]))
    if t.cast:
        parts.append("cast: " + ", ".join(t.cast[:FACT_CAST]))
    if t.rating:
        parts.append("rated " + t.rating)
    if t.duration:
        parts.append(t.duration)
    if t.country:
        parts.append("country: " + t.country)
    return "- " + "; ".join(parts) + "."


def person_facts(catalog: Catalog, person: str) -> str:
    titles = sorted(catalog.by_person(person), key=lambda t: -(t.year or 0))
    directed = [t.label for t in titles if person in t.directors][:FACT_WORKS]
    acted = [t.label for t in titles if person not in t.directors][:FACT_WORKS]
    parts = []
    if directed:
        parts.append("directed " + ", ".join(directed))
    if acted:
        parts.append("appears in " + ", ".join(acted))
    return f"- {person}: " + ("; ".join(parts) or "no titles") + "."


def facts_text(catalog: Catalog, titles: Sequence[Title], people: Sequence[str]) -> str:
    """The facts slot: one line per title, then per person ("" when there is none)."""
    lines = [title_facts(t) for t in titles]
    lines += [person_facts(catalog, p) for p in people]
    return FACTS_HEADER + "\n".join(lines) if lines else ""


def answer_question(catalog: Catalog, grounded: Grounded) -> str | None:
    question = grounded.question
    if question is None:
        return None
    if question.about_person:
        if grounded.people:
            exclude = grounded.titles if question.other else ()
            return works(grounded.people[0], catalog, exclude=exclude)
        if question.points_back:
            return "Who do you mean? Name the person and I'll look them up in my catalog."
        if _looks_like_a_name(question.slot):
            return not_found(question.slot, catalog, person=True)
        return None
    if grounded.titles:
        first = grounded.titles[0]
        same = [t for t in grounded.excluded if fold(t.title) == fold(first.title)]
        text = answer(question, [first, *[t for t in same if t.id != first.id]], catalog)
        if grounded.respelt and text:
            # Read as a misspelling: say which title the answer is about, so a name the
            # catalog lacks ("Amelie") is not answered as if it were the near one.
            shown = " ".join(question.slot.split())[:80]
            guess = f"Did you mean {labelled(first)}? If so: {text}"
            return f"I don't have “{shown}” in my catalog. {guess}"
        return text
    if question.points_back:
        return "Which title do you mean? Name it and I'll look it up in my catalog."
    if question.ask in ("cast", "is_genre") and not _looks_like_a_name(question.slot):
        return None  # "who is in the mood for pizza?": not a question about a title
    return not_found(question.slot, catalog)


def _looks_like_a_name(slot: str) -> bool:
    words = [w for w in slot.split() if len(w) > 3]
    return bool(words) and all(w[0].isupper() for w in words)


def seeded_request(text: str) -> bool:
    """Whether `text` asks for titles like one it names ("if I liked Okja")."""
    return LIKE_THIS.search(text) is not None
