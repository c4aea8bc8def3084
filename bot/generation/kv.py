"""The KV cache of every row the engine decodes: one slab, a slot per row, so a row
joining or leaving copies at most its own keys and values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from bot.generation.llama import LlamaConfig


@dataclass(frozen=True, slots=True)
class Segment:
    """Tokens of one row in a forward pass: `count` tokens at positions `start`…,
    written into the row's slot; attention sees the row's cache up to each token."""

    slot: int
    start: int
    count: int


class KVSlab:
    """The KV cache of every row: per layer, one tensor (2, slots, kv_heads, capacity,
    head_dim), keys then values. A row lives in one slot from position 0; the slab grows
    in capacity steps and in slot steps (reallocated, rows copied) and is freed whole
    when the engine is idle.

    One tensor per layer, not one for all: growing reallocates a layer at a time, so
    the old and the new slab are never held whole at once; and it grows by 128
    positions, so every slot wastes less (the serving process's peak memory with each
    choice is in the benchmark docs). It holds only as many slots as rows have been
    given (up to `most`, rounded up to SLOT_STEP): eight members on an engine sixteen
    rows wide keep eight slots, not sixteen, of keys and values for every position."""

    STEP = 128
    SLOT_STEP = 4

    def __init__(
        self, config: LlamaConfig, slots: int, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        self.config = config
        self.most = slots
        self.slots = 0  # held now
        self.dtype = dtype
        self.device = device
        self.layers: list[torch.Tensor] = []
        self.capacity = 0

    def ensure(self, length: int, slots: int = 1) -> None:
        """Room for `length` positions in every slot, and for at least `slots` slots."""
        if not 0 < slots <= self.most:
            raise ValueError(f"{slots} slots asked of a slab of at most {self.most}")
        if length <= self.capacity and slots <= self.slots:
            return
        capacity = self.capacity
        if length > capacity:
            most = max(length, self.config.context_length)
            capacity = min(-(-length // self.STEP) * self.STEP, most)
        held = max(self.slots, min(-(-slots // self.SLOT_STEP) * self.SLOT_STEP, self.most))
        c = self.config
        shape = (2, held, c.kv_heads, capacity, c.head_dim)
        grown = len(self.layers) == c.layers
        try:
            for i in range(c.layers):
                data = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if grown:
                    data[:, : self.slots, :, : self.capacity] = self.layers[i]
                    self.layers[i] = data  # the old layer is freed here
                else:
                    self.layers.append(data)
        except BaseException:
            # Some layers grown, some not (out of memory half-way): no row's keys and
            # values can be trusted. Nothing is held; the caller fails every row.
            self.release()
            raise
        self.capacity, self.slots = capacity, held

    def release(self) -> None:
        self.layers, self.capacity, self.slots = [], 0, 0

    @property
    def nbytes(self) -> int:
        """The bytes of keys and values held now."""
        return sum(data.nbytes for data in self.layers)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy a row's first `length` positions to another slot."""
        self.ensure(length, target + 1)
        for data in self.layers:
            data[:, target, :, :length] = data[:, source, :, :length]

    def read(self, slot: int, length: int) -> torch.Tensor:
        """A copy of a row's first `length` positions: (layers, 2, kv_heads, length,
        head_dim)."""
        return torch.stack([data[:, slot, :, :length] for data in self.layers])

    def write(self, slot: int, states: torch.Tensor, length: int | None = None) -> None:
        """Put `states` (as `read` returns them), or their first `length` positions,
        into a slot."""
        length = states.shape[3] if length is None else length
        self.ensure(length, slot + 1)
        for data, layer in zip(self.layers, states, strict=True):
            data[:, slot, :, :length] = layer[:, :, :length]
