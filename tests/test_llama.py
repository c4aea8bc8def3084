"""The batch engine's own forward pass against transformers' implementation of each
architecture it accepts, on small randomly initialised models (no download): logits of
a whole prompt, of a prompt read in chunks, and of rows decoding together in one pass,
with each way of computing the weight products and of attending (packed for oneDNN
included: the plain matrices replaced, padding rows kept out of the cache); loading
safetensors (converted while read, joined matrices read in place). The choice between
the ways is tested in test_tuning.py; each way with the real model, in test_ways.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bot.generation import llama
from bot.generation.kv import KVSlab, Segment
from bot.generation.llama import LlamaConfig, LlamaModel
from bot.generation.ways import (
    ATTENTION,
    PRODUCTS,
    Int8Rows,
    available_products,
    dequantize_int4,
    int4_available,
    int8_available,
    int8_linear,
    packing_available,
    quantize_int4,
    quantize_int8,
)
from bot.generation.weights import llama_from_directory, llama_from_transformers

SMALL = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96,
    "max_position_embeddings": 256,
}  # fmt: skip
LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32, "rope_theta": 500000.0,
}  # fmt: skip


def build(kind: str, **extra: Any) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(kind, **SMALL, **extra)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # random biases (they start at zero)
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    return model


VARIANTS = {
    "llama": {},
    "llama-tied": {"tie_word_embeddings": True},
    "llama-attention-bias": {"attention_bias": True},
    "llama3-rope": {"rope_scaling": LLAMA3_ROPE},
    "qwen2": {},
    "mistral": {"sliding_window": None},
}


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("products", PRODUCTS)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(name: str, products: str, attention: str) -> None:
    if products not in available_products():
        pytest.skip("torch was built without oneDNN")
    kind = name.split("-", maxsplit=1)[0].removesuffix("3")
    reference = build(kind, **VARIANTS[name])
    ours = llama_from_transformers(reference)
    assert ours is not None
    ours.products = products
    ours.attention = attention
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 96, (n,), generator=g).tolist() for n in (40, 23, 57)]
    with torch.inference_mode():
        expected = [reference(torch.tensor([p])).logits[0] for p in prompts]
        slab = ours.slab(4)
        # Whole, and in two chunks beside another prompt in the same pass.
        whole = ours.forward(slab, prompts[0], [Segment(0, 0, 40)])
        torch.testing.assert_close(whole[0], expected[0][-1], atol=1e-4, rtol=1e-4)
        ours.forward(slab, prompts[1][:10], [Segment(1, 0, 10)])
        both = ours.forward(
            slab, prompts[1][10:] + prompts[2], [Segment(1, 10, 13), Segment(2, 0, 57)]
        )
        torch.testing.assert_close(both[0], expected[1][-1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(both[1], expected[2][-1], atol=1e-4, rtol=1e-4)
        # Three rows of different lengths decode one token each, in one pass.
        step = [5, 6, 7]
        got = ours.forward(
            slab, step, [Segment(0, 40, 1), Segment(1, 23, 1), Segment(2, 57, 1)], decoding=3
        )
        for i, (prompt, token) in enumerate(zip(prompts, step, strict=True)):
            want = reference(torch.tensor([[*prompt, token]])).logits[0, -1]
            torch.testing.assert_close(got[i], want, atol=1e-4, rtol=1e-4)


def test_weights_load_from_a_saved_directory(tmp_path: Path) -> None:
    reference = build("qwen2")
    reference.save_pretrained(str(tmp_path))
    loaded = llama_from_directory(tmp_path, torch.float32, "cpu")
    assert loaded is not None
    prompt = list(range(3, 30))
    with torch.inference_mode():
        got = loaded.forward(loaded.slab(1), prompt, [Segment(0, 0, len(prompt))])[0]
        want = reference(torch.tensor([prompt])).logits[0, -1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_bf16_weights_are_converted_as_they_are_read(tmp_path: Path) -> None:
    reference = build("qwen2").to(torch.bfloat16)
    reference.save_pretrained(str(tmp_path))
    loaded = llama_from_directory(tmp_path, torch.float32, "cpu")
    assert loaded is not None and loaded.dtype == torch.float32
    stored = {k: v.float() for k, v in reference.state_dict().items()}
    first = loaded.layers[0]
    p = "model.layers.0."
    want_qkv = torch.cat([stored[f"{p}self_attn.{n}_proj.weight"] for n in "qkv"])
    want_bias = torch.cat([stored[f"{p}self_attn.{n}_proj.bias"] for n in "qkv"])
    want_gate_up = torch.cat([stored[f"{p}mlp.gate_proj.weight"], stored[f"{p}mlp.up_proj.weight"]])
    assert torch.equal(first.qkv, want_qkv)
    assert torch.equal(first.qkv_bias, want_bias)
    assert torch.equal(first.gate_up, want_gate_up)
    assert torch.equal(first.down, stored[f"{p}mlp.down_proj.weight"])
    assert torch.equal(loaded.embed, stored["model.embed_tokens.weight"])


def test_a_cut_short_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    build("llama").save_pretrained(str(tmp_path))
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="cut short"):
        llama_from_directory(tmp_path, torch.float32, "cpu")
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a safetensors file"):
        llama_from_directory(tmp_path, torch.float32, "cpu")
    header = b'{"model.norm.weight": {"shape": [4]}}'
    weights.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match="malformed header"):
        llama_from_directory(tmp_path, torch.float32, "cpu")


@pytest.mark.skipif(not packing_available(), reason="torch was built without oneDNN")
@pytest.mark.parametrize("name", ["llama", "llama-tied"])
def test_packed_weights_replace_the_plain_ones(name: str) -> None:
    """Packing converts every product matrix in place (no plain copy kept, except a
    tied output matrix, which the embedding lookup reads), and unpacking gives back
    the same numbers."""
    ours = llama_from_transformers(build("llama", **VARIANTS[name]))
    assert ours is not None
    plain = [
        (layer.qkv.clone(), layer.gate_up.clone(), layer.down.clone()) for layer in ours.layers
    ]
    head = ours.lm_head.clone()
    prompt = list(range(5, 45))
    with torch.inference_mode():
        want = ours.forward(ours.slab(1), prompt, [Segment(0, 0, len(prompt))])
        ours.products = "packed"
        assert all(layer.qkv.is_mkldnn and layer.gate_up.is_mkldnn for layer in ours.layers)
        assert ours.lm_head.is_mkldnn and not ours.embed.is_mkldnn  # (tied: a packed copy)
        got = ours.forward(ours.slab(1), prompt, [Segment(0, 0, len(prompt))])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        ours.products = "linear"
    for layer, (qkv, gate_up, down) in zip(ours.layers, plain, strict=True):
        assert not layer.qkv.is_mkldnn and torch.equal(layer.qkv, qkv)
        assert torch.equal(layer.gate_up, gate_up) and torch.equal(layer.down, down)
    assert torch.equal(ours.lm_head, head)
    assert (ours.lm_head is ours.embed) is (name == "llama-tied")  # tied again
    with pytest.raises(ValueError, match="unknown"):
        ours.products = "sparse"


def test_padding_rows_stay_out_of_the_cache() -> None:
    """A pass of 21 tokens multiplies 24 rows by the weights; the 3 padding rows write
    nothing into the KV cache and change no logits."""
    assert [llama.padded_rows(n) for n in (1, 8, 16, 17, 21, 24, 25, 136)] == [
        1, 8, 16, 24, 24, 24, 32, 136,
    ]  # fmt: skip
    reference = build("llama")
    ours = llama_from_transformers(reference)
    assert ours is not None
    prompt = list(range(3, 24))
    slab = ours.slab(2)
    with torch.inference_mode():
        got = ours.forward(slab, prompt, [Segment(1, 0, len(prompt))])[0]
        want = reference(torch.tensor([prompt])).logits[0, -1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for data in slab.layers:
        assert data[:, 0].abs().sum() == 0  # the other slot: untouched
        assert data[:, 1, :, len(prompt) :].abs().sum() == 0  # nothing past the prompt
        assert data[:, 1, :, : len(prompt)].abs().sum(dim=-1).min() > 0


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "gpt2"},
        {"model_type": "llama", "hidden_act": "gelu"},
        {"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
        {"model_type": "mistral", "sliding_window": 4096},
        {"model_type": "llama", "mlp_bias": True},
    ],
)
def test_other_architectures_are_declined(config: dict[str, Any]) -> None:
    full = {**SMALL, "num_attention_heads": 4, **config}
    assert LlamaConfig.of(full) is None


def test_the_kv_slab_keeps_every_row_as_it_grows_a_layer_at_a_time() -> None:
    config = LlamaConfig(
        hidden=8, layers=3, heads=2, kv_heads=1, head_dim=4, intermediate=8, eps=1e-5,
        rope_theta=10000.0, vocab=16, tied=True, context_length=4096,
    )  # fmt: skip
    slab = KVSlab(config, slots=2, dtype=torch.float32, device="cpu")
    slab.ensure(10)
    assert slab.capacity == KVSlab.STEP and len(slab.layers) == config.layers
    first = torch.randn(config.layers, 2, 1, 10, 4)
    slab.write(0, first)
    grown_from = [layer.data_ptr() for layer in slab.layers]
    second = torch.randn(config.layers, 2, 1, 300, 4)
    slab.write(1, second)  # grows every layer to 384 positions
    assert slab.capacity == 3 * KVSlab.STEP
    assert all(layer.data_ptr() != old for layer, old in zip(slab.layers, grown_from, strict=True))
    assert torch.equal(slab.read(0, 10), first) and torch.equal(slab.read(1, 300), second)
    slab.move(1, 0, 50)
    assert torch.equal(slab.read(0, 50), second[:, :, :, :50])
    slab.write(1, first, length=4)  # only the first 4 positions
    assert torch.equal(slab.read(1, 4), first[:, :, :, :4])
    assert torch.equal(slab.read(1, 300)[:, :, :, 4:], second[:, :, :, 4:])
    slab.release()
    assert slab.capacity == 0 and not slab.layers and slab.slots == 0


def test_a_forward_that_grows_the_slab_keeps_the_rows_it_held() -> None:
    """A prompt read into a slot past those held grows the slab inside the forward pass:
    the rows read before decode on as if each were alone."""
    ours = llama_from_transformers(build("llama"))
    assert ours is not None
    prompts = [list(range(3 + i, 20 + 2 * i)) for i in range(5)]
    slab = ours.slab(6)
    with torch.inference_mode():
        for i, p in enumerate(prompts[:4]):
            ours.forward(slab, p, [Segment(i, 0, len(p))])
        assert slab.slots == 4
        ours.forward(slab, prompts[4], [Segment(4, 0, len(prompts[4]))])
        assert slab.slots == 6
        step = [Segment(i, len(p), 1) for i, p in enumerate(prompts)]
        together = ours.forward(slab, [7] * 5, step, decoding=5)
        for i, p in enumerate(prompts):
            alone = ours.slab(1)
            ours.forward(alone, p, [Segment(0, 0, len(p))])
            want = ours.forward(alone, [7], [Segment(0, len(p), 1)], decoding=1)[0]
            torch.testing.assert_close(together[i], want, atol=1e-5, rtol=1e-5)


def test_a_slab_that_fails_to_grow_half_way_holds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory after some layers grew: nothing is held (no row's keys and values
    can be trusted; the engine fails every row), and the error goes on up."""
    config = LlamaConfig(
        hidden=8, layers=3, heads=2, kv_heads=1, head_dim=4, intermediate=8, eps=1e-5,
        rope_theta=10000.0, vocab=16, tied=True, context_length=4096,
    )  # fmt: skip
    slab = KVSlab(config, slots=8, dtype=torch.float32, device="cpu")
    slab.write(0, torch.randn(config.layers, 2, 1, 10, 4))
    zeros, made = torch.zeros, []

    def scarce(*shape: Any, **kw: Any) -> torch.Tensor:
        made.append(shape)
        if len(made) == 2:
            raise RuntimeError("not enough memory")
        return zeros(*shape, **kw)

    monkeypatch.setattr(torch, "zeros", scarce)
    with pytest.raises(RuntimeError, match="not enough memory"):
        slab.ensure(10, 5)
    assert (slab.layers, slab.slots, slab.capacity) == ([], 0, 0)


def test_the_kv_slab_holds_the_slots_asked_for_in_steps_and_keeps_them_as_it_grows() -> None:
    """Slots are held as rows take them, SLOT_STEP at a time, up to the most it was made
    for; growing copies every slot held, at every position held."""
    config = LlamaConfig(
        hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=8, eps=1e-5,
        rope_theta=10000.0, vocab=16, tied=True, context_length=4096,
    )  # fmt: skip
    slab = KVSlab(config, slots=6, dtype=torch.float32, device="cpu")
    assert KVSlab.SLOT_STEP == 4
    slab.ensure(10)
    assert (slab.slots, slab.layers[0].shape[1]) == (4, 4)
    rows = [torch.randn(config.layers, 2, 1, 10, 4) for _ in range(4)]
    for slot, states in enumerate(rows):
        slab.write(slot, states)
    slab.write(5, rows[0], length=3)  # a slot past those held: up to the most, 6
    assert (slab.slots, slab.layers[0].shape[1], slab.capacity) == (6, 6, KVSlab.STEP)
    assert all(torch.equal(slab.read(s, 10), states) for s, states in enumerate(rows))
    assert torch.equal(slab.read(5, 3), rows[0][..., :3, :])
    assert slab.read(4, 10).abs().sum() == 0  # a slot no row took: zeros
    slab.ensure(200, 2)  # longer rows: every slot held keeps its place
    assert (slab.slots, slab.capacity) == (6, 2 * KVSlab.STEP)
    assert all(torch.equal(slab.read(s, 10), states) for s, states in enumerate(rows))
    with pytest.raises(ValueError, match="at most 6"):
        slab.ensure(10, 7)
    slab.move(0, 4, 10)
    assert torch.equal(slab.read(4, 10), rows[0])


def small_model(dtype: torch.dtype) -> LlamaModel:
    """A small random model (the test is skipped where torch has no 4-bit kernel)."""
    ours = llama_from_transformers(build("llama").to(dtype))
    assert ours is not None
    if not ours.int4_available():
        pytest.skip("no 4-bit kernel in this torch")
    return ours


def test_4bit_groups_come_back_as_they_were() -> None:
    """A matrix whose every group of 32 is 16 evenly spaced levels (as the embedded
    model's GGUF stores its layers) is held exactly; any other within half a step of
    its group."""
    g = torch.Generator().manual_seed(3)
    levels = torch.randint(0, 16, (96, 128), generator=g).float()
    steps = 2.0 ** -torch.randint(4, 9, (96, 4, 1), generator=g).float()
    lows = torch.randint(-64, 0, (96, 4, 1), generator=g).float() * steps
    exact = (lows + levels.view(96, 4, 32) * steps).view(96, 128)
    exact[:, ::32] = lows.view(96, 4)  # (each group's minimum and maximum present)
    exact[:, 1::32] = (lows + 15 * steps).view(96, 4)
    exact = exact.to(torch.bfloat16)
    if not int4_available(exact):
        pytest.skip("no 4-bit kernel in this torch")
    assert torch.equal(dequantize_int4(quantize_int4(exact), 128), exact)
    weight = torch.randn(96, 128, generator=g).to(torch.bfloat16)
    back = dequantize_int4(quantize_int4(weight), 128).float()
    groups = weight.float().view(96, 4, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    error = (back - weight.float()).view(96, 4, 32).abs().amax(-1)
    assert bool((error <= step / 2 + groups.abs().amax(-1) / 64).all())  # (bf16 offsets)
    # float32 weights holding the same values make the same groups.
    assert int4_available(exact.float())
    assert torch.equal(quantize_int4(exact.float()).packed, quantize_int4(exact).packed)
    assert torch.equal(quantize_int4(exact.float()).scales_zeros, quantize_int4(exact).scales_zeros)
    assert not int4_available(weight.half()) and not int4_available(weight[:, :100])


def test_8bit_rows_come_back_within_half_a_step() -> None:
    """The output layer's 8-bit rows (`ways.quantize_int8`): a row whose values are
    whole steps of its largest magnitude / 127 is held exactly; any other within half
    a step (and the bf16 scale's rounding); the product is the dequantized matrix's."""
    if not int8_available():
        pytest.skip("no 8-bit kernel in this torch")
    g = torch.Generator().manual_seed(5)
    steps = 2.0 ** -torch.randint(4, 9, (64, 1), generator=g).float()
    exact = torch.randint(-127, 128, (64, 96), generator=g).float() * steps
    exact[:, 0] = 127 * steps[:, 0]  # (each row's largest magnitude present)
    held = quantize_int8(exact)
    assert held.levels.dtype == torch.int8 and held.scales.dtype == torch.bfloat16
    assert torch.equal(held.levels.float() * held.scales.float()[:, None], exact)
    weight = torch.randn(64, 96, generator=g)
    held = quantize_int8(weight)
    back = held.levels.float() * held.scales.float()[:, None]
    step = weight.abs().amax(1, keepdim=True) / 127
    assert bool(((back - weight).abs() <= step / 2 + weight.abs() / 128).all())
    x = torch.randn(3, 96, generator=g)
    expected = x.bfloat16().float() @ back.t()
    torch.testing.assert_close(int8_linear(x, held), expected, atol=0.05, rtol=0.02)
    assert int8_linear(x, held).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_passes_of_few_rows_use_the_4bit_weights(dtype: torch.dtype) -> None:
    """Up to `int4_rows` decoding rows, the layers multiply by the 4-bit weights and the
    output layer by its 8-bit rows (the logits of a model holding their dequantized
    values); a wider pass, or one that reads a prompt, by the dtype's, as if there were
    no narrower weights."""
    ours, plain, rounded = small_model(dtype), small_model(dtype), small_model(dtype)
    ours.int4_rows = 2
    assert all(layer.int4 is not None for layer in ours.layers)
    if int8_available():
        assert ours.head8 is not None
        levels, scales = ours.head8.levels, ours.head8.scales
        rounded.lm_head = (levels.float() * scales.float()[:, None]).to(dtype)
    for layer, source in zip(rounded.layers, ours.layers, strict=True):
        assert source.int4 is not None
        layer.qkv, layer.out, layer.gate_up, layer.down = (
            dequantize_int4(w, dense.shape[1]).to(dtype)
            for w, dense in zip(source.int4, (layer.qkv, layer.out, layer.gate_up, layer.down),
                                strict=True)
        )  # fmt: skip
    prompts = [list(range(3, 20)), list(range(30, 41)), list(range(50, 63))]

    def run(model: Any, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        slab = model.slab(3)
        with torch.inference_mode():
            for i, p in enumerate(prompts):
                read = model.forward(slab, p, [Segment(i, 0, len(p))])
            step = [Segment(i, len(prompts[i]), 1) for i in range(rows)]
            return read, model.forward(slab, [7] * rows, step, decoding=rows)

    read, two = run(ours, 2)
    assert torch.equal(read, run(plain, 2)[0])  # a prompt: the bf16 weights
    torch.testing.assert_close(two, run(rounded, 2)[1], atol=0.05, rtol=0.02)
    assert not torch.equal(two, run(plain, 2)[1])
    assert torch.equal(run(ours, 3)[1], run(plain, 3)[1])  # three rows: wider than 2
    if ours.head8 is not None:  # the narrow pass's logits are the 8-bit rows' products
        kept = ours.head8
        ours.head8 = Int8Rows(kept.levels, kept.scales * 2)
        torch.testing.assert_close(run(ours, 2)[1], 2 * two, rtol=1e-2, atol=1e-3)
        assert torch.equal(run(ours, 3)[1], run(plain, 3)[1])
        ours.head8 = kept
    ours.use_int4(1)
    assert torch.equal(run(ours, 2)[1], run(plain, 2)[1])
    ours.int4_rows = 0
    assert all(layer.int4 is None for layer in ours.layers) and ours.head8 is None
    with pytest.raises(ValueError, match="not built"):
        ours.use_int4(1)
    with pytest.raises(ValueError, match="bf16 or float32"):
        llama_from_transformers(build("llama").half()).int4_rows = 1
