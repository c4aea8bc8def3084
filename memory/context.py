"""The token-budgeted context window: what the model sees for one reply.

Filled in priority order, counting real tokens of the served model's tokenizer:
the system prompt (always), the current message (always; cut with a marker when it
alone would not fit), profile facts and the rolling summary (each capped at a share
of the budget), then recent turns newest first, whole turns only. The result renders
under the model's chat template (roles alternate, same-role runs merged) and never
exceeds the budget: the final count is the exact one of the rendered prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from memory.records import Turn

ChatMessage = dict[str, str]

# The current message always keeps at least this many tokens of its own.
MIN_MESSAGE_TOKENS = 64
PROFILE_HEADER = "\n\nWhat you know about this user (from earlier conversations):\n"
SUMMARY_HEADER = "\n\nSummary of your earlier conversation with this user:\n"
TRUNCATION_MARKER = "\n[… message cut here: it was too long for my context window]"
MERGE_SEPARATOR = "\n\n"
MAX_FIT_ROUNDS = 8


class TokenCounter(Protocol):
    """What the builder needs of a model: its tokenizer and its chat template."""

    def count_tokens(self, text: str) -> int: ...

    def truncate_tokens(self, text: str, max_tokens: int) -> str: ...

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int: ...


class ContextError(ValueError):
    """The fixed parts (system prompt) cannot fit the budget: a configuration error."""


@dataclass(frozen=True, slots=True)
class ContextWindow:
    messages: list[ChatMessage]
    message: str  # the current message as the model reads it (cut, when it was cut)
    tokens: int
    budget: int
    turns_used: int
    message_truncated: bool


def context_budget(context_length: int, max_new_tokens: int, margin: int, cap: int) -> int:
    """Tokens the prompt may use: the model's window less the reply and a margin,
    and at most `cap`."""
    return min(context_length - max_new_tokens - margin, cap)


@dataclass(frozen=True, slots=True)
class _Overheads:
    fixed: int  # system + user message with empty contents, plus the generation prompt
    per_message: int  # what each further message adds besides its content


def _overheads(counter: TokenCounter) -> _Overheads:
    base = [{"role": "system", "content": ""}, {"role": "user", "content": ""}]
    more = [*base, {"role": "assistant", "content": ""}, {"role": "user", "content": ""}]
    fixed = counter.count_prompt_tokens(base)
    per_message = -(-(counter.count_prompt_tokens(more) - fixed) // 2)
    # +1 per message covers a token merging across a content boundary.
    return _Overheads(fixed=fixed, per_message=per_message + 1)


def _capped(counter: TokenCounter, header: str, body: str, cap: int) -> str:
    body = body.strip()
    if not body or cap <= 0:
        return ""
    room = cap - counter.count_tokens(header)
    if room <= 0:
        return ""
    return header + counter.truncate_tokens(body, room)


def build_context(
    counter: TokenCounter,
    *,
    system: str,
    message: str,
    turns: Sequence[Turn],
    budget: int,
    profile: str = "",
    summary: str = "",
    profile_share: float = 0.10,
    summary_share: float = 0.15,
) -> ContextWindow:
    """Fill the window in priority order; see the module docstring."""
    over = _overheads(counter)
    system_tokens = counter.count_tokens(system)
    if over.fixed + system_tokens + MIN_MESSAGE_TOKENS > budget:
        raise ContextError(
            f"the system prompt ({system_tokens} tokens) does not fit a {budget}-token "
            "context window with room for a message"
        )
    full_system = system
    for header, body, share in (
        (PROFILE_HEADER, profile, profile_share),
        (SUMMARY_HEADER, summary, summary_share),
    ):
        section = _capped(counter, header, body, int(budget * share))
        left = budget - over.fixed - counter.count_tokens(full_system + section)
        if section and left >= MIN_MESSAGE_TOKENS:
            full_system += section
    available = budget - over.fixed - counter.count_tokens(full_system)

    truncated = False
    message_tokens = counter.count_tokens(message)
    if message_tokens > available:
        message = _truncate(counter, message, available)
        message_tokens = counter.count_tokens(message)
        truncated = True

    remaining = available - message_tokens
    chosen: list[Turn] = []
    for turn in reversed(turns):
        cost = turn.tokens + over.per_message
        if cost > remaining:
            break
        chosen.append(turn)
        remaining -= cost
    chosen.reverse()

    for _ in range(MAX_FIT_ROUNDS + len(chosen)):
        messages, used = _assemble(full_system, chosen, message)
        tokens = counter.count_prompt_tokens(messages)
        if tokens <= budget:
            return ContextWindow(messages, message, tokens, budget, used, truncated)
        if chosen:
            chosen.pop(0)
            continue
        # Only the current message is left to give: cut it by the overshoot.
        keep = counter.count_tokens(message) - (tokens - budget)
        message = _truncate(counter, message, keep)
        truncated = True
    raise ContextError(f"could not fit the message into a {budget}-token context window")


def _truncate(counter: TokenCounter, text: str, max_tokens: int) -> str:
    room = max(max_tokens - counter.count_tokens(TRUNCATION_MARKER), 1)
    return counter.truncate_tokens(text, room) + TRUNCATION_MARKER


def _assemble(system: str, turns: Sequence[Turn], message: str) -> tuple[list[ChatMessage], int]:
    """Chat-template-valid messages: system first, then user/assistant alternating,
    starting with a user turn and ending with the current message; and how many
    turns made it in."""
    history: list[ChatMessage] = []
    used = 0
    for turn in turns:
        if not history and turn.role == "assistant":
            continue  # a reply whose question was trimmed away
        used += 1
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
    return [*messages, {"role": "user", "content": message}], used
