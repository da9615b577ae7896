"""The life of one actor as one explicit state, and why it stops.

An actor is ``SERVING`` from the moment it is built. A stop request (a user's
``stop``, a drain, an idle deadline, a write refused as stale) moves it to
``STOPPING``; it is ``STOPPED`` once its final save landed and the registry
forgot it. A crash that the restart policy refuses moves it to ``FAILED``. The
two last states are final::

    SERVING --request_stop(reason)--> STOPPING --finish()--> STOPPED
    SERVING/STOPPING --fail(error)--> FAILED
    SERVING --finish() (idle stop, after its save)--> STOPPED

Calls are accepted only while ``SERVING``. Waiting for the end is one event,
made only when somebody waits (an idle session must not carry one).
"""

from __future__ import annotations

import enum

import anyio

__all__: list[str] = ["ActorLife", "Life", "StopReason"]


class StopReason(enum.StrEnum):
    """Why a session stopped, as ``Shutdown.reason`` and the logs say it."""

    STOPPED = "stopped"
    DRAIN = "drain"
    INACTIVITY = "inactivity"
    NO_VIEWERS = "no_viewers"
    SUPERSEDED = "superseded"
    FAILED = "failed"


class Life(enum.Enum):
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class ActorLife:
    """The lifecycle state of one actor; see the module docstring for the transitions."""

    __slots__ = ("_ended", "error", "reason", "state")

    def __init__(self) -> None:
        self.state = Life.SERVING
        self.reason: StopReason | None = None
        self.error: BaseException | None = None
        self._ended: anyio.Event | None = None

    @property
    def ended(self) -> bool:
        return self.state is Life.STOPPED or self.state is Life.FAILED

    @property
    def superseded(self) -> bool:
        return self.reason is StopReason.SUPERSEDED

    def request_stop(self, reason: StopReason) -> None:
        if self.ended:
            return
        self.state = Life.STOPPING
        # A stale write is final: no later request may turn it into a plain stop
        # (that would save again over the new owner's data).
        if self.reason is not StopReason.SUPERSEDED:
            self.reason = reason

    def finish(self, reason: StopReason | None = None) -> None:
        if reason is not None and self.reason is None:
            self.reason = reason
        self.state = Life.STOPPED
        self._set_ended()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.reason = StopReason.FAILED
        self.state = Life.FAILED
        self._set_ended()

    def _set_ended(self) -> None:
        if self._ended is None:
            self._ended = anyio.Event()
        self._ended.set()

    async def wait_ended(self) -> None:
        if self.state is Life.SERVING:
            return
        if self._ended is None:
            self._ended = anyio.Event()
        await self._ended.wait()
