"""Continuous batching: one decoding thread runs every live request together.

Every request's KV cache lives in one slab, a slot per request (bot/generation/kv.py).
A new request takes a free slot, starts from the longest cached prefix it shares with
an earlier prompt, and its prompt is read in chunks on the same forward passes that
decode the running requests' next tokens, so a long prompt never stalls the others
for long. When its prompt is read it joins the decoding rows. Each pass decodes one
token for every decoding row; a row leaves at its end token, its length limit, or when
it is cancelled, freeing its slot at once. Each row keeps its own sampling parameters
and random generator, and repetition penalty, temperature, top-k and top-p are applied
as `generate` applies them (bot/generation/sampling.py), so a greedy request decodes
the same text alone or in a batch (in float32, up to rounding ties; see docs/engine.md).

Prefix reuse: the KV of finished replies (prompt and answer together) is kept in a
small cache, bounded in memory. A new prompt starts from the longest prefix it shares
with one of them, or with a row decoding now (copied from its slot), or with a prompt
still being read (it waits for that part, then copies it); only the rest is read. The
system prompt every member shares, and a conversation's previous turn, are not
computed again. A prompt's KV is not cached on its own while its row decodes: the
slab holds it already, and caching it twice crowded the conversations' entries out of
a cache sized for float32.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bot.generation.base import GenerationParams
from bot.generation.sampling import SeenTokens, choose_next

if TYPE_CHECKING:  # the model module imports torch: only when an engine starts
    import torch

    from bot.generation.llama import LlamaModel

log = logging.getLogger(__name__)


@dataclass(eq=False)
class BatchRequest:
    """One prompt to decode. `on_token` receives each token id as it is chosen, then
    `done(None)` or `done(exception)`; both are called from the decoding thread."""

    prompt: list[int]
    params: GenerationParams
    max_new_tokens: int
    on_token: Callable[[int], None]
    done: Callable[[BaseException | None], None]
    stop: threading.Event = field(default_factory=threading.Event)


MIN_REUSE = 16  # shorter shared prefixes are prefilled again: not worth a copy


@dataclass
class EngineStats:
    """What the engine has done since it started, counted on its thread: read a copy
    (`BatchEngine.snapshot`, `LocalGenerator.engine_stats`). The metrics and the
    generation benchmark read it; differences of two copies cover what ran between."""

    passes: int = 0  # forward passes run
    widest: int = 0  # the most rows decoded in one pass
    decoded: int = 0  # tokens decoded over all passes (decoded / passes: rows per pass)
    read: int = 0  # prompt tokens read (computed, not taken from a cached prefix)
    busy_s: float = 0.0  # seconds spent in forward passes
    prefix_lookups: int = 0  # prompts that looked for a cached prefix
    prefix_hits: int = 0  # of those, prompts that started from one
    prefix_query_tokens: int = 0  # tokens of those prompts
    prefix_hit_tokens: int = 0  # of those, tokens taken from a cached prefix
    slab_slots: int = 0  # the most slots the KV slab has held at a pass (a row's KV each)
    slab_bytes: int = 0  # the bytes the KV slab holds now (after the last pass; 0 idle)

    @property
    def prefix_hit_ratio(self) -> float:
        """The share of the prompts' tokens taken from cached prefixes (0 before any)."""
        return (
            self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0
        )


@dataclass(eq=False)
class _Entry:
    tokens: list[int]
    states: torch.Tensor  # keys and values: (layers, 2, kv_heads, len, head_dim)
    used: int = 0


class PrefixCache:
    """KV of recent token sequences, at most `capacity` tokens in all (LRU)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: list[_Entry] = []
        self._clock = 0

    @property
    def tokens(self) -> int:
        return sum(len(e.tokens) for e in self._entries)

    def longest(self, prompt: list[int]) -> tuple[_Entry | None, int]:
        """The entry sharing the longest prefix with `prompt`, and its length (at most
        len(prompt) - 1: the last prompt token is always run, for its logits)."""
        best, best_len = None, 0
        limit = len(prompt) - 1
        for entry in self._entries:
            n = _common(entry.tokens, prompt, limit)
            if n > best_len:
                best, best_len = entry, n
        if best is None or best_len < MIN_REUSE:
            return None, 0
        self._clock += 1
        best.used = self._clock
        return best, best_len

    def covers(self, tokens: list[int]) -> bool:
        """Whether an entry starts with all of `tokens` already (then marked used)."""
        n = len(tokens)
        for entry in self._entries:
            if len(entry.tokens) >= n and entry.tokens[:n] == tokens:
                self._clock += 1
                entry.used = self._clock
                return True
        return False

    def add(self, tokens: list[int], states: torch.Tensor) -> None:
        if not self.capacity or len(tokens) < MIN_REUSE or len(tokens) > self.capacity:
            return
        # A sequence that only extends a cached one replaces it (a conversation's turn).
        self._entries = [
            e for e in self._entries
            if not (len(e.tokens) <= len(tokens) and tokens[: len(e.tokens)] == e.tokens)
        ]  # fmt: skip
        self._clock += 1
        self._entries.append(_Entry(list(tokens), states, self._clock))
        while self.tokens > self.capacity:
            self._entries.remove(min(self._entries, key=lambda e: e.used))

    def clear(self) -> None:
        self._entries.clear()


def _common(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # the first difference, by bisection on slices (C-speed compares)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(eq=False)
class _Row:
    request: BatchRequest
    tokens: list[int]  # prompt and generated: what the repetition penalty sees
    slot: int  # where its KV lives in the slab
    length: int  # tokens of this row in the KV cache
    next_token: int = -1  # sampled, not yet in the cache
    generated: int = 0
    rng: torch.Generator | None = None
    follow: tuple[_Row, int] | None = None  # a row reading the same start, and how far
    seen: SeenTokens = field(default_factory=SeenTokens)  # for the repetition penalty

    @property
    def params(self) -> GenerationParams:
        return self.request.params


class BatchEngine:
    """Owns the model's decoding thread. `submit` and `call` are thread-safe.

    Slots: the running rows are kept in slots 0…n-1 (a row leaving is replaced by the
    last one), so one attention call covers them without gathering; rows still reading
    their prompt take the lowest free slots after them, and move to slot n when they
    start decoding. So the slab holds no more slots than rows have run at once.
    Each pass reads every running row's next token and up to `chunk` prompt tokens of
    joining rows, in one forward.

    The thread is the only one in the process that computes with torch: it loads the
    model itself (`model` may be a function that returns it), and other work on the
    same weights goes through `call`. OpenMP keeps a team of worker threads for every
    thread that runs parallel work, and once there are more of them than cores it stops
    letting them spin between operations: a decode pass then took nearly twice as long
    (the figures are in the benchmark docs)."""

    def __init__(
        self,
        model: LlamaModel | Callable[[], LlamaModel],
        *,
        eos_ids: list[int],
        context_length: int,
        max_batch: int = 8,
        prefix_tokens: int = 0,
        prefix_bytes: int = 0,
        chunk: int = 128,
    ) -> None:
        """The prefix cache holds `prefix_tokens` tokens, or as many as `prefix_bytes`
        of the model's KV hold (23 KB a token for the embedded model in bf16, 46 KB
        in float32)."""
        import torch

        self._torch = torch
        self._eos = set(eos_ids)
        self.context_length = context_length
        self.max_batch = max_batch
        self.chunk = chunk
        self._pending: deque[BatchRequest] = deque()
        self._jobs: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._rows: list[_Row] = []  # decoding, row i in slot i
        self._filling: list[_Row] = []  # reading their prompt, in the free slots after them
        self.prefixes = PrefixCache(prefix_tokens)
        self._prefix_bytes = prefix_bytes
        self.stats = EngineStats()  # written by the decoding thread only
        loaded: Future[LlamaModel] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(model, loaded), name="batch-decode", daemon=True
        )
        self._thread.start()
        loaded.result()  # waits; re-raises what loading raised

    @property
    def running(self) -> int:
        return len(self._rows) + len(self._filling)

    def snapshot(self) -> EngineStats:
        """A copy of the counts so far (they go on changing on the decoding thread)."""
        return replace(self.stats)

    def submit(self, request: BatchRequest) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch engine is closed")
            self._pending.append(request)
            self._cond.notify()

    def call(self, job: Callable[[], Any]) -> Future[Any]:
        """Run `job` on the decoding thread, between passes."""
        future: Future[Any] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch engine is closed")
            self._jobs.append((job, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # -- the decoding thread -----------------------------------------------------

    def _run(self, model: LlamaModel | Callable[[], LlamaModel], loaded: Future[Any]) -> None:
        try:
            ready = model() if callable(model) else model
            self.model = ready
            self._slab = ready.slab(self.max_batch)
            if self._prefix_bytes:
                self.prefixes.capacity = self._prefix_bytes // ready.config.kv_bytes(ready.dtype)
        except BaseException as exc:
            loaded.set_exception(exc)
            return
        loaded.set_result(ready)
        self._loop()

    def _loop(self) -> None:
        torch = self._torch
        with torch.inference_mode():
            while True:
                with self._cond:
                    while (
                        not self._pending and not self._jobs and not self.running
                        and not self._closed
                    ):  # fmt: skip
                        self._slab.release()  # idle: give the memory back
                        self.stats.slab_bytes = 0
                        self._cond.wait()
                    if self._closed:
                        leftover = [*self._pending, *(r.request for r in self._all())]
                        self._pending.clear()
                        jobs = list(self._jobs)
                        break
                    room = self.max_batch - self.running
                    joining = [
                        self._pending.popleft() for _ in range(min(room, len(self._pending)))
                    ]
                    jobs, self._jobs = list(self._jobs), deque()
                for job, future in jobs:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(job())
                        except BaseException as exc:
                            future.set_exception(exc)
                for request in joining:
                    self._join(request)
                self._drop_stopped()
                if self.running:
                    try:
                        self._pass()
                    except Exception as exc:  # a failed pass fails every row in it
                        log.exception("batched decoding failed")
                        self._fail_all(exc)
        for request in leftover:
            request.done(RuntimeError("the model was shut down"))
        for _, future in jobs:
            future.cancel()

    def _all(self) -> list[_Row]:
        return [*self._rows, *self._filling]

    def _fail_all(self, exc: BaseException) -> None:
        for row in self._all():
            row.request.done(exc)
        self._rows, self._filling = [], []
        self._slab.release()
        self.stats.slab_bytes = 0

    def _join(self, request: BatchRequest) -> None:
        """Give the request a slot and its cached prefix; its prompt is read in passes."""
        if request.stop.is_set():
            request.done(None)
            return
        held = bool(self._slab.layers)
        try:
            taken = {r.slot for r in self._filling}
            slot = next(s for s in range(len(self._rows), self.max_batch) if s not in taken)
            self.stats.prefix_lookups += 1
            self.stats.prefix_query_tokens += len(request.prompt)
            entry, reuse = self.prefixes.longest(request.prompt)
            # A row decoding now may share more (the same member's earlier message,
            # its reply still streaming): its KV is copied from its slot.
            source = None
            for live in self._rows:
                shared = _common(
                    live.tokens[: live.length], request.prompt, len(request.prompt) - 1
                )
                if shared >= MIN_REUSE and shared > reuse:
                    source, reuse = live, shared
            if reuse:
                self._slab.ensure(len(request.prompt), slot + 1)
                if source is not None:
                    self._slab.move(source.slot, slot, reuse)
                else:
                    assert entry is not None
                    self._slab.write(slot, entry.states, reuse)
                self.stats.prefix_hits += 1
                self.stats.prefix_hit_tokens += reuse
            rng = None
            if request.params.seed is not None:
                rng = self._torch.Generator(device=self.model.device)
                rng.manual_seed(request.params.seed)
        except Exception as exc:
            log.exception("could not start a reply")
            request.done(exc)
            if held and not self._slab.layers:  # growing it failed: the rows' KV is gone
                self._fail_all(exc)
            return
        row = _Row(request, list(request.prompt), slot, reuse, rng=rng)
        # A prompt sharing more of its start with one still being read (members
        # arriving together share the system prompt) waits for that part, then copies
        # it, instead of reading it a second time.
        limit = len(request.prompt) - 1
        for leader in self._filling:
            shared = _common(leader.request.prompt, request.prompt, limit)
            if shared >= MIN_REUSE and shared > max(reuse, row.follow[1] if row.follow else 0):
                row.follow = (leader, shared)
        self._filling.append(row)

    def _catch_up(self) -> None:
        """Rows following another's prompt copy the shared start once it is read."""
        live = {id(r) for r in self._all()}
        for row in self._filling:
            if row.follow is None:
                continue
            leader, shared = row.follow
            if id(leader) not in live:  # it was cancelled: read the prompt alone
                row.follow = None
            elif leader.length >= shared:
                self._slab.move(leader.slot, row.slot, shared)
                if row.length == 0:  # (a hit in the cache was counted already)
                    self.stats.prefix_hits += 1
                self.stats.prefix_hit_tokens += shared - row.length
                row.length = shared
                row.follow = None

    def _drop_stopped(self) -> None:
        """Rows whose reply was cancelled leave before the next pass."""
        for row in [r for r in self._filling if r.request.stop.is_set()]:
            self._keep_finished(row)
            self._filling.remove(row)
            row.request.done(None)
        for row in [r for r in self._rows if r.request.stop.is_set()]:
            self._keep_finished(row)
            self._leave(row)
            row.request.done(None)

    def _pass(self) -> None:
        from bot.generation.kv import Segment

        rows = list(self._rows)
        ids = [r.next_token for r in rows]
        segments = [Segment(r.slot, r.length, 1) for r in rows]
        reading: list[_Row] = []
        self._catch_up()
        for row, count in self._shares([r for r in self._filling if r.follow is None]):
            ids.extend(row.request.prompt[row.length : row.length + count])
            segments.append(Segment(row.slot, row.length, count))
            reading.append(row)
        if not segments:  # (every joining row waits for another: none can, but be safe)
            return
        stats = self.stats
        stats.passes += 1
        stats.widest = max(stats.widest, len(rows))
        stats.decoded += len(rows)
        stats.read += len(ids) - len(rows)
        started = time.perf_counter()
        logits = self.model.forward(self._slab, ids, segments, decoding=len(rows))
        stats.busy_s += time.perf_counter() - started
        stats.slab_slots = max(stats.slab_slots, self._slab.slots)
        stats.slab_bytes = self._slab.nbytes
        # Every row's cache grew in this pass: count it before any row moves.
        for row in rows:
            row.length += 1
            row.tokens.append(row.next_token)
        for row, segment in zip(reading, segments[len(rows) :], strict=True):
            row.length += segment.count
        read = [
            (len(rows) + j, r) for j, r in enumerate(reading) if r.length >= len(r.request.prompt)
        ]
        tokens = choose_next(
            [*rows, *(r for _, r in read)], [*range(len(rows)), *(j for j, _ in read)], logits
        )
        for row, token in zip(rows, tokens[: len(rows)], strict=True):
            if not self._accept(row, token):
                self._leave(row)
        for (_, row), token in zip(read, tokens[len(rows) :], strict=True):
            self._filling.remove(row)
            if self._accept(row, token):
                self._promote(row)

    def _shares(self, waiting: list[_Row]) -> list[tuple[_Row, int]]:
        """How many prompt tokens each row reads in this pass, `chunk` in all.

        Shortest left first: a conversation's next message (a few dozen tokens past
        its cached start) is read before a new member's whole history, instead of
        waiting behind it. The row waiting longest (the first to join) keeps a quarter
        of the chunk in every pass, so short prompts arriving all the time cannot
        starve it."""
        if not waiting:
            return []
        oldest = waiting[0]
        reserved = min(len(oldest.request.prompt) - oldest.length, self.chunk // 4)
        budget, shares = self.chunk, []
        for row in sorted(waiting, key=lambda r: len(r.request.prompt) - r.length):
            room = budget if row is oldest else budget - reserved
            count = min(len(row.request.prompt) - row.length, room)
            if row is oldest:
                reserved = 0
            if count > 0:
                shares.append((row, count))
                budget -= count
        return shares

    def _promote(self, row: _Row) -> None:
        """A row whose prompt is read moves to the slot after the decoding rows,
        trading places with the joining row there, if any."""
        target = len(self._rows)
        if row.slot != target:
            occupant = next((r for r in self._filling if r.slot == target), None)
            if occupant is None:
                self._slab.move(row.slot, target, row.length)
            else:
                held = self._slab.read(target, occupant.length)
                self._slab.move(row.slot, target, row.length)
                self._slab.write(row.slot, held)
                occupant.slot = row.slot
            row.slot = target
        self._rows.append(row)

    def _leave(self, row: _Row) -> None:
        """A decoding row goes; the last one takes its slot."""
        last = self._rows.pop()
        if last is not row:
            index = self._rows.index(row)
            self._slab.move(last.slot, row.slot, last.length)
            last.slot = row.slot
            self._rows[index] = last

    def _keep_finished(self, row: _Row) -> None:
        """Keep a finished row's KV (prompt and reply): the conversation's next prompt
        starts with both. A row stopped by its caller is kept too, as far as it got:
        what it computed is valid for any prompt that starts the same (a caller that
        stops at the end of a sentence, such as recommendations' one-line blurbs,
        leaves the shared instructions for the next)."""
        if not self.prefixes.capacity or row.length < MIN_REUSE:
            return
        tokens = row.tokens[: row.length]
        if not self.prefixes.covers(tokens):  # (a reply cut short, asked again)
            self.prefixes.add(tokens, self._slab.read(row.slot, row.length))

    def _accept(self, row: _Row, token: int) -> bool:
        """Take the row's next token; False when the row has finished (its KV kept for
        the conversation's next message, then the request told)."""
        request = row.request
        if token not in self._eos:
            row.generated += 1
            row.next_token = token
            request.on_token(token)
            if (
                row.generated < request.max_new_tokens
                and not request.stop.is_set()
                and row.length + 1 < self.context_length
            ):
                return True
        self._keep_finished(row)
        request.done(None)
        return False
