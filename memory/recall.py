"""Recall of older turns: BM25 over what the user said, with recency decay and an exact
threshold. Search terms are computed once per turn, when it is stored; the scoring runs
on the reply path with no model call."""

from __future__ import annotations

import math
import re
from collections import Counter
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


def recall_entry(time: float, text: str) -> str:
    """What is stored per user turn for recall: its time and its terms."""
    return f"{time:.3f} " + " ".join(terms(text))


@dataclass(frozen=True, slots=True)
class Candidate:
    turn_id: int
    time: float
    terms: list[str]

    @classmethod
    def parse(cls, turn_id: int, entry: str) -> Candidate | None:
        head, _, rest = entry.partition(" ")
        try:
            when = float(head)
        except ValueError:
            return None
        return cls(turn_id, when, rest.split())


@dataclass(frozen=True, slots=True)
class Recalled:
    turn_id: int
    score: float  # relevance in [0, 1] times the recency decay


def rank(
    query: str,
    candidates: list[Candidate],
    *,
    now: float,
    threshold: float,
    half_life_days: float,
    limit: int,
) -> list[Recalled]:
    """The candidates worth recalling for `query`, best first.

    Relevance is BM25 divided by the best score any document could reach for this query
    (each query term present, at saturation), so it lies in [0, 1]; it is multiplied by
    0.5 ** (age / half-life). A candidate is kept only if that product is at least
    `threshold` (exactly: `>=`)."""
    query_terms = list(dict.fromkeys(terms(query)))
    if not query_terms or not candidates or limit <= 0:
        return []
    n = len(candidates)
    avg_len = sum(len(c.terms) for c in candidates) / n or 1.0
    df: Counter[str] = Counter()
    for c in candidates:
        df.update(set(c.terms) & set(query_terms))
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in query_terms}
    best = sum(idf.values()) * (K1 + 1)
    if best <= 0:
        return []
    found: list[Recalled] = []
    for c in candidates:
        present = [t for t in query_terms if df[t] and t in c.terms]
        if not present:
            continue
        counts = Counter(c.terms)
        norm = K1 * (1 - B + B * len(c.terms) / avg_len)
        score = sum(idf[t] * counts[t] * (K1 + 1) / (counts[t] + norm) for t in present)
        age_days = max(now - c.time, 0.0) / SECONDS_PER_DAY
        decay = 0.5 ** (age_days / half_life_days) if half_life_days > 0 else 1.0
        value = score / best * decay
        if value >= threshold:
            found.append(Recalled(c.turn_id, value))
    found.sort(key=lambda r: (-r.score, -r.turn_id))
    return found[:limit]
