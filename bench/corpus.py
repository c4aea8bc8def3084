"""Reads the bad-input corpus under tests/data/bad_inputs (format: its README.md): the
tests run every case; the soak benchmark mixes them into its members' messages."""

from __future__ import annotations

import re
from pathlib import Path

BAD_INPUTS = Path(__file__).resolve().parents[1] / "tests" / "data" / "bad_inputs"
_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))")
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\"}
_REPEAT = re.compile(r"^repeat (\d+): (.*)$", re.DOTALL)


def decode(line: str) -> str:
    def repl(m: re.Match[str]) -> str:
        code = m.group(1) or m.group(2) or m.group(3)
        if code:
            return chr(int(code, 16))
        return _SIMPLE.get(m.group(4), m.group(0))

    repeat = _REPEAT.match(line)
    if repeat:
        return _ESCAPE.sub(repl, repeat.group(2)) * int(repeat.group(1))
    return _ESCAPE.sub(repl, line)


def cases(name: str) -> list[str]:
    text = (BAD_INPUTS / name).read_text(encoding="utf-8")
    return [decode(line) for line in text.splitlines() if line and not line.startswith("#")]


def all_cases() -> list[tuple[str, str]]:
    """(id, text) for every case of every file (none where the repository's tests are
    not present, as in an installed package)."""
    out = []
    for path in sorted(BAD_INPUTS.glob("*.txt")):
        for i, text in enumerate(cases(path.name)):
            out.append((f"{path.stem}-{i}", text))
    return out
