"""What a running bot exposes: Prometheus metrics at `/metrics` and a health check at
`/health`, served on `METRICS_PORT` by a small aiohttp server (aiohttp comes with
discord.py) for the Discord bot, the terminal chat and the benchmarks alike.

Names follow the inference servers' where they overlap (vLLM's `num_requests_running`,
`time_to_first_token_seconds`, `e2e_request_latency_seconds`,
`request_queue_time_seconds`, `prompt_tokens_total`, `generation_tokens_total`,
`prefix_cache_queries_total`, `prefix_cache_hits_total`), with a `mediabot_` prefix; the
rest are the bot's own: replies by outcome, moderation actions by rule, rate-limit
refusals, memory latency and errors, context-window tokens by slot, grounding, the
prefix cache's hit ratio and the engine's passes, and gateway latency per shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bot.generation.batch import EngineStats

log = logging.getLogger(__name__)

NS = "mediabot"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TOKEN_BUCKETS = (0, 16, 64, 128, 256, 512, 1024, 1536, 2048, 4096, 8192)
HEALTH_TIMEOUT_S = 2.0

# A check of /health: a coroutine saying whether its part is well.
Check = Callable[[], Awaitable[bool]]


class MetricsUnavailable(Exception):
    """The metrics port cannot be served; the message is one sentence for the user."""


class Metrics:
    """Every metric of one process, in its own registry (tests make many)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests_running = Gauge(
            f"{NS}_num_requests_running", "Requests generating now.", registry=r
        )
        self.requests_waiting = Gauge(
            f"{NS}_num_requests_waiting", "Requests waiting for the model.", registry=r
        )
        self.time_to_first_token = Histogram(
            f"{NS}_time_to_first_token_seconds",
            "From a message's arrival to the first piece of its reply shown.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e_latency = Histogram(
            f"{NS}_e2e_request_latency_seconds", "From a message's arrival to its reply shown.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_time = Histogram(
            f"{NS}_request_queue_time_seconds", "Time a reply waited for the model.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            f"{NS}_prompt_tokens", "Prompt tokens sent to the model (window bound).", registry=r
        )
        self.generation_tokens = Counter(
            f"{NS}_generation_tokens", "Tokens of the replies shown.", registry=r
        )
        self.replies = Counter(
            f"{NS}_replies", "Messages answered, by how.", ["outcome"], registry=r
        )
        self.moderation = Counter(
            f"{NS}_moderation_actions", "Moderation actions, by rule and action.",
            ["rule", "action"], registry=r,
        )  # fmt: skip
        self.ratelimit_refusals = Counter(
            f"{NS}_ratelimit_refusals", "Messages refused by a rate limit.", ["who"], registry=r
        )
        self.memory_latency = Histogram(
            f"{NS}_memory_latency_seconds", "Redis memory reads and writes of a reply.",
            ["op"], buckets=FAST_BUCKETS, registry=r,
        )  # fmt: skip
        self.memory_errors = Counter(
            f"{NS}_memory_errors", "Memory reads and writes that failed.", ["op"], registry=r
        )
        self.window_tokens = Histogram(
            f"{NS}_context_window_tokens", "Tokens of each slot of a reply's window.",
            ["slot"], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.grounding = Counter(
            f"{NS}_grounding", "Catalog answers, and reply sentences repaired or dropped.",
            ["event"], registry=r,
        )  # fmt: skip
        self.engine = EngineCollector()
        r.register(self.engine)
        self.gateway_latency = Gauge(
            f"{NS}_gateway_latency_seconds", "Discord gateway heartbeat latency.", ["shard"],
            registry=r,
        )  # fmt: skip
        self._collect: list[Callable[[], None]] = []

    def on_collect(self, refresh: Callable[[], None]) -> None:
        """Run `refresh` before each scrape (gauges read from a live object)."""
        self._collect.append(refresh)

    def render(self) -> bytes:
        for refresh in self._collect:
            try:
                refresh()
            except Exception:  # a broken reader must not break the scrape
                log.exception("a metrics reader failed")
        return generate_latest(self.registry)

    @contextlib.contextmanager
    def memory_op(self, op: str) -> Iterator[None]:
        """Time a memory read or write; a failure counts as an error (and propagates)."""
        began = time.perf_counter()
        try:
            yield
        except Exception:
            self.memory_errors.labels(op).inc()
            raise
        finally:
            self.memory_latency.labels(op).observe(time.perf_counter() - began)


class EngineCollector(Collector):
    """The batch engine's counts (`EngineStats`), read at each scrape from `read` (set
    by `watch_queue`); nothing while it is unset or returns None (no engine)."""

    def __init__(self) -> None:
        self.read: Callable[[], EngineStats | None] | None = None

    def describe(self) -> list[Metric]:
        return []  # (the names depend on whether there is an engine)

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self.read() if self.read is not None else None
        except Exception:  # a broken reader must not break the scrape
            log.exception("reading the engine's counts failed")
            return
        if stats is None:
            return
        counters: tuple[tuple[str, str, float], ...] = (
            ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
             stats.prefix_query_tokens),
            ("prefix_cache_hits", "Prompt tokens taken from the prefix cache.",
             stats.prefix_hit_tokens),
            ("engine_forward_passes", "Forward passes of the batch engine.", stats.passes),
        )  # fmt: skip
        gauges: tuple[tuple[str, str, float], ...] = (
            ("prefix_cache_hit_ratio",
             "Share of the prompt tokens taken from the prefix cache, since the start.",
             stats.prefix_hit_ratio),
            ("engine_kv_bytes",
             "Bytes of keys and values the batch engine's KV slab holds now (0 when idle).",
             stats.slab_bytes),
            ("engine_kv_slots_peak",
             "The most replies' keys and values the KV slab has held at once.",
             stats.slab_slots),
        )  # fmt: skip
        for name, documentation, value in counters:
            yield CounterMetricFamily(f"{NS}_{name}", documentation, value=value)
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(f"{NS}_{name}", documentation, value=value)


@dataclass
class Health:
    """The checks behind /health; a front end adds its own (the gateway)."""

    checks: dict[str, Check] = field(default_factory=dict)

    def add(self, name: str, check: Check) -> None:
        self.checks[name] = check

    async def report(self) -> tuple[bool, dict[str, bool]]:
        async def one(check: Check) -> bool:
            try:
                async with asyncio.timeout(HEALTH_TIMEOUT_S):
                    return bool(await check())
            except Exception:
                return False

        names = list(self.checks)
        results = await asyncio.gather(*(one(self.checks[n]) for n in names))
        status = dict(zip(names, results, strict=True))
        return all(results), status


def app(metrics: Metrics, health: Health) -> web.Application:
    async def metrics_view(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_view(request: web.Request) -> web.Response:
        ok, status = await health.report()
        return web.json_response({"ok": ok, "checks": status}, status=200 if ok else 503)

    application = web.Application()
    application.router.add_get("/metrics", metrics_view)
    application.router.add_get("/health", health_view)
    return application


@contextlib.asynccontextmanager
async def serve(metrics: Metrics, health: Health, *, host: str, port: int) -> AsyncIterator[int]:
    """Serve /metrics and /health on host:port for the body; yields the bound port
    (port 0 picks a free one)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MetricsUnavailable(
            f"Could not serve metrics on {host}:{port} ({exc.strerror}): set METRICS_PORT "
            "to a free port."
        ) from exc
    bound = int(sock.getsockname()[1])
    runner = web.AppRunner(app(metrics, health), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    log.info("metrics and health on http://%s:%d", host, bound)
    try:
        yield bound
    finally:
        await runner.cleanup()


def watch_queue(metrics: Metrics, generator: Any) -> None:
    """The queue's gauges and the batch engine's counts (`engine_stats`, a local
    generator's), read from the generator at each scrape."""
    queue = getattr(generator, "queue", None)

    def refresh() -> None:
        if queue is not None:
            metrics.requests_running.set(getattr(queue, "running", 0))
            metrics.requests_waiting.set(getattr(queue, "waiting", 0))

    metrics.on_collect(refresh)
    engine_stats = getattr(generator, "engine_stats", None)
    if callable(engine_stats):
        metrics.engine.read = engine_stats
