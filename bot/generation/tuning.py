"""The engine's measured choices: which way of computing the weight products and which
way of attending is fastest on this CPU (bot/generation/ways.py), timed on the model
itself and remembered per machine in the model cache, so that only the first start
pays for the measurement.

A measurement is trusted only when it is steady: each way is timed over several
passes, interleaved with the others so that a spell of load falls on every way alike,
and the median kept; when a pass lies far from its way's median, something else had
the CPU, and it is measured again. A choice that could not be measured steadily is
used for the run but not remembered. What is remembered is checked at every start."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# Timed passes of each way, after one to warm it up.
ROUNDS = 5
# A measurement is steady when every pass of a way lies within this factor of the way's
# median, above and below: on a quiet machine a way's passes stayed within 1.4x of their
# median, and while another process took a core for a moment single passes took 2x
# and more.
STEADY = 1.5
# Measurements at a start before an unsteady one is settled for (for this run only).
ATTEMPTS = 2
# Passes with the remembered ways at every start, after one to warm up; a record more
# than FAR times slower than their median was taken while the machine was busier.
CHECKS = 3
FAR = 1.5

PRODUCTS_FILE = "products.json"

# What `choose_int4` times at each row count: the model's dtype's weights, and 4-bit.
INT4_WAYS = ("dense", "int4")

# Runs one decode pass of the segments (every one a decoding row) and returns its
# milliseconds; the tests give one that returns planned times.
PassTimer = Callable[[LlamaModel, KVSlab, list[Segment]], float]


def timed_pass(model: LlamaModel, slab: KVSlab, segments: list[Segment]) -> float:
    started = time.perf_counter()
    model.forward(slab, [0] * len(segments), segments, decoding=len(segments))
    return (time.perf_counter() - started) * 1000


@dataclass(frozen=True, slots=True)
class Timing:
    """Milliseconds of each way's timed passes, in the order they ran."""

    passes: dict[str, list[float]]

    def medians(self) -> dict[str, float]:
        return {way: statistics.median(times) for way, times in self.passes.items()}

    def fastest(self) -> str:
        medians = self.medians()
        return min(medians, key=medians.__getitem__)

    def steady(self) -> bool:
        """Whether every pass lies within STEADY of its way's median: a pass far slower
        means something else took the CPU while it ran (and one far faster, that the
        median itself was taken while something did)."""
        return all(
            median / STEADY <= t <= median * STEADY
            for way, median in self.medians().items()
            for t in self.passes[way]
        )

    def joined(self, other: Timing) -> Timing:
        """The passes of both, for the ways timed in both."""
        return Timing(
            {w: [*t, *other.passes[w]] for w, t in self.passes.items() if w in other.passes}
        )

    def rounded(self) -> dict[str, float]:
        return {way: round(median, 1) for way, median in self.medians().items()}


def choose_ways(
    model: LlamaModel,
    rows: int,
    cache_dir: Path,
    *,
    timer: PassTimer = timed_pass,
    int4: bool = True,
) -> None:
    """Set how `model` computes its weight products and its decoding rows' attention on
    this machine, and up to how many rows its decode passes use 4-bit weights (with
    `int4` and bf16 weights on a CPU: `LlamaModel.int4_rows`): as remembered in
    `cache_dir` for this CPU, torch version, thread count, model shape, dtype and batch
    width, or measured (`choose_products`, `choose_attention`, then `choose_int4`: a
    few seconds) and remembered when the measurement was steady.

    What is remembered is validated at every start: every way offered now was timed
    (a way added since is measured), the chosen ones are the fastest recorded, and the
    record was taken steadily. Then a few passes with the remembered ways are timed:
    far faster than recorded, the record was taken while the machine was busier, and
    it is measured again (replaced only by a steady measurement); far slower, this
    machine is busy now, and the record stands (measuring now would be worse)."""
    key = _key(model, rows)
    path = cache_dir / PRODUCTS_FILE
    known = _read(path)
    int4 = int4 and model.int4_available()
    if not int4:
        model.int4_rows = 0
    entry = _valid(
        known.get(key), available_products(model.device, model.dtype), rows if int4 else None
    )
    if entry is not None and not _use(model, entry, int4=int4):
        entry = None
    if entry is not None:
        now = _check(model, rows, timer)
        recorded = float(entry["attention_ms_per_pass"][entry["attention"]])
        if now is not None and recorded <= FAR * now:
            return
        log.info("a %d-row pass: %s ms, remembered as %s: measuring again", rows, now, recorded)

    # The products and the attention are timed on the dtype's weights (a remembered
    # 4-bit limit would route every pass timed through the 4-bit ones); `choose_int4`
    # sets the limit again afterwards.
    model.use_int4(0)

    def use_products(way: str) -> None:
        model.products = way

    def use_attention(way: str) -> None:
        model.attention = way

    products, steady = _steadily(lambda: choose_products(model, rows, timer=timer), use_products)
    log.info(
        "weight products: %s (ms per %d-row pass: %s)", model.products, rows, products.rounded()
    )
    attention, steady_too = _steadily(
        lambda: choose_attention(model, rows, timer=timer), use_attention
    )
    log.info("attention: %s (ms per %d-row pass: %s)", model.attention, rows, attention.rounded())
    quantized: dict[int, Timing] = {}
    steady_int4 = True
    if int4:
        quantized, steady_int4 = choose_int4(model, rows, timer=timer)
        log.info(
            "4-bit weights for decode passes of up to %d rows (ms per pass: %s)",
            model.int4_rows, {n: t.rounded() for n, t in quantized.items()},
        )  # fmt: skip
    if not (steady and steady_too and steady_int4):
        if entry is not None:  # (a steady record is worth more than an unsteady measurement)
            _use(model, entry, int4=int4)
        log.info("the CPU was busy while measuring: these ways are not remembered")
        return
    known[key] = {
        "products": model.products, "ms_per_pass": products.rounded(),
        "attention": model.attention, "attention_ms_per_pass": attention.rounded(),
        "rounds": ROUNDS, "steady": True,
    }  # fmt: skip
    if int4:
        known[key]["int4_rows"] = model.int4_rows
        known[key]["int4_ms_per_pass"] = {str(n): t.rounded() for n, t in quantized.items()}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
        partial.replace(path)
    except OSError as exc:  # a read-only cache: measured again at the next start
        log.warning("could not remember the weight products in %s: %s", path, exc)


def choose_products(
    model: LlamaModel, rows: int, *, rounds: int = ROUNDS, timer: PassTimer = timed_pass
) -> Timing:
    """Time a decode pass of `rows` rows with each way of computing the weight products
    this machine offers, keep the fastest (by median) in `model.products`, and return
    the times.

    A decode pass multiplies a few rows by every weight matrix, read from memory, and
    the fastest way depends on the matrix library and the CPU: each of the three ways
    has been the fastest on some machine, by up to 2x (the benchmark docs have the
    figures). So it is measured on the machine."""
    slab = model.slab(rows)
    slab.ensure(WIDTH_STEP, rows)
    segments = [Segment(i, WIDTH_STEP - 1, 1) for i in range(rows)]

    def use(products: str) -> None:
        model.products = products

    offered = available_products(model.device, model.dtype)
    timing = _time_ways(model, slab, segments, offered, use=use, rounds=rounds, timer=timer)
    model.products = timing.fastest()
    return timing


def choose_attention(
    model: LlamaModel, rows: int, *, rounds: int = ROUNDS, timer: PassTimer = timed_pass
) -> Timing:
    """Time a decode pass of `rows` rows, about 4 * WIDTH_STEP tokens into their replies
    (where attention is a fair share of a pass), with each of `ATTENTION`'s ways; keep
    the fastest (by median) in `model.attention` and return the times."""
    slab, segments = _attention_passes(model, rows)

    def use(way: str) -> None:
        model.attention = way

    timing = _time_ways(model, slab, segments, ATTENTION, use=use, rounds=rounds, timer=timer)
    model.attention = timing.fastest()
    return timing


def int4_counts(rows: int) -> list[int]:
    """The decode passes' row counts `choose_int4` times, in order: 1, 2, 4, … and `rows`."""
    counts = [1 << i for i in range(rows.bit_length()) if 1 << i < rows]
    return [*counts, rows]


def choose_int4(
    model: LlamaModel, rows: int, *, rounds: int = ROUNDS, timer: PassTimer = timed_pass
) -> tuple[dict[int, Timing], bool]:
    """Time decode passes of 1, 2, 4, … up to `rows` rows with the layers' weights in
    4-bit groups and with the model's dtype ("int4", "dense"), and set
    `model.int4_rows` to the most rows up to which the 4-bit weights were faster at
    every count timed (0 drops them). The 4-bit kernel reads a quarter of the bytes but
    dequantizes for every row: on an AMD EPYC with AVX-512 one row's pass took 20
    against 29 ms, eight rows' 45 against 46 (the benchmark docs have the figures).
    Returns each count's times and whether all were steady."""
    if not model.int4_rows:
        model.int4_rows = rows  # builds the 4-bit weights
    timings: dict[int, Timing] = {}
    steady, limit = True, 0
    for count in int4_counts(rows):
        slab = model.slab(count)
        slab.ensure(WIDTH_STEP, count)
        segments = [Segment(i, WIDTH_STEP - 1, 1) for i in range(count)]

        def use(way: str, count: int = count) -> None:
            model.use_int4(count if way == "int4" else 0)

        def measure(slab: KVSlab = slab, segments: list[Segment] = segments) -> Timing:
            slab.ensure(WIDTH_STEP, slab.most)  # (each measurement releases it)
            return _time_ways(model, slab, segments, INT4_WAYS, use=use, rounds=rounds, timer=timer)

        timing, steady_count = _steadily(measure, lambda _: None)
        timings[count] = timing
        steady = steady and steady_count
        if timing.fastest() != "int4":
            break
        limit = count
    model.int4_rows = limit
    return timings, steady


def _attention_passes(model: LlamaModel, rows: int) -> tuple[KVSlab, list[Segment]]:
    """The slab holds more positions than the rows have, as while serving (it grows to
    the longest row seen), and the rows' lengths differ."""
    slab = model.slab(rows)
    position = 4 * WIDTH_STEP - 1
    slab.ensure(position + 1 + 2 * WIDTH_STEP, rows)
    return slab, [Segment(i, position - 7 * i, 1) for i in range(rows)]


def _time_ways(
    model: LlamaModel, slab: KVSlab, segments: list[Segment], ways: Sequence[str],
    *, use: Callable[[str], None], rounds: int, timer: PassTimer,
) -> Timing:  # fmt: skip
    """`rounds` timed passes of each way that `use` sets, after one to warm each up,
    the ways interleaved (forward in one round, backward in the next, so that a way
    that converts the weights does so once a round); a way that raises RuntimeError (a
    build that cannot run it) is left out. The slab is released."""
    passes: dict[str, list[float]] = {way: [] for way in ways}
    try:
        with torch.inference_mode():
            for round_ in range(rounds + 1):
                for way in list(passes) if round_ % 2 == 0 else list(passes)[::-1]:
                    try:
                        use(way)
                        took = timer(model, slab, segments)
                    except RuntimeError:
                        del passes[way]
                        continue
                    if round_:
                        passes[way].append(took)
    finally:
        slab.release()
    return Timing(passes)


def _steadily(measure: Callable[[], Timing], use: Callable[[str], None]) -> tuple[Timing, bool]:
    """The first steady measurement of at most ATTEMPTS; when none is steady, every
    pass timed together (more passes: a steadier median), the fastest by them used,
    and False."""
    pooled: Timing | None = None
    for _ in range(ATTEMPTS):
        timing = measure()
        if timing.steady():
            return timing, True
        pooled = timing if pooled is None else pooled.joined(timing)
    assert pooled is not None
    use(pooled.fastest())
    return pooled, False


def _check(model: LlamaModel, rows: int, timer: PassTimer) -> float | None:
    """The median milliseconds of CHECKS passes as `choose_attention` times them, with
    the model's ways as they are; None when such a pass fails."""
    slab, segments = _attention_passes(model, rows)
    int4_rows = model.int4_rows
    model.use_int4(0)  # (as `choose_attention` timed them)
    try:
        timing = _time_ways(
            model, slab, segments, ["as set"], use=lambda _: None, rounds=CHECKS, timer=timer
        )
    finally:
        model.use_int4(int4_rows)
    return timing.medians().get("as set")


def _valid(entry: object, offered: Sequence[str], int4_rows: int | None) -> dict[str, Any] | None:
    """A remembered entry that can be used as it is, or None: every way offered timed,
    every time a positive number, the chosen ways the fastest recorded, measured
    steadily over ROUNDS passes (entries written before measurements had to be
    steady are measured again); where 4-bit weights are offered for passes of up to
    `int4_rows` rows, a limit within that and times for every count it covers."""
    if not isinstance(entry, dict) or entry.get("steady") is not True:
        return None
    if not isinstance(entry.get("rounds"), int) or entry["rounds"] < ROUNDS:
        return None
    for choice, times, ways in (
        ("products", "ms_per_pass", offered), ("attention", "attention_ms_per_pass", ATTENTION),
    ):  # fmt: skip
        timed = entry.get(times)
        if not isinstance(timed, dict) or not all(_positive(timed.get(w)) for w in ways):
            return None
        if entry.get(choice) not in ways or timed[entry[choice]] > min(timed[w] for w in ways):
            return None
    if int4_rows is not None:
        limit, counted = entry.get("int4_rows"), entry.get("int4_ms_per_pass")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= int4_rows:
            return None
        if not isinstance(counted, dict):
            return None
        for count in int4_counts(int4_rows):  # timed up to the first count 4-bit lost
            ms = counted.get(str(count))
            if not isinstance(ms, dict) or not all(_positive(ms.get(w)) for w in INT4_WAYS):
                return None
            faster, slower = ms["int4"] < ms["dense"], ms["int4"] > ms["dense"]
            if (count <= limit and slower) or (count > limit and faster):
                return None
            if count > limit:
                break
    return entry


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def _use(model: LlamaModel, entry: dict[str, Any], *, int4: bool) -> bool:
    try:
        model.products = entry["products"]
        model.attention = entry["attention"]
        model.int4_rows = entry["int4_rows"] if int4 else 0
    except (RuntimeError, ValueError) as exc:
        log.warning("the remembered ways %s failed (%s): measuring", entry, exc)
        return False
    return True


def _read(path: Path) -> dict[str, Any]:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _key(model: LlamaModel, rows: int) -> str:
    c = model.config
    return " | ".join(
        [cpu_name(), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads",
         f"{c.layers} layers of {c.hidden}, {c.intermediate}, vocab {c.vocab}",
         str(model.dtype).removeprefix("torch."), f"{rows} rows"]
    )  # fmt: skip


def cpu_name() -> str:
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
