"""Cutting a reply into Discord messages: at most 2,000 characters each, cut at a line
or word where possible, code blocks closed at the cut and reopened after it."""

from __future__ import annotations

import re

MESSAGE_LIMIT = 2000
FENCE = "```"
CLOSE = "\n```"
_LANG = re.compile(r"[A-Za-z0-9_+#.-]{1,20}(?=\n)")


def units(text: str) -> int:
    """Length as Discord counts it at worst (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def _fence_state(text: str, inside: bool, lang: str) -> tuple[bool, str]:
    """Whether `text` ends inside a code block, given the state it started in."""
    pos = 0
    while True:
        at = text.find(FENCE, pos)
        if at < 0:
            return inside, lang
        pos = at + len(FENCE)
        if inside:
            inside, lang = False, ""
        else:
            m = _LANG.match(text, pos)
            inside, lang = True, (m.group() if m else "")


def _cut_point(text: str, room: int) -> int:
    """Where to cut `text` so its head takes at most `room` units: after a newline,
    else after a space, else anywhere (never inside a fence marker)."""
    end, used = 0, 0
    for ch in text:
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > room:
            break
        end += 1
    if end >= len(text):
        return end
    for sep in ("\n", " "):
        at = text.rfind(sep, 0, end)
        if at >= end // 2:
            end = at + 1
            break
    # Do not split a ``` marker across two messages.
    back = text.rfind(FENCE, max(0, end - 2), end + 2)
    if 0 <= back < end < back + len(FENCE):
        end = back
    return max(end, 1)


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Chunks of at most `limit` units, none empty; see the module docstring."""
    chunks: list[str] = []
    rest = text
    inside, lang = False, ""
    while rest.strip():
        head = f"{FENCE}{lang}\n" if inside else ""
        if units(head) + units(rest) <= limit:
            chunks.append(head + rest)
            break
        room = limit - units(head) - units(CLOSE)
        cut = _cut_point(rest, room)
        body, rest = rest[:cut], rest[cut:]
        inside, lang = _fence_state(body, inside, lang)
        piece = head + body.rstrip()
        if inside:
            piece += CLOSE
        if body.strip():
            chunks.append(piece)
        rest = rest.lstrip("\n") if not inside else rest
    return chunks
