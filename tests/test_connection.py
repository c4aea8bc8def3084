"""Opening Redis: the embedded server keeps data across restarts; failures are one
sentence; passwords never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory.connection import EmbeddedRedis, RedisUnavailable, open_redis, redact_url


async def test_the_embedded_server_keeps_data_across_a_restart(tmp_path: Path) -> None:
    async with open_redis(None, data_dir=tmp_path) as client:
        await client.set("k", "kept")
    # AOF (fsync every second) while running, and an RDB snapshot saved at shutdown.
    assert (tmp_path / "appendonly.aof").exists()
    assert (tmp_path / "dump.rdb").exists()
    async with open_redis(None, data_dir=tmp_path) as client:
        assert await client.get("k") == b"kept"


async def test_a_second_process_on_the_same_directory_shares_the_server(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    url = await first.start()
    second = EmbeddedRedis(tmp_path)
    try:
        assert await second.start() == url
        assert first.owner and not second.owner
    finally:
        await second.stop()
        await first.stop()


async def test_an_unreachable_url_raises_one_sentence_without_the_password(
    tmp_path: Path,
) -> None:
    with pytest.raises(RedisUnavailable) as info:
        async with open_redis("redis://user:s3cret@127.0.0.1:1/0", data_dir=tmp_path):
            pass
    assert str(info.value) == "Could not connect to Redis at redis://127.0.0.1:1/0. Is it running?"


async def test_a_malformed_url_is_named(tmp_path: Path) -> None:
    with pytest.raises(RedisUnavailable, match="REDIS_URL is not a valid Redis URL"):
        async with open_redis("http://nope", data_dir=tmp_path):
            pass


def test_redact_url_drops_credentials_only() -> None:
    assert redact_url("redis://:pw@host:6380/2") == "redis://host:6380/2"
    assert redact_url("rediss://u:pw@h/0?ssl=1") == "rediss://h/0?ssl=1"
    assert redact_url("redis://host:6379") == "redis://host:6379"
