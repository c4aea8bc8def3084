"""The terminal chat: commands in-process, and the real CLI driven through piped stdin
across a restart."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.assistant import Assistant
from bot.commands import messages
from bot.console import Console
from bot.generation.base import GenerationParams
from bot.generation.local import LocalGenerator
from bot.media.catalog import Catalog
from bot.media.library import Library
from bot.media.service import Media
from bot.moderation.moderator import Moderator
from bot.services import Services
from memory.guilds import GuildConfig
from memory.keys import Keys, Scope
from memory.store import MemoryStore
from tests.conftest import ScriptedGenerator, make_settings


def console_for(
    store: MemoryStore,
    keys: Keys,
    generator: Any,
    script: bytes,
    media: Media | None = None,
    moderator: Moderator | None = None,
) -> tuple[Console, io.StringIO, io.StringIO]:
    assistant = Assistant(settings=make_settings(keys), memory=store, generator=generator,
                          media=media, moderator=moderator)  # fmt: skip
    services = Services(
        memory=store,
        generator=generator,
        assistant=assistant,
        guild_config=GuildConfig(store._redis, keys),
        moderator=assistant.moderator,
        media=media,
    )
    out, err = io.StringIO(), io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO(script), encoding="utf-8", errors="replace")
    console = Console(services, user="ada", stdin=stdin, out=out, err=err, interactive=False)
    return console, out, err


async def test_piped_lines_get_one_reply_each_and_commands_work(
    store: MemoryStore, keys: Keys, generator: LocalGenerator, tmp_path: Path
) -> None:
    export_file = tmp_path / "me.json"
    script = (
        b"/memory\n"
        b"My name is Ada.\n"
        b"\n"
        b"Bad bytes \xff\xfe here\n"
        b"/memory\n"
        b"/export " + str(export_file).encode() + b"\n"
        b"/nonsense\n"
        b"/forget\nno\n"
        b"/reset\n"
        b"/help\n"
        b"/quit\n"
        b"never read\n"
    )
    console, out, err = console_for(store, keys, generator, script)
    assert await console.run() == 0
    shown = out.getvalue()
    assert "I don't remember anything of our conversation here yet." in shown
    assert "I remember 4 messages of our conversation here:" in shown
    assert "ada: My name is Ada." in shown
    assert "ada: Bad bytes \ufffd\ufffd here" in shown
    exported = json.loads(export_file.read_text())
    assert next(t["text"] for t in exported["scopes"]["dm"]["turns"]) == "My name is Ada."
    assert "Unknown command /nonsense" in shown
    assert "Kept everything." in shown
    assert "Forgot our conversation here (4 messages)." in shown
    assert "/forget" in shown  # the help text
    assert (await store.load(Scope(None), "cli:ada", token_budget=1000)).turns == []
    assert err.getvalue() == ""


async def test_forget_after_yes_deletes_everything_everywhere(
    store: MemoryStore, keys: Keys, generator: LocalGenerator
) -> None:
    console, out, _ = console_for(store, keys, generator, b"Hello there\n/forget\nyes\n/export\n")
    await console.run()
    shown = out.getvalue()
    assert messages.forgot_everything(2) in shown
    exported = json.loads(shown[shown.index("{") :])
    assert exported == {**exported, "user_id": "cli:ada", "scopes": {}}


async def test_media_commands_in_the_terminal(
    store: MemoryStore, keys: Keys, generator: LocalGenerator, catalog: Catalog
) -> None:
    reply = [
        "A gripping and dark story of four families ",
        "and one missing boy, told across time.",
    ]
    scripted = ScriptedGenerator(generator, reply)
    media = Media(Library(store._redis, keys, fixed=catalog), store, scripted,  # type: ignore[arg-type]
                  blurb_params=GenerationParams(max_new_tokens=16))  # fmt: skip
    script = (
        b"/title strnger things\n"
        b"/title\n"
        b'/search genre=scary type=Movie person="Sam Raimi" years=1980-1989\n'
        b"/search\n"
        b"/prefs like scary films\n"
        b"/prefs seen The Evil Dead\n"
        b"/prefs\n"
        b"/recommend a horror film from the 80s\n"
        b"/headline tone=funny Dark\n"
        b"/post platform=threads Dark\n"
        b"/post platform=myspace Dark\n"
        b"/trivia\n"
        b"Z\n"
        b"/prefs remove horror\n"
    )
    console, out, err = console_for(store, keys, scripted, script, media)
    assert await console.run() == 0
    shown = out.getvalue()
    assert "Stranger Things (2019)\n  type: TV Show\n" in shown
    assert "Usage: /title NAME" in shown
    assert "  The Evil Dead (1981), Movie (Classic Movies, Cult Movies)" in shown
    assert "Usage: /search" in shown
    assert "Noted: you like horror (genre)." in shown
    assert "Noted: you've seen The Evil Dead (title)." in shown
    assert f"{messages.TASTE_HEADER}\n- likes: horror (genre)\n- has seen: The Evil Dead" in shown
    picks = re.findall(r"^\d\. \*\*(.+?)\*\* \((\d{4})", shown, re.M)
    assert len(picks) == 5  # what they are is the command layer's (tests/commands)
    assert "A gripping and dark story of four families and one missing boy" in shown
    assert f"({messages.about(catalog.exact('Dark')[0].label)})" in shown
    assert "Usage: /post" in shown
    assert "Your answer" not in shown  # the prompt goes through the reader, not stdout
    assert re.search(r"No answer: it was [A-D]\) ", shown)
    assert "Removed 1 item(s) about horror" in shown
    assert err.getvalue() == ""


def run_cli(args: list[str], stdin: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        env=env,
        # Not the repository: a developer's own .env there must not reach the tests.
        cwd=Path(env["REDIS_DATA_DIR"]).parent,
        timeout=300,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MEMORY_"))}
    env.update(
        REDIS_DATA_DIR=str(tmp_path / "redis"),
        GENERATION_MAX_NEW_TOKENS="8",
        GENERATION_TEMPERATURE="0",
    )
    return env


def test_a_fact_told_in_one_session_is_in_the_context_after_a_restart(
    cli_env: dict[str, str],
) -> None:
    first = run_cli(["chat", "--user", "ada"], "Hi, my name is Ada.\n", cli_env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()  # a streamed reply on stdout
    assert "Loading the model" in first.stderr

    second = run_cli(["chat", "--user", "ada", "--show-context"], "What is my name?\n", cli_env)
    assert second.returncode == 0, second.stderr
    context = second.stderr[second.stderr.index("--- context window") :]
    assert "[user]\nHi, my name is Ada.\n" in context
    assert context.index("Hi, my name is Ada.") < context.index("What is my name?")


def test_the_terminal_chat_is_grounded_and_shows_the_facts_slot(
    cli_env: dict[str, str],
) -> None:
    result = run_cli(
        ["chat", "--user", "ada", "--show-context"],
        "who directed okja?\nand when did it come out?\n",
        cli_env,
    )
    assert result.returncode == 0, result.stderr
    assert "catalog facts: 1 ---" in result.stderr
    context = result.stderr[result.stderr.index("--- context window") :]
    assert "Catalog facts" in context and "directed by Bong Joon Ho" in context
    answers = result.stdout.strip().splitlines()
    assert "Bong Joon Ho" in answers[0] and "2017" in answers[1]


def test_an_unreachable_redis_url_is_one_sentence_and_exit_1(cli_env: dict[str, str]) -> None:
    cli_env["REDIS_URL"] = "redis://:hunter2@127.0.0.1:1/0"
    result = run_cli(["chat"], "hello\n", cli_env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Could not connect to Redis at redis://127.0.0.1:1/0. Is it running?"
    )
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("GENERATION_TEMPERATURE", "hot", "Invalid setting GENERATION_TEMPERATURE:"),
        ("GENERATION_MAX_NEW_TOKENS", "0", "Invalid setting GENERATION_MAX_NEW_TOKENS:"),
        ("MODEL_PATH", "/nonexistent/model", "Invalid setting MODEL_PATH:"),
        ("MEMORY_KEY_PREFIX", "a b", "Invalid setting MEMORY_KEY_PREFIX:"),
        ("PERSONA", "No Such!", "Invalid setting PERSONA:"),
    ],
)
def test_an_invalid_setting_names_itself_in_one_line_and_exits_2(
    cli_env: dict[str, str], name: str, value: str, expected: str
) -> None:
    cli_env[name] = value
    result = run_cli(["chat"], "", cli_env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert value not in lines[0] or name == "MODEL_PATH"


def test_an_unknown_persona_is_a_clear_configuration_error(cli_env: dict[str, str]) -> None:
    cli_env["PERSONA"] = "nosuch"
    result = run_cli(["chat"], "", cli_env)
    assert result.returncode == 2
    assert "nosuch.yaml: no such file" in result.stderr


def test_run_without_a_token_says_so_and_exits_2(cli_env: dict[str, str]) -> None:
    cli_env["DISCORD_TOKEN"] = ""  # as in a fresh copy of .env.example
    result = run_cli(["run"], "", cli_env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "DISCORD_TOKEN is not set: put your bot token in .env (see the README)."
    )
