"""Reusable tasks for the supervisor's short pieces of work (turns, stops, saves).

Spawning an anyio task costs tens of microseconds (a cancel scope, an event and
bookkeeping per task), a large share of a cheap turn. Runners are tasks of the
supervisor's task group that, after a piece of work, wait for the next one; at
most ``max_idle`` wait at a time and the rest end, so the pool is bounded by
the supervisor's peak concurrency and shrinks to ``max_idle``. They belong to
the supervisor, never to a session: a parked session still holds no task.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import structlog

__all__: list[str] = []

_log = structlog.get_logger("sessionvisor")

Work = Callable[[], Coroutine[Any, Any, Any]]


class _Runner:
    __slots__ = ("wake", "work")

    def __init__(self) -> None:
        self.work: Work | None = None
        self.wake = anyio.Event()


class Runners:
    def __init__(self, tg: anyio.abc.TaskGroup, max_idle: int = 16) -> None:
        self._tg = tg
        self._max_idle = max_idle
        self._idle: list[_Runner] = []
        self._running: set[anyio.CancelScope] = set()

    def cancel_all(self) -> None:
        """End the work under way (the supervisor closing: what is left must not outlive it)."""
        for scope in list(self._running):
            scope.cancel()

    def submit(self, work: Work) -> None:
        if self._idle:
            runner = self._idle.pop()  # the most recently used: the others may time out
            runner.work = work
            runner.wake.set()
        else:
            self._tg.start_soon(self._run, work)

    async def _run(self, work: Work | None) -> None:
        runner = _Runner()
        while work is not None:
            try:
                # Work (a turn, a stop, a save retry) is ended by the runtime itself (a
                # turn's own cancel scope, the drain), never by a cancellation of the
                # scope the supervisor was entered in: cut there, a turn would leave
                # the agent's half-done output behind without rolling it back.
                with anyio.CancelScope(shield=True) as scope:
                    self._running.add(scope)
                    try:
                        await work()
                    finally:
                        self._running.discard(scope)
            except Exception:
                # Work catches its own failures; one that escapes is a bug in one
                # session, and must not take the supervisor's task group down.
                _log.exception("supervisor_work_failed")
            if len(self._idle) >= self._max_idle:
                return
            runner.work = None
            runner.wake = anyio.Event()
            self._idle.append(runner)
            await runner.wake.wait()  # until submit hands over work (or the group ends)
            work = runner.work
