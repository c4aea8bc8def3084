"""A compact forward pass for Llama-architecture causal LMs (the embedded SmolLM2,
Llama, TinyLlama and their kin), written for the batch engine.

Why not the transformers model: on a 2-core CPU its per-step Python overhead (mask
building, cache objects, wrappers around every layer) costs as much as the arithmetic
for a 135M-parameter model, and its cache has to be concatenated and re-padded each
time a request joins or leaves. Here the KV of every request lives in one preallocated
slab, row by row, so joining and leaving copy one row at most; and a forward pass takes
a flat list of tokens from any rows (one decoding token per running row and a chunk of
a new prompt), so the running rows decode on the same pass that reads a new prompt.

The arithmetic follows transformers' Llama (RMSNorm in float32, rotary embeddings,
grouped-query attention through SDPA, SiLU MLP), and the tests compare greedy output
with transformers' own `generate`. Weights come straight from safetensors, or are
shared with an already loaded transformers model (no copy).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


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

    @classmethod
    def of(cls, config: dict[str, Any]) -> LlamaConfig | None:
        """The config of a model this module can run, or None (another architecture,
        or a Llama variant it does not implement: biases, scaled rotary embeddings)."""
        if config.get("model_type") != "llama" or config.get("hidden_act", "silu") != "silu":
            return None
        if config.get("attention_bias") or config.get("mlp_bias"):
            return None
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
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
        )


@dataclass(frozen=True, slots=True)
class Segment:
    """Tokens of one row in a forward pass: `count` tokens at positions `start`…,
    written into the row's slot; attention sees the row's cache up to each token."""

    slot: int
    start: int
    count: int


class KVSlab:
    """The KV cache of every row: one tensor [layers, 2, slots, kv_heads, capacity,
    head_dim]. A row lives in one slot from position 0; it grows in capacity steps
    (reallocated, rows copied) and is freed whole when the engine is idle."""

    STEP = 256

    def __init__(self, config: LlamaConfig, slots: int, dtype: Any, device: Any) -> None:
        self.config = config
        self.slots = slots
        self.dtype = dtype
        self.device = device
        self.data: Any = None
        self.capacity = 0

    def ensure(self, length: int) -> None:
        """Room for `length` positions in every slot."""
        if length <= self.capacity:
            return
        capacity = min(-(-length // self.STEP) * self.STEP, max(length, self.config.context_length))
        c = self.config
        data = torch.zeros(
            (c.layers, 2, self.slots, c.kv_heads, capacity, c.head_dim),
            dtype=self.dtype, device=self.device,
        )  # fmt: skip
        if self.data is not None:
            data[..., : self.capacity, :] = self.data
        self.data, self.capacity = data, capacity

    def release(self) -> None:
        self.data, self.capacity = None, 0

    def move(self, source: int, target: int, length: int) -> None:
        self.data[:, :, target, :, :length] = self.data[:, :, source, :, :length]

    def read(self, slot: int, length: int) -> Any:
        """A copy of a row's first `length` positions: [layers, 2, kv_heads, length, dim]."""
        return self.data[:, :, slot, :, :length].clone()

    def write(self, slot: int, states: Any) -> None:
        length = states.shape[3]
        self.ensure(length)
        self.data[:, :, slot, :, :length] = states


class LlamaModel:
    def __init__(self, config: LlamaConfig, weights: dict[str, Any]) -> None:
        self.config = config
        w = {k.removeprefix("model."): v for k, v in weights.items()}
        self.embed = w["embed_tokens.weight"]
        self.norm = w["norm.weight"]
        self.lm_head = self.embed if config.tied else w.get("lm_head.weight", self.embed)
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        self.layers = [
            tuple(
                w[f"layers.{i}.{name}.weight"]
                for name in (
                    "input_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                    "self_attn.v_proj", "self_attn.o_proj", "post_attention_layernorm",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                )
            )
            for i in range(config.layers)
        ]  # fmt: skip
        half = torch.arange(0, config.head_dim, 2, dtype=torch.int64, device=self.device)
        self.inv_freq = 1.0 / (config.rope_theta ** (half.float() / config.head_dim))
        self.scale = 1.0 / math.sqrt(config.head_dim)

    @classmethod
    def from_directory(cls, directory: Path, dtype: Any, device: Any) -> LlamaModel | None:
        """Load a Hugging Face model directory's safetensors, or None when this module
        cannot run its architecture (or its weights are not safetensors)."""
        try:
            raw = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError):
            return None
        config = LlamaConfig.of(raw)
        files = sorted(directory.glob("*.safetensors"))
        if config is None or not files:
            return None
        from safetensors.torch import load_file

        weights: dict[str, Any] = {}
        for file in files:
            for name, tensor in load_file(str(file), device="cpu").items():
                weights[name] = tensor.to(device=device, dtype=dtype)
        return cls(config, weights)

    @classmethod
    def from_transformers(cls, model: Any) -> LlamaModel | None:
        """Share the weights of a loaded transformers model (no copy), or None."""
        config = LlamaConfig.of(model.config.to_dict())
        if config is None:
            return None
        return cls(config, {k: v.detach() for k, v in model.state_dict().items()})

    def slab(self, slots: int) -> KVSlab:
        return KVSlab(self.config, slots, self.dtype, self.device)

    def _rope(self, positions: Any) -> tuple[Any, Any]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def _norm(self, x: Any, weight: Any) -> Any:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.eps)
        return weight * x.to(dtype)

    def forward(
        self,
        slab: KVSlab,
        ids: list[int],
        segments: list[Segment],
        decoding: int = 0,
    ) -> Any:
        """Run `ids` (the tokens of `segments`, in order) and return the logits of each
        segment's last token, [len(segments), vocab]. The first `decoding` segments
        are single tokens of rows in slots 0…decoding-1 (one attention call for them
        all); each further segment is a chunk of one prompt."""
        c = self.config
        device = self.device
        positions = torch.cat(
            [torch.arange(s.start, s.start + s.count, device=device) for s in segments]
        )
        slots = torch.cat(
            [torch.full((s.count,), s.slot, device=device, dtype=torch.long) for s in segments]
        )
        slab.ensure(int(max(s.start + s.count for s in segments)))
        cos, sin = self._rope(positions)
        cos, sin = cos[:, None, :], sin[:, None, :]
        masks = self._masks(segments, decoding)
        x = self.embed[torch.tensor(ids, device=device)]
        n = len(ids)
        for i, (ln1, wq, wk, wv, wo, ln2, wg, wu, wd) in enumerate(self.layers):
            h = self._norm(x, ln1)
            q = _rotate(F.linear(h, wq).view(n, c.heads, c.head_dim), cos, sin)
            k = _rotate(F.linear(h, wk).view(n, c.kv_heads, c.head_dim), cos, sin)
            v = F.linear(h, wv).view(n, c.kv_heads, c.head_dim)
            keys, values = slab.data[i, 0], slab.data[i, 1]
            keys[slots, :, positions] = k
            values[slots, :, positions] = v
            x = x + F.linear(
                self._attend(q, keys, values, segments=segments, decoding=decoding, masks=masks), wo
            )
            h = self._norm(x, ln2)
            x = x + F.linear(F.silu(F.linear(h, wg)) * F.linear(h, wu), wd)
        last = []
        offset = 0
        for s in segments:
            offset += s.count
            last.append(offset - 1)
        x = self._norm(x[torch.tensor(last, device=device)], self.norm)
        return F.linear(x, self.lm_head)

    def _masks(self, segments: list[Segment], decoding: int) -> list[Any]:
        """Per attention call: the boolean mask of what each query token may see."""
        device = self.device
        masks: list[Any] = []
        if decoding:
            ends = torch.tensor([s.start for s in segments[:decoding]], device=device)
            width = int(ends.max()) + 1
            masks.append(
                (torch.arange(width, device=device)[None, :] <= ends[:, None])[:, None, None, :]
            )
        for s in segments[decoding:]:
            if s.start == 0:
                masks.append(None)  # a prompt from its start: plain causal attention
            else:
                seen = torch.arange(s.start + s.count, device=device)[None, :]
                mine = torch.arange(s.start, s.start + s.count, device=device)[:, None]
                masks.append((seen <= mine)[None, None])
        return masks

    def _attend(
        self, q: Any, keys: Any, values: Any, *, segments: list[Segment], decoding: int,
        masks: list[Any],
    ) -> Any:  # fmt: skip
        c = self.config
        out = []
        if decoding:
            width = masks[0].shape[-1]
            out.append(
                F.scaled_dot_product_attention(
                    q[:decoding, :, None, :],  # [rows, heads, 1, dim]
                    keys[:decoding, :, :width],
                    values[:decoding, :, :width],
                    attn_mask=masks[0],
                    scale=self.scale,
                    enable_gqa=True,
                ).reshape(decoding, c.heads * c.head_dim)
            )
        offset = decoding
        for s, mask in zip(segments[decoding:], masks[1 if decoding else 0 :], strict=True):
            end = s.start + s.count
            query = q[offset : offset + s.count].transpose(0, 1)[None]  # [1, heads, n, dim]
            attended = F.scaled_dot_product_attention(
                query,
                keys[s.slot : s.slot + 1, :, :end],
                values[s.slot : s.slot + 1, :, :end],
                attn_mask=mask,
                is_causal=mask is None,
                scale=self.scale,
                enable_gqa=True,
            )
            out.append(attended[0].transpose(0, 1).reshape(s.count, c.heads * c.head_dim))
            offset += s.count
        return out[0] if len(out) == 1 else torch.cat(out)


def _rotate(x: Any, cos: Any, sin: Any) -> Any:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos) + (rotated * sin)
