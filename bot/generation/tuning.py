"""The engine's measured choices: which way of computing the weight products and which
way of attending is fastest on this CPU, timed on the model itself, and remembered per
machine in the model cache so that only the first start pays for the measurement."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bot.generation.kv import KVSlab, Segment
from bot.generation.llama import WIDTH_STEP, LlamaModel
from bot.generation.ways import ATTENTION, available_products

log = logging.getLogger(__name__)


def cpu_prefers_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16),
    which make bf16 the faster dtype on CPU: with them a prompt was read two to three
    times faster than in float32, without them bf16 was 2.5x slower (the figures per
    machine are in the benchmark docs)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        if probe is not None:
            return bool(probe())
    except (RuntimeError, AttributeError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = info.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRODUCTS_FILE = "products.json"


def choose_products_cached(model: LlamaModel, rows: int, cache_dir: Path) -> str:
    """Set how `model` computes its weight products and its decoding rows' attention
    on this machine (`choose_products` and `choose_attention` measure them:
    a second or two on a slow CPU), remembered in `cache_dir` for the CPU, torch
    version, thread count, dtype and batch width, so only the first start on a machine
    pays for the measurement."""
    key = " | ".join(
        [_cpu_name(), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads",
         str(model.dtype).removeprefix("torch."), f"{rows} rows"]
    )  # fmt: skip
    path = cache_dir / PRODUCTS_FILE
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    offered = available_products(model.device)
    # An entry that did not time every way offered now (written before a way was
    # added) is measured again.
    if (
        isinstance(entry, dict)
        and entry.get("products") in offered
        and isinstance(entry.get("ms_per_pass"), dict)
        and set(offered) <= set(entry["ms_per_pass"])
        and entry.get("attention") in ATTENTION
        and isinstance(entry.get("attention_ms_per_pass"), dict)
        and set(ATTENTION) <= set(entry["attention_ms_per_pass"])
    ):
        try:
            model.products = entry["products"]
            model.attention = entry["attention"]
            return model.products
        except (RuntimeError, ValueError) as exc:
            log.warning("remembered weight products %s failed (%s): measuring", entry, exc)
    took = choose_products(model, rows)
    log.info("weight products: %s (ms per %d-row pass: %s)", model.products, rows, took)
    attention = choose_attention(model, rows)
    log.info("attention: %s (ms per %d-row pass: %s)", model.attention, rows, attention)
    known[key] = {
        "products": model.products, "ms_per_pass": took,
        "attention": model.attention, "attention_ms_per_pass": attention,
    }  # fmt: skip
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
        partial.replace(path)
    except OSError as exc:  # a read-only cache: measured again at the next start
        log.warning("could not remember the weight products in %s: %s", path, exc)
    return model.products


def _cpu_name() -> str:
    """The CPU's model name and a digest of its feature flags (virtual machines of
    one name can expose different instruction sets)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            lines = info.read().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    flags = fields.get("flags", fields.get("Features", ""))
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"{fields.get('model name', platform.machine())} (flags {digest})"


def choose_products(model: LlamaModel, rows: int, rounds: int = 2) -> dict[str, float]:
    """Time a decode pass of `rows` rows with each way of computing the weight
    products this machine offers, keep the fastest in `model.products`, and return the
    milliseconds a pass took each way (the best of `rounds`, after one pass to warm up).

    A decode pass multiplies a few rows by every weight matrix, read from memory, and
    the fastest way depends on the matrix library and the CPU: each of the three ways
    has been the fastest on some machine, by up to 2x (the benchmark docs have the
    figures). So it is measured on the machine (and remembered:
    `choose_products_cached`). Each way is timed in turn, so the weights are converted
    at most twice."""
    slab = model.slab(rows)
    slab.ensure(WIDTH_STEP)
    segments = [Segment(i, WIDTH_STEP - 1, 1) for i in range(rows)]

    def use(products: str) -> None:
        model.products = products

    best = _fastest(model, slab, segments, available_products(model.device), use=use, rounds=rounds)
    model.products = min(best, key=lambda p: best[p])
    return best


def choose_attention(model: LlamaModel, rows: int, rounds: int = 2) -> dict[str, float]:
    """Time a decode pass of `rows` rows, 4 * WIDTH_STEP tokens into their replies
    (where attention is a fair share of a pass), with each of `ATTENTION`'s ways; keep
    the fastest in `model.attention` and return the milliseconds a pass took each way
    (the best of `rounds`, after one pass to warm up). The slab holds more positions
    than the rows have, as while serving (it grows to the longest row seen)."""
    slab = model.slab(rows)
    position = 4 * WIDTH_STEP - 1
    slab.ensure(position + 1 + 2 * WIDTH_STEP)
    segments = [Segment(i, position - 7 * i, 1) for i in range(rows)]  # (lengths differ)

    def use(way: str) -> None:
        model.attention = way

    best = _fastest(model, slab, segments, ATTENTION, use=use, rounds=rounds)
    model.attention = min(best, key=lambda w: best[w])
    return best


def _fastest(
    model: LlamaModel, slab: KVSlab, segments: list[Segment], ways: Sequence[str],
    *, use: Callable[[str], None], rounds: int,
) -> dict[str, float]:  # fmt: skip
    """Milliseconds of a decode pass of `segments` with each way `use` sets (the best
    of `rounds`, after one pass to warm up), rounded to 0.1 ms; a way that raises
    RuntimeError (a build that cannot run it) is left out. The slab is released."""
    best: dict[str, float] = {}
    try:
        with torch.inference_mode():
            for way in ways:
                try:
                    use(way)
                    for round_ in range(rounds + 1):
                        started = time.perf_counter()
                        model.forward(slab, [0] * len(segments), segments, decoding=len(segments))
                        took = (time.perf_counter() - started) * 1000
                        if round_:  # the first pass warms up
                            best[way] = min(best.get(way, math.inf), took)
                except RuntimeError:
                    best.pop(way, None)
    finally:
        slab.release()
    return {w: round(t, 1) for w, t in best.items()}
