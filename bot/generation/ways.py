"""The ways a forward pass can compute its weight products and its decoding rows'
attention: the same arithmetic through different kernels. Which is fastest depends on
the CPU and its matrix library, so bot/generation/tuning.py times each on the machine;
the model looks the chosen one up once (`LlamaModel.products`, `.attention`) instead of
testing a mode in every layer."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class Products:
    """One way of computing the weight products, x @ W^T (+ bias) for a row per token:
    "linear", torch's linear. Every way computes the same sums, in kernels that may
    round them differently in the last bits; which is fastest depends on the CPU and
    its matrix library (bot/generation/tuning.py measures it)."""

    packed = False  # whether the weights are packed for oneDNN (see `LlamaModel.products`)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def mlp(self, h: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
        """down @ (silu(gate) * up), gate and up from one product."""
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


def packing_available(device: torch.device | str = "cpu") -> bool:
    """Whether weights can be packed for oneDNN here: a CPU, and a torch built with it."""
    return (
        torch.device(device).type == "cpu"
        and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def available_products(device: torch.device | str = "cpu") -> tuple[str, ...]:
    return PRODUCTS if packing_available(device) else tuple(p for p in PRODUCTS if p != "packed")


def pack(weight: Tensor) -> Tensor:
    if weight.is_mkldnn:
        return weight
    packed: Tensor = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
    return packed


def unpack(weight: Tensor) -> Tensor:
    return weight.to_dense() if weight.is_mkldnn else weight


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
