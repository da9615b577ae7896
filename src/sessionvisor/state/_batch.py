"""Group commit: saves that arrive while a commit is in flight share the next one.

Each ``save`` becomes a ``Write`` queued on the store's ``GroupCommit``. A caller
that gets one of the commit slots (a ``CapacityLimiter``: one for SQLite, one per
pooled connection for Postgres) takes *every* queued write, hands them to the
store's ``flush`` on a worker thread, and that flush commits them in one
transaction: one fsync for all of them. Writes that were taken by somebody
else's flush are done (or failing) by the time their own caller gets a slot, or
their caller waits on the write's event, which the caller that flushed it sets
once its worker thread is back. Every caller returns only
after its own write committed, or raises that write's own error: a flush reports
an outcome per write, so one conversation's stale write or bad row never fails
another's save.

Nothing here imports asyncio: anyio's primitives work the same on trio.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["GroupCommit", "Write"]


class Write:
    """One save waiting for its commit, and afterwards its outcome."""

    __slots__ = (
        "conversation_id",
        "done",
        "epoch",
        "error",
        "event",
        "expected_version",
        "lifecycle",
        "record",
        "settled",
        "taken",
        "version",
    )

    def __init__(
        self,
        conversation_id: str,
        record: Any,
        expected_version: int | None,
        lifecycle: str,
        epoch: int | None = None,
    ) -> None:
        self.conversation_id = conversation_id
        self.record = record
        self.expected_version = expected_version
        self.lifecycle = lifecycle
        self.epoch = epoch
        # Both flags change under the queue's mutex.
        self.taken = False  # a flush has it
        self.done = False  # its outcome is known
        self.settled = False  # the flush gave it an outcome
        self.version = 0
        self.error: BaseException | None = None
        # Made only when the caller has to wait for somebody else's flush.
        self.event: anyio.Event | None = None

    def succeed(self, version: int) -> None:
        """Record that the write committed at ``version`` (called by the flush)."""
        self.version, self.error, self.settled = version, None, True

    def fail(self, error: BaseException) -> None:
        """Record that the write failed with ``error`` (called by the flush)."""
        self.error, self.settled = error, True

    def outcome(self) -> int:
        if self.error is not None:
            error, self.error = self.error, None  # no reference cycle through the traceback
            raise error
        return self.version


class GroupCommit:
    """The queue of one store's writes and the slots that flush it.

    Args:
        flush: commits a batch on a worker thread, calling ``succeed`` or
            ``fail`` on every write of it; a write it leaves unsettled fails
            with the exception the flush raised.
        limiter: how many flushes may run at once.
        check_open: raises the store's closed error when the store is closed.
    """

    def __init__(
        self,
        flush: Callable[[list[Write]], None],
        limiter: anyio.CapacityLimiter,
        check_open: Callable[[], None],
    ) -> None:
        self._flush = flush
        self._limiter = limiter
        self._check_open = check_open
        self._mutex = threading.Lock()
        self._pending: list[Write] = []

    async def submit(self, write: Write) -> int:
        """Queue ``write`` and return once it committed (its new version).

        Raises:
            the write's own error (``StaleWriteError``, a database error, ...).
        """
        self._check_open()
        with self._mutex:
            self._pending.append(write)
        try:
            async with self._limiter:
                if not write.taken:
                    self._withdraw_if_closed(write)
                    batch: list[Write] = []
                    try:
                        await anyio.to_thread.run_sync(self._flush_pending, batch)
                    finally:
                        self._finish(batch)
            event = self._event_to_wait_on(write)
            if event is not None:
                await event.wait()
        except anyio.get_cancelled_exc_class():
            with self._mutex:
                if not write.taken:
                    self._pending.remove(write)
                    raise
            # A flush already has it: its outcome is not ours to drop. Wait for it;
            # the cancellation reaches the caller at its next checkpoint.
            with anyio.CancelScope(shield=True):
                event = self._event_to_wait_on(write)
                if event is not None:
                    await event.wait()
        return write.outcome()

    def _event_to_wait_on(self, write: Write) -> anyio.Event | None:
        with self._mutex:
            if write.done:
                return None
            if write.event is None:
                write.event = anyio.Event()
            return write.event

    def _withdraw_if_closed(self, write: Write) -> None:
        try:
            self._check_open()
        except BaseException:
            with self._mutex:
                if not write.taken:
                    self._pending.remove(write)
                    raise
            # Taken by a flush that runs anyway; that flush reports the outcome.

    def _flush_pending(self, batch: list[Write]) -> None:
        # On a worker thread, holding a slot: takes every queued write into ``batch``.
        with self._mutex:
            batch += self._pending
            self._pending = []
            for write in batch:
                write.taken = True
        if not batch:
            return
        try:
            self._flush(batch)
        except BaseException as exc:
            for write in batch:
                if not write.settled:
                    write.fail(exc)
            if not isinstance(exc, Exception):
                raise
        for write in batch:
            if not write.settled:  # a flush must report every write; never a silent 0
                write.fail(RuntimeError(f"no outcome for the save of {write.conversation_id!r}"))

    def _finish(self, batch: list[Write]) -> None:
        # Back on the event loop, still holding the slot: the batch's outcomes are
        # known; wake the callers that wait for them (no call from the worker
        # thread into the loop, which would hold the slot until the loop is free).
        with self._mutex:
            for write in batch:
                write.done = True
            waiting = [w.event for w in batch if w.event is not None]
        for event in waiting:
            event.set()
