"""What memory raises when Redis fails, and the one place a Redis error becomes it.

Every Redis call of the store, the per-server settings and the features that share
the connection (moderation, rate limits, trivia, the catalog) runs inside
`redis_errors()`, so a caller catches `MemoryUnavailable` and nothing of redis-py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import RedisError


class MemoryUnavailable(Exception):
    """Redis could not be reached or answered with an error; nothing was written."""


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Raise a `RedisError` from inside as `MemoryUnavailable`, with the same message
    and the Redis error as its cause; anything else passes through."""
    try:
        yield
    except RedisError as exc:
        raise MemoryUnavailable(str(exc)) from exc
