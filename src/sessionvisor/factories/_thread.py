"""``in_thread``: run a blocking sync factory on a worker thread."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import anyio.to_thread
from anyio import CapacityLimiter

from .._errors import FactoryContractError
from ._factory import Factory, FactoryLike
from ._invoke import _create_function, factory_name

__all__ = ["in_thread"]


class _ThreadedFactory:
    """A factory whose every call runs the wrapped blocking factory on a worker thread."""

    __slots__ = ("_create", "_limiter", "wrapped")

    def __init__(self, factory: FactoryLike, limiter: CapacityLimiter | None) -> None:
        self.wrapped = factory
        self._create = _create_function(factory)
        if inspect.iscoroutinefunction(self._create) or inspect.iscoroutinefunction(
            type(self._create).__call__
        ):
            raise FactoryContractError(
                f"factory {factory_name(factory)} is async; in_thread is for blocking "
                "sync factories, pass it without in_thread"
            )
        self._limiter = limiter

    async def create_agent(self, agent_id: str, config: Any) -> Any:
        # Not abandoned on cancellation: the thread cannot be stopped, and a
        # factory still building an agent after its start was given up on
        # would race with the next start of the same conversation.
        return await anyio.to_thread.run_sync(
            functools.partial(self._build, agent_id, config), limiter=self._limiter
        )

    def _build(self, agent_id: str, config: Any) -> Any:
        # Runs on the worker thread. An awaitable is refused here, not on the
        # loop: trio rejects a worker function that returns a coroutine.
        result = self._create(agent_id, config)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # built on the worker thread, awaited by no one
            raise FactoryContractError(
                f"factory {factory_name(self.wrapped)} for agent {agent_id!r} returned an "
                "awaitable from its worker thread; in_thread is for blocking sync "
                "factories, pass an async factory without it"
            )
        return result

    def __repr__(self) -> str:
        return f"in_thread({factory_name(self.wrapped)})"


def in_thread(factory: FactoryLike, *, limiter: CapacityLimiter | None = None) -> Factory:
    """Wrap a blocking sync factory so it runs on a worker thread.

    A factory that reads files or calls a blocking client would otherwise stall
    every session on the event loop while it builds one agent. Each call runs
    on ``anyio.to_thread.run_sync``; a start that is cancelled meanwhile still
    waits for the thread to return.

    Args:
        factory: an object with a sync ``create_agent`` or a sync callable
            ``(agent_id, config)``.
        limiter: caps how many of these calls run at once; anyio's default
            thread limiter when None.

    Returns:
        A factory with an async ``create_agent``; pass it wherever a factory goes.

    Raises:
        FactoryContractError: ``factory`` has no ``create_agent`` and is not
            callable, or is plainly async. (At call time: it returned an
            awaitable, so it was not a sync factory after all.)
    """
    return _ThreadedFactory(factory, limiter)
