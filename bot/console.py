"""Terminal chat on the same reply pipeline as Discord.

Interactive on a terminal (a prompt, streamed replies, slash commands); with piped
input it answers each line once and exits, replies on stdout and notices on stderr,
so scripts can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

from bot import BOT_NAME
from bot.assistant import ReplyRequest
from bot.commands import Caller, Done, Refused, messages
from bot.commands.content import content_request
from bot.context.build import ContextWindow
from bot.context.profile import render_taste
from bot.media.catalog import Title
from bot.media.content import PLATFORMS
from bot.media.trivia import LETTERS
from bot.memory_view import summary_lines
from bot.services import Services
from bot.textclean import clean_input, decode_bytes, strip_controls
from memory.keys import Scope

HELP = """Commands:
  /help            this list
  /memory          what I remember of our conversation
  /reset           forget our conversation (here, in the terminal)
  /export [FILE]   everything stored about you, as JSON (to FILE, or shown here)
  /forget          delete everything stored about you, everywhere (asks first)
  /title NAME      look a title up in the catalog (typos are fine)
  /search genre=G person=P type=T years=1980-1989   titles by any of these
  /recommend [MOOD]  titles from the catalog for you, e.g. /recommend a scary film
  /prefs [show | like X | dislike X | seen X | remove X]   your taste profile
  /headline SUBJECT, /adcopy SUBJECT, /synopsis SUBJECT   media copy for a title
                   or topic; options go first: tone=funny length=long
  /post SUBJECT    a social post; platform=x|instagram|tiktok|threads tone=...
  /trivia          a catalog trivia question; answer with A, B, C or D
  /quit            leave (Ctrl-D works too)
Anything else is a message to me."""
T = TypeVar("T")
OPTION_VALUES = {
    "tone": ("neutral", "excited", "funny", "serious", "dramatic"),
    "length": ("short", "medium", "long"),
    "platform": tuple(PLATFORMS),
}
COMMAND = re.compile(r"^/([a-z]+)(?:\s+(.*))?$", re.DOTALL)


@dataclass
class TerminalSink:
    """Prints a streamed reply; model text is shown without control characters, so it
    cannot move the cursor or recolour the terminal."""

    out: TextIO
    err: TextIO
    interactive: bool
    show_context: bool = False
    _started: bool = field(default=False, init=False)

    async def context(self, window: ContextWindow) -> None:
        if not self.show_context:
            return
        facts = f", catalog facts: {window.facts}" if window.facts else ""
        self.err.write(
            f"--- context window: {window.tokens}/{window.budget} tokens, "
            f"{window.turns_used} remembered turns{facts} ---\n"
        )
        for message in window.messages:
            self.err.write(f"[{message['role']}]\n{message['content']}\n")
        self.err.write("--- end of context window ---\n")
        self.err.flush()

    async def notice(self, text: str) -> None:
        self.err.write(f"! {text}\n")
        self.err.flush()

    async def piece(self, text: str) -> None:
        text = strip_controls(text)
        if not self._started:
            text = text.lstrip()
            if not text:
                return
            self._started = True
            if self.interactive:
                self.out.write(f"{BOT_NAME}> ")
        self.out.write(text)
        self.out.flush()

    def position(self, place: int) -> None:
        if place > 0:
            self.err.write(f"(you are #{place} in line)\n")
            self.err.flush()

    async def retract(self, text: str) -> None:
        # A terminal cannot take text back; only checked text was printed.
        self.out.write(("\n" if self._started else "") + f"[reply withheld] {text}\n")
        self.out.flush()

    async def finish(self, text: str) -> str | None:
        if not self._started:
            if self.interactive:
                self.out.write(f"{BOT_NAME}> ")
            self.out.write(strip_controls(text))
        self.out.write("\n")
        self.out.flush()
        return None


class Console:
    """One terminal user talking to the assistant, in the DM scope."""

    def __init__(
        self,
        services: Services,
        *,
        user: str,
        stdin: TextIO,
        out: TextIO,
        err: TextIO,
        interactive: bool,
        persona: str | None = None,
        show_context: bool = False,
    ) -> None:
        self.services = services
        self.commands = services.commands
        self.user_name = user
        # Terminal users get their own id space, so they never meet a Discord user id.
        self.user_id = f"cli:{user}"
        self.scope = Scope(None)
        # Commands see the terminal as chat does: the DM scope and its policy, and one
        # local user whose piped lines are not a flood.
        self.caller = Caller(self.scope, self.user_id, user, floods=False)
        self.stdin = stdin
        self.out = out
        self.err = err
        self.interactive = interactive
        self.persona = persona
        self.show_context = show_context

    async def run(self) -> int:
        if self.interactive:
            self.out.write(
                f"{BOT_NAME}: ask me about films, TV, music, games, books and "
                "podcasts. /help lists commands.\n"
            )
        while True:
            line = await self._read(f"{self.user_name}> ")
            if line is None:
                return 0
            text = clean_input(line, self.services.assistant.settings.memory.max_message_chars)
            command = COMMAND.match(text.text)
            if command:
                if not await self._command(command.group(1), command.group(2) or ""):
                    return 0
                continue
            if not text.text and not self.interactive:
                continue  # blank lines in a script are not messages
            sink = TerminalSink(self.out, self.err, self.interactive, self.show_context)
            request = ReplyRequest(
                scope=self.scope,
                user_id=self.user_id,
                user_name=self.user_name,
                text=line,
                message_id=uuid.uuid4().hex,
                persona=self.persona,
                rate_limited=False,
            )
            await self.services.assistant.reply(request, sink)

    async def _read(self, prompt: str) -> str | None:
        if self.interactive:
            try:
                return await _in_daemon_thread(input, prompt)
            except EOFError:
                self.out.write("\n")
                return None
        raw = await _in_daemon_thread(self._read_piped)
        return None if raw is None else raw.rstrip("\n")

    def _read_piped(self) -> str | None:
        buffer = getattr(self.stdin, "buffer", None)
        if buffer is not None:
            data: bytes = buffer.readline()
            return decode_bytes(data) if data else None
        line = self.stdin.readline()
        return line or None

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    async def _command(self, name: str, arg: str) -> bool:
        """Run a slash command; False means leave."""
        arg = arg.strip()
        if name in ("quit", "exit"):
            return False
        if name == "help":
            self._say(HELP)
        elif name == "memory":
            await self._memory()
        elif name == "reset":
            self._answer(await self.commands.memory.reset(self.caller))
        elif name == "export":
            await self._export(arg)
        elif name == "forget":
            await self._forget()
        elif name == "title":
            await self._title(arg)
        elif name == "search":
            await self._search(arg)
        elif name == "recommend":
            await self._recommend(arg)
        elif name == "prefs":
            await self._prefs(arg)
        elif name in ("headline", "post", "adcopy", "synopsis"):
            await self._content(name, arg)
        elif name == "trivia":
            await self._trivia()
        else:
            self._say(f"Unknown command /{name}. Type /help for the list.")
        return True

    def _answer(self, result: Done | Refused) -> None:
        self._say(strip_controls(result.text))

    async def _memory(self) -> None:
        remembered = await self.commands.memory.show(self.caller)
        if isinstance(remembered, Refused):
            self._answer(remembered)
            return
        for line in summary_lines(remembered, "here", user=self.user_name, bot=BOT_NAME,
                                  time_format="%Y-%m-%d %H:%M",
                                  template="  [{when} UTC] {who}: {text}"):  # fmt: skip
            self._say(strip_controls(line))

    async def _export(self, target: str) -> None:
        data = await self.commands.memory.export(self.caller)
        if isinstance(data, Refused):
            self._answer(data)
            return
        text = json.dumps(data, indent=2, ensure_ascii=False)
        if not target:
            self._say(text)
            return
        try:
            await asyncio.to_thread(_write_text, target, text + "\n")
        except OSError as exc:
            self._say(messages.export_failed(target, exc.strerror or str(exc)))
            return
        self._say(messages.exported_to(target))

    async def _forget(self) -> None:
        answer = await self._read(f"{messages.FORGET_ASK} Type yes: ")
        if (answer or "").strip().lower() != "yes":
            self._say(messages.KEPT)
            return
        self._answer(await self.commands.memory.forget(self.caller))

    async def _title(self, name: str) -> None:
        if not name:
            self._say("Usage: /title NAME, e.g. /title stranger things")
            return
        found = await self.commands.catalog.title(self.caller, name)
        if isinstance(found, Refused):
            self._answer(found)
            return
        self._say(strip_controls(title_text(found[0])))
        if len(found) > 1:
            self._say(strip_controls(messages.also_close(found[1:4])))

    async def _search(self, arg: str) -> None:
        filters = dict(re.findall(r"(genre|person|type|years)=(\"[^\"]*\"|\S+)", arg))
        filters = {k: v.strip('"') for k, v in filters.items()}
        years = re.fullmatch(r"(\d{4})?-?(\d{4})?", filters.get("years", ""))
        if not filters or years is None:
            self._say('Usage: /search genre=horror person="Sam Raimi" type=Movie years=1980-1989')
            return
        first, last = years.groups()
        if filters.get("years", "").isdigit():
            last = first
        found = await self.commands.catalog.search(
            self.caller, genre=filters.get("genre"), person=filters.get("person"),
            kind=filters.get("type"), year_from=int(first) if first else None,
            year_to=int(last) if last else None,
        )  # fmt: skip
        if isinstance(found, Refused):
            self._answer(found)
            return
        text = messages.search_listing(found.titles, found.more)
        self._say(strip_controls(text.replace("\n- ", "\n  ")))

    async def _recommend(self, mood: str) -> None:
        result = await self.commands.catalog.recommend(self.caller, mood)
        if isinstance(result, Refused):
            self._answer(result)
            return
        picks = result.picks
        self._say(strip_controls(messages.picks_text(picks) if picks else messages.NOTHING_FOUND))

    async def _prefs(self, arg: str) -> None:
        verb, _, rest = arg.partition(" ")
        verb, rest = verb.lower(), rest.strip()
        catalog = self.commands.catalog
        if verb in ("", "show"):
            items = await catalog.taste(self.caller)
            if isinstance(items, Refused):
                self._answer(items)
            elif not items:
                self._say(messages.taste_empty("/prefs like X"))
            else:
                self._say(messages.TASTE_HEADER)
                self._say(strip_controls(render_taste(items)))
                self._say(messages.taste_help("/prefs like, dislike or seen X", "/prefs remove X"))
        elif verb in ("like", "dislike", "seen") and rest:
            self._answer(await catalog.add_pref(self.caller, verb, rest))  # type: ignore[arg-type]
        elif verb == "remove" and rest:
            self._answer(await catalog.remove_pref(self.caller, rest))
        else:
            self._say("Usage: /prefs [show | like X | dislike X | seen X | remove X]")

    async def _content(self, kind: str, arg: str) -> None:
        options, subject = content_options(arg)
        if not subject or options is None:
            self._say(f"Usage: /{kind} [tone=…] [length=…] [platform=…] SUBJECT, e.g. "
                      f"/{kind} tone=funny The Irishman")  # fmt: skip
            return
        request = content_request(kind, subject, **options)  # type: ignore[arg-type]
        content = await self.commands.content.write(self.caller, request)
        if isinstance(content, Refused):
            self._answer(content)
            return
        self._say(strip_controls(content.text))
        if content.title:
            self._say(f"({strip_controls(messages.about(content.title.label))})")

    async def _trivia(self) -> None:
        games = self.commands.games
        trivia = await games.question(self.caller)
        if isinstance(trivia, Refused):
            self._answer(trivia)
            return
        q = trivia.question
        right = strip_controls(f"{LETTERS[q.answer]}) {q.correct}")
        self._say(strip_controls(q.as_text()))
        line = await self._read(f"Your answer ({int(trivia.seconds)} s, A-D): ")
        choice = (line or "").strip().upper()[:1]
        if choice not in LETTERS:
            self._say(messages.no_answer(right))
            return
        result = await games.answer(self.caller, q.id, LETTERS.index(choice))
        if isinstance(result, Refused):
            self._answer(result)
            return
        self._say(messages.answered(result.outcome, result.score, right))


def _in_daemon_thread(fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """Run a blocking read in a daemon thread. `asyncio.to_thread` would not do: on
    Ctrl-C its worker stays blocked in `input()` and the exit waits for an Enter."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def run() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=run, name="stdin", daemon=True).start()
    return future


def _write_text(path: str, text: str) -> None:
    Path(path).expanduser().write_text(text, encoding="utf-8")


def title_text(title: Title) -> str:
    """A catalog entry as plain text."""
    lines = [title.label, f"  type: {title.type}"]
    for label, value in (
        ("genres", ", ".join(title.genres)),
        ("directed by", ", ".join(title.directors[:5])),
        ("cast", ", ".join(title.cast[:8])),
        ("country", title.country),
        ("rating", title.rating),
        ("duration", title.duration),
    ):
        if value:
            lines.append(f"  {label}: {value}")
    return "\n".join(lines)


def content_options(arg: str) -> tuple[dict[str, str] | None, str]:
    """Leading `key=value` options and the subject after them; None for a bad option."""
    options: dict[str, str] = {}
    words = arg.split()
    while words and "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        if value.lower() not in OPTION_VALUES.get(key.lower(), ()):
            return None, ""
        options[key.lower()] = value.lower()
    return options, " ".join(words)
