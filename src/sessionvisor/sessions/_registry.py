"""The local registry: the live actors of this process, starts in flight, viewers.

An alternative runtime extends it through two constructor hooks instead of
subclassing it: ``claim`` runs before a start (a cluster takes the
conversation's lease there and raises when another node holds it) and
``release`` runs when a start failed or the registered actor ended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from ._seams import Reached

if TYPE_CHECKING:
    from ._actor import Actor

__all__: list[str] = ["LocalRegistry"]


class _Flight:
    """A start in progress; concurrent callers for the same conversation wait on it."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: Exception | None = None


class LocalRegistry:
    """Implements ``Registry`` for one process (see ``_seams.Registry``)."""

    def __init__(
        self,
        *,
        claim: Callable[[str], Awaitable[object]] | None = None,
        release: Callable[[str], None] | None = None,
    ) -> None:
        self._claim = claim
        self._release = release
        self._actors: dict[str, Actor] = {}
        self._flights: dict[str, _Flight] = {}
        self._viewers: dict[str, int] = {}

    def holds(self, conversation_id: str) -> bool:
        return conversation_id in self._actors

    def live(self, conversation_id: str) -> Actor | None:
        actor = self._actors.get(conversation_id)
        if actor is None or actor.closed:
            return None
        return actor

    def entry(self, conversation_id: str) -> Actor | None:
        return self._actors.get(conversation_id)

    def actors(self) -> list[Actor]:
        return list(self._actors.values())

    async def ensure(self, conversation_id: str, start: Callable[[], Awaitable[Actor]]) -> Reached:
        while True:
            actor = self._actors.get(conversation_id)
            if actor is not None:
                if actor.closed:
                    await actor.wait_stopped()  # its final save must land before a new start
                    continue
                return Reached(actor=actor, started=False)
            flight = self._flights.get(conversation_id)
            if flight is not None:
                await flight.done.wait()
                if flight.error is not None:
                    raise flight.error
                continue
            flight = self._flights[conversation_id] = _Flight()
            try:
                if self._claim is not None:
                    await self._claim(conversation_id)
                try:
                    actor = await start()
                except BaseException:
                    if self._release is not None:
                        self._release(conversation_id)
                    raise
                self._actors[conversation_id] = actor
            except Exception as exc:
                flight.error = exc
                raise
            finally:
                del self._flights[conversation_id]
                flight.done.set()
            return Reached(actor=actor, started=True)

    def forget(self, actor: Actor) -> None:
        cid = actor.conversation_id
        if self._actors.get(cid) is actor:
            del self._actors[cid]
            if self._release is not None:
                self._release(cid)

    def in_use(self, conversation_id: str) -> bool:
        """True while an actor is registered for the conversation or starting."""
        return conversation_id in self._actors or conversation_id in self._flights

    async def wait_starts(self) -> None:
        while self._flights:
            await next(iter(self._flights.values())).done.wait()

    def add_viewer(self, conversation_id: str) -> None:
        self._viewers[conversation_id] = self._viewers.get(conversation_id, 0) + 1

    def remove_viewer(self, conversation_id: str) -> int:
        left = self._viewers[conversation_id] - 1
        if left:
            self._viewers[conversation_id] = left
        else:
            del self._viewers[conversation_id]
        return left

    def viewer_count(self, conversation_id: str) -> int:
        return self._viewers.get(conversation_id, 0)
