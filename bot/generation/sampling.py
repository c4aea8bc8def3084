"""Choosing each row's next token from its logits: greedy, or sampled with its own
random generator, the repetition penalty, temperature, top-k and top-p applied as
transformers' `generate` applies them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch is imported only when an engine starts
    import torch

    from bot.generation.base import GenerationParams


@dataclass(eq=False)
class SeenTokens:
    """The distinct tokens of a row's first `counted` tokens, as a set and as a tensor
    (for the repetition penalty; grown as tokens come, not rebuilt every pass)."""

    ids: set[int] = field(default_factory=set)
    tensor: torch.Tensor | None = None
    counted: int = 0

    def of(self, tokens: list[int], device: torch.device) -> torch.Tensor:
        """The distinct tokens of `tokens` (which only grows), as a tensor."""
        import torch

        fresh = [t for t in dict.fromkeys(tokens[self.counted :]) if t not in self.ids]
        self.counted = len(tokens)
        if fresh or self.tensor is None:
            self.ids.update(fresh)
            added = torch.tensor(fresh, dtype=torch.long, device=device)
            self.tensor = added if self.tensor is None else torch.cat((self.tensor, added))
        return self.tensor


class Choosing(Protocol):
    """What choosing a row's next token reads of the row."""

    @property
    def params(self) -> GenerationParams: ...

    @property
    def tokens(self) -> list[int]: ...  # prompt and generated: what the penalty sees

    @property
    def seen(self) -> SeenTokens: ...

    @property
    def rng(self) -> torch.Generator | None: ...


def choose_next(rows: Sequence[Choosing], at: list[int], logits: torch.Tensor) -> list[int]:
    """The next token of each row, from its logits (`logits[at[i]]` for rows[i]).

    Greedy rows are chosen together, one set of operations for all rows with the
    same repetition penalty (chosen row by row, it took up to a tenth of a decode
    pass of 8 rows)."""
    import torch

    device = logits.device
    tokens: list[int] = [0] * len(rows)
    greedy: dict[float, list[int]] = {}
    for i, row in enumerate(rows):
        params = row.params
        if params.greedy:
            greedy.setdefault(params.repetition_penalty, []).append(i)
        else:
            tokens[i] = _sample(row, logits[at[i]])
    for penalty, which in greedy.items():
        scores = logits[torch.tensor([at[i] for i in which], device=device)].float()
        if penalty != 1.0:
            # Every row's seen tokens, as places in the flattened scores.
            seen = [rows[i].seen.of(rows[i].tokens, device) for i in which]
            offsets = torch.arange(len(which), device=device) * scores.shape[-1]
            counts = torch.tensor([len(ids) for ids in seen], device=device)
            places = torch.cat(seen) + torch.repeat_interleave(offsets, counts)
            flat = scores.view(-1)
            flat.index_copy_(0, places, _penalised(flat[places], penalty))
        for i, token in zip(which, scores.argmax(dim=-1).tolist(), strict=True):
            tokens[i] = int(token)
    return tokens


def _penalised(scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scores of tokens already seen, made less likely (as `generate`'s repetition
    penalty: divided by the penalty when positive, multiplied when negative)."""
    import torch

    return torch.where(scores < 0, scores * penalty, scores / penalty)


def _sample(row: Choosing, logits: torch.Tensor) -> int:
    """A sampled row's next token."""
    import torch

    params = row.params
    scores = logits.float()
    if params.repetition_penalty != 1.0:
        seen = row.seen.of(row.tokens, scores.device)
        scores = scores.scatter(0, seen, _penalised(scores[seen], params.repetition_penalty))
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
