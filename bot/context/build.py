"""The token-budgeted context window: what the model sees for one reply.

Filled in priority order, counting real tokens of the served model's tokenizer:
the system prompt (always), the current message (always; cut with a marker when it
alone would not fit), profile facts, the rolling summary, the catalog's facts about what
the message names, and recalled older turns (each capped at a share of the budget),
then recent turns, whole turns only.
The result is valid for the model's chat template (roles alternate, same-role runs
merged) and never exceeds the budget.

Laid out so consecutive messages share their start, which the model has read already
(its prefix cache): the system prompt, profile and summary first; then the recent
turns; last the current message, with the recalled turns and the catalog facts just
before it, since both change with every message. Recalled turns are the user's own
words and the facts are about this message, so both sit in the user's message, not in
the system prompt. Once a conversation is longer
than the window, its start does not move by one exchange per message (which would
make the model read the whole window again for every reply): it stays on a turn of a
coarse grid of turn ids (every 16th turn, or a finer grid where that would leave less
than half the history) for as long as the history from it fits a room that leaves the
recall and facts shares (at most half of what is free) and a typical message's room
free; so it moves once in several messages.

Counting: each stored turn carries its token count (counted once, at write), so a
window is counted without tokenising history again. The count is an upper bound of the
rendered prompt's exact length: chat templates separate messages with special tokens,
so a message's tokens do not merge with its neighbours', and one spare token per
message and per joined piece covers the template's own boundary (the property tests
check the bound against the exact count of the rendered template).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bot.generation.base import ChatMessage, TokenCounter
from memory.records import StoredTurn, Turn

# The current message always keeps at least this many tokens of its own.
MIN_MESSAGE_TOKENS = 64
PROFILE_HEADER = "\n\nWhat you know about this user (from earlier conversations):\n"
SUMMARY_HEADER = "\n\nSummary of your earlier conversation with this user:\n"
RECALL_HEADER = "Things I said in earlier conversations that may matter now:\n"
TRUNCATION_MARKER = "\n[… message cut here: it was too long for my context window]"
MERGE_SEPARATOR = "\n\n"
# Grids of turn ids the history may start on, coarsest first (see the module docstring).
START_STEPS = (16, 8, 4, 2)
# Room kept for the current message when placing the history's start.
MESSAGE_ROOM = 2 * MIN_MESSAGE_TOKENS


class ContextError(ValueError):
    """The fixed parts (system prompt) cannot fit the budget: a configuration error."""


@dataclass(frozen=True, slots=True)
class ContextWindow:
    messages: list[ChatMessage]
    message: str  # the current message as the model reads it (cut, when it was cut)
    tokens: int  # at most this many prompt tokens (see the module docstring)
    budget: int
    turns_used: int
    message_truncated: bool
    oldest_turn_id: int | None = None  # the oldest stored turn in the window
    recalled: int = 0
    facts: int = 0  # lines of catalog facts kept
    # Tokens of each part: system (with the template's own), profile, summary, facts,
    # recall, message, history; they add up to `tokens`.
    slots: dict[str, int] = field(default_factory=dict)


def context_budget(context_length: int, max_new_tokens: int, margin: int, cap: int) -> int:
    """Tokens the prompt may use: the model's window less the reply and a margin,
    and at most `cap`."""
    return min(context_length - max_new_tokens - margin, cap)


@dataclass(frozen=True, slots=True)
class _Overheads:
    fixed: int  # system + user message with empty contents, plus the generation prompt
    per_message: int  # what each further message adds besides its content
    separator: int  # the tokens of MERGE_SEPARATOR, plus one spare


# Measured once per tokenizer object (the template does not change).
_OVERHEADS: weakref.WeakKeyDictionary[TokenCounter, _Overheads] = weakref.WeakKeyDictionary()


def _overheads(counter: TokenCounter) -> _Overheads:
    cached = _OVERHEADS.get(counter)
    if cached is not None:
        return cached
    base = [{"role": "system", "content": ""}, {"role": "user", "content": ""}]
    more = [*base, {"role": "assistant", "content": ""}, {"role": "user", "content": ""}]
    fixed = counter.count_prompt_tokens(base) + 2  # a spare token for each content
    per_message = -(-(counter.count_prompt_tokens(more) - fixed + 2) // 2) + 1
    over = _Overheads(fixed, per_message, counter.count_tokens(MERGE_SEPARATOR) + 1)
    _OVERHEADS[counter] = over
    return over


def _section(counter: TokenCounter, header: str, body: str, cap: int) -> tuple[str, int]:
    """A header and as much of `body` as fits `cap` tokens, and its token bound."""
    body = body.strip()
    room = cap - counter.count_tokens(header) - 1
    if not body or room <= 0:
        return "", 0
    kept = counter.truncate_tokens(body, room)
    return header + kept, counter.count_tokens(header) + counter.count_tokens(kept) + 1


def recall_lines(turns: Sequence[StoredTurn]) -> list[str]:
    """How recalled turns read in the window: dated, one per line."""
    lines = []
    for turn in turns:
        day = datetime.fromtimestamp(turn.time, UTC).strftime("%Y-%m-%d")
        lines.append(f"- ({day}) {' '.join(turn.text.split())}")
    return lines


def build_context(
    counter: TokenCounter,
    *,
    system: str,
    message: str,
    turns: Sequence[Turn],
    budget: int,
    profile: str = "",
    summary: str = "",
    recalled: Sequence[StoredTurn] = (),
    profile_share: float = 0.10,
    summary_share: float = 0.15,
    recall_share: float = 0.15,
    facts: str = "",
    facts_share: float = 0.0,
) -> ContextWindow:
    """Fill the window in priority order; see the module docstring. `facts` is a
    header line and one line per fact; whole lines are kept, in order."""
    over = _overheads(counter)
    system_tokens = counter.count_tokens(system)
    if over.fixed + system_tokens + MIN_MESSAGE_TOKENS > budget:
        raise ContextError(
            f"the system prompt ({system_tokens} tokens) does not fit a {budget}-token "
            "context window with room for a message"
        )
    full_system, used = system, over.fixed + system_tokens
    slots = {"system": used}
    for slot, header, body, share in (
        ("profile", PROFILE_HEADER, profile, profile_share),
        ("summary", SUMMARY_HEADER, summary, summary_share),
    ):
        text, cost = _section(counter, header, body, int(budget * share))
        if text and budget - used - cost >= MIN_MESSAGE_TOKENS:
            full_system, used = full_system + text, used + cost
            slots[slot] = cost

    # What the history may use whatever is recalled, whatever facts are given and
    # whatever the message's length: where its start goes depends on this room only, so
    # it holds from message to message.
    recall_cap = int(budget * recall_share)
    facts_cap = int(budget * facts_share)
    free = budget - used - min(MESSAGE_ROOM, budget // 8)
    # In a small window the shares must not leave the history no room at all.
    reserved = min(recall_cap + facts_cap, max(free, 0) // 2)
    steady_room = free - reserved

    facts_block, facts_used, fact_lines = _lines_within(
        counter, facts, facts_cap, budget - used - MIN_MESSAGE_TOKENS, over.separator
    )
    used += facts_used
    slots["facts"] = facts_used

    recall, recall_used, recalled_lines = _recall_within(
        counter, recalled, recall_cap, budget - used, over.separator
    )
    used += recall_used
    slots["recall"] = recall_used

    truncated = False
    available = budget - used
    message_tokens = counter.count_tokens(message)
    if message_tokens > available:
        message = _truncate(counter, message, available)
        message_tokens = counter.count_tokens(message)
        truncated = True
    used += message_tokens
    slots["message"] = message_tokens

    # Recent turns, whole turns only. A turn merged into a neighbour of its own role
    # costs a separator instead of a message.
    costs = [turn.tokens + over.per_message + over.separator for turn in turns]
    first = _stable_start(turns, costs, steady_room)
    # A long message or many recalled lines this time: fewer turns, this time only.
    history_used = sum(costs[first:])
    while first < len(turns) and used + history_used > budget:
        history_used -= costs[first]
        first += 1
    chosen = list(turns[first:])

    messages, kept = _assemble(full_system, chosen, recall + facts_block + message)
    slots["history"] = sum(t.tokens + over.per_message + over.separator for t in kept)
    used += slots["history"]
    oldest = next((t.id for t in kept if isinstance(t, StoredTurn)), None)
    return ContextWindow(
        messages=messages,
        message=message,
        tokens=used,
        budget=budget,
        turns_used=len(kept),
        message_truncated=truncated,
        oldest_turn_id=oldest,
        recalled=recalled_lines,
        facts=fact_lines,
        slots=slots,
    )


def _recall_within(
    counter: TokenCounter, recalled: Sequence[StoredTurn], cap: int, room: int, separator: int
) -> tuple[str, int, int]:
    """Recalled turns as whole lines, newest relevance first, within `cap` and leaving
    a message its least room of `room`: the text, its token bound, the lines kept."""
    used, lines = 0, []
    limit = cap - counter.count_tokens(RECALL_HEADER) - 1 - separator
    for line in recall_lines(recalled):
        cost = counter.count_tokens(line) + separator
        if used + cost > limit or room - used - cost < MIN_MESSAGE_TOKENS:
            continue
        lines.append(line)
        used += cost
    if not lines:
        return "", 0, 0
    used += counter.count_tokens(RECALL_HEADER) + 1 + separator
    return RECALL_HEADER + "\n".join(lines) + MERGE_SEPARATOR, used, len(lines)


def _lines_within(
    counter: TokenCounter, text: str, cap: int, room: int, separator: int
) -> tuple[str, int, int]:
    """The first line of `text` (its header) and as many of the next lines as fit
    `cap` and `room` tokens, with the separator after them; their token bound; and the
    number of lines kept after the header. ("", 0, 0) when no line fits."""
    header, _, rest = text.strip().partition("\n")
    lines = [line for line in rest.split("\n") if line.strip()]
    limit = min(cap, room)
    used = counter.count_tokens(header) + 1 + separator
    kept: list[str] = []
    for line in lines:
        cost = counter.count_tokens(line) + 1
        if used + cost > limit:
            break
        kept.append(line)
        used += cost
    if not kept:
        return "", 0, 0
    return header + "\n" + "\n".join(kept) + MERGE_SEPARATOR, used, len(kept)


def _stable_start(turns: Sequence[Turn], costs: list[int], room: int) -> int:
    """Where the history starts: index of the first turn kept (see the module
    docstring). All of it when it fits `room`; else the first turn from which the rest
    fits, moved onto the coarsest grid of turn ids that keeps at least half of that."""
    fitting, start = 0, len(turns)
    while start > 0 and fitting + costs[start - 1] <= room:
        start -= 1
        fitting += costs[start]
    if start == 0:
        return 0
    suffix = [0] * (len(turns) + 1)
    for i in range(len(turns) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + costs[i]
    for step in START_STEPS:
        for i in range(start, len(turns)):
            turn = turns[i]
            if not isinstance(turn, StoredTurn):
                return start  # turns without ids (not from memory): no grid
            if (turn.id - 1) % step == 0:
                if 2 * suffix[i] >= fitting:
                    return i
                break
    return start


def _truncate(counter: TokenCounter, text: str, max_tokens: int) -> str:
    room = max(max_tokens - counter.count_tokens(TRUNCATION_MARKER) - 1, 1)
    return counter.truncate_tokens(text, room) + TRUNCATION_MARKER


def _assemble(
    system: str, turns: Sequence[Turn], message: str
) -> tuple[list[ChatMessage], list[Turn]]:
    """Chat-template-valid messages: system first, then user/assistant alternating,
    starting with a user turn and ending with the current message; and the turns that
    made it in."""
    history: list[ChatMessage] = []
    kept: list[Turn] = []
    for turn in turns:
        if not history and turn.role == "assistant":
            continue  # a reply whose question was trimmed away
        kept.append(turn)
        if history and history[-1]["role"] == turn.role:
            history[-1] = {
                "role": turn.role,
                "content": history[-1]["content"] + MERGE_SEPARATOR + turn.text,
            }
        else:
            history.append({"role": turn.role, "content": turn.text})
    if history and history[-1]["role"] == "user":
        last = history.pop()
        message = last["content"] + MERGE_SEPARATOR + message
    messages = [{"role": "system", "content": system}, *history]
    return [*messages, {"role": "user", "content": message}], kept
