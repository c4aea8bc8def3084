"""Assembling one reply's context window from memory: one Redis round trip for turns,
recall candidates, facts and summary; recall ranked in process; then the window built.
Shared by the reply pipeline and the memory benchmark, so both measure the same path.
No model is called here."""

from __future__ import annotations

from dataclasses import dataclass

from bot.context.build import ContextWindow, build_context
from bot.context.profile import profile_slot
from bot.generation.base import TokenCounter
from memory.keys import Scope
from memory.recall import Candidate, Corpus, rank, terms
from memory.records import StoredTurn
from memory.store import MemorySnapshot, MemoryStore

MAX_QUERY_TERMS = 16


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """How the budget is shared and what recall keeps."""

    budget: int
    profile_share: float = 0.10
    summary_share: float = 0.15
    recall_share: float = 0.15
    recall_threshold: float = 0.15
    recall_half_life_days: float = 90.0
    recall_candidates: int = 1000
    recall_limit: int = 8
    facts_share: float = 0.0  # the pipeline sets it from GROUNDING_FACTS_SHARE

    def build(
        self,
        counter: TokenCounter,
        system: str,
        message: str,
        snapshot: MemorySnapshot,
        *,
        recalled: list[StoredTurn] | None = None,
        facts: str = "",
    ) -> ContextWindow:
        return build_context(
            counter,
            system=system,
            message=message,
            turns=snapshot.turns,
            budget=self.budget,
            profile=profile_slot(snapshot.facts, snapshot.taste),
            summary=snapshot.summary_text,
            recalled=recalled or [],
            profile_share=self.profile_share,
            summary_share=self.summary_share,
            # Recall off: no room kept for it.
            recall_share=self.recall_share if self.recall_limit else 0.0,
            facts=facts,
            facts_share=self.facts_share,
        )


async def assemble_window(
    store: MemoryStore,
    counter: TokenCounter,
    policy: WindowPolicy,
    *,
    scope: Scope,
    user_id: str,
    system: str,
    message: str,
    now: float,
    snapshot: MemorySnapshot | None = None,
    facts: str = "",
) -> tuple[ContextWindow, MemorySnapshot]:
    """The context window for `message`, with `facts` in its facts slot; raises
    `MemoryUnavailable` if Redis fails. `snapshot`: what `load_snapshot` read already
    (the pipeline reads the recent turns before it knows the facts)."""
    if snapshot is None:
        snapshot = await load_snapshot(
            store, counter, policy, scope=scope, user_id=user_id, system=system, message=message
        )
    recalled: list[StoredTurn] = []
    if policy.recall_limit and policy.recall_share:
        # Candidates: user turns not in the window, those memory left out and loaded
        # ones the window drops.
        oldest = policy.build(counter, system, message, snapshot, facts=facts).oldest_turn_id
        dropped = [
            Candidate(t.id, t.time, tuple(terms(t.text)))
            for t in snapshot.turns
            if t.role == "user" and (oldest is None or t.id < oldest)
        ]
        ranked = rank(
            message,
            snapshot.candidates + dropped,
            corpus=snapshot.corpus + Corpus.of(dropped),
            now=now,
            threshold=policy.recall_threshold,
            half_life_days=policy.recall_half_life_days,
            limit=policy.recall_limit,
        )
        if ranked:
            recalled = await store.turns_by_id(scope, user_id, [r.turn_id for r in ranked])
    window = policy.build(counter, system, message, snapshot, recalled=recalled, facts=facts)
    return window, snapshot


async def load_snapshot(
    store: MemoryStore,
    counter: TokenCounter,
    policy: WindowPolicy,
    *,
    scope: Scope,
    user_id: str,
    system: str,
    message: str,
) -> MemorySnapshot:
    """One Redis round trip: the turns that can fit beside the system prompt and the
    message, and older ones as recall candidates (their search terms are stored)."""
    fixed = counter.count_tokens(system) + counter.count_tokens(message)
    wanted = list(dict.fromkeys(terms(message)))[:MAX_QUERY_TERMS]
    return await store.load(
        scope,
        user_id,
        token_budget=max(policy.budget - fixed, 0),
        max_candidates=policy.recall_candidates if policy.recall_limit else 0,
        query_terms=wanted,
    )
