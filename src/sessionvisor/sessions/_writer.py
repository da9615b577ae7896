"""The coalescing single writer of one conversation.

Every change to a session's State bumps a generation counter; ``persist`` saves
until the store holds the generation current at the call. At most one save of a
conversation is in flight: a caller that finds one waits for it and then saves
once for everyone who changed something meanwhile, so versions advance one at a
time and the store sees exactly one writer. A save that fails because the store
is down is retried with backoff by the same path; a save refused as stale
(``StaleWriteError``) means another owner took the conversation, and the session
stops as ``superseded`` without writing again. What the writer needs from the
session (``WriterOwner``) an actor answers through ``ActorWriterOwner``, from
the actor's read-only views and named transitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from pydantic_core import to_jsonable_python

from .._errors import StaleWriteError
from .._telemetry import span
from ..state import StoredConversation
from ._events import AgentEvent, describe

if TYPE_CHECKING:
    from .._clock import Clock
    from ..state import Lifecycle, PendingInterrupt, StateStore
    from ._actor import Actor

__all__: list[str] = ["ActorWriterOwner", "Writer"]


class WriterOwner(Protocol):
    """What the writer needs from the session it writes for."""

    @property
    def conversation_id(self) -> str: ...

    @property
    def agent_id(self) -> str: ...

    def save_took(self, seconds: float) -> None:
        """How long one save took (for the operators' figures)."""
        ...

    def record(self, lifecycle: Lifecycle, reserve: int) -> StoredConversation:
        """The record to save now (built at the moment of the save)."""
        ...

    def write_refused(self) -> bool:
        """True once writing must stop (superseded, or gave up)."""
        ...

    def restart_in_progress(self) -> anyio.Event | None:
        """Set when a restart rebuilds the State: the in-memory copy is the crashed one."""
        ...

    def superseded(self, error: StaleWriteError) -> None: ...

    def store_failed(self, error: Exception, lifecycle: str) -> None: ...

    def retry_failed(self, error: Exception, *, first: bool) -> None:
        """A retried save failed (``first``: the first since the store last took one)."""
        ...

    def session_ended(self) -> bool:
        """True once the session has stopped or given up: its retries end with it."""
        ...

    def retry_lifecycle(self) -> Lifecycle: ...

    def retry_backoff(self) -> float: ...

    def log(self) -> Any: ...


class Writer:
    """Saves one conversation; see the module docstring."""

    __slots__ = ("_done", "_owner", "_retrying", "_saving", "gen", "saved_gen", "version")

    def __init__(self, owner: WriterOwner, version: int | None) -> None:
        self._owner = owner
        self.version = version  # the stored version this writer expects (None: not stored)
        self.gen = 0  # bumped on every change that a save must carry
        self.saved_gen = 0  # the generation the store holds
        self._saving = False
        self._done: anyio.Event | None = None  # made only when someone waits
        self._retrying = False

    def changed(self) -> None:
        """Record that the State changed (the next save must carry it)."""
        self.gen += 1

    def reset(self, version: int | None) -> None:
        """After a reload from the store: what it holds is now what we hold."""
        self.version = version
        self.saved_gen = self.gen

    async def persist(
        self,
        store: StateStore,
        lifecycle: Lifecycle,
        *,
        reserve: int = 0,
        shield: bool = True,
        spawn: Callable[[Callable[[], Coroutine[Any, Any, Any]]], None],
        clock: Clock,
    ) -> bool:
        """Save until the store holds the generation current at this call.

        Returns False when the save failed (the session keeps serving from memory
        and a retry is scheduled) or the session was superseded.
        """
        owner = self._owner
        target = self.gen
        while self.saved_gen < target:
            if owner.write_refused():
                return False
            restarting = owner.restart_in_progress()
            if restarting is not None:
                # The in-memory state is the crashed copy: save what the restart rebuilds.
                await restarting.wait()
                target = self.gen
                continue
            if self._saving:
                await self._wait()
                continue
            try:
                await self._write(store, lifecycle, reserve=reserve, shield=shield)
            except StaleWriteError:
                return False
            except Exception as exc:
                owner.store_failed(exc, lifecycle)
                if not self._retrying:
                    self._retrying = True
                    spawn(lambda: self._retry(store, clock))
                return False
        return True

    async def _write(
        self, store: StateStore, lifecycle: Lifecycle, *, reserve: int, shield: bool
    ) -> None:
        """One save of the current generation; the only place that calls ``store.save``."""
        owner = self._owner
        self._saving = True
        gen = self.gen
        began = time.perf_counter()
        try:
            save = store.save(
                owner.conversation_id,
                owner.record(lifecycle, reserve),
                expected_version=self.version,
                lifecycle=lifecycle,
            )
            with span(
                "sessionvisor.store.save",
                owner.conversation_id,
                owner.agent_id,
                lifecycle=lifecycle,
            ):
                if shield:
                    # A caller that goes away must not leave a save half-done (the store
                    # would move on while we keep the old version). The worker is only
                    # cancelled after the drain, so it skips the cost.
                    with anyio.CancelScope(shield=True):
                        self.version = await save
                else:
                    self.version = await save
            self.saved_gen = gen
            owner.save_took(time.perf_counter() - began)
        except StaleWriteError as exc:
            owner.log().warning("session_superseded", error=str(exc))
            owner.superseded(exc)
            raise
        finally:
            self._saving = False
            done = self._done
            if done is not None:
                self._done = None
                done.set()

    async def _wait(self) -> None:
        done = self._done
        if done is None:
            done = self._done = anyio.Event()
        await done.wait()

    async def _retry(self, store: StateStore, clock: Clock) -> None:
        owner = self._owner
        delay = max(owner.retry_backoff(), 0.01)
        failures = 0
        try:
            while self.saved_gen < self.gen and not self._given_up():
                await clock.sleep_until(clock.now() + delay)
                delay = min(delay * 2, 30.0)
                if self._saving or owner.restart_in_progress() is not None:
                    continue
                if self._given_up():
                    return
                try:
                    await self._write(store, owner.retry_lifecycle(), reserve=0, shield=True)
                    owner.log().info("store_save_recovered", failed_retries=failures)
                    failures = 0
                except StaleWriteError:
                    return
                except Exception as exc:
                    # Logged once per outage (the first failure), counted every time.
                    owner.retry_failed(exc, first=failures == 0)
                    failures += 1
        finally:
            self._retrying = False

    def _given_up(self) -> bool:
        # A stopped session's retries end with it: nothing else would ever end them.
        owner = self._owner
        return owner.write_refused() or owner.session_ended()


class ActorWriterOwner:
    """An actor as the writer sees it (implements ``WriterOwner``)."""

    __slots__ = ("_actor",)

    def __init__(self, actor: Actor) -> None:
        self._actor = actor

    @property
    def conversation_id(self) -> str:
        return self._actor.conversation_id

    @property
    def agent_id(self) -> str:
        return self._actor.agent_id

    def log(self) -> Any:
        return self._actor.log()

    def record(self, lifecycle: Lifecycle, reserve: int) -> StoredConversation:
        actor = self._actor
        data = actor.folded.dump()
        started_with = actor.turn.started_with
        if started_with is not None:
            # A turn runs: store the State it started from, never its partial work.
            mark, metadata = started_with
            if len(data["messages"]) > mark:  # else the same list: saved incrementally
                data["messages"] = data["messages"][:mark]
            if metadata != actor.state.metadata:
                data["metadata"] = to_jsonable_python(metadata)
        resume = actor.turn.resume
        pending = actor.state.interrupt
        if resume is not None:
            # Until the resume turn ends, the store keeps the interrupt it answers and
            # the answer: a crash meanwhile reruns the turn with it (never asks again).
            answer, interrupt = resume
            data["interrupt"] = _with_answer(interrupt, answer)
        elif pending is not None and pending.answered:
            # A resume turn a stop cut short: the next start carries the answer out.
            data["interrupt"] = _with_answer(pending, pending.answer)
        return StoredConversation(
            state=data,
            owner=actor.owner,
            route_key=actor.route_key,
            request_opts=actor.request_opts,
            last_seq=actor.topic.last_seq + reserve,
            lifecycle=lifecycle,
        )

    def save_took(self, seconds: float) -> None:
        self._actor.host.stats.save_seconds.observe(seconds)

    def write_refused(self) -> bool:
        life = self._actor.life
        return life.superseded or life.error is not None

    def restart_in_progress(self) -> anyio.Event | None:
        return self._actor.restarting

    def superseded(self, error: StaleWriteError) -> None:
        self._actor.superseded(error)

    def store_failed(self, error: Exception, lifecycle: str) -> None:
        actor = self._actor
        actor.log().error("store_save_failed", lifecycle=lifecycle, error=describe(error))
        actor.emit(
            AgentEvent, name="store_error", data={"error": describe(error), "lifecycle": lifecycle}
        )

    def retry_failed(self, error: Exception, *, first: bool) -> None:
        self._actor.host.stats.background_failures["save_retry"] += 1
        if first:
            self._actor.log().warning("store_save_retry_failed", error=describe(error))

    def session_ended(self) -> bool:
        return self._actor.life.ended

    def retry_lifecycle(self) -> Lifecycle:
        actor = self._actor
        return "shutdown" if actor.closed else actor.mid_work_lifecycle

    def retry_backoff(self) -> float:
        return self._actor.opts.save_retry_backoff


def _with_answer(interrupt: PendingInterrupt, answer: Any) -> dict[str, Any]:
    """The stored form of an interrupt whose acknowledged answer is being carried out."""
    return interrupt.model_dump(mode="json") | {"answered": True, "answer": answer}
