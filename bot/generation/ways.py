"""The ways a forward pass can compute its weight products and its decoding rows'
attention: the same arithmetic through different kernels. Which is fastest depends on
the CPU and its matrix library, so bot/generation/tuning.py times each on the machine;
the model looks the chosen one up once (`LlamaModel.products`, `.attention`) instead of
testing a mode in every layer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class Products:
    """One way of computing the weight products, x @ W^T (+ bias) for a row per token:
    "linear", torch's linear. Every way computes the same sums, in kernels that may
    round them differently in the last bits; which is fastest depends on the CPU and
    its matrix library (bot/generation/tuning.py measures it)."""

    packed = False  # whether the weights are packed for oneDNN (see `LlamaModel.products`)

    def linear(self, x: Tensor, weight: Any, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def mlp(self, h: Tensor, gate_up: Any, down: Any) -> Tensor:
        """down @ (silu(gate) * up), gate and up from one product (the weights as this
        way's `linear` takes them)."""
        gate, up = self.linear(h, gate_up, None).chunk(2, dim=-1)
        return self.linear(F.silu(gate) * up, down, None)


class _Transposed(Products):
    """(W @ x^T)^T: the weight as the left operand, the same sums in another order of
    operands (some matrix libraries multiply a few rows faster so)."""

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out = (weight @ x.t()).t()
        return out if bias is None else out + bias

    def mlp(self, h: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
        gate, up = (gate_up @ h.t()).chunk(2, dim=0)  # stay transposed into down's product
        return (down @ (F.silu(gate) * up)).t()


class _Packed(Products):
    """oneDNN's linear on weights reordered once into its blocked layout (torch's own
    linear reorders a bf16 weight on every call)."""

    packed = True

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out: Tensor = torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), weight, bias, "none", [], ""
        )
        return out


PRODUCT_WAYS: dict[str, Products] = {
    "linear": Products(), "transposed": _Transposed(), "packed": _Packed(),
}  # fmt: skip
PRODUCTS = tuple(PRODUCT_WAYS)

# The batch width oneDNN is told to expect when a weight is packed (it picks the
# blocked layout by it; any number of rows can be multiplied by the packed weight).
PACK_ROWS = 8


def packing_available(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> bool:
    """Whether weights of `dtype` can be packed for oneDNN here: a CPU, a torch built with
    it, and for bf16 a CPU oneDNN packs it on (AVX-512 or AVX-NE-CONVERT: with AVX2 only,
    packing a bf16 matrix raises)."""
    return (
        torch.device(device).type == "cpu"
        and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and _packs(dtype)
    )


@functools.cache
def _packs(dtype: torch.dtype) -> bool:
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), PACK_ROWS)
    except RuntimeError:
        return False
    return True


def available_products(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[str, ...]:
    """The ways of computing the products that weights of `dtype` can take here."""
    if packing_available(device, dtype):
        return PRODUCTS
    return tuple(p for p in PRODUCTS if p != "packed")


def pack(weight: Tensor) -> Tensor:
    if weight.is_mkldnn:
        return weight
    packed: Tensor = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
    return packed


def unpack(weight: Tensor) -> Tensor:
    return weight.to_dense() if weight.is_mkldnn else weight


# 4-bit weights for decode passes: every group of INT4_GROUP consecutive weights of a
# row (along the input) holds 16 levels, from its own bf16 scale and offset. The
# embedded model's layers are 4-bit at their source (GGUF Q4_1, blocks of 32 along the
# input), so its groups come back from the bf16 weights nearly as they were.
INT4_GROUP = 32


@dataclass(frozen=True, slots=True)
class Int4Weight:
    """A weight matrix (out, in) in 4-bit groups, packed for torch's CPU kernel."""

    packed: Tensor  # (out, in / 2) uint8, as `_convert_weight_to_int4pack_for_cpu` lays it
    scales_zeros: Tensor  # (in / INT4_GROUP, out, 2) bf16: each group's scale and offset

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes + self.scales_zeros.nbytes)


def int4_available(weight: Tensor) -> bool:
    """Whether `weight` can be held in 4-bit groups here: a bf16 or float32 matrix on a
    CPU whose torch has the kernel, with a whole number of groups per row."""
    return (
        weight.device.type == "cpu"
        and weight.dtype in (torch.bfloat16, torch.float32)
        and weight.dim() == 2
        and weight.shape[1] % INT4_GROUP == 0
        and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        and hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")
    )


def quantize_int4(weight: Tensor) -> Int4Weight:
    """Each group of INT4_GROUP weights as 16 evenly spaced levels from its minimum to its
    maximum (both kept), w = (q - 8) * scale + offset as the kernel computes it."""
    rows, inputs = weight.shape
    groups = weight.float().view(rows, inputs // INT4_GROUP, INT4_GROUP)
    low, high = groups.aminmax(dim=-1)
    scale = ((high - low) / 15).clamp_(min=torch.finfo(torch.bfloat16).tiny)
    levels = torch.round((groups - low[..., None]) / scale[..., None]).clamp_(0, 15)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        levels.to(torch.int32).view(rows, inputs), 1
    )
    offset = low + 8 * scale
    scales_zeros = torch.stack((scale.t(), offset.t()), dim=-1).to(torch.bfloat16).contiguous()
    return Int4Weight(packed, scales_zeros)


def int4_shapes(rows: int, inputs: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of an (rows, inputs) matrix's `Int4Weight`: packed, scales_zeros."""
    return (rows, inputs // 2), (inputs // INT4_GROUP, rows, 2)


def quantized_shapes(model: Any) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """The shapes of a `LlamaModel`'s 4-bit weights, by matrix (qkv, out, gate_up, down)."""
    c = model.config
    return {
        "qkv": int4_shapes((c.heads + 2 * c.kv_heads) * c.head_dim, c.hidden),
        "out": int4_shapes(c.hidden, c.heads * c.head_dim),
        "gate_up": int4_shapes(2 * c.intermediate, c.hidden),
        "down": int4_shapes(c.hidden, c.intermediate),
    }


def dequantize_int4(weight: Int4Weight, inputs: int) -> Tensor:
    """The bf16 matrix (out, inputs) the kernel multiplies by, as the identity's product
    (for tests and measurements)."""
    return int4_linear(torch.eye(inputs, dtype=torch.bfloat16), weight).t().contiguous()


def int4_linear(x: Tensor, weight: Int4Weight) -> Tensor:
    """x @ W^T for bf16 rows `x`, in bf16."""
    out: Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
        x.contiguous(), weight.packed, INT4_GROUP, weight.scales_zeros
    )
    return out


class Int4Products(Products):
    """The products of a decode pass with the layers' weights in 4-bit groups (a quarter
    of the bytes of bf16 read from memory, an eighth of float32's; the dequantizing
    costs arithmetic per row, so it pays on passes of few rows: bot/generation/tuning.py
    measures up to how many).

    The rows are multiplied in bf16 whatever the model's dtype: torch's kernel has its
    fast path for bf16 rows with bf16 scales only (float32 rows took three to four times
    as long as float32's own products on an AVX2 machine, bf16 rows less than half as
    long: docs/engine.md). A float32 model's rows are rounded to bf16 for the product
    and its result comes back in float32."""

    def linear(self, x: Tensor, weight: Any, bias: Tensor | None) -> Tensor:
        out = int4_linear(x.to(torch.bfloat16), weight).to(x.dtype)
        return out if bias is None else out + bias

    def mlp(self, h: Tensor, gate_up: Any, down: Any) -> Tensor:
        gate, up = int4_linear(h.to(torch.bfloat16), gate_up).chunk(2, dim=-1)
        return int4_linear(F.silu(gate) * up, down).to(h.dtype)  # (no float32 between)


INT4_PRODUCTS = Int4Products()


@dataclass(frozen=True, slots=True)
class Int8Rows:
    """A weight matrix (out, in) as int8 levels, one bf16 scale per output row, for
    torch's `_weight_int8pack_mm`: the output layer of a narrow decode pass."""

    levels: Tensor  # (out, in) int8
    scales: Tensor  # (out,) bf16


def int8_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def quantize_int8(weight: Tensor) -> Int8Rows:
    """Each row as 255 evenly spaced levels from -max to max of its magnitudes."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127).clamp_(min=torch.finfo(torch.bfloat16).tiny)
    levels = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return Int8Rows(levels.contiguous(), scale.to(torch.bfloat16))


def int8_linear(x: Tensor, weight: Int8Rows) -> Tensor:
    """x @ W^T, the rows rounded to bf16 (the kernel's fast path), in x's dtype."""
    out: Tensor = torch.ops.aten._weight_int8pack_mm(
        x.to(torch.bfloat16).contiguous(), weight.levels, weight.scales
    )
    return out.to(x.dtype)


# How the decoding rows (one query each) attend to their cached keys and values. Each
# way takes their queries (rows, heads, head_dim), a layer's keys and values (slots,
# kv_heads, capacity, head_dim), of which slots 0…rows-1 are theirs, the mask added to
# the scores (rows, 1, 1, width) and the scale; it returns (rows, heads * head_dim).
DecodeAttention = Callable[[Tensor, Tensor, Tensor, Tensor, float], Tensor]


def _decode_matmul(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, scale: float) -> Tensor:
    """Written out as two batched matrix products with the softmax in float32 between
    them, grouped by KV head (query head h reads KV head h // group, as transformers'
    repeat_kv). The matrix library needs a contiguous batch, so the slab's rows are
    copied first whenever it holds more positions than `width`."""
    (rows, heads, dim), kv_heads, width = q.shape, keys.shape[1], mask.shape[-1]
    query = q.view(rows, kv_heads, heads // kv_heads, dim)
    # keys @ query^T, transposed: the slab's rows are read in their own order (faster
    # than query @ keys^T in bf16).
    scores = torch.matmul(keys[:rows, :, :width], query.transpose(-1, -2))
    scores = scores.transpose(-1, -2)  # (rows, kv_heads, group, width)
    scores = torch.add(mask, scores.float(), alpha=scale)
    probs = scores.softmax(dim=-1).to(q.dtype)
    attended = torch.matmul(probs, values[:rows, :, :width])  # (rows, kv_heads, group, dim)
    return attended.reshape(rows, heads * dim)


def _decode_sdpa(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, scale: float) -> Tensor:
    """torch's scaled_dot_product_attention, whose CPU kernel reads the slab's rows
    where they lie."""
    (rows, heads, dim), width = q.shape, mask.shape[-1]
    attended = F.scaled_dot_product_attention(
        # (rows, heads, 1, head_dim), each head's numbers adjacent (its CPU kernel needs
        # them so; transposed products leave them apart)
        q.contiguous().unsqueeze(2),
        keys[:rows, :, :width],
        values[:rows, :, :width],
        attn_mask=mask,
        scale=scale,
        enable_gqa=True,
    )
    return attended.reshape(rows, heads * dim)


ATTENTION_WAYS: dict[str, DecodeAttention] = {"matmul": _decode_matmul, "sdpa": _decode_sdpa}
ATTENTION = tuple(ATTENTION_WAYS)
