"""Every way the engine can choose to compute (each way of the weight products this torch
offers, each way of attending), pinned on its own, with the real embedded model against
transformers' float32 forward pass over the same text. Which way this machine would
measure as the fastest plays no part.

- float32, where the arithmetic is exact up to rounding: every token a batched greedy
  reply picks is transformers' greedy choice, up to a rounding tie (`TIE`);
- bf16, where each kernel rounds its sums its own way (the greedy text of two ways
  parts after a few dozen tokens): every logit lies within `BF16_BOUND` of the float32
  logit of the same text."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch

from bot.generation.batch import BatchEngine
from bot.generation.kv import Segment
from bot.generation.llama import LlamaModel
from bot.generation.local import LocalGenerator
from bot.generation.ways import ATTENTION, PRODUCTS, available_products
from bot.generation.weights import llama_from_directory
from tests.conftest import embedded_model_dir
from tests.test_batching import GREEDY, QUESTIONS, assert_greedy, chat, decode, float32

WAYS = list(itertools.product(PRODUCTS, ATTENTION))

# How far a bf16 logit may lie from the float32 logit of the same text. bf16 keeps 8
# significant bits: the largest logits (about 37) are rounded to steps of 0.25, and
# every layer rounds its output again, each kernel in its own order. Measured on these
# texts, the six ways lay 0.66 to 1.02 from the float32 logits at most and transformers'
# own bf16 forward pass 0.79; on other prompts with longer replies, the ways 0.79 to
# 0.94 and transformers' bf16 1.44. The bound is what bf16 arithmetic gives, a little
# above the worst seen from either; a pass attending to the wrong positions lands
# beyond it (a decoding row seeing one position too many: 1.68; positions off by one
# from the 40th token on: 4.3). Subtler errors are for the float32 tests to catch.
BF16_BOUND = 1.5


@pytest.fixture(scope="module")
def lone() -> Iterator[LocalGenerator]:
    """transformers' own model in float32, one request at a time: the reference."""
    gen = LocalGenerator.load(float32(), max_batch=1)
    yield gen
    gen.close()


def engine_model(dtype: torch.dtype) -> LlamaModel:
    model = llama_from_directory(embedded_model_dir(), dtype, "cpu")
    assert model is not None
    return model


@pytest.fixture(scope="module")
def float32_model() -> LlamaModel:
    return engine_model(torch.float32)


@pytest.fixture(scope="module")
def bf16_model() -> LlamaModel:
    return engine_model(torch.bfloat16)


def pinned(model: LlamaModel, products: str, attention: str) -> LlamaModel:
    if products not in available_products(model.device, model.dtype):
        pytest.skip(f"torch was built without oneDNN, or it packs no {model.dtype} here")
    model.products, model.attention = products, attention
    return model


@pytest.mark.parametrize(("products", "attention"), WAYS)
async def test_each_way_decodes_the_reference_greedy_replies_in_float32(
    products: str, attention: str, float32_model: LlamaModel, lone: LocalGenerator
) -> None:
    """Three replies decoded together, prompts read in chunks of 32 beside the decoding
    rows; every token is transformers' greedy choice."""
    model = pinned(float32_model, products, attention)
    engine = BatchEngine(
        model, eos_ids=lone._eos_ids, context_length=lone.context_length, max_batch=3, chunk=32
    )
    try:
        prompts = [lone.render(chat(q)) for q in QUESTIONS[:3]]
        params = replace(GREEDY, max_new_tokens=16)
        got = await asyncio.gather(*(decode(engine, p, params) for p in prompts))
        assert engine.stats.widest == 3  # they decoded together
    finally:
        engine.close()
    for prompt, ids in zip(prompts, got, strict=True):
        assert ids
        assert_greedy(lone, prompt, ids, limit=params.max_new_tokens)


Text = tuple[list[int], list[int], torch.Tensor]


@pytest.fixture(scope="module")
async def texts(lone: LocalGenerator, float32_model: LlamaModel) -> list[Text]:
    """Prompts, a greedy continuation of each (16 tokens, decoded in float32 by the
    engine: any text will do, the logits are compared on the same text), and
    transformers' float32 logits from the prompt's last token on."""
    prompts = [lone.render(chat(q)) for q in QUESTIONS[:4]]
    model = pinned(float32_model, "linear", "matmul")
    engine = BatchEngine(model, eos_ids=[], context_length=lone.context_length, max_batch=4)
    try:
        params = replace(GREEDY, max_new_tokens=16)
        replies = await asyncio.gather(*(decode(engine, p, params) for p in prompts))
    finally:
        engine.close()
    with torch.inference_mode():
        return [
            (p, r, lone._model(torch.tensor([p + r])).logits[0, len(p) - 1 :])
            for p, r in zip(prompts, replies, strict=True)
        ]


@pytest.mark.parametrize(("products", "attention"), WAYS)
def test_each_way_keeps_bf16_logits_near_the_float32_logits(
    products: str,
    attention: str,
    bf16_model: LlamaModel,
    texts: list[Text],
) -> None:
    """The same text through every kind of pass: a prompt read whole, one read in two
    chunks (the second beside two more prompts), then four rows decoding together."""
    model = pinned(bf16_model, products, attention)
    prompts = [p for p, _, _ in texts]
    n = [len(p) for p in prompts]
    got: list[list[torch.Tensor]] = [[] for _ in texts]
    with torch.inference_mode():
        slab = model.slab(len(texts))
        got[0].append(model.forward(slab, prompts[0], [Segment(0, 0, n[0])])[0])
        model.forward(slab, prompts[1][:20], [Segment(1, 0, 20)])
        rest = [Segment(1, 20, n[1] - 20), Segment(2, 0, n[2]), Segment(3, 0, n[3])]
        logits = model.forward(slab, prompts[1][20:] + prompts[2] + prompts[3], rest)
        for i in (1, 2, 3):
            got[i].append(logits[i - 1])
        for step in range(len(texts[0][1])):
            ids = [reply[step] for _, reply, _ in texts]
            rows = [Segment(i, n[i] + step, 1) for i in range(len(texts))]
            logits = model.forward(slab, ids, rows, decoding=len(texts))
            for i in range(len(texts)):
                got[i].append(logits[i])
    worst = max(
        float((torch.stack(ours).float() - exact).abs().max())
        for (_, _, exact), ours in zip(texts, got, strict=True)
    )
    print(f"{products}, {attention}: bf16 logits at most {worst:.3f} from float32")
    assert worst <= BF16_BOUND, f"{products}, {attention}: a logit {worst:.3f} from float32"


@pytest.mark.parametrize("dtype", ["bf16", "float32"])
def test_4bit_decode_passes_stay_near_the_float32_logits(
    dtype: str, request: pytest.FixtureRequest, texts: list[Text]
) -> None:
    """The layers' weights in 4-bit groups (`LlamaModel.int4_rows`: decode passes of few
    rows): the same texts as above, the prompts read with the model's own weights, then
    four rows decoding with the 4-bit ones (which multiply bf16 rows, in a float32
    model too). The embedded model's layers are 4-bit at their source, so its logits
    stay within the bf16 bound, and the reply tokens are as likely as with the dtype's
    weights (their mean log-likelihood, the log of perplexity)."""
    model = request.getfixturevalue(f"{dtype}_model")
    if not model.int4_available():
        pytest.skip("no 4-bit kernel in this torch")
    model = pinned(model, "linear", "matmul")
    prompts = [p for p, _, _ in texts]
    n = [len(p) for p in prompts]

    def decoded(int4_rows: int) -> list[list[torch.Tensor]]:
        model.int4_rows = int4_rows
        got: list[list[torch.Tensor]] = [[] for _ in texts]
        with torch.inference_mode():
            slab = model.slab(len(texts))
            for i, p in enumerate(prompts):
                model.forward(slab, p[:-1], [Segment(i, 0, n[i] - 1)])
            for step in range(len(texts[0][1])):
                ids = [(p[-1:] + reply)[step] for p, reply, _ in texts]
                rows = [Segment(i, n[i] - 1 + step, 1) for i in range(len(texts))]
                logits = model.forward(slab, ids, rows, decoding=len(texts))
                for i in range(len(texts)):
                    got[i].append(logits[i])
        return got

    try:
        quantized, dense = decoded(len(texts)), decoded(0)
    finally:
        model.int4_rows = 0

    def mean_log_likelihood(got: list[list[torch.Tensor]]) -> float:
        scores = [
            torch.stack(ours).float().log_softmax(-1)[torch.arange(len(reply)), reply].mean()
            for (_, reply, _), ours in zip(texts, got, strict=True)
        ]
        return float(torch.stack(scores).mean())

    worst = max(
        float((torch.stack(ours).float() - exact[: len(ours)]).abs().max())
        for (_, _, exact), ours in zip(texts, quantized, strict=True)
    )
    assert (
        max(
            float((torch.stack(q).float() - torch.stack(d).float()).abs().max())
            for q, d in zip(quantized, dense, strict=True)
        )
        > 0
    )  # (the 4-bit weights were used)
    four, own = mean_log_likelihood(quantized), mean_log_likelihood(dense)
    print(f"4-bit in {dtype}: logits at most {worst:.3f} from float32; log-likelihood "
          f"{four:.4f}, {dtype} weights {own:.4f}")  # fmt: skip
    assert worst <= BF16_BOUND
    assert four >= own - 0.05
