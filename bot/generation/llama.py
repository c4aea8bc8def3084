"""A compact forward pass for Llama-architecture causal LMs (the embedded SmolLM2,
Llama 2 and 3, TinyLlama, Qwen2 and 2.5, Mistral without a sliding window), written
for the batch engine.

Why not the transformers model: on a small CPU its per-step Python overhead (mask
building, cache objects, wrappers around every layer) costs as much as the arithmetic
for a 135M-parameter model, and its cache has to be concatenated and re-padded each
time a request joins or leaves. Here the KV of every request lives in one slab
(bot/generation/kv.py), row by row, so joining and leaving copy one row at most;
and a forward pass takes a flat list of tokens from any rows (one decoding token per
running row and a chunk of a new prompt), so the running rows decode on the same pass
that reads a new prompt.

The arithmetic follows transformers' Llama (RMSNorm in float32, rotary embeddings,
grouped-query attention, SiLU MLP), and the tests compare it with transformers' own
forward pass, each way of computing the products and of attending on its own. Which
way is fastest depends on the CPU: bot/generation/tuning.py measures it. The weights
are read by bot/generation/weights.py (straight from safetensors, or shared with a
loaded transformers model, no copy).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bot.generation.kv import KVSlab, Segment
from bot.generation.ways import (
    ATTENTION_WAYS,
    INT4_PRODUCTS,
    PRODUCT_WAYS,
    Int4Weight,
    Int8Rows,
    Products,
    int4_available,
    int8_available,
    int8_linear,
    pack,
    packing_available,
    quantize_int4,
    quantize_int8,
    unpack,
)

Tensor = torch.Tensor


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    rope_theta: float
    vocab: int
    tied: bool
    context_length: int
    attention_bias: bool = False
    rope_llama3: tuple[float, float, float, int] | None = None  # factor, low, high, original

    @classmethod
    def of(cls, config: dict[str, Any]) -> LlamaConfig | None:
        """The config of a model this module can run (Llama, with Llama 3's scaled
        rotary embeddings or not; Qwen2, which adds biases to q, k and v; Mistral
        without a sliding window), or None."""
        kind = config.get("model_type")
        if kind not in {"llama", "qwen2", "mistral"} or config.get("hidden_act", "silu") != "silu":
            return None
        if config.get("mlp_bias") or (kind != "llama" and config.get("sliding_window")
                                      and config.get("use_sliding_window", True)):  # fmt: skip
            return None
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        llama3 = None
        match rope.get("rope_type", rope.get("type", "default")):
            case "default":
                pass
            case "llama3":
                llama3 = (
                    float(rope["factor"]), float(rope["low_freq_factor"]),
                    float(rope["high_freq_factor"]),
                    int(rope["original_max_position_embeddings"]),
                )  # fmt: skip
            case _:
                return None
        theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            hidden=hidden,
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate=int(config["intermediate_size"]),
            eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
            context_length=int(config.get("max_position_embeddings", 2048)),
            attention_bias=kind == "qwen2" or bool(config.get("attention_bias")),
            rope_llama3=llama3,
        )

    def kv_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of KV cache one token takes, over all layers."""
        return self.layers * 2 * self.kv_heads * self.head_dim * int(dtype.itemsize)

    def inverse_frequencies(self, device: torch.device | str) -> torch.Tensor:
        """The rotary embedding's frequencies (Llama 3's long-context rescaling:
        long wavelengths slowed by `factor`, a smooth blend between the two bounds)."""
        half = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device)
        inv = 1.0 / (self.rope_theta ** (half.float() / self.head_dim))
        if self.rope_llama3 is None:
            return inv
        factor, low, high, original = self.rope_llama3
        wavelength = 2 * math.pi / inv
        slowed = torch.where(wavelength > original / low, inv / factor, inv)
        blend = (original / wavelength - low) / (high - low)
        smoothed = (1 - blend) * slowed / factor + blend * slowed
        medium = (wavelength >= original / high) & (wavelength <= original / low)
        return torch.where(medium, smoothed, slowed)


@dataclass(slots=True)
class _Layer:
    """One decoder layer's weights. The four product matrices are plain tensors, or
    packed for oneDNN when the model's products are "packed" (see `LlamaModel.products`)."""

    attention_norm: Tensor
    qkv: Tensor  # q, k and v projections, stacked: (heads + 2 * kv_heads) * head_dim rows
    qkv_bias: Tensor | None
    out: Tensor
    out_bias: Tensor | None
    mlp_norm: Tensor
    gate_up: Tensor  # gate and up projections, stacked: 2 * intermediate rows
    down: Tensor
    # The four product matrices again in 4-bit groups, for decode passes of few rows
    # (see `LlamaModel.int4_rows`): qkv, out, gate_up, down.
    int4: tuple[Int4Weight, Int4Weight, Int4Weight, Int4Weight] | None = None


def _joined(w: dict[str, Tensor], name: str, parts: list[str]) -> Tensor | None:
    """A joined matrix: given whole (as `weights.llama_from_directory` reads it), or
    stacked from its parts (taken out of `w`); None when there are no parts (no
    biases)."""
    if name in w:
        return w.pop(name)
    found = [w.pop(part) for part in parts if part in w]
    return torch.cat(found) if len(found) == len(parts) else None


class LlamaModel:
    """The model's weights and its forward pass over rows kept in a `KVSlab`."""

    def __init__(self, config: LlamaConfig, weights: dict[str, Tensor]) -> None:
        self.config = config
        # Taken out of `weights` as they are joined, so the separate copies can go
        # while loading (a lower peak of memory when nothing else holds them).
        w = {k.removeprefix("model."): weights.pop(k) for k in list(weights)}
        self.embed = w["embed_tokens.weight"]
        self.norm = w["norm.weight"]
        self.lm_head = self.embed if config.tied else w.get("lm_head.weight", self.embed)
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        # Per layer: q, k and v in one matrix, gate and up in another (fewer, larger
        # products: a decode pass is mostly the cost of launching operations).
        self.layers: list[_Layer] = []
        for i in range(config.layers):
            p = f"layers.{i}."
            attention, mlp = f"{p}self_attn.", f"{p}mlp."
            qkv = _joined(
                w, f"{attention}qkv_proj.weight", [f"{attention}{n}_proj.weight" for n in "qkv"]
            )
            gate_up = _joined(
                w, f"{mlp}gate_up_proj.weight", [f"{mlp}gate_proj.weight", f"{mlp}up_proj.weight"]
            )
            if qkv is None or gate_up is None:
                raise ValueError(f"layer {i} lacks its attention or MLP weights")
            qkv_bias = _joined(
                w, f"{attention}qkv_proj.bias", [f"{attention}{n}_proj.bias" for n in "qkv"]
            )
            self.layers.append(_Layer(
                attention_norm=w[f"{p}input_layernorm.weight"], qkv=qkv, qkv_bias=qkv_bias,
                out=w[f"{attention}o_proj.weight"], out_bias=w.get(f"{attention}o_proj.bias"),
                mlp_norm=w[f"{p}post_attention_layernorm.weight"], gate_up=gate_up,
                down=w[f"{mlp}down_proj.weight"],
            ))  # fmt: skip
        self.inv_freq = config.inverse_frequencies(self.device)
        self.scale = 1.0 / math.sqrt(config.head_dim)
        self._tied = self.lm_head is self.embed
        # The ways chosen, each looked up once here, not tested in every layer.
        self._products = PRODUCT_WAYS["linear"]
        self._attend_decoding = ATTENTION_WAYS["matmul"]
        self._int4_rows = 0
        # The output layer in 8-bit rows, for the passes that use the 4-bit weights.
        self.head8: Int8Rows | None = None

    @property
    def products(self) -> str:
        """How each weight product is computed (`PRODUCT_WAYS`):
        - "linear": x @ W^T as torch's linear does;
        - "transposed": (W @ x^T)^T, the same sums in another order of operands;
        - "packed": oneDNN's linear on weights reordered once into its blocked layout.
          The plain matrices are replaced by the packed ones, so this costs no memory,
          except for a tied output matrix: the embedding lookup still needs it plain.
        Setting it converts the weights (one matrix at a time, so memory peaks at one
        matrix more)."""
        return next(name for name, way in PRODUCT_WAYS.items() if way is self._products)

    @products.setter
    def products(self, products: str) -> None:
        way = PRODUCT_WAYS.get(products)
        if way is None:
            raise ValueError(f"unknown weight products {products!r}")
        if way.packed and not packing_available(self.device, self.dtype):
            raise ValueError(f"packed weight products need oneDNN on a CPU that packs {self.dtype}")
        if way.packed != self._products.packed:
            try:
                self._convert(pack if way.packed else unpack)
            except BaseException:
                self._convert(unpack)  # (every matrix plain again, as "linear" needs)
                self._products = PRODUCT_WAYS["linear"]
                raise
        self._products = way

    @property
    def attention(self) -> str:
        """How the decoding rows (one query each) attend (`ATTENTION_WAYS`): "matmul",
        written out as two matrix products, or "sdpa", torch's kernel."""
        return next(n for n, way in ATTENTION_WAYS.items() if way is self._attend_decoding)

    @attention.setter
    def attention(self, attention: str) -> None:
        way = ATTENTION_WAYS.get(attention)
        if way is None:
            raise ValueError(f"unknown attention {attention!r}")
        self._attend_decoding = way

    @property
    def int4_rows(self) -> int:
        """Decode passes of at most this many rows (and no prompt tokens) multiply by
        the layers' weights in 4-bit groups (`ways.quantize_int4`), kept beside the
        dtype's (about a third more memory for bf16 weights, a sixth for float32), and
        their output layer by its 8-bit rows (`head8`); 0: never. Prompt chunks and
        wider passes use the dtype's weights: the 4-bit kernel reads a quarter of bf16's
        bytes (an eighth of float32's), but dequantizes for every row, so it pays only
        on passes of few rows (bot/generation/tuning.py measures how few). Both kernels
        multiply bf16 rows (`ways.Int4Products`, `ways.int8_linear`), so a float32
        model's narrow passes round their rows to bf16 for those products.

        The embedded model's layers are 4-bit at their source, groups of 32 along the
        input as here, and its embedding 8-bit: its perplexity on a fixed text moved by
        about 1% at most (docs/engine.md)."""
        return self._int4_rows

    @int4_rows.setter
    def int4_rows(self, rows: int) -> None:
        """Build the 4-bit weights (once: about a second for the embedded model) and use
        them up to `rows` rows; 0 drops them."""
        if rows < 0:
            raise ValueError(f"int4_rows must be 0 or more, not {rows}")
        if rows and self.layers[0].int4 is None:
            if not self.int4_available():
                raise ValueError(
                    "4-bit weights need bf16 or float32 weights on a CPU whose torch has the kernel"
                )
            for layer in self.layers:
                dense = (unpack(w) for w in (layer.qkv, layer.out, layer.gate_up, layer.down))
                q, o, gu, d = (quantize_int4(w) for w in dense)
                layer.int4 = (q, o, gu, d)
            self.head8 = quantize_int8(unpack(self.lm_head)) if int8_available() else None
        elif not rows:
            for layer in self.layers:
                layer.int4 = None
            self.head8 = None
        self._int4_rows = rows

    def give_int4(
        self,
        weights: list[tuple[Int4Weight, Int4Weight, Int4Weight, Int4Weight]],
        head: Int8Rows | None,
    ) -> None:
        """Take 4-bit weights built earlier (kept on disk: bot/generation/weights.py), one
        (qkv, out, gate_up, down) per layer, and the 8-bit output layer, to be used once
        `int4_rows` is set."""
        if len(weights) != len(self.layers):
            raise ValueError(f"4-bit weights for {len(weights)} layers, not {len(self.layers)}")
        for layer, four in zip(self.layers, weights, strict=True):
            layer.int4 = four
        self.head8 = head

    def use_int4(self, rows: int) -> None:
        """Use the 4-bit weights built already up to `rows` rows (0: not at all), keeping
        them: for measuring with and without."""
        if rows and self.layers[0].int4 is None:
            raise ValueError("the 4-bit weights are not built (set int4_rows)")
        self._int4_rows = rows

    def int4_available(self) -> bool:
        """Whether this model's layers can be held in 4-bit groups here."""
        first = self.layers[0]
        return self.dtype in (torch.bfloat16, torch.float32) and all(
            int4_available(w) for w in (first.qkv, first.out, first.gate_up, first.down)
        )

    def _convert(self, convert: Callable[[Tensor], Tensor]) -> None:
        for layer in self.layers:
            layer.qkv = convert(layer.qkv)
            layer.out = convert(layer.out)
            layer.gate_up = convert(layer.gate_up)
            layer.down = convert(layer.down)
        # A tied output matrix is the embedding, which the lookup reads plain: packed, it
        # is a copy; unpacked, the embedding again.
        self.lm_head = self.embed if self._tied and convert is unpack else convert(self.lm_head)

    def slab(self, slots: int) -> KVSlab:
        return KVSlab(self.config, slots, self.dtype, self.device)

    def _rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin of each position's angles, the sin's first half negated (see
        `_rotate`): each (tokens, head_dim)."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        sin = freqs.sin()
        return (
            torch.cat((freqs, freqs), dim=-1).cos().to(self.dtype),
            torch.cat((-sin, sin), dim=-1).to(self.dtype),
        )

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        """RMSNorm computed in float32, scaled in the model's dtype (as transformers)."""
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.config.eps)
        return weight * normed.to(x.dtype)

    def forward(
        self,
        slab: KVSlab,
        ids: list[int],
        segments: list[Segment],
        decoding: int = 0,
    ) -> Tensor:
        """Run `ids` (the tokens of `segments`, in order) and return the logits of each
        segment's last token, (len(segments), vocab). The first `decoding` segments
        are single tokens of rows in slots 0…decoding-1 (one attention call for them
        all); each further segment is a chunk of one prompt."""
        c = self.config
        device = self.device
        products = self._products
        positions = torch.cat(
            [torch.arange(s.start, s.start + s.count, device=device) for s in segments]
        )  # (n,)
        slots = torch.cat(
            [torch.full((s.count,), s.slot, device=device, dtype=torch.long) for s in segments]
        )  # (n,)
        slab.ensure(
            int(max(s.start + s.count for s in segments)), max(s.slot for s in segments) + 1
        )
        cos, sin = self._rope(positions)
        cos, sin = cos[:, None, :], sin[:, None, :]  # (n, 1, head_dim): one for every head
        masks = self._masks(segments, decoding, slab.capacity)
        n = len(ids)
        quick = n == decoding and n <= self._int4_rows  # (see `int4_rows`)
        # The weight products run on `rows` rows, n rounded up (padding rows: token 0,
        # kept out of the cache and of attention): see `padded_rows`.
        rows = padded_rows(n)
        x = F.embedding(torch.tensor(ids + [0] * (rows - n), device=device), self.embed)
        heads, kv = c.heads, c.kv_heads
        # Where each token's keys and values go in a layer of the slab, seen as rows of
        # head_dim (one copy a layer). A layer is (2, slots, kv_heads, capacity,
        # head_dim): key head h of slot s at position p is row (s * kv_heads + h) *
        # capacity + p, its value that plus slots * kv_heads * capacity.
        at = (slots[:, None] * kv + torch.arange(kv, device=device)) * slab.capacity
        at = at + positions[:, None]  # (n, kv_heads): the keys' rows
        # (n, 2 * kv_heads) flattened: each token's key heads, then its value heads, in
        # the order of the rows copied below.
        at = torch.cat((at, at + slab.slots * kv * slab.capacity), dim=1).view(-1)
        for i, layer in enumerate(self.layers):
            way: Products
            weights: tuple[Any, Any, Any, Any]
            if quick:
                assert layer.int4 is not None
                way, weights = INT4_PRODUCTS, layer.int4
            else:
                way, weights = products, (layer.qkv, layer.out, layer.gate_up, layer.down)
            h = self._norm(x, layer.attention_norm)  # (rows, hidden)
            qkv = way.linear(h, weights[0], layer.qkv_bias).view(rows, heads + 2 * kv, c.head_dim)
            qk = _rotate(qkv[:n, : heads + kv], cos, sin)  # q and k rotated together
            keys, values = slab.layers[i]  # each (slots, kv_heads, capacity, head_dim)
            new = torch.cat((qk[:, heads:], qkv[:n, heads + kv :]), dim=1)  # (n, 2 * kv, dim)
            slab.layers[i].view(-1, c.head_dim).index_copy_(0, at, new.view(-1, c.head_dim))
            attended = self._attend(
                qk[:, :heads], keys, values, segments=segments, decoding=decoding, masks=masks
            )
            if rows > n:
                attended = F.pad(attended, (0, 0, 0, rows - n))
            x = x + way.linear(attended, weights[1], layer.out_bias)
            x = x + way.mlp(self._norm(x, layer.mlp_norm), weights[2], weights[3])
        last = []
        offset = 0
        for s in segments:
            offset += s.count
            last.append(offset - 1)
        x = self._norm(x[torch.tensor(last, device=device)], self.norm)
        if quick and self.head8 is not None:
            return int8_linear(x, self.head8)
        return products.linear(x, self.lm_head, None)

    def _masks(self, segments: list[Segment], decoding: int, capacity: int) -> list[Tensor | None]:
        """Per attention call, what each query token may see: a mask added to the
        scores, 0 where it may look and -inf where it may not (None for a prompt read
        from its start: causal attention).

        The decoding rows' width is rounded up to `WIDTH_STEP` columns (the rest
        masked): their products go to the CPU's matrix library, which keeps a prepared
        kernel for every distinct shape, and unrounded the process grew by about 1 MB
        per token of conversation (measured: 0.58 to 1.9 GB over 16 turns of one chat).
        A prompt chunk's width is exact: torch's attention kernel works in fixed blocks
        (measured, bf16: 215 distinct widths grew the process by 10 MB), and the
        rounded columns were work for nothing (a 128-token chunk at position 400: 1.37
        ms a layer exact, 1.64 ms rounded to 640)."""
        device = self.device
        masks: list[Tensor | None] = []
        if decoding:
            ends = torch.tensor([s.start for s in segments[:decoding]], device=device)
            width = _rounded(int(ends.max()) + 1, capacity)
            # Added to the scores: -inf where a row may not look (past its end).
            hidden = torch.arange(width, device=device)[None, :] > ends[:, None]
            zeros = torch.zeros(hidden.shape, dtype=self.dtype, device=device)
            masks.append(zeros.masked_fill_(hidden, float("-inf"))[:, None, None, :])
        for s in segments[decoding:]:
            if s.start == 0:
                masks.append(None)  # a prompt from its start: plain causal attention
            else:
                seen = torch.arange(s.start + s.count, device=device)[None, :]
                mine = torch.arange(s.start, s.start + s.count, device=device)[:, None]
                # Added to the scores (as SDPA would turn a boolean mask, once per
                # layer; here once per pass): (1, 1, count, start + count).
                mask = torch.zeros(mine.shape[0], seen.shape[1], dtype=self.dtype, device=device)
                masks.append(mask.masked_fill_(seen > mine, float("-inf"))[None, None])
        return masks

    def _attend(
        self, q: Tensor, keys: Tensor, values: Tensor, *, segments: list[Segment],
        decoding: int, masks: list[Tensor | None],
    ) -> Tensor:  # fmt: skip
        """Every token's attention output, (n, heads * head_dim), from its query (n,
        heads, head_dim) and its row's cached keys and values."""
        c = self.config
        out = []
        if decoding:
            mask = masks[0]
            assert mask is not None  # (the decoding rows always have one)
            out.append(self._attend_decoding(q[:decoding], keys, values, mask, self.scale))
        offset = decoding
        for s, prompt_mask in zip(segments[decoding:], masks[1 if decoding else 0 :], strict=True):
            end = s.count if prompt_mask is None else prompt_mask.shape[-1]
            query = q[offset : offset + s.count].transpose(0, 1)[None]  # (1, heads, count, dim)
            attended = F.scaled_dot_product_attention(
                query,
                keys[s.slot : s.slot + 1, :, :end],
                values[s.slot : s.slot + 1, :, :end],
                attn_mask=prompt_mask,
                is_causal=prompt_mask is None,
                scale=self.scale,
                enable_gqa=True,
            )
            out.append(attended[0].transpose(0, 1).reshape(s.count, c.heads * c.head_dim))
            offset += s.count
        return out[0] if len(out) == 1 else torch.cat(out)


WIDTH_STEP = 128
ROW_STEP = 8


def padded_rows(n: int) -> int:
    """How many rows a pass of `n` tokens multiplies by the weights: `n` up to 16
    (decode passes), above that `n` rounded up to ROW_STEP. oneDNN prepares a kernel
    for every distinct row count and keeps it (about 0.6 MB a weight matrix), so passes
    reading prompts, of any count up to the batch plus the chunk, grew the process:
    measured with the embedded model, bf16, packed products, every count from 1 to 136
    added 347 MB unrounded and 70 MB rounded (at most 31 counts, for at most 7 padding
    rows in a pass of 17 or more)."""
    return n if n <= 16 else -(-n // ROW_STEP) * ROW_STEP


def _rounded(width: int, capacity: int) -> int:
    return min(-(-width // WIDTH_STEP) * WIDTH_STEP, capacity)


def _rotate(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotary embedding: x * cos + rotate_half(x) * sin, where rotate_half(x) is
    (-x2, x1) of x's halves (x1, x2). Written as the halves swapped times the sin
    with its first half negated: the same numbers, bit for bit, in fewer operations."""
    return (x * cos) + (x.roll(x.shape[-1] // 2, dims=-1) * signed_sin)
