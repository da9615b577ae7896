"""Per-node wake-ups over Redis pub/sub: "you have inbox rows for X".

Losing Redis loses wake-ups only: the inbox in PostgreSQL still holds every
command. Asyncio only: ``redis.asyncio``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ._pg import check_conversation_id
from ._redis import RedisUser

__all__ = ["WakeupListener", "Wakeups"]


class Wakeups(RedisUser):
    """Per-node wake-ups over Redis pub/sub: "you have inbox rows for X".

    A wake-up is a hint, never the command: one lost while Redis is down (or
    published before the node subscribed) is made up by the inbox's
    LISTEN/NOTIFY or by polling ``Inbox.pending_conversations``.

    Args:
        redis_url: ``redis://host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: the channel prefix: ``<prefix>:wake:<node_id>``.
    """

    def __init__(self, redis_url: str, *, prefix: str = "sessionvisor") -> None:
        super().__init__(redis_url, prefix)

    def __repr__(self) -> str:
        return f"Wakeups(prefix={self._prefix!r})"

    def channel(self, node_id: str) -> str:
        return f"{self._prefix}:wake:{node_id}"

    async def notify(self, node_id: str, conversation_id: str) -> int:
        """Wake ``node_id`` for the conversation; return how many listeners got it.

        Raises:
            redis.exceptions.ConnectionError: Redis is unreachable.
        """
        check_conversation_id(conversation_id)
        if not isinstance(node_id, str) or not node_id:
            raise TypeError(f"node_id must be a non-empty str, got {node_id!r}")
        return int(await self._redis().publish(self.channel(node_id), conversation_id))

    @asynccontextmanager
    async def listen(self, node_id: str) -> AsyncIterator[WakeupListener]:
        """Subscribe to ``node_id``'s wake-ups; subscribed once this is entered.

        Raises:
            redis.exceptions.ConnectionError: Redis is unreachable.
            TimeoutError: Redis did not confirm the subscription within 5 s.
        """
        if not isinstance(node_id, str) or not node_id:
            raise TypeError(f"node_id must be a non-empty str, got {node_id!r}")
        pubsub = self._redis().pubsub()
        try:
            await pubsub.subscribe(self.channel(node_id))
            # Wait for the confirmation: a PUBLISH sent before the server
            # registered the subscription would be lost.
            with anyio.fail_after(5):
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        break
            yield WakeupListener(pubsub)
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()


class WakeupListener:
    """The wake-ups of one node."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def wait(self, timeout: float) -> set[str]:
        """Wait up to ``timeout`` seconds for a wake-up; return the conversation
        ids received (empty on timeout).

        After a Redis outage the next call subscribes again by itself; a
        wake-up published before that reached nobody (its ``notify`` said 0).

        Raises:
            redis.exceptions.ConnectionError: Redis is unreachable.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
        if not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
        found: set[str] = set()
        with anyio.move_on_after(timeout):
            while not found:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=timeout
                )
                if message is not None and message["type"] == "message":
                    found.add(message["data"])
        while True:  # what arrived together, without waiting again
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            if message is None:
                return found
            if message["type"] == "message":
                found.add(message["data"])
