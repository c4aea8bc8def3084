"""Background memory upkeep: folding turns that left the context window into the
scope's rolling summary, off the reply path.

One upkeep per scope at a time, across bot processes (a Redis lock); a summary is
written only if nobody replaced it meanwhile (a version check). The summary is
extractive by default: sentences where the user speaks about themselves, ranked, kept
within the summary's share of the window. With `MEMORY_SUMMARY_MODE=model` the model
writes it at low priority, stopped the moment a live reply needs the model, with the
extractive summary as the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from bot.generation.base import GenerationError, GenerationParams, Generator, TokenCounter
from memory.errors import MemoryUnavailable
from memory.keys import Scope
from memory.records import StoredTurn, Summary
from memory.store import MemoryStore, UpkeepBusy
from prompts import load_task

log = logging.getLogger(__name__)

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_FIRST_PERSON = re.compile(r"\b(?:I|I'm|I've|I'd|my|me|mine)\b")
_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+")
MIN_SENTENCE_CHARS = 12
FOLD_BATCH = 10  # turns outside the window before a fold is worth it
MAX_LINE_CHARS = 200


def salience(sentence: str) -> float:
    """How much a sentence is worth keeping: the user about themselves, names and
    titles, numbers."""
    score = 2.0 * len(_FIRST_PERSON.findall(sentence)) + len(_CAPITALISED.findall(sentence))
    score += 0.5 * bool(re.search(r"\d", sentence))
    return score


def summary_lines(turns: Sequence[StoredTurn]) -> list[str]:
    """Candidate summary lines from the user's turns, each dated."""
    lines = []
    for turn in turns:
        if turn.role != "user":
            continue
        day = datetime.fromtimestamp(turn.time, UTC).strftime("%Y-%m-%d")
        for raw in _SENTENCE.findall(turn.text):
            sentence = " ".join(raw.split())
            if len(sentence) >= MIN_SENTENCE_CHARS and salience(sentence) > 0:
                lines.append(f"- ({day}) {sentence[:MAX_LINE_CHARS]}")
    return lines


def fit_lines(counter: TokenCounter, lines: list[str], cap: int) -> str:
    """The most salient lines that fit `cap` tokens, in their original order; older
    lines give way first when scores tie."""
    ranked = sorted(range(len(lines)), key=lambda i: (-salience(lines[i]), -i))
    kept: set[int] = set()
    used = 0
    for i in ranked:
        cost = counter.count_tokens(lines[i]) + 1
        if used + cost <= cap:
            kept.add(i)
            used += cost
    return "\n".join(lines[i] for i in sorted(kept))


class Upkeep:
    """Schedules and runs summary upkeep; holds its tasks until they finish."""

    def __init__(
        self,
        memory: MemoryStore,
        counter: TokenCounter,
        *,
        summary_cap: int,
        mode: str = "extractive",
        generator: Generator | None = None,
    ) -> None:
        self.memory = memory
        self.counter = counter
        self.summary_cap = summary_cap
        self.mode = mode
        self.generator = generator
        self._task = load_task("summary")
        self._tasks: set[asyncio.Task[bool]] = set()

    def schedule(
        self,
        scope: Scope,
        user_id: str,
        oldest_in_window: int | None,
        summary: Summary | None,
    ) -> None:
        """Fold what left the window, in the background (never awaited by a reply).
        `summary` is the one the reply loaded: unless it went stale, nothing is scheduled
        until FOLD_BATCH turns wait outside the window (recall covers them meanwhile), so
        a reply does not cost a lock and a rewrite each time."""
        if self.mode == "off" or oldest_in_window is None:
            return
        folded = summary.upto if summary is not None else 0
        stale = summary is not None and summary.stale
        if not stale and oldest_in_window - 1 - folded < FOLD_BATCH:
            return
        task = asyncio.create_task(self.run(scope, user_id, oldest_in_window))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for scheduled upkeep (at shutdown, and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def run(self, scope: Scope, user_id: str, oldest_in_window: int) -> bool:
        """Fold turns older than `oldest_in_window` into the summary; True if written."""
        try:
            async with self.memory.upkeep_lock(scope, user_id):
                return await self._fold(scope, user_id, oldest_in_window)
        except UpkeepBusy:
            return False  # the holder will fold these turns too
        except MemoryUnavailable as exc:
            log.warning("summary upkeep skipped: %s", exc)
            return False
        except Exception:
            log.exception("summary upkeep failed")
            return False

    async def _fold(self, scope: Scope, user_id: str, oldest_in_window: int) -> bool:
        current = await self.memory.summary(scope, user_id)
        read = current.version if current else 0
        rebuild = current is None or current.stale
        upto = oldest_in_window - 1
        first = 1 if rebuild else (current.upto + 1 if current else 1)
        if rebuild and current is not None:
            upto = max(upto, current.upto)
        if upto < first:
            return False
        turns = await self.memory.turns_between(scope, user_id, first, upto)
        previous = [] if rebuild or current is None else current.text.splitlines()
        text = await self._write(previous, turns)
        covers = [t.id for t in turns]
        if not rebuild and current is not None:
            covers = current.covers + covers
        # Turns trimmed from memory can no longer change: no need to keep their ids.
        covers = covers[-self.memory.max_turns :]
        summary = Summary(text=text, covers=covers, upto=upto, time=time.time())
        written = await self.memory.set_summary(scope, user_id, summary, read)
        if not written:
            log.info("summary for %s changed meanwhile; this fold was dropped", scope)
        return written

    async def _write(self, previous: list[str], turns: Sequence[StoredTurn]) -> str:
        lines = previous + summary_lines(turns)
        # Tokenising hundreds of lines is CPU work: keep it off the event loop, where
        # live replies are being streamed.
        extractive = await asyncio.to_thread(fit_lines, self.counter, lines, self.summary_cap)
        if self.mode != "model" or self.generator is None or not extractive:
            return extractive
        prompt = [{"role": "user", "content": self._task.render(notes=extractive)}]
        params = GenerationParams(max_new_tokens=self.summary_cap, temperature=0.0)
        try:
            written = "".join(
                [p async for p in self.generator.stream_background(prompt, params)]
            ).strip()
        except GenerationError as exc:
            log.info("summary by the model skipped (%s); kept the extractive one", exc)
            return extractive
        if not written or self.counter.count_tokens(written) > self.summary_cap:
            return extractive
        return written
