"""The catalog check of a streamed reply, a sentence at a time, before it is shown.

A sentence that gives a catalog title a wrong year, or credits a director or cast
member the catalog does not, is repaired from the facts when the fix is certain (one
title, one wrong year or name) and dropped otherwise; so is a sentence that names as a
title (in quotes or emphasis) something the catalog does not hold, that calls a title
by a nationality its countries do not give, that introduces someone by a name the
catalog does not give for the title ("a woman named …"), or in which the bot claims a
name, a life or projects of its own. What is not shown is not stored.

Which titles a sentence is about: the ones it names, else the ones the message was
about (the conversation's "it").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rapidfuzz import fuzz

from bot.grounding.finder import Finder, Found
from bot.media.catalog import Title, concept_of, fold

YEAR = re.compile(r"(?<![\d,.])\b(1[89]\d\d|20\d\d)\b(?![\d,]|s\b|'s\b)")
_NAME = r"[A-Z][\w'’.-]*(?:\s+(?:[A-Z][\w'’.-]*|de|da|del|van|von|der|le|la|di|bin))*"
_NAMES = rf"(?P<names>{_NAME}(?:\s*,\s*{_NAME})*(?:,?\s+and\s+{_NAME})?)"
_ROLE = (
    r"(?P<role>(?:the\s+)?(?:[A-Z][a-z]+\s+)?(?:filmmaker|director|auteur|actor|actress|star|"
    r"legend)\s+)"
)
DIRECTING = [
    re.compile(rf"\b(?:directed|helmed|created|made|written and directed) by\s+(?:{_ROLE})?"
               rf"{_NAMES}"),
    re.compile(rf"\b(?:from|by) (?:the\s+)?(?:director|filmmaker|creator)s?\s+{_NAMES}"),
    re.compile(rf"\b(?:film|movie|show|series|documentary|work) by\s+(?:{_ROLE})?{_NAMES}"),
    re.compile(rf"\b(?:director|filmmaker)\s+{_NAMES}"),
    re.compile(rf"{_NAMES}(?:\s+\([^)]*\))?\s+(?:directed|helmed|made|created)\b"),
]  # fmt: skip
ACTING = [
    re.compile(rf"\b(?:starring|stars|featuring|features|featured|with actors?|with actress|"
               rf"played by|"
               rf"performances? (?:by|from)|led by)\s+(?:{_ROLE})?{_NAMES}"),
    re.compile(rf"{_NAMES}\s+(?:stars|starred|plays|played|appears|appeared|acts|acted)"
               rf"\s+(?:in|as)\b"),
    re.compile(rf"{_NAMES}\s+(?:stars|starred)\b"),
]  # fmt: skip
# Someone introduced by name ("a woman named …", "a lead called …"): in a sentence about a
# title, a person the catalog gives for it, or a title; anything else is not the
# catalog's (it gives no characters either).
NAMED = re.compile(rf"\b(?:named|called|name is)\s+{_NAMES}")
CREDIT_WORDS = re.compile(
    r"\b(?:direct\w*|star\w*|act(?:s|ed|or|ress)?|cast|play(?:s|ed)|featur\w*|film by|"
    r"movie by)\b",
    re.IGNORECASE,
)
# Quoted, bold or italic names, as a reply names a title.
QUOTED = re.compile(
    r"\*\*([^*\n]{2,80})\*\*|(?<![\w*])\*([^*\n]{2,80})\*(?![\w*])|(?<!\w)_([^_\n]{2,80})_(?!\w)"
    r"|[\"“]([^\"“”\n]{2,80})[\"”]"
)
_DEMONYMS = {
    "american": "united states", "british": "united kingdom", "english": "united kingdom",
    "scottish": "united kingdom", "irish": "ireland", "french": "france",
    "german": "germany", "spanish": "spain", "italian": "italy", "japanese": "japan",
    "korean": "south korea", "south korean": "south korea", "chinese": "china",
    "indian": "india", "mexican": "mexico", "brazilian": "brazil", "canadian": "canada",
    "australian": "australia", "swedish": "sweden", "danish": "denmark",
    "norwegian": "norway", "turkish": "turkey", "nigerian": "nigeria",
    "egyptian": "egypt", "argentinian": "argentina", "argentine": "argentina",
    "colombian": "colombia", "polish": "poland", "russian": "russia", "thai": "thailand",
    "filipino": "philippines", "indonesian": "indonesia", "belgian": "belgium",
    "dutch": "netherlands", "hong kong": "hong kong", "taiwanese": "taiwan",
}  # fmt: skip
NATIONALITY = re.compile(
    r"\b(" + "|".join(sorted((re.escape(d.title()) for d in _DEMONYMS), key=len, reverse=True))
    + r")\b(?=[\w\s-]{0,30}\b(?:film|movie|show|series|drama|comedy|thriller|production|"
    r"documentary|anime|filmmaker|director|animation|horror)s?\b)"
)  # fmt: skip

# The bot speaking of itself: a name, a life, projects, things seen. It is a bot.
_NOT_NAMES = frozenset(
    [
        "sorry",
        "glad",
        "happy",
        "here",
        "not",
        "just",
        "so",
        "really",
        "a",
        "an",
        "the",
        "also",
        "always",
        "still",
        "afraid",
        "sure",
        "unable",
        "able",
        "ready",
        "available",
        "excited",
        "curious",
        "only",
        "now",
        "back",
        "an",
        "ai",
    ]
)
SELF_NAME = re.compile(r"\b(?:I am|I'm|I’m|my name is|my name's|call me|I go by)\s+([A-Z][\w-]+)")
SELF_LIFE = re.compile(
    r"\bI(?:'ve|’ve| have)? (?:been )?(?:working on|directing|filming|shooting|producing|"
    r"writing|recording|developing) (?:my|a|an|the|this|some)\b"
    r"|\bmy (?:latest|new|next|upcoming|current|last|own|first|recent) (?:film|movie|series|"
    r"show|project|book|album|novel|documentary|work|script|screenplay|record|song|game|"
    r"podcast|episode|season)s?\b"
    r"|\bmy (?:wife|husband|kids?|children|son|daughter|family|parents|mom|mum|dad|mother|"
    r"father|job|career|studio|hometown|girlfriend|boyfriend|partner|dog|cat|team|colleagues)\b"
    r"|\bI (?:live|lived|grew up|was born|work|worked|studied)\s+(?:in|at|on|for)\b"
    r"|\bI(?:'ve|’ve| have)? (?:seen|watched|read|played|heard|listened to|been to|met)\b"
    r"|\bI (?:watched|saw|directed|wrote|filmed|produced|starred|acted)\b"
    r"|\bwhen I was (?:a kid|young|little|growing up|a child)\b",
    re.IGNORECASE,
)
_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|"
    r"December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.?"
)
# A day of release: the catalog gives years only, so the day goes and the year stays.
RELEASE_DAY = re.compile(
    rf"\bon\s+(?:the\s+\d{{1,2}}(?:st|nd|rd|th)?\s+of\s+{_MONTH}|{_MONTH}\s+\d{{1,2}}"
    rf"(?:st|nd|rd|th)?|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}),?\s+(?=(?:1[89]|20)\d\d\b)"
)
ANY_DAY = re.compile(
    rf"\b(?:{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?\b|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?"
    rf"{_MONTH}(?!\w))"
)
_ABBREVIATIONS = frozenset(
    ["vol", "mr", "mrs", "ms", "dr", "st", "jr", "sr", "no", "vs", "pt", "ep", "feat"]
)
_END = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?=\s)|\n+")
FUZZY_NAME = 88.0  # a credited name within this ratio of the catalog's is a misspelling
HOLD_CHARS = 400  # a run this long without a sentence end is checked as one


@dataclass(frozen=True, slots=True)
class Review:
    text: str | None  # the sentence to show (repaired), or None to drop it
    reason: str = ""


def sentence_ends(text: str) -> list[int]:
    """Offsets just past each sentence end in `text` (not after "Vol." or an initial)."""
    ends = []
    for match in _END.finditer(text):
        if match.group().startswith("."):
            word = re.search(r"(\w+)$", text[: match.start()])
            short = word is not None and word.group(1).isalpha()
            if (
                short
                and word
                and (word.group(1).lower() in _ABBREVIATIONS or len(word.group(1)) == 1)
            ):
                continue
        ends.append(match.end())
    return ends


@dataclass
class ReplyCheck:
    """Feed it the reply as it streams; it returns the text to show."""

    finder: Finder
    focus: Sequence[Title] = ()
    bot_name: str = "mediabot"
    _pending: str = ""
    shown: str = ""
    repaired: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def feed(self, text: str) -> str:
        self._pending += text
        ends = sentence_ends(self._pending)
        if ends:
            upto = ends[-1]
        elif len(self._pending) >= HOLD_CHARS:
            upto = len(self._pending)
        else:
            return ""
        ready, self._pending = self._pending[:upto], self._pending[upto:]
        return self._release(ready)

    def finish(self) -> str:
        ready, self._pending = self._pending, ""
        return self._release(ready)

    def _release(self, text: str) -> str:
        out = []
        start = 0
        for end in [*sentence_ends(text), len(text)]:
            piece = text[start:end]
            start = end
            if not piece:
                continue
            body = piece.strip()
            if not body:
                out.append(piece)
                continue
            review = self.review(body)
            if review.text is None:
                self.dropped.append((body, review.reason))
                continue
            if review.text != body:
                self.repaired.append((body, review.text))
            out.append(piece.replace(body, review.text, 1))
        released = "".join(out)
        if not self.shown.strip():
            released = released.lstrip()
        self.shown += released
        return released

    # -- one sentence ---------------------------------------------------------------

    def review(self, sentence: str) -> Review:
        claim = self._self_claim(sentence)
        if claim:
            return Review(None, claim)
        found = self.finder.find(sentence, cased=True)
        named = found.titles
        invented = self._invented_title(sentence, named)
        if invented:
            return Review(None, f"names a title the catalog does not hold: {invented}")
        involved = named or list(self.focus)
        if not involved:
            return Review(sentence)
        text = RELEASE_DAY.sub("in ", sentence)
        if ANY_DAY.search(text):
            return Review(None, "a date the catalog does not give")
        for fix in (self._years, self._credits):
            text_or_reason = fix(text, involved, bool(named))
            if text_or_reason[0] is None:
                return Review(None, text_or_reason[1])
            text = text_or_reason[0]
        if text != sentence:
            found = self.finder.find(text, cased=True)
        reason = (
            self._nationality(text, involved)
            or self._genres(text, involved)
            or self._uncredited(text, involved, found)
            or self._named(text, involved)
        )
        if reason:
            return Review(None, reason)
        return Review(text)

    def _self_claim(self, sentence: str) -> str:
        for match in SELF_NAME.finditer(sentence):
            name = match.group(1)
            if name.lower() not in _NOT_NAMES and fold(name) != fold(self.bot_name):
                return f"claims a name: {name}"
        life = SELF_LIFE.search(sentence)
        return f"claims a life of its own: {life.group()}" if life else ""

    def _invented_title(self, sentence: str, named: Sequence[Title]) -> str:
        """A quoted or emphasised Title-Cased name that is no catalog title or person."""
        for match in QUOTED.finditer(sentence):
            quoted = next(g for g in match.groups() if g).strip(" .,:;!?")
            words = re.findall(r"[^\W\d_][\w'’]*", quoted)
            if not words or len(words) > 10:
                continue
            capitals = sum(w[0].isupper() for w in words)
            if capitals < max(1, (len(words) + 1) // 2):
                continue  # a quoted phrase, not a name
            if self.finder.titles_named(quoted) or self.finder.catalog.person(quoted):
                continue
            head = re.split(r"\s*\(", quoted, maxsplit=1)[0]
            if head != quoted and self.finder.titles_named(head):
                continue  # "**Okja** (2017, film)"-style labels
            if fold(quoted) == fold(self.bot_name) or any(
                fold(quoted) == fold(t.title) for t in named
            ):
                continue
            return quoted
        return ""

    def _years(
        self, sentence: str, involved: Sequence[Title], named: bool
    ) -> tuple[str | None, str]:
        years = {t.year for t in involved if t.year}
        wrong = sorted({y for y in YEAR.findall(sentence) if int(y) not in years})
        if not wrong:
            return sentence, ""
        dated = [t for t in involved if t.year]
        if len(wrong) == 1 and len({t.year for t in dated}) == 1 and len(dated) >= 1:
            right = str(dated[0].year)
            return YEAR.sub(lambda m: right if m.group() == wrong[0] else m.group(),
                            sentence), ""  # fmt: skip
        return None, f"a year the catalog does not give: {', '.join(wrong)}"

    def _credits(
        self, sentence: str, involved: Sequence[Title], named: bool
    ) -> tuple[str | None, str]:
        text = sentence
        for role, patterns in (("directors", DIRECTING), ("cast", ACTING)):
            for pattern in patterns:
                for match in list(pattern.finditer(text)):
                    run = match.group("names")
                    end = match.end("names")
                    if run.endswith(".") and not re.search(r"\b[A-Z]\.$", run):
                        run, end = run[:-1], end - 1  # the sentence's full stop
                    names = _split_names(run)
                    if not names:
                        continue
                    kept = [n for n in names if self._credited(n, involved)]
                    if len(kept) == len(names):
                        continue
                    if any(_is_title(self.finder, n) for n in names):
                        continue  # "Okja stars…": the subject, not a credit
                    # Keep the credited names; without any, the catalog's names.
                    fix = _and(kept) if kept else _credited_names(involved, role)
                    if fix is None:
                        return None, f"a credit the catalog does not give: {run}"
                    groups = match.groupdict()
                    start = match.start("role") if groups.get("role") else match.start("names")
                    text = text[:start] + fix + text[end:]
                    break  # offsets changed: the next pattern reads the new text
        return text, ""

    def _credited(self, name: str, involved: Sequence[Title]) -> bool:
        folded = fold(name)
        if not folded:
            return True
        for t in involved:
            for person in t.people:
                p = fold(person)
                if folded == p or (len(folded) > 3 and (folded in p.split() or p in folded)):
                    return True
                if fuzz.ratio(folded, p) >= FUZZY_NAME and folded != p:
                    return False  # a misspelling of a credited name: repaired, not kept
        return False

    def _named(self, sentence: str, involved: Sequence[Title]) -> str:
        for match in NAMED.finditer(sentence):
            for name in _split_names(match.group("names").rstrip(".")):
                if not self._credited(name, involved) and not _is_title(self.finder, name):
                    return f"a person the catalog does not give here: {name}"
        return ""

    def _nationality(self, sentence: str, involved: Sequence[Title]) -> str:
        countries = {fold(c) for t in involved for c in t.country.split(",") if c.strip()}
        if not countries:
            return ""
        for match in NATIONALITY.finditer(sentence):
            country = _DEMONYMS[match.group(1).lower()]
            if country not in countries:
                return f"a country the catalog does not give: {match.group(1)}"
        return ""

    def _genres(self, sentence: str, involved: Sequence[Title]) -> str:
        """A genre the sentence gives a title ("a horror-drama film", "a scary movie")
        that none of the titles involved has."""
        have = {c for t in involved for c in t.concepts}
        if not have:
            return ""
        for concept in claimed_genres(sentence):
            if concept not in have:
                return f"a genre the catalog does not give: {concept}"
        return ""

    def _uncredited(self, sentence: str, involved: Sequence[Title], found: Found) -> str:
        """A catalog person named beside a credit word, not credited for these titles."""
        if not CREDIT_WORDS.search(sentence):
            return ""
        for person in found.people:
            if not self._credited(person, involved):
                return f"a person the catalog does not credit here: {person}"
        return ""


# Capitalised words that start sentences, not names ("It stars…").
_NOT_A_NAME = frozenset(
    {
        "it", "its", "this", "that", "these", "those", "the", "he", "she", "they", "his",
        "her", "their", "a", "an", "who", "which", "what", "there", "here", "both", "each",
    }
)  # fmt: skip


KIND_NOUNS = frozenset(
    {
        "film", "films", "movie", "movies", "show", "shows", "series", "documentary",
        "documentaries", "flick", "sitcom", "anime", "docuseries",
    }
)  # fmt: skip


def claimed_genres(sentence: str) -> list[str]:
    """Genre concepts written right before a kind of title: "a 2019 horror-drama film"
    claims horror and drama, "a music documentary" music and documentary."""
    words = re.findall(r"[a-z&'-]+", sentence.lower())
    claimed: list[str] = []
    for i, word in enumerate(words):
        if word not in KIND_NOUNS:
            continue
        if concept_of(word) and word.startswith("doc"):
            claimed.append(concept_of(word) or "")
        j = i - 1
        while j >= 0:
            parts = [words[j]] if concept_of(words[j]) else words[j].split("-")
            concepts = [concept_of(p) for p in parts if p]
            if not concepts or not all(concepts):
                break
            claimed += [c for c in concepts if c]
            j -= 1
    return list(dict.fromkeys(claimed))


def _split_names(run: str) -> list[str]:
    parts = re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", run)
    names = [p.strip(" .") for p in parts if p.strip(" .")]
    return [n for n in names if n.split()[0].lower() not in _NOT_A_NAME]


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _is_title(finder: Finder, name: str) -> bool:
    return bool(finder.titles_named(name))


def _credited_names(involved: Sequence[Title], role: str) -> str | None:
    """The catalog's names for a wrong credit, when there is exactly one title."""
    if len(involved) != 1:
        return None
    t = involved[0]
    names = t.directors if role == "directors" else t.cast
    if not names:
        return None
    return _and(list(names[:2]))
