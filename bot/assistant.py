"""The one reply pipeline, shared by every front end.

`Assistant.reply` reads top to bottom: clean the input, moderate and rate-limit it,
load memory, ground the message in the catalog (what it names, or what "it" was),
build the context window with those facts, then answer: a factual question from the
catalog, a request for titles from the recommender, anything else from the model with
every sentence checked against the catalog as it streams to the sink; last, store both
turns in one atomic write and learn the taste the message states (`Media.learn_taste`).
A front end only supplies a `ReplySink` that shows what the pipeline sends it.
`Assistant.message_edited` is the same last step for a message its author edited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot import BOT_NAME
from bot.commands import Caller, Commands, Refused, messages
from bot.context.build import ContextWindow, context_budget
from bot.context.window import WindowPolicy, assemble_window, load_snapshot
from bot.generation.base import GenerationError, GenerationParams, Generator, Owner
from bot.grounding.check import ReplyCheck
from bot.grounding.service import Grounded, Grounding, seeded_request, title_facts
from bot.media.recommend import wants_recommendation
from bot.metrics import Metrics
from bot.moderation.moderator import OUTPUT_WITHHELD, ModerationEvent, Moderator, Where, excerpt
from bot.moderation.policy import GuildPolicy
from bot.moderation.ratelimit import Decision, RateLimiter
from bot.moderation.rules import Rules
from bot.settings import Settings
from bot.textclean import clean_input, clean_name
from bot.upkeep import Upkeep
from memory.errors import MemoryUnavailable
from memory.keys import Scope
from memory.records import Turn
from memory.store import MemorySnapshot, MemoryStore
from prompts import Persona, load_persona, load_rules

if TYPE_CHECKING:
    from bot.media.service import Media

log = logging.getLogger(__name__)

EMPTY_HINT = "Say something and I'll answer: ask about a film, a show, a song, a game or a book."
EMPTY_REPLY_FALLBACK = "Sorry, I lost my train of thought there. Could you say that another way?"
MEMORY_READ_FAILED = (
    "I can't reach my memory right now, so I'm answering without our earlier conversation."
)
MEMORY_WRITE_FAILED = "I couldn't save this exchange to memory: I won't remember it later."
TIMED_OUT = "Sorry, that reply took too long and was stopped. Please try again."
CONTROLS_STRIPPED = "I removed control characters from your message."


def cut_notice(kept: int) -> str:
    return f"Your message was too long, so I only read the first {kept:,} characters of it."


def slow_down_notice(decision: Decision) -> str:
    wait = max(1, math.ceil(decision.retry_after))
    if decision.who == "server":
        return f"This server is asking me a lot right now: please try again in {wait} s."
    return f"You're sending messages faster than I can answer: try again in {wait} s."


def truncated_notice() -> str:
    return "Your message was too long for my context window, so I read only its beginning."


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    """One incoming message, whatever front end it came from."""

    scope: Scope
    user_id: str
    user_name: str
    text: str
    message_id: str
    persona: str | None = None
    rate_limited: bool = True  # the terminal, one local user, is not
    channel_id: str | None = None
    # A slash command must be answered; a chat message refused "quietly" is not.
    always_answer: bool = False

    @property
    def where(self) -> Where:
        return Where(self.scope.guild_id, self.channel_id, self.user_id, self.user_name)

    @property
    def caller(self) -> Caller:
        """The sender as the command layer sees them (chat's recommendations)."""
        return Caller(
            self.scope, self.user_id, self.user_name, self.channel_id, floods=self.rate_limited
        )


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    text: str
    stored: bool
    generated: bool
    window: ContextWindow | None = None
    # How the message was answered: catalog, recommendation, model; or why not: empty,
    # refused, limited, busy, failed.
    kind: str = ""


class ReplySink(Protocol):
    """Where a reply goes. The pipeline calls these in order: `context` once when the
    window is built, `notice` for anything the user should know, `piece` for each
    piece of streamed text, and `finish` once with the whole text; `finish` returns
    the id of the message that showed the reply, if the front end has one. When
    moderation withholds a reply mid-stream, `retract` replaces whatever was shown of
    it with a short line, instead of `finish`."""

    async def context(self, window: ContextWindow) -> None: ...

    async def notice(self, text: str) -> None: ...

    async def piece(self, text: str) -> None: ...

    async def finish(self, text: str) -> str | None: ...

    async def retract(self, text: str) -> None: ...

    def position(self, place: int) -> None:
        """The request's place in the model's queue (1 is next), 0 once it starts."""


class _TimedSink:
    """A sink that notes when the reply began and when its first piece was shown."""

    def __init__(self, sink: ReplySink) -> None:
        self.sink = sink
        self.began = time.perf_counter()
        self.first_piece: float | None = None

    async def context(self, window: ContextWindow) -> None:
        await self.sink.context(window)

    async def notice(self, text: str) -> None:
        await self.sink.notice(text)

    async def piece(self, text: str) -> None:
        if self.first_piece is None:
            self.first_piece = time.perf_counter()
        await self.sink.piece(text)

    async def finish(self, text: str) -> str | None:
        if self.first_piece is None:  # a reply shown whole at the end
            self.first_piece = time.perf_counter()
        return await self.sink.finish(text)

    async def retract(self, text: str) -> None:
        await self.sink.retract(text)

    def position(self, place: int) -> None:
        self.sink.position(place)


class Assistant:
    """Holds the services one reply needs; built once in `main()`."""

    def __init__(
        self,
        *,
        settings: Settings,
        memory: MemoryStore,
        generator: Generator,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiter | None = None,
        moderator: Moderator | None = None,
        media: Media | None = None,
        grounding: Grounding | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.media = media
        if grounding is None and media is not None:
            grounding = Grounding(media, enabled=settings.grounding.enabled)
        self.grounding = grounding
        self.memory = memory
        self.generator = generator
        self.limiter = limiter
        self.moderator = moderator or Moderator(None, None)
        # The commands of both front ends; chat's recommendations are one of them.
        self.commands = Commands(memory, media, self.moderator)
        self._clock = clock
        self._rules = load_rules()
        self._personas: dict[str, Persona] = {}
        self.persona(settings.persona)  # a broken default persona fails at start, not later
        gen = settings.generation
        self.params = GenerationParams.from_settings(gen)
        self.budget = context_budget(
            generator.context_length, gen.max_new_tokens, gen.context_margin, gen.max_context_tokens
        )
        mem = settings.memory
        self.policy = WindowPolicy(
            budget=self.budget,
            profile_share=mem.profile_share,
            summary_share=mem.summary_share,
            recall_share=mem.recall_share,
            recall_threshold=mem.recall_threshold,
            recall_half_life_days=mem.recall_half_life_days,
            recall_candidates=mem.recall_candidates,
            recall_limit=mem.recall_limit,
            facts_share=settings.grounding.facts_share if settings.grounding.enabled else 0.0,
        )
        self.upkeep = Upkeep(
            memory,
            generator,
            summary_cap=int(self.budget * settings.memory.summary_share),
            mode=settings.memory.summary_mode,
            generator=generator,
        )

    def persona(self, name: str) -> Persona:
        if name not in self._personas:
            self._personas[name] = load_persona(name)
        return self._personas[name]

    def system_prompt(self, persona: str | None, user_name: str) -> str:
        chosen = self.persona(persona or self.settings.persona)
        return chosen.render(user_name=clean_name(user_name), bot_name=BOT_NAME, rules=self._rules)

    async def _within_limits(self, request: ReplyRequest, sink: ReplySink) -> bool:
        if not request.rate_limited or self.limiter is None:
            return True
        try:
            decision = await self.limiter.take(request.user_id, request.scope.guild_id)
        except MemoryUnavailable:
            return True  # without Redis no limit can be kept; answering beats refusing
        if not decision.allowed:
            if self.metrics is not None:
                self.metrics.ratelimit_refusals.labels(decision.who).inc()
            await sink.notice(slow_down_notice(decision))
        return decision.allowed

    async def reply(self, request: ReplyRequest, sink: ReplySink) -> ReplyOutcome:
        """Answer one message: see the module docstring for the order of steps."""
        if self.metrics is None:
            return await self._reply(request, sink)
        timed = _TimedSink(sink)
        outcome = await self._reply(request, timed)
        self._observe(outcome, timed)
        return outcome

    async def _reply(self, request: ReplyRequest, sink: ReplySink) -> ReplyOutcome:
        mem = self.settings.memory
        clean = clean_input(request.text, mem.max_message_chars)
        if not clean.text:
            await sink.notice(EMPTY_HINT)
            return ReplyOutcome(text="", stored=False, generated=False, kind="empty")
        where = request.where
        mod_policy = await self.moderator.policy(where)
        check = await self.moderator.check_input(
            where, clean.text, mod_policy, floods=request.rate_limited
        )
        if not check.allowed:
            # Refused messages are never stored and never reach the model.
            if not check.quiet or request.always_answer:
                await sink.notice(check.reason)
            return ReplyOutcome(text="", stored=False, generated=False, kind="refused")
        if not await self._within_limits(request, sink):
            return ReplyOutcome(text="", stored=False, generated=False, kind="limited")
        if clean.cut_at is not None:
            await sink.notice(cut_notice(clean.cut_at))
        if clean.stripped_controls:
            await sink.notice(CONTROLS_STRIPPED)

        system = self.system_prompt(request.persona, request.user_name)
        window, snapshot, grounded, remember = await self._window(request, clean.text, system, sink)
        await sink.context(window)
        if window.message_truncated:
            await sink.notice(truncated_notice())
        asked_at = self._clock()

        answer = self.grounding.answer(grounded) if self.grounding else None
        if answer is not None:
            # A factual question: the catalog answers, no model and no slot needed.
            kind = "catalog"
            if self.metrics is not None:
                self.metrics.grounding.labels("answered").inc()
            streamed = await self._say(answer, mod_policy, sink)
        else:
            async with self.moderator.slot(where, request.message_id) as refusal:
                if refusal:
                    await sink.notice(refusal)
                    return ReplyOutcome(text="", stored=False, generated=False, window=window,
                                        kind="busy")  # fmt: skip
                if self._wants_titles(clean.text, grounded):
                    kind = "recommendation"
                    streamed = await self._recommend(
                        request, clean.text, snapshot, mod_policy, sink, grounded=grounded
                    )
                else:
                    kind = "model"
                    streamed = await self._stream(
                        request, window, mod_policy, system, sink, grounded=grounded
                    )
        if streamed is None:
            return ReplyOutcome(text="", stored=False, generated=False, window=window,
                                kind="failed")  # fmt: skip
        text = streamed or self._fallback(grounded)
        reply_id = await sink.finish(text)
        if not remember:
            await sink.notice(MEMORY_WRITE_FAILED)
            return ReplyOutcome(text=text, stored=False, generated=True, window=window, kind=kind)

        stored = await self._remember(
            request, window=window, snapshot=snapshot, asked_at=asked_at, text=text,
            reply_id=reply_id,
        )  # fmt: skip
        if not stored:
            await sink.notice(MEMORY_WRITE_FAILED)
        return ReplyOutcome(text=text, stored=stored, generated=True, window=window, kind=kind)

    def _observe(self, outcome: ReplyOutcome, timed: _TimedSink) -> None:
        """A reply's figures for the metrics."""
        metrics = self.metrics
        assert metrics is not None
        metrics.replies.labels(outcome.kind or "unknown").inc()
        if timed.first_piece is not None:
            metrics.time_to_first_token.observe(timed.first_piece - timed.began)
        if outcome.generated:
            metrics.e2e_latency.observe(time.perf_counter() - timed.began)
        window = outcome.window
        if window is not None:
            for slot, tokens in window.slots.items():
                metrics.window_tokens.labels(slot).observe(tokens)
            if outcome.kind == "model":
                metrics.prompt_tokens.inc(window.tokens)
                metrics.generation_tokens.inc(self.generator.count_tokens(outcome.text))

    def _memory_op(self, op: str) -> contextlib.AbstractContextManager[None]:
        return self.metrics.memory_op(op) if self.metrics else contextlib.nullcontext()

    def _owner(self, request: ReplyRequest, sink: ReplySink) -> Owner:
        """Whose request it is, telling the sink its place in line; the metrics hear how
        long it waited for the model the first time."""
        metrics = self.metrics
        if metrics is None:
            return Owner(request.user_id, request.scope.guild_id, sink.position)
        submitted = time.perf_counter()
        started = False

        def position(place: int) -> None:
            nonlocal started
            if place == 0 and not started:
                started = True
                metrics.queue_time.observe(time.perf_counter() - submitted)
            sink.position(place)

        return Owner(request.user_id, request.scope.guild_id, position)

    async def _window(
        self, request: ReplyRequest, text: str, system: str, sink: ReplySink
    ) -> tuple[ContextWindow, MemorySnapshot, Grounded, bool]:
        """Memory, grounding and the window built from both; and whether the reply can
        be remembered (not when memory could not be read)."""
        try:
            with self._memory_op("read"):
                snapshot = await load_snapshot(
                    self.memory, self.generator, self.policy, scope=request.scope,
                    user_id=request.user_id, system=system, message=text,
                )  # fmt: skip
            grounded = await self._ground(text, snapshot)
            with self._memory_op("recall"):
                window, snapshot = await assemble_window(
                    self.memory, self.generator, self.policy, scope=request.scope,
                    user_id=request.user_id, system=system, message=text,
                    now=self._clock(), snapshot=snapshot, facts=grounded.facts,
                )  # fmt: skip
        except MemoryUnavailable as exc:
            log.warning("memory load failed: %s", exc)
            await sink.notice(MEMORY_READ_FAILED)
            snapshot = MemorySnapshot([])
            grounded = await self._ground(text, snapshot)
            window = self.policy.build(self.generator, system, text, snapshot, facts=grounded.facts)
            return window, snapshot, grounded, False
        return window, snapshot, grounded, True

    async def _ground(self, text: str, snapshot: MemorySnapshot) -> Grounded:
        """What the message is about, as the catalog knows it (nothing when grounding is
        off or there is no catalog)."""
        if self.grounding is None:
            return Grounded(None)
        return await self.grounding.read(text, snapshot.turns)

    def _wants_titles(self, text: str, grounded: Grounded) -> bool:
        """A request for recommendations: asked outright, or "something like X" with X
        a title the message (or the conversation) names."""
        if self.media is None:
            return False
        if wants_recommendation(text):
            return True
        return bool(grounded.titles) and seeded_request(text)

    def _fallback(self, grounded: Grounded) -> str:
        """What to say when nothing of the model's reply could be shown: the facts of
        what the message was about, or a plain apology."""
        if grounded.titles:
            facts = " ".join(title_facts(t).removeprefix("- ") for t in grounded.titles[:2])
            return f"Here's what my catalog says: {facts}"
        return EMPTY_REPLY_FALLBACK

    async def _say(self, text: str, mod_policy: GuildPolicy, sink: ReplySink) -> str | None:
        """A reply built from the catalog, checked like any other before it is shown."""
        verdict = await self.moderator.review(mod_policy, text)
        if not verdict.allowed:
            await sink.notice(verdict.reason or OUTPUT_WITHHELD)
            return None
        reply = Rules.clean_output(text)
        await sink.piece(reply)
        return reply

    async def _recommend(
        self,
        request: ReplyRequest,
        text: str,
        snapshot: MemorySnapshot,
        mod_policy: GuildPolicy,
        sink: ReplySink,
        *,
        grounded: Grounded,
    ) -> str | None:
        """A recommendation asked in chat, through the /recommend command: titles from
        the catalog, checked sentences; titles the message names are the seeds, never
        among the picks. The message was screened already, under `mod_policy`."""
        try:
            async with asyncio.timeout(self.settings.generation.timeout):
                result = await self.commands.catalog.recommend(
                    request.caller, text, taste=snapshot.taste, seeds=grounded.titles,
                    exclude=grounded.excluded,
                    on_position=self._owner(request, sink).on_position,
                    screened_under=mod_policy,
                )  # fmt: skip
        except TimeoutError:
            await sink.notice(TIMED_OUT)
            return None
        if isinstance(result, Refused):
            # Not reached today (chat asks only with a catalog, has screened the message
            # and passes the profile it loaded), but a refusal is a notice, never a reply.
            await sink.notice(result.text)
            return None
        picks = result.picks
        reply = Rules.clean_output(messages.picks_text(picks) if picks else messages.NOTHING_FOUND)
        await sink.piece(reply)
        return reply

    async def _stream(
        self,
        request: ReplyRequest,
        window: ContextWindow,
        mod_policy: GuildPolicy,
        system: str,
        sink: ReplySink,
        *,
        grounded: Grounded,
    ) -> str | None:
        """Generate, showing only text the output guard has cleared and the catalog
        check has passed (or repaired); the whole reply as shown, made safe to post, or
        None when it failed or was withheld."""
        guard = self.moderator.guard(mod_policy, system)
        check = self.grounding.checker(grounded, BOT_NAME) if self.grounding else None
        try:
            async with asyncio.timeout(self.settings.generation.timeout):
                owner = self._owner(request, sink)
                stream = self.generator.stream(window.messages, self.params, owner=owner)
                try:
                    async for piece in stream:
                        cleared = await guard.feed(piece)
                        shown = self._checked(check, cleared)
                        if shown:
                            await sink.piece(Rules.clean_output(shown))
                        if not guard.verdict.allowed:
                            break
                finally:
                    # Closing the stream now (not when it is collected) stops generation.
                    close = getattr(stream, "aclose", None)
                    if close is not None:
                        await close()
                if guard.verdict.allowed:
                    rest = self._checked(check, await guard.finish(), final=True)
                    if rest:
                        await sink.piece(Rules.clean_output(rest))
        except GenerationError as exc:
            await sink.notice(str(exc))
            return None
        except TimeoutError:
            await sink.notice(TIMED_OUT)
            return None
        if not guard.verdict.allowed:
            await sink.retract(guard.verdict.reason or OUTPUT_WITHHELD)
            await self.moderator.emit(
                ModerationEvent(
                    where=request.where,
                    rule=guard.verdict.rule,
                    action="reply-withheld",
                    excerpt=excerpt(guard.text),
                    score=guard.score,
                    log_channel=mod_policy.log_channel if mod_policy.action != "refuse" else None,
                )
            )
            return None
        if check is None:
            return Rules.clean_output(guard.text).strip()
        if self.grounding is not None:
            self.grounding.stats.repaired += len(check.repaired)
            self.grounding.stats.dropped += len(check.dropped)
        if self.metrics is not None:
            self.metrics.grounding.labels("repaired").inc(len(check.repaired))
            self.metrics.grounding.labels("dropped").inc(len(check.dropped))
        for before, reason in check.dropped:
            log.info("catalog check dropped a sentence (%s): %s", reason, excerpt(before))
        return Rules.clean_output(check.shown).strip()

    def _checked(self, check: ReplyCheck | None, text: str, *, final: bool = False) -> str:
        """`text` cleared by moderation, through the catalog check when there is one."""
        if check is None:
            return text
        started = time.perf_counter()
        shown = check.feed(text) if text else ""
        if final:
            shown += check.finish()
        if self.grounding is not None:
            self.grounding.stats.check_seconds += time.perf_counter() - started
        return shown

    async def _remember(
        self,
        request: ReplyRequest,
        *,
        window: ContextWindow,
        snapshot: MemorySnapshot,
        asked_at: float,
        text: str,
        reply_id: str | None,
    ) -> bool:
        """Store both turns in one atomic write, learn the taste the message states,
        then schedule summary upkeep for the turns older than this window."""
        said = window.message  # what is stored of the message is what the model read
        user_turn = Turn(
            role="user",
            text=said,
            time=asked_at,
            message_id=request.message_id,
            tokens=self.generator.count_tokens(said),
        )
        bot_turn = Turn(
            role="assistant",
            text=text,
            time=self._clock(),
            message_id=reply_id,
            tokens=self.generator.count_tokens(text),
        )
        try:
            with self._memory_op("write"):
                stored = await self.memory.append(
                    request.scope, request.user_id, user_turn, bot_turn
                )
        except MemoryUnavailable as exc:
            log.warning("memory append failed: %s", exc)
            return False
        if stored.stored:  # a retried message learns nothing twice
            try:
                with self._memory_op("taste"):
                    await self._learn_taste(request.scope, request.user_id, user_turn)
            except MemoryUnavailable as exc:  # the exchange is kept; its taste is not
                log.warning("taste learning failed: %s", exc)
        self.upkeep.schedule(
            request.scope, request.user_id, window.oldest_turn_id, snapshot.summary
        )
        return True

    async def _learn_taste(self, scope: Scope, user_id: str, turn: Turn) -> None:
        """What a stored user turn says the member likes, dislikes or has seen goes into
        their taste profile (nothing without the catalog). Raises `MemoryUnavailable`."""
        if self.media is not None:
            await self.media.learn_taste(
                scope, user_id, turn.text, message_id=turn.message_id, at=turn.time
            )

    async def message_edited(self, scope: Scope, user_id: str, message_id: str, text: str) -> bool:
        """A member edited a message memory holds: replace its stored text (and the
        facts drawn from it), then learn its taste again. False when no turn was stored
        for it; raises `MemoryUnavailable`."""
        tokens = self.generator.count_tokens(text)
        at = self._clock()
        if not await self.memory.edit_message(scope, user_id, message_id, text, tokens):
            return False
        edited = Turn(role="user", text=text, time=at, message_id=message_id, tokens=tokens)
        await self._learn_taste(scope, user_id, edited)
        return True
