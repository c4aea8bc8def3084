"""Rule checks on what users send and what the model writes: invite links, mention
floods, known spam, and a blocklist matched after normalisation, so that full-width
letters, zero-width characters, accents piled on letters and leetspeak ("fr3e n!tro")
do not slip past."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

MAX_MENTIONS = 5
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t",
                      "@": "a", "$": "s", "!": "i", "|": "i", "+": "t"})  # fmt: skip
INVITE = re.compile(
    r"(?:discord(?:app)?\s*\.\s*(?:gg|com\s*/\s*invite|io|me|li)|dsc\s*\.\s*gg)\s*/\s*[\w-]+",
    re.IGNORECASE,
)
MENTION = re.compile(r"<@[!&]?\d+>|@(?:everyone|here)\b")
# Mentions stay readable but can never resolve: a zero-width space after the @.
_PING = re.compile(r"@(everyone|here)|<@([!&]?\d+)>")
ZWSP = "\u200b"
# Scam phrases seen in Discord spam, matched on normalised text.
DEFAULT_BLOCKLIST = (
    "free nitro",
    "nitro for free",
    "steam gift",
    "discord gift",
    "claim your prize",
    "claim your nitro",
    "airdrop",
    "double your crypto",
)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str = ""
    reason: str = ""  # one sentence for the user

    @classmethod
    def ok(cls) -> Verdict:
        return cls(True)


def normalise(text: str) -> str:
    """The text as the rules read it: compatibility forms folded (full-width letters
    become ASCII), format characters (zero-width spaces, joiners, bidi controls) and
    combining marks removed, case folded, leetspeak read as letters, spaces collapsed."""
    folded = unicodedata.normalize("NFKD", text)
    kept = "".join(ch for ch in folded if unicodedata.category(ch) not in ("Mn", "Me", "Cf"))
    plain = unicodedata.normalize("NFKC", kept).casefold().translate(LEET)
    return " ".join(re.sub(r"[^\w\s./]", " ", plain).split())


def _word_pattern(entry: str) -> re.Pattern[str]:
    words = normalise(entry).split()
    # Letters may be split by spaces or dots ("f r e e  n i t r o").
    spaced = r"\W*".join(r"\W*".join(re.escape(c) for c in w) for w in words)
    return re.compile(rf"(?<!\w){spaced}(?!\w)")


class Rules:
    """The rule layer of moderation; `extra` adds words, phrases or `re:` regexes."""

    def __init__(self, extra: Iterable[str] = (), max_mentions: int = MAX_MENTIONS) -> None:
        self.max_mentions = max_mentions
        entries = [*DEFAULT_BLOCKLIST, *extra]
        self._words = [_word_pattern(e) for e in entries if not e.startswith("re:")]
        self._regexes = [re.compile(e[3:], re.IGNORECASE) for e in entries if e.startswith("re:")]

    def check_input(self, text: str) -> Verdict:
        mentions = len(MENTION.findall(text))
        if mentions > self.max_mentions:
            return Verdict(False, "mention-flood", "That message mentions too many people.")
        if INVITE.search(text) or INVITE.search(normalise(text)):
            return Verdict(False, "invite-link", "I don't pass on server invite links.")
        if self._blocked(text):
            return Verdict(False, "blocklist", "That message matches this server's blocklist.")
        return Verdict.ok()

    def check_output(self, text: str) -> Verdict:
        """The blocklist on what the model wrote (invites and mentions are not refused
        there: `clean_output` makes them harmless)."""
        if self._blocked(text):
            return Verdict(False, "blocklist", "The reply matched this server's blocklist.")
        return Verdict.ok()

    def _blocked(self, text: str) -> bool:
        # Words are matched on the normalised text; a regex also on the text itself
        # (leetspeak reading would turn the digits it may look for into letters).
        plain = normalise(text)
        raw = unicodedata.normalize("NFKC", text).casefold()
        return any(p.search(plain) for p in self._words) or any(
            p.search(plain) or p.search(raw) for p in self._regexes
        )

    @staticmethod
    def clean_output(text: str) -> str:
        """Model text made harmless to post and store: invite links removed, mentions
        defused in the text itself (AllowedMentions.none() forbids pings as well)."""
        return defuse_mentions(INVITE.sub("[link removed]", text))


def defuse_mentions(text: str) -> str:
    """`@everyone`, `@here`, `<@id>` and `<@&id>` shown as text, never as pings."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return "@" + ZWSP + m.group(1)
        return "<@" + ZWSP + m.group(2) + ">"

    return _PING.sub(repl, text)
