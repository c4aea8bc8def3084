"""Opening Redis: the embedded server keeps data across restarts; a cluster URL opens a
cluster client; failures are one sentence; passwords never show."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from memory.connection import EmbeddedRedis, RedisUnavailable, open_redis, redact_url
from tests.redis_cluster import local_cluster


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


async def test_a_cluster_url_opens_a_cluster_client_that_spreads_keys_over_nodes(
    cluster_redis_url: str, tmp_path: Path
) -> None:
    async with open_redis(cluster_redis_url, data_dir=tmp_path) as client:
        assert isinstance(client, RedisCluster)
        # Thirty users' tags hash into all three masters' slot ranges; the client
        # sends each key to the node that owns its slot.
        names = [f"mbt-conn:{{u{n}}}:k" for n in range(30)]
        for name in names:
            await client.set(name, name, ex=60)
        owners = {client.get_node_from_key(name).name for name in names}
        assert len(owners) == 3
        assert [await client.get(name) for name in names] == [n.encode() for n in names]
        await client.delete(*names)
    assert not (tmp_path / "redis.sock").exists()  # no embedded server was started


async def test_a_plain_url_to_a_cluster_node_says_to_use_the_cluster_scheme(
    cluster_redis_url: str, tmp_path: Path
) -> None:
    plain = cluster_redis_url.replace("redis+cluster://", "redis://")
    with pytest.raises(RedisUnavailable) as info:
        async with open_redis(plain, data_dir=tmp_path):
            pass
    assert str(info.value) == (
        f"Redis at {plain} is a node of a Redis Cluster: set REDIS_URL to {cluster_redis_url}."
    )


async def test_a_cluster_url_to_a_single_server_says_to_use_the_plain_scheme(
    tmp_path: Path,
) -> None:
    with local_cluster(tmp_path / "single", cluster=False) as plain:
        address = plain.removeprefix("redis://")
        with pytest.raises(RedisUnavailable) as info:
            async with open_redis(f"redis+cluster://{address}", data_dir=tmp_path):
                pass
    assert str(info.value) == (
        f"REDIS_URL names a Redis Cluster, but {address} is a single Redis server: "
        f"set REDIS_URL to {plain}."
    )


async def test_cluster_urls_that_cannot_work_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(RedisUnavailable) as info:
        async with open_redis("redis+cluster://u:s3cret@127.0.0.1:1/0", data_dir=tmp_path):
            pass
    assert str(info.value) == (
        "Could not connect to the Redis Cluster at redis+cluster://127.0.0.1:1/0. Is it running?"
    )
    # A cluster has only database 0.
    with pytest.raises(RedisUnavailable, match=r"^REDIS_URL is not a valid cluster URL \(.*db"):
        async with open_redis("redis+cluster://127.0.0.1:1/3", data_dir=tmp_path):
            pass
