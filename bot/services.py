"""Builds every service from the settings, in `main()`, and closes each once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from bot.assistant import Assistant
from bot.commands import Commands
from bot.distributed import Leases
from bot.generation.base import GenerationError, GenerationParams, Generator
from bot.generation.local import LocalGenerator
from bot.generation.remote import RemoteGenerator
from bot.generation.tokenizer import ChatTokenizer
from bot.generation.weights import Progress, model_dir
from bot.grounding.service import Grounding
from bot.media.library import Library
from bot.media.service import Media
from bot.metrics import Health, Metrics, serve, watch_queue
from bot.moderation.classifier import OffensiveClassifier
from bot.moderation.moderator import ModerationEvent, Moderator
from bot.moderation.policy import GuildPolicy, Moderation
from bot.moderation.ratelimit import Limits, RateLimiter
from bot.settings import Settings
from memory.connection import open_redis
from memory.guilds import GuildConfig
from memory.keys import Keys
from memory.store import MemoryStore


@dataclass(frozen=True, slots=True)
class Services:
    memory: MemoryStore
    generator: Generator
    assistant: Assistant
    guild_config: GuildConfig
    moderator: Moderator
    media: Media | None = None
    metrics: Metrics = field(default_factory=Metrics)
    health: Health = field(default_factory=Health)
    metrics_port: int | None = None  # where /metrics and /health are served, if they are

    @property
    def commands(self) -> Commands:
        """The commands both front ends call (the assistant's: chat uses them too)."""
        return self.assistant.commands


def build_moderator(
    settings: Settings, moderation: Moderation | None, classifier: OffensiveClassifier | None
) -> Moderator:
    mod = settings.moderation
    return Moderator(
        moderation,
        classifier,
        flood_messages=mod.flood_messages,
        flood_seconds=mod.flood_seconds,
        repeat_limit=mod.repeat_limit,
        guild_in_flight=settings.ratelimit.guild_in_flight,
        member_in_flight=settings.generation.per_user,
        slot_lease=settings.generation.timeout + 30,
    )


def load_remote(settings: Settings, progress: Progress) -> RemoteGenerator:
    """The remote backend, with the local tokenizer that counts its context window."""
    remote = settings.remote
    if remote.url is None:
        raise GenerationError("GENERATION_BACKEND is remote but REMOTE_URL is not set.")
    progress("Loading the tokenizer (generation runs on the model server)…")
    directory = model_dir(settings.model.path, settings.model.cache_dir, progress)
    return RemoteGenerator(
        remote.url.get_secret_value(),
        remote.model,
        ChatTokenizer.load(directory),
        api_key=remote.api_key.get_secret_value() if remote.api_key else None,
        timeout=remote.timeout,
        context_length=remote.context_length,
        concurrency=remote.concurrency,
        queue_max=settings.generation.queue_max,
        per_user=settings.generation.per_user,
    )


def watch(
    metrics: Metrics, health: Health, memory: MemoryStore, generator: Generator,
    moderator: Moderator,
) -> None:  # fmt: skip
    """What the metrics read from the services, and what /health asks of them: Redis
    answers, and the generator is loaded (it is, once the services are open)."""
    watch_queue(metrics, generator)

    async def moderation(event: ModerationEvent) -> None:
        metrics.moderation.labels(event.rule, event.action).inc()

    moderator.listeners.append(moderation)

    async def redis() -> bool:
        await memory.ping()
        return True

    async def model() -> bool:
        return generator.context_length > 0

    health.add("redis", redis)
    health.add("generator", model)


def blurb_params(settings: Settings, tokens: int | None = None) -> GenerationParams:
    """Sampling for text written about catalog titles: the one-sentence blurbs, or
    content and story scenes of `tokens` tokens at most."""
    return GenerationParams.from_settings(
        settings.generation, tokens or settings.catalog.blurb_tokens
    )


def default_policy(settings: Settings) -> GuildPolicy:
    """Every server's policy until its admins change it."""
    mod = settings.moderation
    return GuildPolicy(
        level=mod.level,
        action=mod.action,
        standard_threshold=mod.standard_threshold,
        strict_threshold=mod.strict_threshold,
        strike_limit=mod.strike_limit,
        strike_decay_hours=mod.strike_decay_hours,
        cooldown_minutes=mod.cooldown_minutes,
    )


def load_classifier(settings: Settings) -> OffensiveClassifier:
    mod = settings.moderation
    return OffensiveClassifier.load(
        titles=mod.titles_file,
        hf_path=mod.hf_model_path,
        hf_labels=mod.hf_labels.split(","),
    )


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, *, progress: Progress = lambda _: None
) -> AsyncIterator[Services]:
    """Redis first (an unreachable Redis fails in a second, not after the model
    load), then the model, loaded in a thread so the loop stays free."""
    url = settings.redis.url.get_secret_value() if settings.redis.url else None
    async with open_redis(
        url,
        data_dir=settings.redis.data_dir,
        socket_timeout=settings.redis.socket_timeout,
        connect_timeout=settings.redis.connect_timeout,
    ) as client:
        keys = Keys(settings.memory.key_prefix)
        memory = MemoryStore(
            client,
            keys=keys,
            max_turns=settings.memory.max_turns,
            retention_seconds=settings.memory.retention_seconds,
        )
        generator: LocalGenerator | RemoteGenerator
        if settings.generation.backend == "remote":
            generator = await asyncio.to_thread(load_remote, settings, progress)
            # Every bot process sharing this Redis shares the server's places.
            generator.shared = Leases(
                client, keys.remote_slots_key(), cap=settings.remote.concurrency,
                lease_s=settings.remote.lease_seconds,
            )  # fmt: skip
        else:
            progress("Loading the model…")
            generator = await asyncio.to_thread(
                LocalGenerator.load,
                settings.model,
                concurrency=settings.generation.concurrency,
                max_batch=settings.generation.max_batch,
                queue_max=settings.generation.queue_max,
                per_user=settings.generation.per_user,
                prefix_mb=settings.generation.prefix_cache_mb,
                progress=progress,
            )
        progress("Loading the moderation classifier…")
        classifier = await asyncio.to_thread(load_classifier, settings)
        moderation = Moderation(
            client, keys, defaults=default_policy(settings), log_max=settings.moderation.log_max
        )
        moderator = build_moderator(settings, moderation, classifier)
        rl = settings.ratelimit
        limiter = (
            RateLimiter(
                client,
                Limits(rl.user_per_minute, rl.user_burst, rl.guild_per_minute, rl.guild_burst),
                keys,
            )
            if rl.enabled
            else None
        )
        progress("Loading the catalog…")
        media = await Media.open(
            Library(client, keys),
            memory,
            generator,
            default_file=settings.catalog.file,
            blurb_params=blurb_params(settings),
            content_params=blurb_params(settings, settings.catalog.content_tokens),
            story_params=blurb_params(settings, settings.catalog.story_tokens),
            trivia_seconds=settings.catalog.trivia_seconds,
        )
        metrics, health = Metrics(), Health()
        watch(metrics, health, memory, generator, moderator)
        grounding = Grounding(media, enabled=settings.grounding.enabled)
        if grounding.enabled:
            progress("Indexing the catalog's titles and people…")
            await grounding.finder()  # built now, not on the first message
        assistant = Assistant(
            settings=settings,
            memory=memory,
            generator=generator,
            limiter=limiter,
            moderator=moderator,
            media=media,
            grounding=grounding,
            metrics=metrics,
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                bound: int | None = None
                if settings.metrics.port is not None:
                    bound = await stack.enter_async_context(
                        serve(metrics, health, host=settings.metrics.host,
                              port=settings.metrics.port)
                    )  # fmt: skip
                    progress(f"Metrics and health on http://{settings.metrics.host}:{bound}")
                yield Services(
                    memory=memory,
                    generator=generator,
                    assistant=assistant,
                    guild_config=GuildConfig(client, keys),
                    moderator=moderator,
                    media=media,
                    metrics=metrics,
                    health=health,
                    metrics_port=bound,
                )
        finally:
            await assistant.upkeep.drain()
            generator.close()
