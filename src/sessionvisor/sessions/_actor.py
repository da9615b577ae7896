"""One conversation's actor: a state machine that holds no task while idle.

Calls from the supervisor mutate the actor synchronously (nothing awaits
between a check and the change it guards, so concurrent callers on one event
loop cannot interleave there). Work that awaits - running a turn, restarting,
stopping - belongs to the *worker*, which exists only while there is such work:
it is claimed by setting ``_worker`` before it is handed to the supervisor's
runner pool and it releases the claim when nothing is left, so there is never
more than one per conversation. Saves go through ``_persist``, a coalescing
single writer, so the store sees one writer per conversation and versions
advance one at a time. An idle session with no subscriber folds its State into
JSON (``_hibernate``) and unfolds it on the next access.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from .._clock import utcnow
from .._errors import (
    InvalidStatus,
    MessageRejected,
    NotRunning,
    QueueFull,
    SessionFailedError,
    StaleWriteError,
)
from .._options import SupervisorOpts
from ..agents import Done, Interrupt, Pause, Turn
from ..state import Content, Message, PendingInterrupt, State, StoredConversation
from ._bus import _Topic
from ._events import (
    AgentEvent,
    Event,
    MessageAppended,
    MessageQueued,
    Restarted,
    SessionFailed,
    Shutdown,
    Status,
    StatusChanged,
)
from ._snapshot import SnapshotEncoder
from ._validation import content_size_ok

if TYPE_CHECKING:
    from ..state import Lifecycle
    from ._handle import SessionHandle
    from ._supervisor import SessionSupervisor

__all__: list[str] = []

_log = structlog.get_logger("sessionvisor")

_NO_ANSWER: Any = object()


class _Crash(Exception):
    """Raised inside the worker to restart the actor by policy."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def new_message(role: Any, content: Content, metadata: dict[str, Any] | None = None) -> Message:
    """Build a message from input the runtime already checked, without re-validating it."""
    if not isinstance(content, str):
        content = [dict(part) for part in content]
    return Message.model_construct(
        id=os.urandom(16).hex(),  # as random as uuid4().hex, at a fraction of the cost
        role=role,
        content=content,
        created_at=utcnow(),
        metadata={} if metadata is None else metadata,
    )


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class PreprocessContext:
    """What a message preprocessor may look at (``state`` is for reading only)."""

    __slots__ = ("agent_id", "conversation_id", "scope", "state")

    def __init__(self, conversation_id: str, agent_id: str, scope: Any, state: State) -> None:
        self.conversation_id = conversation_id
        self.agent_id = agent_id
        self.scope = scope
        self.state = state


class Actor:
    __slots__ = (
        "_cancel_requested",
        "_encoder",
        "_frozen",
        "_gen",
        "_hold",
        "_last_activity",
        "_restarting",
        "_resume",
        "_retrying",
        "_save_done",
        "_saved_gen",
        "_saving",
        "_state",
        "_stop_reason",
        "_stopped",
        "_taken",
        "_timer_at",
        "_turn_active",
        "_turn_done",
        "_turn_scope",
        "_version",
        "_viewers_left_at",
        "_worker",
        "agent",
        "agent_id",
        "closed",
        "conversation_id",
        "extra",
        "failed",
        "handle",
        "opts",
        "owner",
        "request_opts",
        "restart_times",
        "restarts",
        "route_key",
        "scope",
        "status",
        "sup",
        "topic",
    )

    def __init__(
        self,
        sup: SessionSupervisor,
        conversation_id: str,
        agent_id: str,
        *,
        owner: str | None,
        route_key: str | None,
        request_opts: dict[str, Any],
        scope: Any,
        agent: Any,
        opts: SupervisorOpts,
        extra: Any,
        state: State,
        version: int | None,
        topic: _Topic,
    ) -> None:
        from ._handle import SessionHandle

        self.sup = sup
        self.conversation_id = conversation_id
        self.agent_id = agent_id
        self.owner = owner
        self.route_key = route_key
        self.request_opts = request_opts
        self.scope = scope
        self.agent = agent
        self.opts = opts
        self.extra = extra
        self._state: State | None = state
        self._frozen: bytes | None = None
        self._encoder: SnapshotEncoder | None = None
        self.topic = topic
        self.status = Status.INTERRUPTED if state.interrupt is not None else Status.IDLE
        self.handle: SessionHandle = SessionHandle(self)
        self.closed = False
        self.failed: BaseException | None = None
        self.restarts = 0
        self.restart_times: tuple[float, ...] = ()
        self._version = version
        self._gen = 0
        self._saved_gen = 0
        self._saving = False  # a save is in flight (one writer per conversation)
        self._save_done: anyio.Event | None = None  # made only when someone waits
        self._worker = False
        self._turn_scope: anyio.CancelScope | None = None
        self._turn_active = False  # a turn was begun and has not ended yet
        self._taken = 0  # how many queued messages the current turn took
        self._turn_done: anyio.Event | None = None  # made only when someone waits
        self._resume: tuple[Any, PendingInterrupt] | None = None
        self._cancel_requested = False
        # Queued messages wait for a send/resume/dismiss after an interrupt, a pause,
        # an error or a cancel; a crash restart or a send lifts the hold.
        self._hold = False
        self._stop_reason: str | None = None
        self._stopped: anyio.Event | None = None
        self._retrying = False
        self._restarting: anyio.Event | None = None
        self._last_activity = sup._clock.now()
        self._viewers_left_at: float | None = None
        self._timer_at: float | None = None

    # -- state, folded while idle -------------------------------------------------

    @property
    def state(self) -> State:
        state = self._state
        if state is None:
            # Unfold a hibernated session; the bytes are our own dump of this State.
            assert self._frozen is not None
            state = self._state = State.model_validate_json(self._frozen)
            self._frozen = None
        return state

    @state.setter
    def state(self, value: State) -> None:
        self._state = value
        self._frozen = None

    def _hibernate(self) -> None:
        state = self._state
        if state is None or self._worker or self.closed or self.topic.subscribers:
            return
        try:
            frozen = state.model_dump_json().encode()
        except Exception as exc:  # metadata that JSON cannot hold: stay unfolded
            self.log().debug("hibernate_skipped", error=describe(exc))
            return
        self._frozen = frozen
        self._state = None
        self._encoder = None
        self.topic.drop_replay()

    # -- small helpers -------------------------------------------------------------

    def log(self) -> Any:
        return _log.bind(conversation_id=self.conversation_id, agent_id=self.agent_id)

    def _emit(self, cls: type[Event], **fields: Any) -> Event:
        return self.topic.publish(cls, **fields)

    def _set_status(self, status: Status, *, error: str | None = None) -> None:
        # Inactivity counts from the moment a user could see the new status.
        self._last_activity = self.sup._clock.now()
        self.status = status
        self._emit(StatusChanged, status=status, interrupt=self.state.interrupt, error=error)

    def touch(self) -> None:
        self._last_activity = self.sup._clock.now()

    def check_open(self) -> None:
        if self.failed is not None:
            raise SessionFailedError(
                f"conversation {self.conversation_id!r} gave up after repeated crashes "
                f"({describe(self.failed)}); the next supervisor call starts it again"
            )
        if self.closed:
            raise NotRunning(f"conversation {self.conversation_id!r} is not running any more")

    @property
    def busy(self) -> bool:
        return self._worker

    def last_activity_at(self) -> Any:
        ago = self.sup._clock.now() - self._last_activity
        from datetime import timedelta

        return utcnow() - timedelta(seconds=max(ago, 0.0))

    def _claim_worker(self, **kwargs: Any) -> None:
        self._worker = True
        self.sup._spawn(functools.partial(self._work, **kwargs))

    # -- the turn sink (called by Turn) --------------------------------------------

    def _turn_delta(self, text: str) -> None:
        from ._events import Delta

        self._emit(Delta, text=text)

    def _turn_emit(self, name: str, data: Any) -> None:
        self._emit(AgentEvent, name=name, data=data)

    def _turn_queue(self, content: Content) -> None:
        if len(self.state.queued) >= self.opts.max_queued:
            raise QueueFull(
                f"conversation {self.conversation_id!r} already has "
                f"{len(self.state.queued)} queued messages (max_queued={self.opts.max_queued})"
            )
        message = new_message("user", content, {"origin": "agent"})
        self.state.queued.append(message)
        self._gen += 1
        self._emit(MessageQueued, message=message)

    # -- calls ---------------------------------------------------------------------

    async def send(self, content: Content, scope: Any) -> bool:
        """Accept a user message; return True when it waits behind running work."""
        self.check_open()
        if not content_size_ok(content, self.opts.max_message_bytes):
            raise ValueError(
                f"content of the message for conversation {self.conversation_id!r} is larger than "
                f"max_message_bytes={self.opts.max_message_bytes} as JSON"
            )
        message = new_message("user", content)
        if self.opts.message_preprocessor is not None:
            message = await self._preprocess(message, scope)
            self.check_open()  # it may have stopped while the preprocessor ran
        if len(self.state.queued) >= self.opts.max_queued:
            raise QueueFull(
                f"conversation {self.conversation_id!r} already has "
                f"{len(self.state.queued)} queued messages (max_queued={self.opts.max_queued})"
            )
        if scope is not None:
            self.scope = scope
        self.touch()
        self.state.queued.append(message)
        self._gen += 1
        if self._worker:
            # A turn (or a restart) is under way: the message waits, durably, for the next turn.
            # A send lifts a hold; a turn that is still running may set it again.
            self._hold = False
            self._emit(MessageQueued, message=_display(message))
            await self._persist("queued")
            self._check_superseded()
            return True
        # Nothing runs: this call starts the turn. The claim comes before any await, so
        # a concurrent send finds the worker busy and queues behind this one.
        self._worker = True
        if self.state.interrupt is not None:
            self._abandon_interrupt()
        self._begin_turn()
        await self._persist("turn_start")
        # No await between the save and the spawn: a cancelled caller still hands over.
        self.sup._spawn(functools.partial(self._work, begun=True))
        self._check_superseded()
        return False

    def _check_superseded(self) -> None:
        """After a save a send waited on: fail the send if the session is gone."""
        if self.failed is not None:
            self.check_open()  # gave up while the message waited: not saved here
        if self._stop_reason == "superseded":
            raise NotRunning(
                f"conversation {self.conversation_id!r} was taken over by another writer "
                "(its stored version moved on); the message was not saved here"
            )

    async def _preprocess(self, message: Message, scope: Any) -> Message:
        pre = self.opts.message_preprocessor
        assert pre is not None
        ctx = PreprocessContext(
            self.conversation_id, self.agent_id, scope, self.state.model_copy(deep=True)
        )
        try:
            result = pre(message, ctx)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise MessageRejected(
                f"message for conversation {self.conversation_id!r} was rejected: {exc}"
            ) from exc
        if isinstance(result, Message):
            return result
        if (
            isinstance(result, tuple)
            and len(result) == 2
            and all(isinstance(m, Message) for m in result)
        ):
            display, model = result
            merged: Message = model.model_copy(
                update={
                    "metadata": {**model.metadata, "display": display.model_dump(mode="json")}
                }
            )
            return merged
        raise TypeError(
            f"message_preprocessor returned {result!r}; expected a Message or "
            "(display Message, model Message)"
        )

    def prepare_resume(self, answer: Any) -> None:
        """Take the interrupt off and mark the resume turn (before any broadcast)."""
        interrupt = self.state.interrupt
        assert interrupt is not None
        self.state.interrupt = None
        self._resume = (answer, interrupt)
        self._hold = False  # the queue drains after the resume turn
        self._turn_active = True
        self.status = Status.RUNNING
        self.touch()

    async def resume(self, answer: Any, scope: Any) -> Status:
        self.check_open()
        if self.status is not Status.INTERRUPTED:
            raise InvalidStatus(
                f"cannot resume conversation {self.conversation_id!r}: status is "
                f"{self.status.value}, not interrupted",
                self.status.value,
            )
        if scope is not None:
            self.scope = scope
        self.prepare_resume(answer)
        self._emit(StatusChanged, status=Status.RUNNING, interrupt=None, error=None)
        if not self._worker:
            self._claim_worker()
        # else: the worker is finishing the save of the interrupt; it runs the resume next
        return Status.RUNNING

    async def dismiss(self, scope: Any) -> Status:
        self.check_open()
        interrupt = self.state.interrupt
        if (
            self.status is not Status.INTERRUPTED
            or interrupt is None
            or interrupt.kind != "notice"
        ):
            kind = "no interrupt" if interrupt is None else f"a {interrupt.kind!r} interrupt"
            raise InvalidStatus(
                f"cannot dismiss conversation {self.conversation_id!r}: status is "
                f"{self.status.value} with {kind}; only a 'notice' interrupt can be dismissed",
                self.status.value,
            )
        if scope is not None:
            self.scope = scope
        self.touch()
        self.state.interrupt = None
        self._hold = False
        self._gen += 1
        self._set_status(Status.IDLE)
        await self._persist("dismiss")
        if self.state.queued and not self._worker and not self.closed:
            self._claim_worker()  # the held queue runs as the next turn
        return self.status

    async def cancel(self) -> Status:
        self.check_open()
        if self.status is not Status.RUNNING or not self._turn_active:
            raise InvalidStatus(
                f"cannot cancel conversation {self.conversation_id!r}: status is "
                f"{self.status.value}, no turn is running",
                self.status.value,
            )
        self._cancel_requested = True
        if self._turn_scope is not None:
            self._turn_scope.cancel()
        done = self._turn_done
        if done is None:
            done = self._turn_done = anyio.Event()
        await done.wait()
        return self.status

    async def stop(self, reason: str = "stopped") -> None:
        """Persist and stop; a running turn is cancelled (on drain: after shutdown_timeout)."""
        if not self.closed:
            self.request_stop(reason)
        if reason == "drain" and not self.is_stopped():
            clock = self.sup._clock
            with anyio.CancelScope() as timer_scope:
                async with anyio.create_task_group() as tg:

                    async def expire() -> None:
                        await clock.sleep_until(clock.now() + self.opts.shutdown_timeout)
                        timer_scope.cancel()

                    tg.start_soon(expire)
                    await self.wait_stopped()
                    tg.cancel_scope.cancel()
            if not self.is_stopped():
                # The turn had its shutdown_timeout: cancel it so the drain can finish.
                self._cancel_requested = True
                if self._turn_scope is not None:
                    self._turn_scope.cancel()
        await self.wait_stopped()

    def request_stop(self, reason: str) -> None:
        self.closed = True
        self._stop_reason = reason
        if reason != "drain":
            self._cancel_requested = True
            if self._turn_scope is not None:
                self._turn_scope.cancel()
        if not self._worker:
            self._claim_worker()

    def is_stopped(self) -> bool:
        return self._stopped is not None and self._stopped.is_set()

    async def wait_stopped(self) -> None:
        if self._stop_reason is None and self.failed is None and not self.closed:
            return
        if self._stopped is None:
            self._stopped = anyio.Event()
        await self._stopped.wait()

    def _mark_stopped(self) -> None:
        self.closed = True
        self.sup._forget(self)
        if self._stopped is None:
            self._stopped = anyio.Event()
        self._stopped.set()

    # -- the worker ----------------------------------------------------------------

    async def _work(self, begun: bool = False, idle_reason: str | None = None) -> None:
        try:
            if idle_reason is not None and await self._idle_stop(idle_reason):
                return
            while True:
                # A turn this worker was spawned for still runs on drain (its message is
                # already saved); any other stop wins over further work.
                if self._stop_reason is not None and not (begun and self._stop_reason == "drain"):
                    await self._finish_stop()
                    return
                try:
                    if begun:
                        begun = False
                        await self._run_turn()
                    elif self._resume is not None:
                        await self._run_turn(resume=True)
                    elif self.state.queued and not self._hold:
                        if self.state.interrupt is not None:
                            self._abandon_interrupt()
                        self._begin_turn()
                        await self._persist("turn_start", shield=False)
                        if self.closed:
                            continue
                        await self._run_turn()
                    else:
                        break
                except _Crash as crash:
                    if not await self._restart(crash.error):
                        return
                except Exception as exc:  # an internal invariant broke: restart by policy
                    self.log().exception("actor_internal_error")
                    if not await self._restart(exc):
                        return
        finally:
            self._worker = False
            if self.status is Status.RUNNING and not self.closed:
                self._set_status(Status.IDLE)
            if not self.closed:
                self.arm()

    def _begin_turn(self) -> None:
        self._hold = False
        state = self.state
        taken = state.queued
        state.queued = []
        state.messages.extend(taken)
        self._taken = len(taken)
        self._turn_active = True
        if self.status is not Status.RUNNING:
            self._set_status(Status.RUNNING)
        for message in taken:
            self._emit(MessageAppended, message=_display(message))
        self._gen += 1

    def _abandon_interrupt(self) -> None:
        interrupt = self.state.interrupt
        assert interrupt is not None
        self.state.interrupt = None
        hook = getattr(self.agent, "abandon", None)
        if hook is not None:
            self.state = _adopt(hook(self.state, interrupt), self.state)
        else:
            self.state.metadata.setdefault("abandoned_interrupts", []).append(
                interrupt.model_dump(mode="json")
            )

    async def _run_turn(self, *, resume: bool = False) -> None:
        state = self.state
        history = state.messages
        mark = len(history)
        metadata = copy.deepcopy(state.metadata) if state.metadata else {}
        answer: Any = _NO_ANSWER
        answered: PendingInterrupt | None = None
        taken = 0 if resume else self._taken  # user messages this turn took from the queue
        if resume:
            assert self._resume is not None
            answer, answered = self._resume
        turn = Turn(
            state=state,
            agent_id=self.agent_id,
            conversation_id=self.conversation_id,
            scope=self.scope,
            extra=self.extra,
            sink=self,
        )
        outcome: Any = None
        error: Exception | None = None
        with anyio.CancelScope() as scope:
            self._turn_scope = scope
            if self._cancel_requested:
                scope.cancel()
            try:
                if answer is _NO_ANSWER:
                    outcome = await self.agent.run(turn)
                else:
                    outcome = await self._call_resume(turn, answer)
                if not isinstance(outcome, Done | Interrupt | Pause):
                    raise TypeError(
                        f"agent {self.agent!r} returned {outcome!r}; expected Done, "
                        "Interrupt or Pause"
                    )
            except Exception as exc:
                error = exc
        self._turn_scope = None
        self._resume = None
        cancelled = scope.cancel_called
        self._cancel_requested = False
        try:
            if cancelled or error is not None:
                # A turn cut short by a stop does not hold the queue: those messages were
                # never refused by the user, so the next wake answers them.
                self._hold = self._stop_reason is None or error is not None
                # Roll back what the agent did; the user's messages (before the mark) stay.
                del history[mark:]
                state.messages = history
                state.metadata = metadata
                self.state = state
                self._gen += 1
                if cancelled and error is None and self._stop_reason is not None:
                    # Stopped (or drained) mid-turn, not cancelled by the user: hand the
                    # work back so the next wake does it - the turn's messages return to
                    # the front of the queue, an answered interrupt is pending again.
                    if answered is not None:
                        state.interrupt = answered
                        self._set_status(Status.INTERRUPTED)
                    else:
                        back = history[mark - taken : mark]
                        del history[mark - taken : mark]
                        state.queued[:0] = back
                        self._set_status(Status.CANCELLED)
                    self.log().info("turn_cancelled", by=self._stop_reason)
                    return
                if cancelled:
                    self._set_status(Status.CANCELLED)
                    await self._persist("cancel")
                    self.log().info("turn_cancelled")
                    return
                assert error is not None
                self.log().warning("turn_failed", error=describe(error))
                self._set_status(Status.ERROR, error=describe(error))
                await self._persist("error")
                if self.opts.restart_on_error:
                    raise _Crash(error)
                return
            self._finish_outcome(outcome, turn, history, mark)
            if isinstance(outcome, Interrupt):
                await self._persist("interrupt")
            elif isinstance(outcome, Pause):
                await self._persist("pause")
            else:
                await self._persist("completion", shield=False)
        finally:
            self._turn_active = False
            done = self._turn_done
            if done is not None:
                self._turn_done = None
                done.set()

    async def _call_resume(self, turn: Turn, answer: Any) -> Any:
        hook: Callable[[Turn, Any], Awaitable[Any]] | None = getattr(self.agent, "resume", None)
        if hook is None:
            # Without a resume hook the answer reaches the agent as a user message.
            turn.state.messages.append(
                Message(role="user", content=_as_content(answer), metadata={"resume": True})
            )
            return await self.agent.run(turn)
        return await hook(turn, answer)

    def _finish_outcome(self, outcome: Any, turn: Turn, history: list[Message], mark: int) -> None:
        old = self.state
        new = _adopt(outcome.state, old)
        self.state = new
        added = _added_messages(new.messages, history, mark)
        reply = outcome.reply
        if reply is None and isinstance(outcome, Done):
            streamed = turn.streamed_text
            if streamed and not any(m.role == "assistant" for m in added):
                reply = streamed
        if reply is not None:
            message = Message(role="assistant", content=reply)  # agent output: validated
            new.messages.append(message)
            added.append(message)
        for message in added:
            self._emit(MessageAppended, message=_display(message))
        self._gen += 1
        if isinstance(outcome, Interrupt):
            new.interrupt = PendingInterrupt(kind=outcome.kind, data=outcome.data)
            self._hold = True
            self._set_status(Status.INTERRUPTED)
        elif isinstance(outcome, Pause):
            self._hold = True
            self._set_status(Status.PAUSED)
            if outcome.reason:
                self._emit(AgentEvent, name="paused", data={"reason": outcome.reason})
        # A Done turn stays `running`: the worker announces `idle` only when it has
        # nothing left, so queued messages run next with no idle in between.

    # -- persistence ---------------------------------------------------------------

    def _record(self, lifecycle: str, reserve: int = 0) -> StoredConversation:
        if self._state is None:
            # Folded (hibernated): its JSON already is the dump; unfolding 100,000 of
            # them to stop them is what would make a drain slow and memory-hungry.
            assert self._frozen is not None
            data = json.loads(self._frozen)
        else:
            encoder = self._encoder
            if encoder is None:
                encoder = self._encoder = SnapshotEncoder()
            data = encoder.dump(self._state)
        if self._resume is not None:
            # Until the resume turn ends, the store keeps the interrupt it answers.
            data["interrupt"] = self._resume[1].model_dump(mode="json")
        return StoredConversation(
            state=data,
            owner=self.owner,
            route_key=self.route_key,
            request_opts=self.request_opts,
            last_seq=self.topic.last_seq + reserve,
            lifecycle=lifecycle,
        )

    async def _persist(
        self, lifecycle: Lifecycle, *, reserve: int = 0, shield: bool = True
    ) -> bool:
        """Save until the store holds generation ``_gen`` as of this call.

        Returns False when the save failed (the session keeps serving from memory
        and a retry is scheduled) or the session was superseded.
        """
        target = self._gen
        while self._saved_gen < target:
            if self._stop_reason == "superseded" or self.failed is not None:
                return False
            restarting = self._restarting
            if restarting is not None:
                # The in-memory state is the crashed copy: save what the restart rebuilds.
                await restarting.wait()
                target = self._gen
                continue
            if self._saving:
                await self._wait_save()
                continue
            self._saving = True
            gen = self._gen
            try:
                record = self._record(lifecycle, reserve)
                save = self.sup._store.save(
                    self.conversation_id,
                    record,
                    expected_version=self._version,
                    lifecycle=lifecycle,
                )
                if shield:
                    # A caller that goes away must not leave a save half-done (the store
                    # would move on while we keep the old version). The worker is only
                    # cancelled after the drain, so it skips the cost.
                    with anyio.CancelScope(shield=True):
                        self._version = await save
                else:
                    self._version = await save
                self._saved_gen = gen
            except StaleWriteError as exc:
                self.log().warning("session_superseded", error=str(exc))
                if not self.closed:
                    self.request_stop("superseded")
                else:
                    self._stop_reason = "superseded"
                return False
            except Exception as exc:
                self._report_store_error(exc, lifecycle)
                return False
            finally:
                self._end_save()
        return True

    async def _wait_save(self) -> None:
        done = self._save_done
        if done is None:
            done = self._save_done = anyio.Event()
        await done.wait()

    def _end_save(self) -> None:
        self._saving = False
        done = self._save_done
        if done is not None:
            self._save_done = None
            done.set()

    def _report_store_error(self, exc: Exception, lifecycle: str) -> None:
        self.log().error("store_save_failed", lifecycle=lifecycle, error=describe(exc))
        self._emit(
            AgentEvent,
            name="store_error",
            data={"error": describe(exc), "lifecycle": lifecycle},
        )
        if not self._retrying and not self.closed:
            self._retrying = True
            self.sup._spawn(self._retry_saves)

    async def _retry_saves(self) -> None:
        delay = max(self.opts.save_retry_backoff, 0.01)
        clock = self.sup._clock
        try:
            while self._saved_gen < self._gen and self._stop_reason != "superseded":
                await clock.sleep_until(clock.now() + delay)
                delay = min(delay * 2, 30.0)
                if self._saving or self._restarting is not None:
                    continue
                if self.failed is not None:
                    return
                gen = self._gen
                self._saving = True
                try:
                    with anyio.CancelScope(shield=True):
                        self._version = await self.sup._store.save(
                            self.conversation_id,
                            self._record("shutdown" if self.closed else "queued"),
                            expected_version=self._version,
                            lifecycle="shutdown" if self.closed else "queued",
                        )
                    self._saved_gen = gen
                    self.log().info("store_save_recovered")
                except StaleWriteError:
                    self._stop_reason = "superseded"
                    if not self.closed:
                        self.request_stop("superseded")
                except Exception as exc:
                    self.log().warning("store_save_retry_failed", error=describe(exc))
                finally:
                    self._end_save()
        finally:
            self._retrying = False

    # -- restart, give up, stop ----------------------------------------------------

    async def _restart(self, error: BaseException) -> bool:
        """Restart by policy; return False when the session gave up."""
        restarting = self._restarting = anyio.Event()
        try:
            return await self._restart_loop(error)
        finally:
            self._restarting = None
            restarting.set()

    async def _restart_loop(self, error: BaseException) -> bool:
        clock = self.sup._clock
        while True:
            opts = self.opts
            now = clock.now()
            window = [t for t in self.restart_times if now - t <= opts.max_seconds]
            if opts.restart == "temporary" or len(window) >= opts.max_restarts:
                self._give_up(error)
                return False
            window.append(now)
            self.restart_times = tuple(window)
            self.restarts += 1
            attempt = len(window)
            self.log().warning("session_restarting", attempt=attempt, error=describe(error))
            if opts.restart_backoff > 0:
                await clock.sleep_until(now + opts.restart_backoff * 2 ** (attempt - 1))
            if self._stop_reason is not None:
                return True  # stopped while waiting: the worker finishes the stop
            try:
                await self.sup._reload(self)
            except Exception as exc:
                error = exc
                continue
            self._hold = self.state.interrupt is not None  # queued messages run next
            self._emit(Restarted, attempt=attempt, error=describe(error))
            self.status = Status.RUNNING  # so the next line announces the settled status
            self._set_status(Status.INTERRUPTED if self.state.interrupt else Status.IDLE)
            self.log().info("session_restarted", attempt=attempt)
            return True

    def _give_up(self, error: BaseException) -> None:
        self.failed = error
        self._stop_reason = "failed"
        self.status = Status.NOT_RUNNING
        self._emit(SessionFailed, error=describe(error))
        self.log().error("session_failed", error=describe(error), restarts=self.restarts)
        done = self._turn_done
        if done is not None:
            done.set()
        self._mark_stopped()

    async def _idle_stop(self, reason: str) -> bool:
        """Stop for inactivity or no viewers unless something happened meanwhile."""
        gen = self._gen
        self._gen += 1  # the shutdown save carries last_seq even when nothing else changed
        if not await self._persist("shutdown", reserve=1):
            self.touch()  # try again after another full timeout, not in a tight loop
            return False
        if self._gen != gen + 1 or self.closed or (self.state.queued and not self._hold):
            return False  # work arrived while saving: keep serving
        self.closed = True
        self._stop_reason = reason
        self._emit_shutdown(reason)
        self._mark_stopped()
        return True

    def _peek_interrupt(self) -> PendingInterrupt | None:
        """The pending interrupt, without unfolding a folded State."""
        if self._state is not None:
            return self._state.interrupt
        if self.status is not Status.INTERRUPTED or self._frozen is None:
            return None
        data = json.loads(self._frozen).get("interrupt")
        return None if data is None else PendingInterrupt.model_validate(data)

    def _emit_shutdown(self, reason: str) -> None:
        interrupt = self._peek_interrupt()
        restorable = False
        if interrupt is not None:
            hook = getattr(self.agent, "restorable", None)
            try:
                restorable = True if hook is None else bool(hook(interrupt))
            except Exception as exc:  # the agent's hook must not break a stop
                self.log().warning("restorable_hook_failed", error=describe(exc))
                restorable = False
        self._emit(
            Shutdown,
            reason=reason,
            status=self.status,
            interrupt_restorable=restorable,
            last_activity_at=self.last_activity_at(),
            shutdown_at=utcnow(),
        )
        self.log().info("session_shutdown", reason=reason, status=self.status.value)

    async def _finish_stop(self) -> None:
        reason = self._stop_reason or "stopped"
        if reason != "superseded":
            self._gen += 1
            # Messages still waiting (not held) are saved as `queued` so that the next
            # wake runs them; held ones stay held.
            # (A folded session has no unheld queue: it would not have parked.)
            pending = self._state is not None and bool(self._state.queued) and not self._hold
            await self._persist("queued" if pending else "shutdown", reserve=1)
        self._emit_shutdown(reason)
        self._mark_stopped()

    # -- inactivity ----------------------------------------------------------------

    def _due(self) -> tuple[float, str] | None:
        if self._worker or self.closed or self.status is Status.RUNNING:
            return None
        candidates: list[tuple[float, str]] = []
        if self.sup._viewer_count(self.conversation_id):
            fold = self.opts.hibernate_after
            if fold is not None and self._state is not None and not self.topic.subscribers:
                candidates.append((self._last_activity + fold, "hibernate"))
            return min(candidates) if candidates else None
        # A viewer leaving counts as activity: a tab that watched for an hour and
        # reloads gets viewer_grace, not an instant inactivity stop.
        start = self._last_activity
        if self._viewers_left_at is not None:
            start = max(start, self._viewers_left_at)
            candidates.append((start + self.opts.viewer_grace, "no_viewers"))
        timeout = self.opts.inactivity_timeout
        if timeout is not None:
            candidates.append((start + timeout, "inactivity"))
        fold = self.opts.hibernate_after
        if fold is not None and self._state is not None and not self.topic.subscribers:
            candidates.append((start + fold, "hibernate"))
        return min(candidates) if candidates else None

    def arm(self) -> None:
        due = self._due()
        if due is not None:
            self.sup._deadlines.schedule(self, due[0])

    def _timer_fired(self, now: float) -> None:
        due = self._due()
        if due is None:
            return
        deadline, reason = due
        if deadline > now:
            self.sup._deadlines.schedule(self, deadline)
            return
        if reason == "hibernate":
            self._hibernate()
            self.arm()  # the inactivity deadline, if any, still stands
            return
        self._claim_worker(idle_reason=reason)

    def viewers_left(self) -> None:
        self._viewers_left_at = self.sup._clock.now()
        self.arm()


def _adopt(new: State, old: State) -> State:
    """The runtime owns the queue and the interrupt; an agent's new State inherits them."""
    if new is not old:
        if not isinstance(new, State):
            raise TypeError(f"an outcome must carry a State, got {new!r}")
        new.queued = old.queued
        new.interrupt = old.interrupt
    return new


def _added_messages(messages: list[Message], history: list[Message], mark: int) -> list[Message]:
    if messages is history or (
        len(messages) >= mark and (mark == 0 or messages[mark - 1] is history[mark - 1])
    ):
        return list(messages[mark:])
    known = {m.id for m in history[:mark]}
    return [m for m in messages if m.id not in known]


def _display(message: Message) -> Message:
    display = message.metadata.get("display")
    if display is None:
        return message
    return Message.model_validate(display)


def _as_content(answer: Any) -> Content:
    if isinstance(answer, str):
        return answer
    import json

    return json.dumps(answer, default=str)


