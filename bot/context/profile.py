"""How profile facts and taste items read in the profile slot of a prompt (and in
/memory and /taste, which show the user the same lines)."""

from __future__ import annotations

from collections.abc import Sequence

from memory.records import Fact, TasteItem


def profile_slot(facts: Sequence[Fact], taste: Sequence[TasteItem]) -> str:
    """The profile slot of a context window: the facts, then the taste profile."""
    lines = render([(f.label, f.value) for f in facts])
    liked = render_taste(taste)
    return "\n".join(x for x in (lines, liked) if x)


def render(facts: list[tuple[str, str]]) -> str:
    """The profile slot: one line per fact, e.g. "- favourite film: Heat"; the facts of
    one label (several seen titles) share a line."""
    grouped: dict[str, list[str]] = {}
    for label, value in facts:
        grouped.setdefault(label, []).append(value)
    return "\n".join(f"- {label}: {', '.join(values)}" for label, values in grouped.items())


TASTE_LABELS = {"like": "likes", "dislike": "dislikes", "seen": "has seen"}
TASTE_SHOWN = 12  # per line, newest first: the profile slot is small


def render_taste(items: Sequence[TasteItem]) -> str:
    """The taste profile in the profile slot: "- likes: horror (genre), Dark (title)"."""
    lines = []
    for polarity, label in TASTE_LABELS.items():
        chosen = sorted((i for i in items if i.polarity == polarity), key=lambda i: -i.time)
        if chosen:
            shown = ", ".join(f"{i.value} ({i.kind})" for i in chosen[:TASTE_SHOWN])
            more = len(chosen) - TASTE_SHOWN
            lines.append(f"- {label}: {shown}" + (f", and {more} more" if more > 0 else ""))
    return "\n".join(lines)
