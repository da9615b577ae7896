"""The base of the Redis-side classes: the URL and key prefix, one lazy client."""

from __future__ import annotations

from typing import Any, Self

import anyio

from .._closing import ClosedOnExit
from ._common import import_redis, require_asyncio

__all__ = ["RedisUser"]


class RedisUser(ClosedOnExit):
    """Checks ``redis_url`` and ``prefix``; opens one ``redis.asyncio`` client
    on first use (asyncio only) and closes it on exit or ``aclose``."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self._redis_module = import_redis()
        if not isinstance(redis_url, str) or not redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError(
                f"redis_url must be a redis://, rediss:// or unix:// URL, got {redis_url!r}"
            )
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{}\n\r "):
            raise ValueError(
                f"prefix must be a non-empty key prefix without braces or spaces, got {prefix!r}"
            )
        self._url = redis_url
        self._prefix = prefix
        self._client: Any = None

    def _redis(self) -> Any:
        require_asyncio(type(self).__name__)
        if self._client is None:
            self._client = self._redis_module.Redis.from_url(
                self._url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=5.0
            )
        return self._client

    def connection_errors(self) -> tuple[type[BaseException], ...]:
        """What a call raises when Redis is unreachable or stopped answering."""
        import redis.exceptions as exceptions

        return (exceptions.ConnectionError, exceptions.TimeoutError, OSError)

    async def __aenter__(self) -> Self:
        self._redis()
        return self

    async def aclose(self) -> None:
        """Close the connections. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()
