"""Continuous batching: one decoding thread runs every live request together.

A request is prefilled alone (no padding wasted on its prompt) and then joins the
running batch at the next step boundary: its KV cache is left-padded to the batch's
length (or the batch's to its), and an attention mask hides the padding. Each step
decodes one token for every row; a row leaves the batch at its end token, its length
limit, or when it is cancelled, and the columns no row needs any more are trimmed.
Each row keeps its own sampling parameters and random generator, and repetition
penalty, temperature, top-k and top-p are applied as `generate` applies them, so a
greedy request decodes the same text alone or in a batch.

Prefix reuse: the KV of recent prompts (and of finished replies, prompt and answer
together) is kept in a small cache, bounded in tokens. A new prompt starts from the
longest prefix it shares with one of them, sliced, and only the rest is prefilled:
the system prompt every member shares, and a conversation's previous turn, are not
computed again.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.generation.base import GenerationParams

log = logging.getLogger(__name__)


@dataclass(eq=False)
class BatchRequest:
    """One prompt to decode. `emit` receives text pieces, then `done(None)` or
    `done(exception)`; both are called from the decoding thread."""

    prompt: list[int]
    params: GenerationParams
    max_new_tokens: int
    on_token: Callable[[int], None]
    done: Callable[[BaseException | None], None]
    stop: threading.Event = field(default_factory=threading.Event)


MIN_REUSE = 16  # shorter shared prefixes are prefilled again: not worth a copy


@dataclass(eq=False)
class _Entry:
    tokens: list[int]
    layers: list[tuple[Any, Any]]  # per layer: keys, values of shape [1, heads, len, dim]
    used: int = 0


class PrefixCache:
    """KV of recent token sequences, at most `capacity` tokens in all (LRU)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: list[_Entry] = []
        self._clock = 0
        self.hits = 0  # lookups that reused a prefix, for tests and the benchmark
        self.reused = 0  # prompt tokens not prefilled thanks to it

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

    def add(self, tokens: list[int], layers: list[tuple[Any, Any]]) -> None:
        if not self.capacity or len(tokens) < MIN_REUSE or len(tokens) > self.capacity:
            return
        # A sequence that only extends a cached one replaces it (a conversation's turn).
        self._entries = [
            e for e in self._entries
            if not (len(e.tokens) <= len(tokens) and tokens[: len(e.tokens)] == e.tokens)
        ]  # fmt: skip
        self._clock += 1
        self._entries.append(_Entry(list(tokens), layers, self._clock))
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
    length: int  # tokens of this row in the KV cache
    next_token: int = -1  # sampled, not yet in the cache
    generated: int = 0
    rng: Any = None


class BatchEngine:
    """Owns the model's decoding thread. `submit` is thread-safe."""

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: list[int],
        context_length: int,
        max_batch: int = 8,
        prefix_tokens: int = 0,
    ) -> None:
        import torch

        self._torch = torch
        self._model = model
        self._device = next(model.parameters()).device
        self._eos = set(eos_ids)
        self._context_length = context_length
        self.max_batch = max_batch
        self._pending: deque[BatchRequest] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: Any = None
        self.prefixes = PrefixCache(prefix_tokens)
        self.steps = 0  # decode steps run, for tests and the benchmark
        self.widest = 0  # the most rows decoded in one step
        # transformers renamed `past_key_values` to `cache` (5.2x); use what it takes.
        forward = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in forward else "past_key_values"
        self._thread = threading.Thread(target=self._loop, name="batch-decode", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        return len(self._rows)

    def submit(self, request: BatchRequest) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch engine is closed")
            self._pending.append(request)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # -- the decoding thread -----------------------------------------------------

    def _loop(self) -> None:
        torch = self._torch
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._pending and not self._rows and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        leftover = [*self._pending, *(r.request for r in self._rows)]
                        self._pending.clear()
                        break
                    room = self.max_batch - len(self._rows)
                    joining = [
                        self._pending.popleft() for _ in range(min(room, len(self._pending)))
                    ]
                for request in joining:
                    self._join(request)
                if self._rows:
                    try:
                        self._step()
                    except Exception as exc:  # a failed step fails every row in it
                        log.exception("batched decoding failed")
                        for row in self._rows:
                            row.request.done(exc)
                        self._rows, self._cache, self._mask = [], None, None
        for request in leftover:
            request.done(RuntimeError("the model was shut down"))

    def _join(self, request: BatchRequest) -> None:
        if request.stop.is_set():
            request.done(None)
            return
        torch = self._torch
        try:
            from transformers import DynamicCache

            cache = DynamicCache(config=self._model.config)
            prompt = request.prompt
            entry, reuse = self.prefixes.longest(prompt)
            if entry is not None:
                for i, (keys, values) in enumerate(entry.layers):
                    cache.update(keys[:, :, :reuse], values[:, :, :reuse], i)
                self.prefixes.hits += 1
                self.prefixes.reused += reuse
            ids = torch.tensor([prompt[reuse:]], device=self._device)
            out = self._model(
                input_ids=ids,
                attention_mask=torch.ones((1, len(prompt)), dtype=torch.long,
                                          device=self._device),
                position_ids=torch.arange(reuse, len(prompt), device=self._device)[None],
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: cache},
            )  # fmt: skip
            # The prompt's KV is kept for later prompts sharing its start (decoding
            # replaces the cache's tensors, it never writes into these).
            self.prefixes.add(list(prompt), [(layer.keys, layer.values)
                                             for layer in cache.layers])  # fmt: skip
            rng = None
            if request.params.seed is not None:
                rng = torch.Generator(device=self._device).manual_seed(request.params.seed)
            row = _Row(request, list(request.prompt), len(request.prompt), rng=rng)
            if not self._accept(row, out.logits[0, -1]):
                return
        except Exception as exc:
            log.exception("prefill failed")
            request.done(exc)
            return
        self._merge(row, cache)

    def _merge(self, row: _Row, cache: Any) -> None:
        torch = self._torch
        length = row.length
        if self._cache is None:
            self._cache = cache
            self._mask = torch.ones((1, length), dtype=torch.long, device=self._device)
            self._rows = [row]
            return
        width = self._mask.shape[1]
        total = max(width, length)
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat(
                [_left_pad(old.keys, total - width), _left_pad(new.keys, total - length)]
            )
            old.values = torch.cat(
                [_left_pad(old.values, total - width), _left_pad(new.values, total - length)]
            )
        ones = torch.ones((1, length), dtype=torch.long, device=self._device)
        self._mask = torch.cat(
            [_left_pad_mask(self._mask, total - width), _left_pad_mask(ones, total - length)]
        )
        self._rows.append(row)

    def _step(self) -> None:
        torch = self._torch
        rows = self._rows
        self.steps += 1
        self.widest = max(self.widest, len(rows))
        ids = torch.tensor([[r.next_token] for r in rows], device=self._device)
        positions = torch.tensor([[r.length] for r in rows], device=self._device)
        mask = torch.cat([self._mask, torch.ones_like(ids)], dim=1)
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: self._cache},
        )
        self._mask = mask
        logits = out.logits[:, -1]
        keep = []
        for i, row in enumerate(rows):
            row.length += 1
            row.tokens.append(row.next_token)
            if self._accept(row, logits[i]):
                keep.append(i)
            elif not row.request.stop.is_set():
                self._keep_finished(i, row)
        if len(keep) == len(rows):
            return
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self._device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self._rows = [rows[i] for i in keep]
        # Columns that are padding in every remaining row are dropped.
        trim = int((self._mask.shape[1] - self._mask.sum(dim=1)).min())
        if trim > 0:
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, trim:]
                layer.values = layer.values[:, :, trim:]
            self._mask = self._mask[:, trim:]

    def _keep_finished(self, index: int, row: _Row) -> None:
        """Keep a finished row's KV (prompt and reply): the conversation's next prompt
        starts with both."""
        if not self.prefixes.capacity or self._cache is None or row.length < MIN_REUSE:
            return
        layers = [
            (layer.keys[index : index + 1, :, -row.length :].clone(),
             layer.values[index : index + 1, :, -row.length :].clone())
            for layer in self._cache.layers
        ]  # fmt: skip
        self.prefixes.add(row.tokens[: row.length], layers)

    def _accept(self, row: _Row, logits: Any) -> bool:
        """Choose the row's next token; False when the row has finished (and was told)."""
        request = row.request
        token = self._choose(row, logits)
        if token in self._eos:
            request.done(None)
            return False
        row.generated += 1
        row.next_token = token
        request.on_token(token)
        if (
            row.generated >= request.max_new_tokens
            or request.stop.is_set()
            or row.length + 1 >= self._context_length
        ):
            request.done(None)
            return False
        return True

    def _choose(self, row: _Row, logits: Any) -> int:
        torch = self._torch
        params = row.request.params
        scores = logits.float()
        if params.repetition_penalty != 1.0:
            seen = torch.tensor(row.tokens, device=scores.device)
            picked = scores.gather(0, seen)
            picked = torch.where(
                picked < 0, picked * params.repetition_penalty, picked / params.repetition_penalty
            )
            scores = scores.scatter(0, seen, picked)
        if params.greedy:
            return int(scores.argmax())
        scores = scores / params.temperature
        # Top-k first, then top-p within those k, as `generate` orders them; working on
        # the k candidates only (not a sort of the whole vocabulary) keeps a step cheap.
        k = min(params.top_k, scores.shape[-1]) if params.top_k else scores.shape[-1]
        values, candidates = torch.topk(scores, k)  # sorted, highest first
        if params.top_p < 1.0:
            cumulative = values.softmax(dim=-1).cumsum(dim=-1)
            # Drop a candidate once the ones above it already hold top_p (as
            # `generate`: the lowest ones whose mass stays within 1 - top_p go).
            drop = (1 - cumulative + values.softmax(dim=-1)) <= (1 - params.top_p)
            drop[0] = False  # keep at least one token
            values = values.masked_fill(drop, float("-inf"))
        probs = values.softmax(dim=-1)
        return int(candidates[torch.multinomial(probs, 1, generator=row.rng)])


def _left_pad(states: Any, count: int) -> Any:
    """[batch, heads, length, dim] with `count` zero positions added on the left."""
    if count == 0:
        return states
    import torch

    pad = states.new_zeros((*states.shape[:2], count, states.shape[3]))
    return torch.cat([pad, states], dim=2)


def _left_pad_mask(mask: Any, count: int) -> Any:
    if count == 0:
        return mask
    import torch

    return torch.cat([mask.new_zeros((mask.shape[0], count)), mask], dim=1)
