"""Making untrusted text safe to process and store: control characters, lone
surrogates, runaway lengths."""

from __future__ import annotations

import re
from dataclasses import dataclass

# C0 controls but tab and newline, DEL, and C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
MAX_NAME_CHARS = 64


@dataclass(frozen=True, slots=True)
class CleanText:
    text: str
    stripped_controls: bool
    cut_at: int | None  # the character count it was cut to, when it was cut


def clean_input(raw: str, max_chars: int) -> CleanText:
    """Lone surrogates (invalid UTF-8 decoded with surrogateescape) become U+FFFD, line
    ends become \\n, control characters go, and the text is cut to `max_chars`."""
    text = _SURROGATE.sub("\ufffd", raw)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    cleaned = _CONTROL.sub("", text)
    stripped = cleaned != text
    cleaned = cleaned.strip()
    cut_at = None
    if len(cleaned) > max_chars:
        cleaned = cleaned[:max_chars]
        cut_at = max_chars
    return CleanText(cleaned, stripped, cut_at)


def clean_name(raw: str, fallback: str = "friend") -> str:
    """A display name fit for a prompt: one line, no controls, not too long."""
    name = " ".join(clean_input(raw, MAX_NAME_CHARS * 4).text.split())[:MAX_NAME_CHARS]
    return name or fallback


def decode_bytes(data: bytes) -> str:
    """Bytes from outside (a pipe, a file) as text; invalid UTF-8 becomes U+FFFD."""
    return data.decode("utf-8", "replace")


def strip_controls(text: str) -> str:
    """Text fit for a terminal or a chat: no control characters but tab and newline."""
    return _CONTROL.sub("", _SURROGATE.sub("\ufffd", text.replace("\r", "")))
