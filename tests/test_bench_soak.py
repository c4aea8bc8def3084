"""The soak benchmark, run short: members with hostile messages among theirs through
the real services; nothing is left behind and nothing fails (the long run's figures
come from `mediabot bench-soak`)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from bench.soak import report, run
from bot.settings import CatalogSettings
from memory.keys import Keys
from tests.conftest import make_settings


@pytest.mark.model
async def test_a_short_soak_leaves_nothing_behind(
    redis_url: str, redis_client: Redis, keys: Keys
) -> None:
    settings = make_settings(keys, redis_url, max_new_tokens=8)
    settings.catalog = CatalogSettings(blurb_tokens=8)
    prefix = keys.prefix + "soak"
    result = await run(settings, members=6, minutes=0.15, think=(0.05, 0.3),
                       progress=lambda _: None, prefix=prefix)  # fmt: skip
    assert result["errors"] == 0 and result["replies"] > 0
    assert result["left_behind"] == {"server_slots_held": 0, "queue_running": 0,
                                     "queue_waiting": 0}  # fmt: skip
    assert result["rss_peak_mb"] >= result["rss_final_mb"] > 0
    assert "left behind: 0 server slots" in report(result)
    assert not [k async for k in redis_client.scan_iter(match=f"{prefix}:*", count=1000)]
