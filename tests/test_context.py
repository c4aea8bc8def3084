"""The context window, counted with the real embedded model's tokenizer and chat
template: property tests for the budget and the always-present parts."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.context.build import (
    MERGE_SEPARATOR,
    RECALL_HEADER,
    TRUNCATION_MARKER,
    ContextError,
    ContextWindow,
    build_context,
    context_budget,
)
from bot.generation.local import LocalGenerator
from memory.records import StoredTurn, Turn

SYSTEM = "You are mediabot, a friendly assistant for films and TV."

text = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
        st.sampled_from(["<|im_start|>", "<|im_end|>", "\n", " ", "```", "@everyone"]),
    ),
    max_size=12,
).map("".join)
WORDS = ["the", "film", "was", "slow", "but", "its", "ending", "and", "its", "score"]
huge = st.integers(20_000, 120_000).map(lambda n: ("word " * (n // 5 + 1))[:n])


def turns_for(gen: LocalGenerator, items: list[tuple[str, str]]) -> list[Turn]:
    return [
        Turn(role=role, text=t, time=time.time(), tokens=gen.count_tokens(t))  # type: ignore[arg-type]
        for role, t in items
    ]


def stored_turns_for(
    gen: LocalGenerator, items: list[tuple[str, str]], first_id: int = 1
) -> list[Turn]:
    """As memory returns them: with their ids, so the window's start can use its grid."""
    return [
        StoredTurn(role=role, text=t, time=time.time(), tokens=gen.count_tokens(t),  # type: ignore[arg-type]
                   id=first_id + i)
        for i, (role, t) in enumerate(items)
    ]  # fmt: skip


def check_window(gen: LocalGenerator, window: ContextWindow, message: str, budget: int) -> None:
    # The window's count bounds the exact count of the rendered template, closely.
    exact = gen.count_prompt_tokens(window.messages)
    assert exact <= window.tokens <= budget
    joins = sum(m["content"].count(MERGE_SEPARATOR) + 1 for m in window.messages)
    assert window.tokens - exact <= 8 * (window.turns_used + window.recalled) + 2 * joins + 12
    roles = [m["role"] for m in window.messages]
    assert roles[0] == "system" and window.messages[0]["content"].startswith(SYSTEM)
    assert roles[1::2] == ["user"] * len(roles[1::2])
    assert roles[2::2] == ["assistant"] * len(roles[2::2])
    assert roles[-1] == "user"
    assert window.messages[-1]["content"].endswith(window.message)
    assert sum(window.slots.values()) == window.tokens  # every token belongs to a slot
    if window.message_truncated:
        assert window.message.endswith(TRUNCATION_MARKER)
        kept = window.message[: -len(TRUNCATION_MARKER)]
        assert kept and gen.neutralise(message).startswith(kept)
    else:
        assert window.message == message


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    history=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), text), max_size=40),
    message=st.one_of(text.filter(lambda s: s.strip() != ""), huge),
    budget=st.integers(200, 2048),
    profile=text,
    summary=text,
    recalled=st.lists(text.filter(lambda s: s.strip() != ""), max_size=8),
    first_id=st.one_of(st.none(), st.integers(1, 100)),
)
def test_window_never_exceeds_the_budget_and_keeps_system_and_message(
    generator: LocalGenerator,
    history: list[tuple[str, str]],
    message: str,
    budget: int,
    profile: str,
    summary: str,
    recalled: list[str],
    first_id: int | None,
) -> None:
    window = build_context(
        generator,
        system=SYSTEM,
        message=message,
        turns=(
            turns_for(generator, history)
            if first_id is None
            else stored_turns_for(generator, history, first_id)
        ),
        budget=budget,
        profile=profile,
        summary=summary,
        recalled=[
            StoredTurn(role="user", text=t, time=0, tokens=generator.count_tokens(t), id=i + 1)
            for i, t in enumerate(recalled)
        ],
    )
    check_window(generator, window, message, budget)
    assert window.turns_used <= len(history)
    if window.recalled:  # the user's own words, in their message
        assert RECALL_HEADER in window.messages[-1]["content"]
        assert RECALL_HEADER not in window.messages[0]["content"]
    if window.turns_used and history[-1][0] == "assistant":
        # The newest turns are the ones kept.
        assert window.messages[-2]["content"].endswith(history[-1][1])


def test_whole_turns_only_newest_first(generator: LocalGenerator) -> None:
    sentence = "Dune is a science fiction film directed by Denis Villeneuve. "
    history = [("user", f"turn {i}: " + sentence * 8) for i in range(0, 20, 2)]
    items: list[tuple[str, str]] = []
    for i, (role, t) in enumerate(history):
        items += [(role, t), ("assistant", f"reply {i}: " + sentence * 8)]
    turns = turns_for(generator, items)
    per_turn = max(t.tokens for t in turns)
    budget = 400 + per_turn * 3
    window = build_context(generator, system=SYSTEM, message="hi", turns=turns, budget=budget)
    check_window(generator, window, "hi", budget)
    kept = window.messages[1:-1]
    assert 2 <= len(kept) < len(turns)
    # Every kept message is a whole stored turn, and they are the newest ones.
    assert [m["content"] for m in kept] == [t.text for t in turns[-len(kept) :]]


def test_a_huge_message_is_cut_with_a_marker(generator: LocalGenerator) -> None:
    message = "Tell me about this film. " * 4000  # 100 KB
    window = build_context(generator, system=SYSTEM, message=message, turns=[], budget=1024)
    check_window(generator, window, message, 1024)
    assert window.message_truncated
    assert window.tokens > 900  # the message used the room it had


def test_profile_and_summary_are_capped_to_their_share(generator: LocalGenerator) -> None:
    long = "The user loves Korean thrillers and hates musicals. " * 200
    window = build_context(
        generator,
        system=SYSTEM,
        message="hi",
        turns=[],
        budget=2000,
        profile=long,
        summary=long,
        profile_share=0.1,
        summary_share=0.15,
    )
    check_window(generator, window, "hi", 2000)
    system_tokens = generator.count_tokens(window.messages[0]["content"])
    assert system_tokens <= generator.count_tokens(SYSTEM) + 200 + 300 + 2
    assert "hates musicals" in window.messages[0]["content"]


def test_orphan_user_turns_are_merged_and_leading_replies_dropped(
    generator: LocalGenerator,
) -> None:
    items = [("assistant", "an answer whose question was trimmed"), ("user", "first"),
             ("user", "second"), ("assistant", "reply"), ("user", "unanswered")]  # fmt: skip
    window = build_context(
        generator, system=SYSTEM, message="now", turns=turns_for(generator, items), budget=1000
    )
    check_window(generator, window, "now", 1000)
    assert [m["content"] for m in window.messages[1:]] == [
        "first" + MERGE_SEPARATOR + "second",
        "reply",
        "unanswered" + MERGE_SEPARATOR + "now",
    ]


def test_a_system_prompt_too_big_for_the_budget_is_a_configuration_error(
    generator: LocalGenerator,
) -> None:
    with pytest.raises(ContextError, match="system prompt"):
        build_context(generator, system=SYSTEM * 100, message="hi", turns=[], budget=300)


def test_budget_is_the_window_less_reply_and_margin_capped_by_the_setting() -> None:
    assert context_budget(8192, 256, 16, 2048) == 2048
    assert context_budget(2048, 256, 16, 2048) == 2048 - 256 - 16


def test_a_long_conversation_keeps_its_window_start_for_several_messages(
    generator: LocalGenerator,
) -> None:
    """Past the budget, consecutive windows start on the same turn for several messages
    (so the model reads only what is new), whatever is recalled and however long the
    message, and still hold at least half the history that would fit."""
    budget = 1200
    words = WORDS
    items: list[tuple[str, str]] = []
    starts: list[int | None] = []
    previous = None
    for m in range(60):
        items += [("user", f"message {m}: " + " ".join(words[: 4 + m % 9])),
                  ("assistant", f"reply {m}: " + " ".join(words * (1 + m % 4)))]  # fmt: skip
        turns = stored_turns_for(generator, items)
        message = "And what about its sequel?" + " Really." * (m % 5) * 4
        recalled = [
            StoredTurn(role="user", text=f"I said thing {i} long ago.", time=0, tokens=8, id=1 + i)
            for i in range(m % 3)
        ]
        window = build_context(generator, system=SYSTEM, message=message, turns=turns,
                               budget=budget, recalled=recalled)  # fmt: skip
        check_window(generator, window, message, budget)
        # Neither what is recalled nor the message's length moves the start.
        for other in (
            build_context(generator, system=SYSTEM, message="hi", turns=turns, budget=budget),
            build_context(generator, system=SYSTEM, message=message, turns=turns,
                          budget=budget, recalled=recalled[:1]),
        ):  # fmt: skip
            assert other.oldest_turn_id == window.oldest_turn_id
        starts.append(window.oldest_turn_id)
        history = sum(t.tokens for t in turns if window.oldest_turn_id <= t.id)  # type: ignore[attr-defined]
        if previous is not None and previous.oldest_turn_id == window.oldest_turn_id:
            # The same start: the new window extends the last (history, then the reply),
            # so all of it but the current message is read already.
            assert window.messages[: len(previous.messages) - 1] == previous.messages[:-1]
        if window.oldest_turn_id != 1:
            assert history >= budget // 4  # at least half of the room left for history
        previous = window
    moved = [m for m in range(1, len(starts)) if starts[m] != starts[m - 1]]
    assert starts[0] == 1 and moved, "the conversation outgrew the window"
    assert starts == sorted(starts)  # never back
    assert len(moved) <= (len(starts) - moved[0]) // 3  # at most once in three messages


def test_catalog_facts_sit_beside_the_message_within_their_share_and_keep_the_start(
    generator: LocalGenerator,
) -> None:
    """The facts slot: whole lines within its share, in the member's message just
    before the text, and the history starts on the same turn with or without facts
    (the model's cached reading of the conversation stays valid)."""
    budget = 1200
    items = []
    for m in range(40):
        items += [("user", f"message {m}: " + " ".join(WORDS[: 6 + m % 5])),
                  ("assistant", f"reply {m}: " + " ".join(WORDS * 2))]  # fmt: skip
    turns = stored_turns_for(generator, items)
    facts = "Catalog facts:\n" + "\n".join(
        f"- Title {i} (film, 2001); genres: Dramas; directed by Someone {i}." for i in range(40)
    )
    message = "who directed it?"
    with_facts = build_context(generator, system=SYSTEM, message=message, turns=turns,
                               budget=budget, facts=facts, facts_share=0.15)  # fmt: skip
    without = build_context(generator, system=SYSTEM, message=message, turns=turns,
                            budget=budget, facts_share=0.15)  # fmt: skip
    check_window(generator, with_facts, message, budget)
    check_window(generator, without, message, budget)
    last = with_facts.messages[-1]["content"]
    assert last.index("Catalog facts:") < last.index(message)
    assert 0 < with_facts.facts < 40  # capped: whole lines only
    assert with_facts.slots["facts"] <= int(budget * 0.15)
    assert f"Title {with_facts.facts - 1} " in last and f"Title {with_facts.facts} " not in last
    assert "Catalog facts" not in with_facts.messages[0]["content"]
    assert with_facts.oldest_turn_id == without.oldest_turn_id
    assert without.facts == 0 and without.slots["facts"] == 0
