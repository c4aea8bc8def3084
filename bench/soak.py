"""`mediabot bench-soak` (or `python -m bench soak`): many simulated members chatting for
a long time through the real pipeline (moderation, rate limits, memory, grounding, the
generation queue and the real model), a share of their messages hostile (the bad-input
corpus), to show what a long run leaves behind.

Reports replies, refusals, errors, the process's peak and final RSS and its growth over
the second half (the target: under 5%), Redis's memory, the queue wait's p95, and every
generation slot or queue place still held at the end (the target: none).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.corpus import all_cases
from bench.stats import percentile
from bot.assistant import ReplyRequest
from bot.context.build import ContextWindow
from bot.settings import Settings
from memory.keys import Scope

ORDINARY = (
    "Hi! What should I watch tonight?", "Recommend a heist film", "Who directed Okja?",
    "I loved Dark, what next?", "What year did Jaws come out?", "is it scary?",
    "Tell me about Stranger Things.", "My favourite genre is sci-fi.",
    "Any good documentaries about space?", "what else did he make?",
    "Something funny for a rainy evening?", "How long is The Irishman?",
)  # fmt: skip
HOSTILE_SHARE = 0.2
GUILDS = 10
SAMPLE_EVERY_S = 2.0


@dataclass
class Run:
    replies: int = 0
    refusals: int = 0  # a notice and no reply: moderation, limits, a full queue
    errors: int = 0
    notices: Counter[str] = field(default_factory=Counter)
    waits: list[float] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)


class _Sink:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.asked = time.perf_counter()
        self.waited = False

    async def context(self, window: ContextWindow) -> None: ...

    async def notice(self, text: str) -> None:
        self.run.notices[text[:60]] += 1

    async def piece(self, text: str) -> None: ...

    async def finish(self, text: str) -> str | None:
        return None

    async def retract(self, text: str) -> None: ...

    def position(self, place: int) -> None:
        if place == 0 and not self.waited:
            self.waited = True
            self.run.waits.append(time.perf_counter() - self.asked)


async def member(
    n: int, services: Any, run: Run, rng: random.Random, *, hostile: list[str],
    until: float, think: tuple[float, float],
) -> None:  # fmt: skip
    guild = str(9000 + n % GUILDS)
    user = f"soak{n}"
    await asyncio.sleep(rng.uniform(0, think[1]))  # members arrive spread out
    i = 0
    while time.monotonic() < until:
        text = (
            rng.choice(hostile)
            if hostile and rng.random() < HOSTILE_SHARE
            else (rng.choice(ORDINARY))
        )
        request = ReplyRequest(scope=Scope(guild), user_id=user, user_name=f"Member {n}",
                               text=text, message_id=f"{user}-{i}-{uuid.uuid4().hex[:6]}",
                               channel_id=f"c{guild}")  # fmt: skip
        sink = _Sink(run)
        try:
            outcome = await services.assistant.reply(request, sink)
        except Exception:  # a soak counts failures; it does not stop at the first
            run.errors += 1
        else:
            if outcome.generated:
                run.replies += 1
            else:
                run.refusals += 1
        i += 1
        await asyncio.sleep(rng.uniform(*think))


async def sample(run: Run, until: float) -> None:
    process = psutil.Process()
    while time.monotonic() < until:
        run.rss.append((time.monotonic(), process.memory_info().rss))
        await asyncio.sleep(SAMPLE_EVERY_S)


async def leftovers(services: Any, prefix: str) -> dict[str, int]:
    """Generation slots still held in Redis, and requests still queued or running."""
    client = services.memory.client
    slots = 0
    async for key in client.scan_iter(match=f"{prefix}:*:inflight", count=1000):
        slots += int(await client.zcard(key))
    queue = getattr(services.generator, "queue", None)
    return {
        "server_slots_held": slots,
        "queue_running": int(getattr(queue, "running", 0)),
        "queue_waiting": int(getattr(queue, "waiting", 0)),
    }


async def run(
    settings: Settings, *, members: int = 200, minutes: float = 10.0, seed: int = 3,
    think: tuple[float, float] = (5.0, 40.0), progress: Any = print,
    prefix: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    from bot.services import open_services

    prefix = prefix or "mbsoak" + uuid.uuid4().hex[:8]
    settings = settings.model_copy(
        update={"memory": settings.memory.model_copy(update={"key_prefix": prefix})}
    )
    rng = random.Random(seed)
    hostile = [text for _, text in all_cases()]
    result: dict[str, Any]
    async with open_services(settings, progress=progress) as services:
        try:
            run_ = Run()
            began = time.monotonic()
            until = began + minutes * 60
            progress(f"{members} members for {minutes:g} minutes…")
            sampler = asyncio.create_task(sample(run_, until))
            await asyncio.gather(
                *(member(n, services, run_, random.Random(rng.random()), hostile=hostile,
                         until=until, think=think) for n in range(members))
            )  # fmt: skip
            await sampler
            await services.assistant.upkeep.drain()
            left = await leftovers(services, prefix)
            info = await services.memory.client.info("memory")
            rss = [r for _, r in run_.rss] or [0]
            half = [r for t, r in run_.rss if t >= began + (time.monotonic() - began) / 2]
            growth = (max(half) - half[0]) / half[0] if half and half[0] else 0.0
            result = {
                "date": dt.date.today().isoformat(),
                "members": members,
                "minutes": round((time.monotonic() - began) / 60, 2),
                "hostile_share": HOSTILE_SHARE if hostile else 0.0,
                "replies": run_.replies,
                "refusals": run_.refusals,
                "errors": run_.errors,
                "notices": dict(run_.notices.most_common(8)),
                "rss_peak_mb": round(max(rss) / 2**20, 1),
                "rss_final_mb": round(rss[-1] / 2**20, 1),
                "rss_growth_second_half": round(growth, 4),
                "redis_used_memory_mb": round(int(info["used_memory"]) / 2**20, 1),
                "queue_wait_p50_s": round(percentile(run_.waits, 0.5), 3),
                "queue_wait_p95_s": round(percentile(run_.waits, 0.95), 3),
                "left_behind": left,
            }
        finally:
            client = services.memory.client
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                await client.delete(key)
    return result


def report(result: dict[str, Any]) -> str:
    left = result["left_behind"]
    return "\n".join([
        f"{result['members']} members, {result['minutes']} min: {result['replies']} replies, "
        f"{result['refusals']} refusals, {result['errors']} errors",
        f"RSS peak {result['rss_peak_mb']} MB, final {result['rss_final_mb']} MB, growth over "
        f"the second half {result['rss_growth_second_half']:.1%} (target under 5%)",
        f"Redis {result['redis_used_memory_mb']} MB; queue wait p50 "
        f"{result['queue_wait_p50_s']} s, p95 {result['queue_wait_p95_s']} s",
        f"left behind: {left['server_slots_held']} server slots, {left['queue_running']} "
        f"running and {left['queue_waiting']} waiting in the queue (target: none)",
    ])  # fmt: skip


async def main(
    settings: Settings, *, members: int, minutes: float, out: Path | None
) -> dict[str, Any]:
    import sys

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = await run(settings, members=members, minutes=minutes, progress=progress)
    if out is not None:
        await asyncio.to_thread(out.write_text, json.dumps(result, indent=2) + "\n")
    return result
