"""Splitting replies for Discord: the limit, no empty messages, valid code fences."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.discord.chunks import FENCE, MESSAGE_LIMIT, split_message, units
from bot.moderation.rules import defuse_mentions

pieces = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["```", "```python\n", "\n```\n", "\n", " ", "😀" * 50, "x" * 2100]),
    st.text(alphabet="ab \n", min_size=500, max_size=3000),
)
texts = st.lists(pieces, max_size=25).map("".join)


def essence(text: str) -> str:
    """The text without white space and fence markers (with their language tags, which
    a reopened block repeats)."""
    return re.sub(r"\s", "", re.sub(r"```(?:[A-Za-z0-9_+#.-]{1,20}(?=\n|$))?", "", text))


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_chunks_fit_are_never_empty_and_keep_every_character(text: str) -> None:
    chunks = split_message(text)
    assert all(units(c) <= MESSAGE_LIMIT for c in chunks)
    assert all(c.strip() for c in chunks)
    assert "".join(essence(c) for c in chunks) == essence(text)
    if text.count(FENCE) % 2 == 0:
        # A reply with balanced code blocks gives balanced messages.
        assert all(c.count(FENCE) % 2 == 0 for c in chunks)


def test_a_code_block_cut_at_the_boundary_is_closed_and_reopened() -> None:
    code = "\n".join(f"print({i})  # line {i}" for i in range(200))
    chunks = split_message(f"Here you go:\n```python\n{code}\n```\nDone.")
    assert len(chunks) >= 3
    assert chunks[0].endswith("\n```") and chunks[1].startswith("```python\n")
    assert all(c.count(FENCE) % 2 == 0 for c in chunks)


def test_short_text_is_one_message_and_blank_text_none() -> None:
    assert split_message("Hello there") == ["Hello there"]
    assert split_message("  \n ") == []


def test_lines_are_preferred_cut_points() -> None:
    text = ("word " * 30 + "\n") * 30
    chunks = split_message(text)
    assert all(c.endswith("word") for c in chunks[:-1])


def test_mentions_are_defused_but_readable() -> None:
    out = defuse_mentions("@everyone look <@123> <@!456> <@&789> @here mail@example.com")
    assert "@everyone" not in out and "@here" not in out
    assert not re.search(r"<@[!&]?\d+>", out)
    assert (
        out.replace("\u200b", "") == "@everyone look <@123> <@!456> <@&789> @here mail@example.com"
    )
