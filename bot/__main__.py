"""Command line: `python -m bot chat | run | import-catalog | prepare-model` (also
`mediabot`), and the benchmarks `bench | bench-memory | bench-recommend | bench-facts |
bench-soak`, which run `python -m bench` (bench/__main__.py)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.__main__ import COMMANDS
from bot.cli import EXIT_SETTINGS, EXIT_UNAVAILABLE, progress, run_command
from bot.settings import Settings
from memory.connection import open_redis
from prompts import load_persona


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
    # The benchmarks' own command lines are bench/__main__.py's (see `main`); they are
    # named here for `mediabot --help`.
    for name, (command, help_text) in COMMANDS.items():
        sub.add_parser(command, help=f"{help_text} (python -m bench {name})", add_help=False)
    return parser


async def _chat(settings: Settings, args: argparse.Namespace) -> int:
    from bot.console import Console
    from bot.services import open_services
    from bot.textclean import clean_name

    user = clean_name(args.user or _login_name(), fallback="you")
    load_persona(args.persona or settings.persona)  # a bad name fails before the model loads
    async with open_services(settings, progress=progress) as services:
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
    async with open_services(settings, progress=progress) as services:
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


def _prepare(settings: Settings) -> int:
    from bot.generation.weights import model_dir

    path = model_dir(settings.model.path, settings.model.cache_dir, progress)
    print(f"Model ready in {path}", file=sys.stderr)
    return 0


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    benchmarks = {command: name for name, (command, _) in COMMANDS.items()}
    if argv and argv[0] in benchmarks:  # `mediabot bench-memory …` is `python -m bench memory …`
        from bench.__main__ import command

        return command(benchmarks[argv[0]], argv[1:], prog=f"mediabot {argv[0]}")
    args = _parser().parse_args(argv)
    return run_command(functools.partial(_dispatch, args))


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "prepare-model":
        return _prepare(settings)
    if args.command == "import-catalog":
        return asyncio.run(_import_catalog(settings, args))
    if args.command == "run":
        return asyncio.run(_run(settings))
    return asyncio.run(_chat(settings, args))


if __name__ == "__main__":
    sys.exit(main())
