"""How remembered turns read in /memory, in the terminal and on Discord alike."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.commands import messages
from bot.commands.memory import Remembered
from bot.context.profile import render
from bot.textclean import strip_controls

SHOWN_TURNS = 10
SHOWN_CHARS = 150


def turn_lines(
    records: list[dict[str, object]], *, user: str, bot: str, time_format: str, template: str
) -> list[str]:
    """The last SHOWN_TURNS records, one line each: `template` receives `when`, `who`
    and `text` (one line, control characters removed, cut at SHOWN_CHARS)."""
    lines = []
    for record in records[-SHOWN_TURNS:]:
        if "unreadable" in record:
            lines.append(template.format(when="?", who="?", text="(an unreadable record)"))
            continue
        when = datetime.fromtimestamp(float(str(record["time"])), UTC).strftime(time_format)
        who = user if record["role"] == "user" else bot
        text = " ".join(strip_controls(str(record["text"])).split())
        if len(text) > SHOWN_CHARS:
            text = text[: SHOWN_CHARS - 1] + "…"
        lines.append(template.format(when=when, who=who, text=text))
    return lines


def summary_lines(
    remembered: Remembered,
    place: str,
    *,
    user: str,
    bot: str,
    time_format: str,
    template: str,
) -> list[str]:
    """/memory's answer: the facts known here, how many messages are kept and the last
    of them (see `turn_lines`), and how to clear them."""
    records, facts = remembered.records, remembered.facts
    lines = []
    if facts:
        lines += [messages.FACTS_HEADER, render([(f.label, f.value) for f in facts])]
    lines.append(messages.remembered(len(records), min(len(records), SHOWN_TURNS), place))
    lines += turn_lines(records, user=user, bot=bot, time_format=time_format, template=template)
    if records or facts:
        lines.append(messages.MEMORY_HINT)
    return lines
