"""The offensive-language classifier: `alt-profanity-check` (a linear model over
character and word n-grams, a few milliseconds a call), optionally followed by a
Hugging Face text-classification model the admin provides.

Media talk is full of violent titles ("Kill Bill", "Die Hard with a Vengeance"), so
known multi-word catalog titles are masked out before scoring, and a text is scored
sentence by sentence (an insult hidden in a long message is not diluted by it). The
false-positive rate over the catalog and over ordinary questions is measured in
tests/test_classifier.py and stated in docs/moderation.md.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from bot.moderation.rules import normalise

log = logging.getLogger(__name__)

MAX_SENTENCES = 400  # a 100 KB message is scored on its first 400 sentences
WINDOW_WORDS = 40  # a sentence longer than this is scored in overlapping windows
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class Scorer(Protocol):
    """Probability that each text is offensive, in [0, 1]."""

    def scores(self, texts: Sequence[str]) -> list[float]: ...


class ProfanityScorer:
    """alt-profanity-check's bundled model (loaded on first use: about 1.4 s)."""

    def __init__(self) -> None:
        import profanity_check

        self._predict = profanity_check.predict_prob

    def scores(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self._predict(list(texts))]


class HFScorer:
    """A local Hugging Face text-classification model; a text's score is the highest
    probability among the labels named offensive (case-insensitive)."""

    def __init__(self, path: Path, labels: Iterable[str]) -> None:
        from transformers import pipeline

        self.labels = {label.strip().casefold() for label in labels if label.strip()}
        self._pipe: Any = pipeline(
            "text-classification", model=str(path), tokenizer=str(path), device="cpu", top_k=None
        )
        known = {str(v).casefold() for v in self._pipe.model.config.id2label.values()}
        if not self.labels & known:
            raise ValueError(
                f"none of the labels {sorted(self.labels)} is one of the model's {sorted(known)}"
            )

    def scores(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        out = self._pipe(list(texts), truncation=True)
        return [
            max((float(r["score"]) for r in row if str(r["label"]).casefold() in self.labels),
                default=0.0)
            for row in out
        ]  # fmt: skip


class TitleMask:
    """Removes known multi-word titles from normalised text. One-word titles stay:
    masking "Bitch" or "Losers" would hide the insult itself."""

    def __init__(self, titles: Iterable[str]) -> None:
        self._titles: set[str] = set()
        for title in titles:
            words = normalise(title).split()
            if len(words) >= 2:
                self._titles.add(" ".join(words))
        self._longest = max((t.count(" ") + 1 for t in self._titles), default=0)

    @classmethod
    def from_csv(cls, path: Path, column: str = "title") -> TitleMask:
        with path.open(newline="", encoding="utf-8") as fh:
            return cls(row.get(column) or "" for row in csv.DictReader(fh))

    def __len__(self) -> int:
        return len(self._titles)

    def remove(self, normalised: str) -> str:
        words = normalised.split()
        kept: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(self._longest, len(words) - i), 1, -1):
                if " ".join(words[i : i + n]) in self._titles:
                    i += n
                    break
            else:
                kept.append(words[i])
                i += 1
        return " ".join(kept)


def sentences(text: str) -> list[str]:
    """The pieces a text is scored in: sentences, long ones cut into windows."""
    out: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        if not words:
            continue
        step = WINDOW_WORDS // 2
        starts = range(0, max(1, len(words) - step), step) if len(words) > WINDOW_WORDS else [0]
        out.extend(" ".join(words[s : s + WINDOW_WORDS]) for s in starts)
        if len(out) >= MAX_SENTENCES:
            break
    return out[:MAX_SENTENCES]


class OffensiveClassifier:
    """Scores a text as the highest score of any of its sentences under any scorer."""

    def __init__(self, scorers: Sequence[Scorer], mask: TitleMask | None = None) -> None:
        self.scorers = list(scorers)
        self.mask = mask

    @classmethod
    def load(
        cls,
        *,
        titles: Path | None = None,
        hf_path: Path | None = None,
        hf_labels: Iterable[str] = (),
    ) -> OffensiveClassifier:
        scorers: list[Scorer] = [ProfanityScorer()]
        if hf_path is not None:
            scorers.append(HFScorer(hf_path, hf_labels))
        mask = None
        if titles is not None:
            try:
                mask = TitleMask.from_csv(titles)
            except OSError as exc:
                log.warning("no catalog titles to mask (%s): media titles may be flagged", exc)
        return cls(scorers, mask)

    def pieces(self, text: str) -> list[str]:
        out = []
        for piece in sentences(text):
            plain = normalise(piece)
            if self.mask is not None:
                plain = self.mask.remove(plain)
            if plain:
                out.append(plain)
        return out

    def score(self, text: str) -> float:
        return self.score_many([text])[0]

    def score_many(self, texts: Sequence[str]) -> list[float]:
        """`score` for many texts, with one call per scorer (a call costs ~5 ms)."""
        owners: list[int] = []
        pieces: list[str] = []
        for i, text in enumerate(texts):
            own = self.pieces(text)
            pieces.extend(own)
            owners.extend([i] * len(own))
        best = [0.0] * len(texts)
        for scorer in self.scorers:
            for owner, value in zip(owners, scorer.scores(pieces), strict=True):
                best[owner] = max(best[owner], value)
        return best
