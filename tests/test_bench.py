"""`python -m bench generation` (`mediabot bench`) end to end on a small scale: it runs
the baseline and every concurrency level through the real context builder and Redis,
and writes its JSON and plot. (Its figures are read from a full run, never asserted as
timings.) And the two command lines of the benchmarks: `python -m bench NAME` and the
`mediabot bench*` commands that hand over to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.__main__ as bench_cli
import bot.__main__ as bot_cli
from bench.generation import (
    CONVERSATION_TURNS,
    against_generate_batch,
    main,
    report,
    reset_rss_peak,
    rss_peak_mb,
)
from bot.generation.ways import ATTENTION, PRODUCTS
from memory.keys import Keys
from tests.conftest import make_settings


async def test_the_benchmark_reports_every_level_and_plots(
    keys: Keys, redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(keys, redis_url)
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = await main(
        settings, levels=[1, 3], seconds=3, max_new_tokens=4, cold=False,
        out=out, png=png, long_messages=3, at_least=2,
    )  # fmt: skip
    assert json.loads(out.read_text()) == result
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["baseline"]["requests"] >= 3  # the 3-member workload, in sequence
    assert [lv["users"] for lv in result["batched"]] == [1, 3]
    for level in result["batched"]:
        assert level["requests"] >= 2 * level["users"]  # each member said more than once
        assert level["prompt_tokens_mean"] > 150  # each member's remembered conversation
        assert level["ttft_first_p95_s"] > 0 and level["ttft_later_p95_s"] > 0
        assert level["ttft_after_opening_p95_s"] > 0
        assert level["requests_per_member"] == round(level["requests"] / level["users"], 1)
        assert level["tokens"] > 0 and level["tokens_per_s"] > 0
        assert 0 < level["ttft_p50_s"] <= level["ttft_p95_s"]
        assert level["ratio_to_baseline"] > 0
    # Every prompt starts like the others (the shared system prompt): the prefix cache
    # is used from the first request of a level on; and a member's second message
    # extends the first exchange, stored as the bot stores it, so it reuses more.
    for level in result["batched"]:
        assert level["prefix_hits"] >= level["requests"] - 1
        assert level["prefix_reused_tokens"] > level["users"] * level["prompt_tokens_mean"] / 2
    # One member past the window: the first message reads nearly all; the next ones read
    # little more than what is new (the window's start holds), from the cache.
    long = result["long_conversation"]
    assert long["messages"] == 3 and long["prompt_tokens_mean"] > 1000
    assert long["read_tokens"][0] > long["prompt_tokens"][0] * 0.8  # all but the system prompt
    assert min(long["read_tokens"][1:]) < long["prompt_tokens"][1] / 5
    assert 0 < long["read_share"] < 1 and long["ttft_p95_s"] >= long["ttft_p50_s"] > 0
    assert "long conversation" in report(result)
    assert result["peak_rss_mb"] > 100
    assert result["dtype"] in {"float32", "bfloat16"}
    assert result["weight_products"] in PRODUCTS
    assert result["attention"] in ATTENTION
    assert isinstance(result["int4_rows"], int)
    assert 0 <= result["int4_rows"] <= min(result["batch_width"], 8)
    assert "x baseline" in report(result)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's /proc only")
def test_the_peak_of_memory_starts_again_from_what_is_held_now() -> None:
    """What lets `serving_memory` report apart a process's peak once started (its start
    checks its ways of computing with a large KV slab, held for a moment)."""
    held = bytearray(b"\x01") * (200 * 2**20)  # 200 MB, every page written
    del held
    before = rss_peak_mb()
    assert before > 200
    assert reset_rss_peak()
    assert rss_peak_mb() < before - 150  # the freed 200 MB count no more


def test_the_report_says_when_a_level_was_too_short() -> None:
    def level(users: int, per_member: float) -> dict[str, object]:
        return {
            "users": users, "tokens_per_s": 10.0, "ratio_to_baseline": 2.0,
            "ttft_p50_s": 0.1, "ttft_p95_s": 0.2, "ttft_after_opening_p95_s": 0.15,
            "per_token_ms": 50.0, "requests_per_member": per_member,
        }  # fmt: skip

    result = {
        "baseline": {"tokens_per_s": 5.0, "ttft_p50_s": 0.3},
        "batched": [level(1, 9.0), level(8, CONVERSATION_TURNS - 0.5)],
    }
    text = report(result)
    assert "at 8 users, members sent fewer than" in text
    result["batched"] = [level(1, 9.0), level(8, CONVERSATION_TURNS)]
    assert "fewer than" not in report(result)


async def test_the_comparison_with_generate_batch_runs_both(keys: Keys, redis_url: str) -> None:
    result = await against_generate_batch(make_settings(keys, redis_url), prompts=2, tokens=4)
    assert result["prompts"] == 2 and result["new_tokens"] == 4
    assert result["generate_batch_tokens_per_s"] > 0 and result["engine_tokens_per_s"] > 0


def test_every_benchmark_runs_by_both_names_with_the_same_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert set(bench_cli.COMMANDS) == {"generation", "memory", "recommend", "facts", "soak"}
    for name, (command, _) in bench_cli.COMMANDS.items():
        with pytest.raises(SystemExit):
            bot_cli.main([command, "-h"])
        mediabot = capsys.readouterr().out
        with pytest.raises(SystemExit):
            bench_cli.main([name, "-h"])
        python_m_bench = capsys.readouterr().out
        assert mediabot.startswith(f"usage: mediabot {command} ")
        assert python_m_bench.startswith(f"usage: python -m bench {name} ")
        options = mediabot.split("options:")[1]
        assert options == python_m_bench.split("options:")[1] and "--out" in options
        assert command in bot_cli._parser().format_help()  # listed by `mediabot -h`


def test_a_bad_option_is_refused_alike_by_both_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert bot_cli.main(["bench", "--users", "1,x"]) == bot_cli.EXIT_SETTINGS
    mediabot = capsys.readouterr().err
    assert bench_cli.main(["generation", "--users", "1,x"]) == bot_cli.EXIT_SETTINGS
    assert capsys.readouterr().err == mediabot
    assert "--users takes numbers separated by commas" in mediabot
    with pytest.raises(SystemExit) as usage:
        bot_cli.main(["bench-soak", "--members", "many"])
    assert usage.value.code == 2 and "mediabot bench-soak: error" in capsys.readouterr().err


def test_mediabot_bench_recommend_gives_what_python_m_bench_recommend_gives(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "rec.json"
    assert bot_cli.main(["bench-recommend", "--users", "4", "--out", str(out)]) == 0
    theirs = capsys.readouterr()
    assert bench_cli.main(["recommend", "--users", "4"]) == 0
    ours = capsys.readouterr()
    first, second = json.loads(theirs.out), json.loads(ours.out)
    assert json.loads(out.read_text()) == first
    for result in (first, second):
        del result["ms_per_request"]  # (a timing)
    assert first == second and first["users"] == 4
    assert "precision@5 over 4 synthetic users" in theirs.err
