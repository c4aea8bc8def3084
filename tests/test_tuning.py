"""The engine's measured choices of ways to compute, with pass times planned by the test
(no test depends on how fast this machine is): a choice is trusted only when its
passes were steady, by their median, interleaved between the ways; a busy spell is
measured again, a busy machine's choice used but not remembered; what is remembered
is validated at every start (its shape, and a few passes against its times); a cache
that cannot be written is not fatal. And the real passes, each way timed for real."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from bot.generation import llama, tuning
from bot.generation.kv import KVSlab, Segment
from bot.generation.llama import LlamaModel
from bot.generation.local import LocalGenerator
from bot.generation.tuning import (
    ATTEMPTS,
    CHECKS,
    PRODUCTS_FILE,
    ROUNDS,
    Timing,
    choose_attention,
    choose_products,
    choose_ways,
)
from bot.generation.ways import ATTENTION, available_products, int8_available
from bot.generation.weights import (
    int4_cache_file,
    llama_from_transformers,
    read_int4,
    write_int4,
)
from tests.conftest import embedded_model_dir, model_settings
from tests.test_llama import build, small_model

# Quiet times of a pass (ms): the products' way plus the attention's way. Packed is the
# fastest when it is offered, else linear; SDPA beats the written-out attention.
QUIET = {"linear": 42.0, "transposed": 50.0, "packed": 35.0, "matmul": 20.0, "sdpa": 12.0}
OFFERED = available_products()
BEST = "packed" if "packed" in OFFERED else "linear"
PRODUCT_PASSES = (ROUNDS + 1) * len(OFFERED)  # each way warmed up once, then timed
ATTENTION_PASSES = (ROUNDS + 1) * len(ATTENTION)
MEASURED = PRODUCT_PASSES + ATTENTION_PASSES
# The bf16 model's ways (oneDNN packs bf16 only on CPUs with AVX-512 or AVX-NE-CONVERT).
OFFERED_BF16 = available_products("cpu", torch.bfloat16)
BEST_BF16 = "packed" if "packed" in OFFERED_BF16 else "linear"
MEASURED_BF16 = (ROUNDS + 1) * len(OFFERED_BF16) + ATTENTION_PASSES
CHECKED = CHECKS + 1


class Planned:
    """A pass timer that runs nothing and returns the planned time of the model's ways
    as they are set, times `load(n)` for the n-th pass (from 0): the machine's load."""

    def __init__(
        self, times: dict[str, float] = QUIET, load: Callable[[int], float] = lambda n: 1.0
    ) -> None:
        self.times, self.load = times, load
        self.ways: list[tuple[str, str]] = []

    @property
    def passes(self) -> int:
        return len(self.ways)

    def __call__(self, model: LlamaModel, slab: KVSlab, segments: list[Segment]) -> float:
        factor = self.load(self.passes)
        self.ways.append((model.products, model.attention))
        return (self.times[model.products] + self.times[model.attention]) * factor


@pytest.fixture
def model() -> LlamaModel:
    """A small random model: setting a way converts its weights for real. (float32,
    which can hold 4-bit weights too: the tests with it measure the products and the
    attention alone, `int4=False`; the 4-bit limit's own tests use `bf16`.)"""
    ours = llama_from_transformers(build("llama"))
    assert ours is not None
    return ours


def remembered(cache: Path) -> dict[str, Any]:
    (entry,) = json.loads((cache / PRODUCTS_FILE).read_text()).values()
    assert isinstance(entry, dict)
    return entry


def test_ways_are_timed_in_turn_and_chosen_by_their_median(model: LlamaModel) -> None:
    """The ways take turns, forward then backward (a way that converts the weights does
    so once a round); one slow pass of the fastest way does not change the choice, but
    it makes the measurement unsteady."""
    # The fastest way's third timed pass, in round 3 (backward).
    slow = 3 * len(OFFERED) + len(OFFERED) - 1 - OFFERED.index(BEST)
    timer = Planned(load=lambda n: 3.0 if n == slow else 1.0)
    timing = choose_products(model, rows=4, timer=timer)
    ways = [p for p, _ in timer.ways]
    assert ways[: 2 * len(OFFERED)] == [*OFFERED, *reversed(OFFERED)]
    assert ways[slow] == BEST
    assert all(len(t) == ROUNDS for t in timing.passes.values())
    assert model.products == BEST == timing.fastest()
    assert timing.medians()[BEST] == QUIET[BEST] + QUIET["matmul"]
    assert not timing.steady()
    assert Timing({"a": [10.0, 11.0, 14.0, 10.0, 9.0]}).steady()  # within 1.5x of 10
    assert not Timing({"a": [10.0, 11.0, 4.0, 10.0, 9.0]}).steady()  # a far faster pass too


def test_a_busy_spell_is_measured_again_and_not_remembered(
    model: LlamaModel, tmp_path: Path
) -> None:
    """The issue's case: while another process takes the CPU, the fastest ways' passes
    take 2.5 times as long. That measurement is not trusted: measured again once the
    spell has passed, and the steady one is remembered."""
    spell = range(3, 3 + PRODUCT_PASSES // 2)  # the first measurement of the products
    timer = Planned(load=lambda n: 2.5 if n in spell else 1.0)
    choose_ways(model, 4, tmp_path, timer=timer, int4=False)
    assert timer.passes == 2 * PRODUCT_PASSES + ATTENTION_PASSES
    assert (model.products, model.attention) == (BEST, "sdpa")
    entry = remembered(tmp_path)
    assert entry["products"] == BEST and entry["attention"] == "sdpa"
    assert entry["steady"] is True and entry["rounds"] == ROUNDS
    assert entry["ms_per_pass"][BEST] == QUIET[BEST] + QUIET["matmul"]  # the quiet medians
    assert entry["attention_ms_per_pass"]["sdpa"] == QUIET[BEST] + QUIET["sdpa"]


def test_a_machine_busy_throughout_is_not_remembered(model: LlamaModel, tmp_path: Path) -> None:
    """Every other pass slowed: no measurement is steady. The ways chosen by the median
    of every pass are used for this run (here the load favours the way in the middle
    of each round: a wrong choice), nothing is remembered, and the next start measures
    again."""
    timer = Planned(load=lambda n: 2.5 if n % 2 else 1.0)
    choose_ways(model, 4, tmp_path, timer=timer, int4=False)
    assert timer.passes == ATTEMPTS * MEASURED
    assert model.products in OFFERED and model.attention in ATTENTION
    assert not (tmp_path / PRODUCTS_FILE).exists()
    choose_ways(model, 4, tmp_path, timer=timer, int4=False)
    assert timer.passes == 2 * ATTEMPTS * MEASURED


def test_a_remembered_choice_is_used_after_a_check(model: LlamaModel, tmp_path: Path) -> None:
    timer = Planned()
    choose_ways(model, 4, tmp_path, timer=timer, int4=False)
    assert timer.passes == MEASURED
    model.products, model.attention = "transposed", "matmul"
    choose_ways(model, 4, tmp_path, timer=timer, int4=False)
    assert timer.passes == MEASURED + CHECKED  # checked, not measured
    assert timer.ways[-1] == (BEST, "sdpa")  # with the remembered ways
    assert (model.products, model.attention) == (BEST, "sdpa")
    # A busy start (the check far slower than the record) keeps the record.
    busy = Planned(load=lambda n: 3.0)
    choose_ways(model, 4, tmp_path, timer=busy, int4=False)
    assert busy.passes == CHECKED and (model.products, model.attention) == (BEST, "sdpa")


def test_a_record_taken_on_a_busier_machine_is_measured_again(
    model: LlamaModel, tmp_path: Path
) -> None:
    """The issue's record: written while the machine was loaded (a pass "took" 104 ms
    that takes 42 quiet) and with the ways that load favoured. The check at the next
    start is far faster than the record: it is measured again and replaced."""
    choose_ways(model, 4, tmp_path, timer=Planned(), int4=False)
    path = tmp_path / PRODUCTS_FILE
    (key,) = json.loads(path.read_text())
    loaded = {
        "products": "transposed", "attention": "matmul",
        "ms_per_pass": {p: 104.0 if p == "transposed" else 110.0 for p in OFFERED},
        "attention_ms_per_pass": {"matmul": 175.0, "sdpa": 180.0},
        "rounds": ROUNDS, "steady": True,
    }  # fmt: skip
    path.write_text(json.dumps({key: loaded}))
    quiet = Planned()
    choose_ways(model, 4, tmp_path, timer=quiet, int4=False)
    assert quiet.ways[0] == ("transposed", "matmul")  # the check: 70 ms, not 175
    assert quiet.passes == CHECKED + MEASURED
    assert (model.products, model.attention) == (BEST, "sdpa")
    assert (remembered(tmp_path)["products"], remembered(tmp_path)["attention"]) == (BEST, "sdpa")


def damaged(entry: dict[str, Any], how: str) -> dict[str, Any]:
    entry = json.loads(json.dumps(entry))
    match how:
        case "written before steadiness was asked":
            del entry["steady"], entry["rounds"]
        case "marked unsteady":
            entry["steady"] = False
        case "fewer rounds":
            entry["rounds"] = ROUNDS - 2
        case "a way added since":
            del entry["ms_per_pass"][OFFERED[-1]]
        case "attention not measured":
            del entry["attention"], entry["attention_ms_per_pass"]
        case "the chosen way is not the fastest recorded":
            entry["products"] = next(p for p in OFFERED if p != BEST)
        case "a time that is not a number":
            entry["attention_ms_per_pass"]["matmul"] = "fast"
        case "a negative time":
            entry["ms_per_pass"][BEST] = -1.0
        case "an unknown way":
            entry["attention"] = "flash"
        case "no limit":
            del entry["int4_rows"]
        case "a limit past the rows":
            entry["int4_rows"] = 8
        case "a count not timed":
            del entry["int4_ms_per_pass"]["2"]
        case "slower within the limit":
            entry["int4_ms_per_pass"]["2"]["int4"] = 500.0
        case "faster past the limit":
            entry["int4_ms_per_pass"]["4"]["int4"] = 1.0
    return entry


@pytest.mark.parametrize(
    "how",
    [
        "written before steadiness was asked", "marked unsteady", "fewer rounds",
        "a way added since",
        "attention not measured", "the chosen way is not the fastest recorded",
        "a time that is not a number", "a negative time", "an unknown way",
    ],
)  # fmt: skip
def test_a_record_that_is_not_valid_is_measured_again(
    model: LlamaModel, tmp_path: Path, how: str
) -> None:
    choose_ways(model, 4, tmp_path, timer=Planned(), int4=False)
    path = tmp_path / PRODUCTS_FILE
    key, entry = next(iter(json.loads(path.read_text()).items()))
    path.write_text(json.dumps({key: damaged(entry, how)}))
    timer = Planned()
    choose_ways(model, 4, tmp_path, timer=timer, int4=False)
    assert timer.passes == MEASURED
    again = remembered(tmp_path)
    assert (again["products"], again["attention"], again["steady"]) == (BEST, "sdpa", True)
    assert set(again["ms_per_pass"]) == set(OFFERED) and again["rounds"] == ROUNDS


def test_a_damaged_or_unwritable_cache_is_measured_again(model: LlamaModel, tmp_path: Path) -> None:
    timer = Planned()
    (tmp_path / PRODUCTS_FILE).write_text("{not json")
    choose_ways(model, 4, tmp_path, timer=timer, int4=False)
    assert timer.passes == MEASURED and remembered(tmp_path)["products"] == BEST
    (tmp_path / PRODUCTS_FILE).write_text("[1, 2]")
    choose_ways(model, 4, tmp_path, timer=timer, int4=False)
    assert timer.passes == 2 * MEASURED
    # A cache that cannot be written: measured, used, and measured again next time.
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    model.products = "transposed"
    choose_ways(model, 4, blocked / "cache", timer=timer, int4=False)
    assert model.products == BEST and timer.passes == 3 * MEASURED
    choose_ways(model, 4, blocked / "cache", timer=timer, int4=False)
    assert timer.passes == 4 * MEASURED


def test_each_batch_width_and_dtype_has_a_record_of_its_own(
    model: LlamaModel, tmp_path: Path
) -> None:
    timer = Planned()
    choose_ways(model, 4, tmp_path, timer=timer, int4=False)
    choose_ways(model, 8, tmp_path, timer=timer, int4=False)
    keys = list(json.loads((tmp_path / PRODUCTS_FILE).read_text()))
    assert timer.passes == 2 * MEASURED and len(keys) == 2
    assert all("float32" in k and "2 layers of 64" in k for k in keys)
    assert {k.rsplit("|", 1)[1].strip() for k in keys} == {"4 rows", "8 rows"}


def test_a_way_that_fails_while_timed_is_left_out(model: LlamaModel) -> None:
    def failing(model: LlamaModel, slab: KVSlab, segments: list[Segment]) -> float:
        if model.attention == "sdpa":
            raise RuntimeError("not in this build")
        return Planned()(model, slab, segments)

    timing = choose_attention(model, rows=4, timer=failing)
    assert list(timing.passes) == ["matmul"] and model.attention == "matmul"


def test_every_way_runs_when_timed_for_real(model: LlamaModel) -> None:
    """The real timer runs the real passes of every way (which way is the fastest here
    is not asserted: it depends on the machine)."""
    products, attention = choose_products(model, rows=3), choose_attention(model, rows=3)
    for timing in (products, attention):
        assert all(len(t) == ROUNDS and min(t) > 0 for t in timing.passes.values())
    assert (model.products, model.attention) == (products.fastest(), attention.fastest())
    assert set(choose_products(model, rows=2).passes) == set(OFFERED)
    assert set(choose_attention(model, rows=2).passes) == set(ATTENTION)


def test_loading_chooses_the_ways_for_the_engine_in_the_model_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's model is given to `choose_ways` with the batch width (at most 8) and
    the model cache of the settings, and the engine computes as it chose."""
    calls: list[tuple[int, Path]] = []

    def chosen(model: LlamaModel, rows: int, cache_dir: Path, int4: bool) -> None:
        calls.append((rows, cache_dir))
        model.products, model.attention = "transposed", "sdpa"

    monkeypatch.setattr(tuning, "choose_ways", chosen)
    directory = embedded_model_dir()
    settings = model_settings().model_copy(update={"cache_dir": tmp_path, "path": directory})
    gen = LocalGenerator.load(settings, max_batch=12)
    try:
        assert calls == [(8, tmp_path)]
        assert gen.fast is not None and gen.fast.products == "transposed"
        assert gen.fast.attention == "sdpa"
    finally:
        gen.close()


# Planned times (ms) of a decode pass with 4-bit weights, by its rows: faster than any
# pass with the dtype's weights (47 to 62 ms planned above) up to 2 rows, not at 4.
INT4_TIMES = {1: 10.0, 2: 20.0, 4: 100.0}
INT4_MEASURED = len(INT4_TIMES) * (ROUNDS + 1) * 2


class PlannedInt4(Planned):
    """`Planned`, and a pass whose rows all use the 4-bit weights takes `int4`'s time
    for its rows (INT4_TIMES by default)."""

    def __init__(self, int4: dict[int, float] = INT4_TIMES) -> None:
        super().__init__()
        self.int4 = int4

    def __call__(self, model: LlamaModel, slab: KVSlab, segments: list[Segment]) -> float:
        if model.int4_rows >= len(segments):
            self.ways.append(("int4", str(len(segments))))
            return self.int4[len(segments)] * self.load(self.passes - 1)
        return super().__call__(model, slab, segments)


@pytest.fixture
def bf16() -> LlamaModel:
    """A small random bf16 model (skipped where torch has no 4-bit kernel)."""
    return small_model(torch.bfloat16)


def test_4bit_weights_are_used_up_to_the_rows_where_they_were_faster(
    bf16: LlamaModel, tmp_path: Path
) -> None:
    """Timed at 1, 2 and 4 rows against the dtype's weights: faster up to 2 rows, so
    decode passes of up to 2 rows use them; remembered, and at the next start set again
    (the 4-bit weights built) after a check that runs without them; `int4=False` (the
    setting off) leaves them out."""
    assert tuning.int4_counts(8) == [1, 2, 4, 8] and tuning.int4_counts(6) == [1, 2, 4, 6]
    assert tuning.int4_counts(1) == [1]
    timer = PlannedInt4()
    choose_ways(bf16, 4, tmp_path, timer=timer)
    assert timer.passes == MEASURED_BF16 + INT4_MEASURED
    assert bf16.int4_rows == 2 and all(layer.int4 is not None for layer in bf16.layers)
    entry = remembered(tmp_path)
    assert entry["int4_rows"] == 2
    assert {n: t["int4"] for n, t in entry["int4_ms_per_pass"].items()} == {
        str(n): t for n, t in INT4_TIMES.items()
    }
    again = llama_from_transformers(build("llama").to(torch.bfloat16))
    assert again is not None
    checked = PlannedInt4()
    choose_ways(again, 4, tmp_path, timer=checked)
    assert checked.passes == CHECKED and "int4" not in {w for w, _ in checked.ways}
    assert again.int4_rows == 2 and again.layers[0].int4 is not None
    choose_ways(again, 4, tmp_path, timer=checked, int4=False)
    assert checked.passes == 2 * CHECKED  # the record serves without its 4-bit part
    assert again.int4_rows == 0 and again.layers[0].int4 is None


@pytest.mark.parametrize(
    "how", ["no limit", "a limit past the rows", "a count not timed", "slower within the limit",
            "faster past the limit"],
)  # fmt: skip
def test_a_4bit_record_that_is_not_valid_is_measured_again(
    bf16: LlamaModel, tmp_path: Path, how: str
) -> None:
    choose_ways(bf16, 4, tmp_path, timer=PlannedInt4())
    path = tmp_path / PRODUCTS_FILE
    key, entry = next(iter(json.loads(path.read_text()).items()))
    entry = damaged(entry, how)
    path.write_text(json.dumps({key: entry}))
    timer = PlannedInt4()
    choose_ways(bf16, 4, tmp_path, timer=timer)
    assert timer.passes == MEASURED_BF16 + INT4_MEASURED
    assert remembered(tmp_path)["int4_rows"] == 2 == bf16.int4_rows


def test_the_4bit_weights_are_kept_for_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built at the first start where the engine uses them, into the model cache; read
    back at the next start instead of built again."""
    directory = embedded_model_dir()
    settings = model_settings().model_copy(
        update={"cache_dir": tmp_path, "path": directory, "dtype": "bfloat16"}
    )

    def chosen(model: LlamaModel, rows: int, cache_dir: Path, int4: bool) -> None:
        model.int4_rows = 2 if int4 else 0

    monkeypatch.setattr(tuning, "choose_ways", chosen)
    first = LocalGenerator.load(settings, max_batch=4)
    try:
        assert first.fast is not None
        if not first.fast.int4_available():
            pytest.skip("no 4-bit kernel in this torch")
        built = [layer.int4 for layer in first.fast.layers]
        head = first.fast.head8
    finally:
        first.close()
    assert int4_cache_file(tmp_path, directory, torch.bfloat16).is_file()
    monkeypatch.setattr(llama, "quantize_int4", lambda weight: pytest.fail("built again"))
    second = LocalGenerator.load(settings, max_batch=4)
    try:
        assert second.fast is not None and second.fast.int4_rows == 2
        for a, b in zip(built, (layer.int4 for layer in second.fast.layers), strict=True):
            assert a is not None and b is not None
            for x, y in zip(a, b, strict=True):
                assert torch.equal(x.packed, y.packed)
                assert torch.equal(x.scales_zeros, y.scales_zeros)
        again = second.fast.head8  # the output layer's 8-bit rows too
        assert (head is None) == (again is None) == (not int8_available())
        if head is not None and again is not None:
            assert torch.equal(head.levels, again.levels)
            assert torch.equal(head.scales, again.scales)
    finally:
        second.close()


def test_kept_4bit_weights_that_do_not_fit_are_built_again(tmp_path: Path) -> None:
    """A file cut short, one kept for another shape of model, or one whose tensors have
    other dtypes, is not used."""
    model = llama_from_transformers(build("llama").to(torch.bfloat16))
    assert model is not None
    if not model.int4_available():
        pytest.skip("no 4-bit kernel in this torch")
    model.int4_rows = 2
    file = tmp_path / "int4.safetensors"
    write_int4(model, file)
    fresh = llama_from_transformers(build("llama").to(torch.bfloat16))
    assert fresh is not None and read_int4(fresh, file)
    assert all(layer.int4 is not None for layer in fresh.layers)
    shallow = llama_from_transformers(build("llama").to(torch.bfloat16))
    assert shallow is not None
    shallow.layers.pop()  # a model of one layer
    assert not read_int4(shallow, file)
    wider = llama_from_transformers(build("llama").to(torch.bfloat16))
    assert wider is not None
    wider.config = replace(wider.config, intermediate=96)  # (its MLP's shapes)
    assert not read_int4(wider, file) and wider.layers[0].int4 is None
    kept = load_file(str(file))
    halves = tmp_path / "halves.safetensors"  # the right shapes, scales in float16
    save_file({n: t.half() if "scales" in n else t for n, t in kept.items()}, str(halves))
    right = llama_from_transformers(build("llama").to(torch.bfloat16))
    assert right is not None and not read_int4(right, halves) and right.layers[0].int4 is None
    file.write_bytes(file.read_bytes()[:-100])
    again = llama_from_transformers(build("llama").to(torch.bfloat16))
    assert again is not None and not read_int4(again, file)
    assert all(layer.int4 is None for layer in again.layers)
    assert not read_int4(again, tmp_path / "missing.safetensors")


def test_kept_4bit_weights_replace_their_model_s_older_ones_and_a_failed_write_is_not_fatal(
    tmp_path: Path,
) -> None:
    model = llama_from_transformers(build("llama").to(torch.bfloat16))
    assert model is not None
    if not model.int4_available():
        pytest.skip("no 4-bit kernel in this torch")
    model.int4_rows = 2
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    first = int4_cache_file(tmp_path / "cache", directory, torch.bfloat16)
    assert first == int4_cache_file(tmp_path / "cache", directory, torch.bfloat16)  # (the same key)
    write_int4(model, first)
    other = tmp_path / "cache" / "int4" / "another-model.safetensors"
    other.write_bytes(b"")
    (directory / "config.json").write_text('{"changed": true}')
    second = int4_cache_file(tmp_path / "cache", directory, torch.bfloat16)
    assert second != first and second.name.split("-")[0] == first.name.split("-")[0]
    write_int4(model, second)
    assert second.is_file() and not first.exists() and other.exists()
    # Something in the way of the file being written: a warning, nothing left behind.
    blocked = tmp_path / "cache" / "int4" / "blocked-model.safetensors"
    in_the_way = blocked.with_suffix(f".{os.getpid()}.tmp")
    in_the_way.mkdir()
    write_int4(model, blocked)
    assert not blocked.exists() and second.is_file()


def test_measuring_again_times_the_ways_without_the_remembered_4bit_limit(
    bf16: LlamaModel, tmp_path: Path
) -> None:
    """4-bit weights faster at every count, so remembered for passes of all 4 rows; a
    record taken on a busier machine is measured again, and the products and the
    attention are timed on the bf16 weights (with the 4-bit limit in place every pass
    would use the 4-bit ones, and whichever way came first would win a tie)."""
    faster = {1: 10.0, 2: 20.0, 4: 30.0}
    choose_ways(bf16, 4, tmp_path, timer=PlannedInt4(faster))
    assert bf16.int4_rows == 4
    path = tmp_path / PRODUCTS_FILE
    key, entry = next(iter(json.loads(path.read_text()).items()))
    entry["ms_per_pass"] = {w: 3 * t for w, t in entry["ms_per_pass"].items()}
    entry["attention_ms_per_pass"] = {w: 3 * t for w, t in entry["attention_ms_per_pass"].items()}
    path.write_text(json.dumps({key: entry}))
    timer = PlannedInt4(faster)
    choose_ways(bf16, 4, tmp_path, timer=timer)
    assert timer.passes == CHECKED + MEASURED_BF16 + INT4_MEASURED
    timed = timer.ways[CHECKED : CHECKED + MEASURED_BF16]
    assert all(way != "int4" for way, _ in timed)
    assert (bf16.products, bf16.attention, bf16.int4_rows) == (BEST_BF16, "sdpa", 4)
    again = remembered(tmp_path)
    assert (again["products"], again["attention"], again["int4_rows"]) == (BEST_BF16, "sdpa", 4)
