"""Recall of older turns: BM25 over what the user said, with recency decay and an exact
threshold. Search terms are computed once per turn, when it is stored; the scoring runs
on the reply path with no model call."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_WORD = re.compile(r"[0-9a-zà-ÿ]+(?:'[a-z]+)?")
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers herself him himself his how
    i if in into is it its itself just me more most my myself no nor not now of off on
    once only or other our ours out over own same she should so some such than that the
    their theirs them then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself also really like get got one thing things think know want tell said
    say please thanks thank hi hello hey ok okay yes yeah oh well much many lot""".split()  # noqa: SIM905
)
K1 = 1.2
B = 0.75
SECONDS_PER_DAY = 86400.0


def _stem(word: str) -> str:
    """A light suffix strip so "finished", "finishing" and "finish" meet."""
    word = word.removesuffix("'s")
    for suffix in ("ings", "ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def terms(text: str) -> list[str]:
    """The search terms of a text: lower-case words, stop words dropped, stemmed."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def index_entry(role: str, time: float, tokens: int, text: str) -> str:
    """What memory keeps per turn besides the record, for loading without parsing JSON:
    "<u|a> <time> <tokens> <search terms>" (terms for user turns only: recall covers
    what the user said)."""
    words = " ".join(terms(text)) if role == "user" else ""
    return f"{role[0]} {time:.3f} {tokens} {words}".rstrip()


@dataclass(frozen=True, slots=True)
class Candidate:
    turn_id: int
    time: float
    terms: tuple[str, ...]

    @classmethod
    def parse_lines(cls, blob: str) -> list[Candidate]:
        """Candidates from load's "<id> <entry>" lines; malformed lines are skipped."""
        found = []
        for line in blob.splitlines():
            parts = line.split()
            try:
                found.append(cls(int(parts[0]), float(parts[2]), tuple(parts[4:])))
            except (IndexError, ValueError):
                continue
        return found


@dataclass(frozen=True, slots=True)
class Recalled:
    turn_id: int
    score: float  # relevance in [0, 1] times the recency decay


@dataclass(frozen=True, slots=True)
class Corpus:
    """BM25's statistics of everything searched: how many turns, how many terms."""

    docs: int = 0
    terms: int = 0

    def __add__(self, other: Corpus) -> Corpus:
        return Corpus(self.docs + other.docs, self.terms + other.terms)

    @classmethod
    def of(cls, candidates: list[Candidate]) -> Corpus:
        return cls(len(candidates), sum(len(c.terms) for c in candidates))


def rank(
    query: str,
    candidates: list[Candidate],
    *,
    now: float,
    threshold: float,
    half_life_days: float,
    limit: int,
    corpus: Corpus | None = None,
) -> list[Recalled]:
    """The candidates worth recalling for `query`, best first.

    Relevance is BM25 divided by the best score any document could reach for this query
    (each query term present, at saturation), so it lies in [0, 1]; it is multiplied by
    0.5 ** (age / half-life). A candidate is kept only if that product is at least
    `threshold` (exactly: `>=`). `candidates` may be only the turns sharing a term
    with the query when `corpus` describes everything that was searched."""
    query_terms = list(dict.fromkeys(terms(query)))
    if not query_terms or not candidates or limit <= 0:
        return []
    stats = corpus if corpus is not None else Corpus.of(candidates)
    n = max(stats.docs, len(candidates))
    avg_len = stats.terms / n if n and stats.terms else 1.0
    matches: list[tuple[Candidate, list[str]]] = []
    df = dict.fromkeys(query_terms, 0)
    for c in candidates:
        present = [t for t in query_terms if t in c.terms]
        if present:
            matches.append((c, present))
            for t in present:
                df[t] += 1
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in query_terms}
    best = sum(idf.values()) * (K1 + 1)
    if best <= 0:
        return []
    found: list[Recalled] = []
    for c, present in matches:
        norm = K1 * (1 - B + B * len(c.terms) / avg_len)
        score = 0.0
        for t in present:
            tf = c.terms.count(t)
            score += idf[t] * tf * (K1 + 1) / (tf + norm)
        age_days = max(now - c.time, 0.0) / SECONDS_PER_DAY
        decay = 0.5 ** (age_days / half_life_days) if half_life_days > 0 else 1.0
        value = score / best * decay
        if value >= threshold:
            found.append(Recalled(c.turn_id, value))
    found.sort(key=lambda r: (-r.score, -r.turn_id))
    return found[:limit]
