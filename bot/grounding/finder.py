"""Finding the catalog titles and people a message names, in free text.

An index of word n-grams over the catalog's normalised titles (also without a leading
"The", and a title's head before its colon: "kill bill" for "Kill Bill: Vol. 1") and
people, walked from every word of a message: no fuzzy match of a whole message against
8,807 titles. A word that is neither in the catalog's vocabulary nor an English word is
tried as a typo (one edit) of the catalog's words, through an index of their one-letter
deletions, so "strnger things" finds Stranger Things at the cost of a few lookups.

Ordinary words are titles too ("Up", "Her", "Dark", "The Office"). A span counts as a
mention by how unlikely it is as ordinary text, read from English word frequencies
(`wordfreq`): "okja" or "stranger things" count wherever they are; "dark" counts only
when the message marks it as a name (capitals mid-sentence, quotes, asterisks) or right
after words that introduce a title ("I loved dark, what next?").
"""

from __future__ import annotations

import functools
import re
import unicodedata
import weakref
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rapidfuzz.distance import OSA

from bot.media.catalog import Catalog, Title, genre_words

# How unlikely a span must be as ordinary English (the sum over its words of
# MAX_ZIPF minus the word's Zipf frequency) to count as a mention...
UNMARKED = 3.0  # ... written plainly anywhere in a sentence
CUED = 1.0  # ... right after "watched", "loved", "like" … and before a pause
MARKED = 0.5  # ... capitalised mid-sentence, or quoted
MAX_ZIPF = 7.0
TYPO_COST = 0.5  # subtracted per corrected word
MIN_TYPO_LEN = 4  # shorter words are not corrected
KNOWN_WORD_ZIPF = 3.0  # a word at least this common is taken as meant, not as a typo
MAX_SPAN = 12  # words of the longest name looked for
SURNAME_MIN = 3.0  # a director's surname alone must be at least this unlikely

Kind = Literal["title", "person"]

# Words after which a name is expected ("I loved Dark, what next?").
CUES = frozenset(
    [
        "seen",
        "saw",
        "watched",
        "watch",
        "watching",
        "rewatch",
        "rewatched",
        "rewatching",
        "binged",
        "binge",
        "bingeing",
        "finished",
        "started",
        "liked",
        "like",
        "loved",
        "love",
        "enjoyed",
        "hated",
        "about",
        "directed",
        "director",
        "starring",
        "stars",
        "cast",
        "called",
        "named",
        "titled",
    ]
)
ARTICLES = frozenset({"the", "a", "an"})
# Words that may follow a name without being part of it.
PAUSE_WORDS = frozenset(
    [
        "is",
        "was",
        "and",
        "or",
        "but",
        "what",
        "which",
        "with",
        "by",
        "from",
        "yet",
        "too",
        "again",
        "last",
        "recently",
        "yesterday",
        "so",
        "then",
        "if",
        "because",
        "as",
        "it",
        "its",
    ]
)
_TOKEN = re.compile(r"[^\W_]+|&")
_OPEN_MARKS = frozenset("\"“'‘*_«")
_CLOSE_MARKS = frozenset("\"”'’*_»")


def fold_word(word: str) -> str:
    """One word in lookup form: no accents, case folded; "&" is "and"."""
    if word == "&":
        return "and"
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words_of(text: str) -> list[str]:
    return [fold_word(m.group()) for m in _TOKEN.finditer(text)]


@functools.cache
def _frequencies() -> dict[str, float]:
    from wordfreq import get_frequency_dict

    return get_frequency_dict("en", wordlist="best")


@functools.lru_cache(maxsize=65536)
def zipf(word: str) -> float:
    """The word's Zipf frequency in English (0 for a word wordfreq has not seen)."""
    if word.isdigit():
        return 4.0  # numbers read as sequels and volumes, not as names
    import math

    f = _frequencies().get(word, 0.0)
    return math.log10(f * 1e9) if f > 0 else 0.0


def distinctiveness(words: Iterable[str]) -> float:
    return sum(max(0.0, MAX_ZIPF - zipf(w)) for w in words)


@dataclass(frozen=True, slots=True)
class Entry:
    kind: Kind
    key: str  # a title id, or a person's name as the catalog writes it
    partial: bool  # the title's head before its colon, not its whole name


@dataclass(frozen=True, slots=True)
class Mention:
    """A span of the message that names catalog titles or a person."""

    kind: Kind
    start: int  # character offsets in the text searched
    end: int
    titles: tuple[Title, ...] = ()  # every title of that name, most likely first
    person: str = ""
    corrected: int = 0  # words read as typos
    score: float = 0.0  # distinctiveness, less the typos' cost

    @property
    def title(self) -> Title:
        return self.titles[0]


@dataclass(frozen=True, slots=True)
class Found:
    """What a text names: titles and people in the order written, and genres."""

    mentions: tuple[Mention, ...] = ()
    genres: tuple[str, ...] = ()

    @property
    def titles(self) -> list[Title]:
        out: list[Title] = []
        for m in self.mentions:
            if m.kind == "title" and m.title not in out:
                out.append(m.title)
        return out

    @property
    def people(self) -> list[str]:
        return list(dict.fromkeys(m.person for m in self.mentions if m.kind == "person"))


@dataclass(slots=True)
class _Word:
    text: str  # folded
    start: int
    end: int
    capital: bool
    sentence_start: bool
    options: list[tuple[str, int]] = field(default_factory=list)  # (word, edits)


class Finder:
    """The mention index of one catalog; `Finder.of` builds it once per catalog (about
    a second) and keeps it as long as the catalog lives."""

    @classmethod
    def of(cls, catalog: Catalog) -> Finder:
        found = _BUILT.get(catalog)
        if found is None:
            found = _BUILT[catalog] = cls(catalog)
        return found

    def __init__(self, catalog: Catalog) -> None:
        # Weakly: the cache of built finders must not keep a replaced catalog alive.
        self._catalog = weakref.ref(catalog)
        self._by_id = catalog.titles
        self._concepts = frozenset(catalog.concepts)
        self._names: dict[str, list[Entry]] = defaultdict(list)
        self._prefixes: set[str] = set()
        vocabulary: set[str] = set()
        for t in catalog.titles.values():
            words = words_of(t.title)
            if not words:
                continue
            self._add(words, Entry("title", t.id, False))
            vocabulary.update(words)
            if len(words) > 1 and words[0] in ARTICLES:
                self._add(words[1:], Entry("title", t.id, False))
            head = re.split(r"\s*[:(]\s*|\s+[-–—]\s+", t.title, maxsplit=1)[0]
            head_words = words_of(head)
            if head_words and head_words != words:
                self._add(head_words, Entry("title", t.id, True))
                if len(head_words) > 1 and head_words[0] in ARTICLES:
                    self._add(head_words[1:], Entry("title", t.id, True))
        directors = {d for t in catalog.titles.values() for d in t.directors}
        surnames: dict[str, list[str]] = defaultdict(list)
        for folded, name in catalog.person_names.items():
            words = folded.split()
            if not words:
                continue
            self._add(words, Entry("person", name, False))
            if len(words) > 1 and name in directors:
                surnames[words[-1]].append(name)
        for surname, names in surnames.items():
            if len(names) == 1 and distinctiveness([surname]) >= SURNAME_MIN:
                self._add([surname], Entry("person", names[0], True))
        # Typos are corrected towards the words of titles and directors only: cast names
        # are many, and a wrong correction costs more than a missed one.
        for name in directors:
            vocabulary.update(words_of(name))
        self._vocabulary = frozenset(vocabulary)
        self._deletes: dict[str, list[str]] = defaultdict(list)
        for word in self._vocabulary:
            if len(word) >= MIN_TYPO_LEN and not word.isdigit():
                for variant in _deletions(word):
                    self._deletes[variant].append(word)
        self._popularity = {t.id: _weight(t) for t in catalog.titles.values()}

    @property
    def catalog(self) -> Catalog:
        catalog = self._catalog()
        if catalog is None:
            raise RuntimeError("this finder's catalog was replaced and collected")
        return catalog

    def _add(self, words: Sequence[str], entry: Entry) -> None:
        key = " ".join(words[:MAX_SPAN])
        if entry not in self._names[key]:
            self._names[key].append(entry)
        for n in range(1, min(len(words), MAX_SPAN)):
            self._prefixes.add(" ".join(words[:n]))

    # -- lookups --------------------------------------------------------------------

    def corrections(self, word: str) -> list[str]:
        """Catalog words one edit away from `word` (a typo's candidates)."""
        if len(word) < MIN_TYPO_LEN or word in self._vocabulary or word.isdigit():
            return []
        if zipf(word) >= KNOWN_WORD_ZIPF:
            return []
        found: set[str] = set()
        for variant in (word, *_deletions(word)):
            for candidate in self._deletes.get(variant, ()):
                if OSA.distance(word, candidate) <= 1:
                    found.add(candidate)
        return sorted(found, key=lambda w: (-zipf(w), w))[:3]

    def titles_named(self, words: str) -> list[Title]:
        """Titles whose name (or name without "The", or head) is exactly these folded
        words, most likely first."""
        entries = self._names.get(" ".join(words_of(words)), [])
        return self._titles([e for e in entries if e.kind == "title"])

    def _titles(self, entries: Sequence[Entry]) -> list[Title]:
        """A title of exactly that name first (the bigger release of two); else the
        titles whose name starts so, the first of the series first ("kill bill" is
        Vol. 1 before Vol. 2)."""
        whole = [self._by_id[e.key] for e in entries if not e.partial]
        if whole:
            return sorted(whole, key=lambda t: (-self._popularity[t.id], t.year or 0))
        heads = [self._by_id[e.key] for e in entries]
        return sorted(heads, key=lambda t: (t.year or 9999, t.title))

    def find(self, text: str, *, cased: bool = False) -> Found:
        """Titles and people named in `text` (see the module docstring). With `cased`,
        only names written with capitals or quotes count, a sentence's first word too:
        for text the model or the bot wrote, which capitalise the names they mean."""
        words = self._words(text)
        shouting = _mostly_capitals(words)
        candidates: list[tuple[float, Mention]] = []
        for i in range(len(words)):
            for span_end, key, edits in self._walk(words, i):
                entries = self._names.get(key, [])
                if not entries:
                    continue
                span = words[i : span_end + 1]
                folded = key.split()
                score = distinctiveness(folded) - TYPO_COST * edits
                mark = 0 if shouting else _mark(text, words, i, span_end)
                if (
                    mark < 2
                    and not edits
                    and len(span) > 1
                    and self._as_written(text, span, entries)
                ):
                    mark = 2  # exactly as the catalog writes it: "El club de los buenos…"
                if (
                    cased
                    and mark < 2
                    and len(folded) == 1
                    and all(e.kind == "person" for e in entries)
                ):
                    continue  # one capitalised word opening a sentence is not a person
                if mark == 2:
                    need = MARKED
                elif cased:
                    if mark == 0:
                        continue
                    need = CUED  # a capital at a sentence's start says less
                else:
                    need = CUED if _cued(words, i, span_end) else UNMARKED
                if edits and len(folded) == 1 and len(folded[0]) < 5:
                    continue  # a short word read as a typo is too often a real one
                if score < need:
                    continue
                start, end = span[0].start, span[-1].end
                titles = self._titles([e for e in entries if e.kind == "title"])
                people = [e for e in entries if e.kind == "person"]
                if titles:
                    mention = Mention("title", start, end, tuple(titles), "", edits, score)
                    candidates.append((float(len(span)), mention))
                if people:
                    # A full name beats a surname read alone.
                    person = next((e for e in people if not e.partial), people[0]).key
                    mention = Mention("person", start, end, (), person, edits, score)
                    candidates.append((float(len(span)) - 0.1, mention))
        # Longest spans first, then fewer typos; a span overlapping a chosen one goes.
        candidates.sort(key=lambda c: (-c[0], c[1].corrected, -c[1].score, c[1].start))
        chosen: list[Mention] = []
        for _, mention in candidates:
            # Overlapping names: the longer wins; a title beats a person of the same
            # words ("Perfume" the series, not the band).
            if any(m.start < mention.end and mention.start < m.end for m in chosen):
                continue
            chosen.append(mention)
        chosen.sort(key=lambda m: (m.start, m.kind != "title"))
        genres = tuple(c for c in genre_words(text) if c in self._concepts)
        return Found(tuple(chosen), genres)

    def _as_written(self, text: str, span: Sequence[_Word], entries: Sequence[Entry]) -> bool:
        written = _TOKEN.findall(text[span[0].start : span[-1].end])
        for e in entries:
            name = self._by_id[e.key].title if e.kind == "title" else e.key
            if _TOKEN.findall(name)[: len(written)] == written:
                return True
        return False

    def _words(self, text: str) -> list[_Word]:
        words: list[_Word] = []
        for match in _TOKEN.finditer(text):
            raw = match.group()
            before = text[: match.start()].rstrip(" \t\"“'‘*_«([")
            sentence_start = not before or before[-1] in ".!?\n:"
            word = _Word(fold_word(raw), match.start(), match.end(), raw[0].isupper(),
                         sentence_start)  # fmt: skip
            word.options = [(word.text, 0)] + [(c, 1) for c in self.corrections(word.text)]
            words.append(word)
        return words

    def _walk(self, words: Sequence[_Word], i: int) -> Iterable[tuple[int, str, int]]:
        """(last word index, folded key, edits) of every name in the index that starts
        at word `i`, the words read as typed or as corrected."""
        frontier = [("", 0)]
        for j in range(i, min(len(words), i + MAX_SPAN)):
            grown = []
            for prefix, edits in frontier:
                for option, cost in words[j].options:
                    if edits + cost > 2:
                        continue
                    key = f"{prefix} {option}" if prefix else option
                    if key in self._names:
                        yield j, key, edits + cost
                    if key in self._prefixes:
                        grown.append((key, edits + cost))
            if not grown:
                return
            frontier = grown


_BUILT: weakref.WeakKeyDictionary[Catalog, Finder] = weakref.WeakKeyDictionary()


def _deletions(word: str) -> set[str]:
    return {word[:k] + word[k + 1 :] for k in range(len(word))}


def _weight(title: Title) -> float:
    """Which of two titles of one name is meant: the one with more credited people
    (the bigger release), then the newer."""
    return len(title.cast) + len(title.directors) + (title.year or 0) / 10_000


def _mostly_capitals(words: Sequence[_Word]) -> bool:
    """Title Case Or SHOUTING throughout: capitals then say nothing."""
    alpha = [w for w in words if w.text.isalpha() and len(w.text) > 2]
    return len(alpha) >= 4 and sum(w.capital for w in alpha) > 0.6 * len(alpha)


def _mark(text: str, words: Sequence[_Word], i: int, end: int) -> int:
    """2: quoted or emphasised, or capitalised as a name (every longer word with a
    capital, not only the sentence's first word); 1: capitalised only because it
    starts a sentence; 0: not marked, or only a piece of a longer capitalised name
    ("Velvet" in "Velvet Atlas")."""
    span = words[i : end + 1]
    before = text[: span[0].start].rstrip()
    after = text[span[-1].end :].lstrip()
    if before[-1:] in _OPEN_MARKS and after[:1] in _CLOSE_MARKS:
        return 2
    content = [w for w in span if len(w.text) > 2 or w is span[0]]
    if not all(w.capital for w in content):
        return 0
    # A capitalised word before counts unless it only opens the sentence ("Watch Okja").
    left = i > 0 and not words[i - 1].sentence_start and _joined(text, words, i - 1, i)
    if left or _joined(text, words, end, end + 1):
        return 0
    if span[0].sentence_start and len(content) < 2:
        return 1
    return 2


def _joined(text: str, words: Sequence[_Word], left: int, right: int) -> bool:
    """Whether words `left` and `right` are capitalised words of one run (only spaces
    between them, the right one longer than a joining word)."""
    if left < 0 or right >= len(words):
        return False
    a, b = words[left], words[right]
    return a.capital and b.capital and len(b.text) > 2 and not text[a.end : b.start].strip()


def _cued(words: Sequence[_Word], i: int, end: int) -> bool:
    """A span right after a cue word (an article between allowed), followed by a pause:
    punctuation, the end, or a word that cannot be part of the name."""
    k = i - 1
    if k >= 0 and words[k].text in ARTICLES:
        k -= 1
    if k < 0 or words[k].text not in CUES:
        return False
    if end + 1 >= len(words):
        return True
    gap = words[end].end, words[end + 1].start
    return gap[1] - gap[0] > 1 or words[end + 1].text in PAUSE_WORDS
