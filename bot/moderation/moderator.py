"""Moderation as the reply pipeline uses it: one call checks an incoming message
against its server's policy, an `OutputGuard` checks the reply while it streams, and
every action taken is recorded (Redis stream) and announced to listeners (the Discord
front end posts it to the server's mod-log channel).

Order of the input checks, cheapest and most certain first: blocked member, allowed
channel, cool-down, mention flood, invite links and blocklist, message flood, and the
classifier. A hit refuses the message: it is never stored and never reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from bot.generation.queue import too_many
from bot.moderation.classifier import OffensiveClassifier
from bot.moderation.policy import DM, GuildPolicy, Moderation
from bot.moderation.rules import MENTION, Rules, Verdict, defuse_mentions, normalise
from memory.errors import MemoryUnavailable

log = logging.getLogger(__name__)

EXCERPT_CHARS = 200
LEAK_WORDS = 12  # this many words in a row of the system prompt is a leak
RELEASE_CHARS = 240  # text without a sentence end is checked and shown past this
BLOCKED_NOTICE_S = 24 * 3600.0
_SENTENCE_END = re.compile(r"[.!?\n][\"')\]]*(?=\s)|\n")

OFFENSIVE = "That message reads as abusive, so I won't answer it."
FLOOD = "You're sending messages too fast for this channel: please slow down."
REPEATED = "You've sent that same message several times: I answer it once."
BLOCKED = "A moderator of this server has blocked you from using me here."
NOT_HERE = "I'm not enabled in this channel: a moderator chose where I answer."
OUTPUT_WITHHELD = "I started a reply I shouldn't send, so I stopped it. Please ask another way."
SERVER_BUSY = "I'm busy with other replies on this server: please try again in a moment."


def cooldown_notice(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return f"You're on a cool-down from me on this server for {minutes} more {unit}."


@dataclass(frozen=True, slots=True)
class Where:
    """Who sent a message, and where."""

    guild_id: str | None
    channel_id: str | None
    user_id: str
    user_name: str

    @property
    def server(self) -> str:
        return self.guild_id or DM


@dataclass(frozen=True, slots=True)
class ModerationEvent:
    """One action, as logged: who, where, which rule, what was done, an excerpt."""

    where: Where
    rule: str
    action: str  # refused, refused+cooldown, reply-withheld
    excerpt: str
    score: float | None = None
    strikes: int = 0
    cooldown_left: float = 0.0
    log_channel: str | None = None
    at: float = field(default_factory=time.time)

    def fields(self) -> dict[str, str]:
        out = {
            "user": self.where.user_id,
            "name": self.where.user_name[:64],
            "channel": self.where.channel_id or "",
            "rule": self.rule,
            "action": self.action,
            "excerpt": self.excerpt,
            "strikes": str(self.strikes),
            "at": f"{self.at:.3f}",
        }
        if self.score is not None:
            out["score"] = f"{self.score:.3f}"
        return out


Listener = Callable[[ModerationEvent], Awaitable[None]]


def excerpt(text: str) -> str:
    """A short, single-line, ping-free piece of a message for the log."""
    one_line = " ".join(text.split())
    cut = one_line[:EXCERPT_CHARS] + ("…" if len(one_line) > EXCERPT_CHARS else "")
    return defuse_mentions(cut)


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of an input check. `quiet`: refuse without answering (the member
    was told already, or the bot does not speak in that channel)."""

    allowed: bool
    rule: str = ""
    reason: str = ""
    quiet: bool = False


ALLOWED = Check(True)


class Moderator:
    def __init__(
        self,
        moderation: Moderation | None,
        classifier: OffensiveClassifier | None,
        *,
        flood_messages: int = 8,
        flood_seconds: float = 30.0,
        repeat_limit: int = 3,
        guild_in_flight: int = 0,
        member_in_flight: int = 0,
        slot_lease: float = 330.0,
    ) -> None:
        self.moderation = moderation
        self.classifier = classifier
        self.flood_messages = flood_messages
        self.flood_seconds = flood_seconds
        self.repeat_limit = repeat_limit
        self.guild_in_flight = guild_in_flight
        self.member_in_flight = member_in_flight
        self.slot_lease = slot_lease
        self.listeners: list[Listener] = []
        self._rules: dict[tuple[str, ...], Rules] = {}

    @property
    def defaults(self) -> GuildPolicy:
        return self.moderation.defaults if self.moderation else GuildPolicy()

    def rules(self, policy: GuildPolicy) -> Rules:
        key = tuple(policy.blocklist)
        if key not in self._rules:
            if len(self._rules) > 256:
                self._rules.clear()
            self._rules[key] = Rules(extra=key)
        return self._rules[key]

    async def policy(self, where: Where) -> GuildPolicy:
        if self.moderation is None:
            return self.defaults
        try:
            return await self.moderation.policy(where.server)
        except MemoryUnavailable as exc:
            log.warning("moderation policy unavailable, using the defaults: %s", exc)
            return self.defaults

    async def score(self, text: str) -> float:
        if self.classifier is None:
            return 0.0
        return await asyncio.to_thread(self.classifier.score, text)

    # -- input -------------------------------------------------------------------

    async def check_input(
        self, where: Where, text: str, policy: GuildPolicy, *, floods: bool = True
    ) -> Check:
        """`floods`: count this message towards flood limits (not for the terminal's
        one local user, whose piped lines arrive all at once)."""
        standing = await self._standing(where, policy)
        if not standing.allowed:
            return standing
        if len(MENTION.findall(text)) > self.rules(policy).max_mentions:
            return await self._hit(where, policy, text, Verdict(False, "mention-flood",
                                   "That message mentions too many people."))  # fmt: skip
        if policy.level == "off":
            return ALLOWED
        verdict = self.rules(policy).check_input(text)
        if not verdict.allowed:
            return await self._hit(where, policy, text, verdict)
        flood = await self._flood(where, text) if floods else Verdict.ok()
        if not flood.allowed:
            return await self._hit(where, policy, text, flood)
        threshold = policy.threshold
        if threshold is not None and self.classifier is not None:
            score = await self.score(text)
            if score >= threshold:
                verdict = Verdict(False, "offensive", OFFENSIVE)
                return await self._hit(where, policy, text, verdict, score=score)
        return ALLOWED

    async def _standing(self, where: Where, policy: GuildPolicy) -> Check:
        """Blocked, wrong channel, or cooling down: refused before reading the text."""
        if where.user_id in policy.blocked_users:
            told = await self._tell_once(where, BLOCKED_NOTICE_S)
            return Check(False, "blocked-user", BLOCKED, quiet=not told)
        if not policy.allows_channel(where.channel_id):
            return Check(False, "channel-not-allowed", NOT_HERE, quiet=True)
        if self.moderation is None:
            return ALLOWED
        try:
            left = await self.moderation.cooldown_left(where.server, where.user_id)
        except MemoryUnavailable:
            return ALLOWED
        if left > 0:
            told = await self._tell_once(where, left)
            return Check(False, "cooldown", cooldown_notice(left), quiet=not told)
        return ALLOWED

    async def _tell_once(self, where: Where, seconds: float) -> bool:
        if self.moderation is None:
            return True
        try:
            return await self.moderation.notify_once(where.server, where.user_id, seconds)
        except MemoryUnavailable:
            return True

    async def _flood(self, where: Where, text: str) -> Verdict:
        if self.moderation is None:
            return Verdict.ok()
        digest = hashlib.blake2b(normalise(text).encode(), digest_size=8).hexdigest()
        try:
            seen = await self.moderation.flood(
                where.server, where.user_id, digest, self.flood_seconds
            )
        except MemoryUnavailable:
            return Verdict.ok()
        if seen.same >= self.repeat_limit:
            return Verdict(False, "repeated-message", REPEATED)
        if seen.messages > self.flood_messages:
            return Verdict(False, "message-flood", FLOOD)
        return Verdict.ok()

    async def _hit(
        self,
        where: Where,
        policy: GuildPolicy,
        text: str,
        verdict: Verdict,
        *,
        score: float | None = None,
    ) -> Check:
        """A refused message: a strike, a cool-down if the policy says so, the log."""
        strikes, left = 0, 0.0
        if self.moderation is not None:
            try:
                strike = await self.moderation.strike(where.server, where.user_id, policy)
                strikes, left = strike.count, strike.cooldown_left
            except MemoryUnavailable as exc:
                log.warning("could not record a strike: %s", exc)
        action = "refused+cooldown" if left > 0 else "refused"
        await self.emit(
            ModerationEvent(
                where=where,
                rule=verdict.rule,
                action=action,
                excerpt=excerpt(text),
                score=score,
                strikes=strikes,
                cooldown_left=left,
                log_channel=policy.log_channel if policy.action != "refuse" else None,
            )
        )
        reason = verdict.reason
        if left > 0:
            reason = f"{reason} {cooldown_notice(left)}"
            if self.moderation is not None:
                with contextlib.suppress(MemoryUnavailable):
                    await self.moderation.notify_once(where.server, where.user_id, left)
        return Check(False, verdict.rule, reason)

    async def emit(self, event: ModerationEvent) -> None:
        log.info(
            "moderation: %s %s by user %s in %s", event.action, event.rule,
            event.where.user_id, event.where.server,
        )  # fmt: skip
        if self.moderation is not None:
            try:
                await self.moderation.record(event.where.server, event.fields())
            except MemoryUnavailable as exc:
                log.warning("could not write the moderation log: %s", exc)
        for listener in self.listeners:
            try:
                await listener(event)
            except Exception:
                log.exception("a moderation listener failed")

    # -- generation slots --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self, where: Where, request_id: str) -> AsyncIterator[str]:
        """The server's generation slot and the member's in-flight lease for the body,
        each a lease in Redis that every bot process shares (a member's servers may sit
        on different processes); yields "" when both are held, else the sentence that
        says why not. Without Redis there is no cap; in DMs no server's."""
        if self.moderation is None:
            yield ""
            return
        guild = where.guild_id if where.guild_id is not None and self.guild_in_flight > 0 else None
        member = self.member_in_flight > 0
        server_got = member_got = False
        try:
            if guild is not None:
                server_got = await self._take(
                    self.moderation.acquire_slot(
                        guild, request_id, self.guild_in_flight, self.slot_lease
                    )
                )
                if not server_got:
                    yield SERVER_BUSY
                    return
            if member:
                member_got = await self._take(
                    self.moderation.acquire_member(
                        where.user_id, request_id, self.member_in_flight, self.slot_lease
                    )
                )
                if not member_got:
                    yield too_many(self.member_in_flight)
                    return
            yield ""
        finally:
            if member_got:
                await self.moderation.release_member(where.user_id, request_id)
            if server_got and guild is not None:
                await self.moderation.release_slot(guild, request_id)

    @staticmethod
    async def _take(taking: Awaitable[bool]) -> bool:
        try:
            return await taking
        except MemoryUnavailable:
            return True  # without Redis no cap can be kept; answering beats refusing

    # -- output ------------------------------------------------------------------

    async def review(self, policy: GuildPolicy, text: str) -> Verdict:
        """Check a whole generated text (content, a story scene) as a reply is checked."""
        guard = self.guard(policy, "")
        await guard.feed(text)
        await guard.finish()
        return guard.verdict

    def allows(self, policy: GuildPolicy) -> Callable[[str], Awaitable[bool]]:
        """`review` as a yes/no check, for features that fall back to safe text."""

        async def check(text: str) -> bool:
            return (await self.review(policy, text)).allowed

        return check

    def guard(self, policy: GuildPolicy, system_prompt: str) -> OutputGuard:
        return OutputGuard(self, policy, system_prompt)


def _shingles(words: list[str], size: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


class OutputGuard:
    """Checks a reply while it streams. Text is released to the user only once
    checked: up to the last sentence end, or in full past RELEASE_CHARS. Checks: the
    server's blocklist, the classifier per sentence, and a run of LEAK_WORDS words of
    the system prompt."""

    def __init__(self, moderator: Moderator, policy: GuildPolicy, system_prompt: str) -> None:
        self.moderator = moderator
        self.policy = policy
        self._prompt = _shingles(normalise(system_prompt).split(), LEAK_WORDS)
        self._text = ""
        self._released = 0
        self.verdict = Verdict.ok()
        self.score: float | None = None

    @property
    def text(self) -> str:
        return self._text

    async def feed(self, piece: str) -> str:
        """Add a streamed piece; returns the text newly cleared for showing ("" when
        nothing new is cleared, or once the reply is blocked)."""
        self._text += piece
        pending = self._text[self._released :]
        ends = [m.end() for m in _SENTENCE_END.finditer(pending)]
        if ends:
            upto = self._released + ends[-1]
        elif len(pending) >= RELEASE_CHARS:
            upto = len(self._text)
        else:
            return ""
        return await self._release(upto)

    async def finish(self) -> str:
        """The rest of the text, checked; "" when blocked."""
        return await self._release(len(self._text))

    async def _release(self, upto: int) -> str:
        if not self.verdict.allowed:
            return ""
        new = self._text[self._released : upto]
        if not new:
            return ""
        self.verdict = await self._check(new)
        if not self.verdict.allowed:
            return ""
        self._released = upto
        return new

    async def _check(self, new: str) -> Verdict:
        # The leak and the blocklist are checked on everything so far (a run may
        # span a release), the classifier on the new sentences only.
        if self._prompt and _shingles(normalise(self._text).split(), LEAK_WORDS) & self._prompt:
            return Verdict(False, "prompt-leak", OUTPUT_WITHHELD)
        if self.policy.level == "off":
            return Verdict.ok()
        verdict = self.moderator.rules(self.policy).check_output(self._text)
        if not verdict.allowed:
            return Verdict(False, "output-blocklist", OUTPUT_WITHHELD)
        threshold = self.policy.threshold
        if threshold is not None and self.moderator.classifier is not None:
            score = await self.moderator.score(new)
            if score >= threshold:
                self.score = score
                return Verdict(False, "output-offensive", OUTPUT_WITHHELD)
        return Verdict.ok()
