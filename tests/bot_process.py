"""One bot process for tests/test_processes.py: the real services from the environment
(settings, Redis, the remote model server), the Discord side simulated. It sends the
members' messages of its shard group at once through the real pipeline, answers a
trivia question as their button presses would, and prints what happened as JSON.

    python tests/bot_process.py '{"guild": "100", "messages": [["a0", "hi"]], ...}'
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

from bot.assistant import ReplyRequest
from bot.context.build import ContextWindow
from bot.services import open_services
from bot.settings import Settings
from memory.keys import Scope


class Sink:
    def __init__(self) -> None:
        self.notices: list[str] = []
        self.text = ""

    async def context(self, window: ContextWindow) -> None: ...

    async def notice(self, text: str) -> None:
        self.notices.append(text)

    async def piece(self, text: str) -> None:
        if not self.text:
            print("STREAMING", flush=True)  # the test waits for this to kill a process
        self.text += text

    async def finish(self, text: str) -> str | None:
        return None

    async def retract(self, text: str) -> None: ...

    def position(self, place: int) -> None: ...


async def main(plan: dict[str, Any]) -> None:
    async with open_services(Settings.from_env()) as services:
        guild = plan["guild"]

        async def say(user: str, text: str) -> dict[str, Any]:
            sink = Sink()
            outcome = await services.assistant.reply(
                ReplyRequest(scope=Scope(guild), user_id=user, user_name=user, text=text,
                             message_id=uuid.uuid4().hex, channel_id=f"c{guild}"),
                sink,
            )  # fmt: skip
            return {"user": user, "kind": outcome.kind, "stored": outcome.stored,
                    "notices": sink.notices}  # fmt: skip

        async def answer(user: str, option: int) -> str:
            assert services.media is not None
            trivia = plan["trivia"]
            result = await services.media.trivia.answer(trivia["guild"], trivia["id"], user,
                                                       option)  # fmt: skip
            return str(result.outcome)

        replies = asyncio.gather(*(say(u, t) for u, t in plan.get("messages", [])))
        answers = asyncio.gather(*(answer(u, o) for u, o in plan.get("answers", [])))
        done_replies, done_answers = await asyncio.gather(replies, answers)
        print(json.dumps({"replies": done_replies, "answers": done_answers}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
