"""One conversation's actor: a state machine that holds no task while idle.

Calls mutate the actor synchronously (nothing awaits between a check and the
change it guards, so concurrent callers on one event loop cannot interleave
there). Work that awaits - running a turn, restarting, stopping - belongs to
the *worker*, which exists only while there is such work: it is claimed by
setting ``_worker`` before it is handed to the host's runner pool and released
when nothing is left, so there is never more than one per conversation.

The jobs around it live in their own modules: the lifecycle state
(``_lifecycle``), the single writer (``_writer``), the held queue
(``_held_queue``), running a turn (``_turns``), the restart policy
(``_restart_policy``), folding an idle State (``_folding``) and idle deadlines
(``_idle``). The actor reaches its supervisor only through ``ActorHost``.
"""

from __future__ import annotations

import functools
import inspect
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from .._clock import utcnow
from .._errors import (
    InvalidStatus,
    MessageRejected,
    NotRunning,
    SessionFailedError,
    StaleWriteError,
)
from .._options import SupervisorOpts
from ..state import Content, Message, State, StoredConversation
from ._events import (
    AgentEvent,
    Delta,
    Event,
    MessageAppended,
    MessageQueued,
    Restarted,
    SessionFailed,
    Shutdown,
    Status,
    StatusChanged,
)
from ._folding import FoldableState
from ._held_queue import HeldQueue, abandon_interrupt
from ._idle import IdleAction, next_idle_action
from ._lifecycle import ActorLife, StopReason
from ._restart_policy import decide_restart
from ._turns import Crash, TurnControl, adopt, describe, display, run_turn
from ._validation import content_size_ok
from ._writer import Writer

if TYPE_CHECKING:
    from ..state import Lifecycle
    from ._bus import Topic
    from ._handle import SessionHandle
    from ._host import ActorHost

__all__: list[str] = ["Actor", "PreprocessContext", "describe", "new_message"]

_log = structlog.get_logger("sessionvisor")


def new_message(
    role: Any,
    content: Content,
    metadata: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> Message:
    """Build a message from input the runtime already checked, without re-validating it."""
    if not isinstance(content, str):
        content = [dict(part) for part in content]
    return Message.model_construct(
        # os.urandom: as random as uuid4().hex, at a fraction of the cost
        id=os.urandom(16).hex() if message_id is None else message_id,
        role=role,
        content=content,
        created_at=utcnow(),
        metadata={} if metadata is None else metadata,
    )


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
        "_last_activity",
        "_restarting",
        "_viewers_left_at",
        "_worker",
        "agent",
        "agent_id",
        "conversation_id",
        "extra",
        "folded",
        "handle",
        "host",
        "life",
        "opts",
        "owner",
        "queue",
        "request_opts",
        "restart_times",
        "restarts",
        "route_key",
        "scope",
        "status",
        "timer_at",
        "topic",
        "turn",
        "writer",
    )

    def __init__(
        self,
        host: ActorHost,
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
        topic: Topic,
    ) -> None:
        from ._handle import SessionHandle

        self.host = host
        self.conversation_id = conversation_id
        self.agent_id = agent_id
        self.owner = owner
        self.route_key = route_key
        self.request_opts = request_opts
        self.scope = scope
        self.agent = agent
        self.opts = opts
        self.extra = extra
        self.folded = FoldableState(state)
        self.topic = topic
        self.status = Status.INTERRUPTED if state.interrupt is not None else Status.IDLE
        self.handle: SessionHandle = SessionHandle(self)
        self.life = ActorLife()
        self.writer = Writer(self, version)
        self.queue = HeldQueue()
        self.turn = TurnControl()
        self.restarts = 0
        self.restart_times: tuple[float, ...] = ()
        self._worker = False
        self._restarting: anyio.Event | None = None
        self._last_activity = host.clock.now()
        self._viewers_left_at: float | None = None
        self.timer_at: float | None = None

    # -- state and small helpers ---------------------------------------------------

    @property
    def state(self) -> State:
        return self.folded.get()

    @state.setter
    def state(self, value: State) -> None:
        self.folded.set(value)

    @property
    def closed(self) -> bool:
        """True once the session stopped accepting calls (stopping, stopped or failed)."""
        return not self.life.serving

    @property
    def busy(self) -> bool:
        return self._worker

    def log(self) -> Any:
        return _log.bind(conversation_id=self.conversation_id, agent_id=self.agent_id)

    def emit(self, cls: type[Event], **fields: Any) -> Event:
        return self.topic.publish(cls, **fields)

    def set_status(self, status: Status, *, error: str | None = None) -> None:
        # Inactivity counts from the moment a user could see the new status.
        self._last_activity = self.host.clock.now()
        self.status = status
        self.emit(StatusChanged, status=status, interrupt=self.state.interrupt, error=error)

    def touch(self) -> None:
        self._last_activity = self.host.clock.now()

    def check_open(self) -> None:
        if self.life.error is not None:
            raise SessionFailedError(
                f"conversation {self.conversation_id!r} gave up after repeated crashes "
                f"({describe(self.life.error)}); the next supervisor call starts it again"
            )
        if self.closed:
            raise NotRunning(f"conversation {self.conversation_id!r} is not running any more")

    def last_activity_at(self) -> Any:
        ago = self.host.clock.now() - self._last_activity
        return utcnow() - timedelta(seconds=max(ago, 0.0))

    def _claim_worker(self, **kwargs: Any) -> None:
        self._worker = True
        self.host.spawn(functools.partial(self._work, **kwargs))

    async def persist(self, lifecycle: Lifecycle, *, reserve: int = 0, shield: bool = True) -> bool:
        return await self.writer.persist(
            self.host.store,
            lifecycle,
            reserve=reserve,
            shield=shield,
            spawn=self.host.spawn,
            clock=self.host.clock,
        )

    # -- what the writer asks (WriterOwner) ----------------------------------------

    def record(self, lifecycle: Lifecycle, reserve: int) -> StoredConversation:
        data = self.folded.dump()
        resume = self.turn.resume
        if resume is not None:
            # Until the resume turn ends, the store keeps the interrupt it answers.
            data["interrupt"] = resume[1].model_dump(mode="json")
        return StoredConversation(
            state=data,
            owner=self.owner,
            route_key=self.route_key,
            request_opts=self.request_opts,
            last_seq=self.topic.last_seq + reserve,
            lifecycle=lifecycle,
        )

    def write_refused(self) -> bool:
        return self.life.superseded or self.life.error is not None

    def restart_in_progress(self) -> anyio.Event | None:
        return self._restarting

    def superseded(self, error: StaleWriteError) -> None:
        if self.closed:
            self.life.reason = StopReason.SUPERSEDED
        else:
            self.request_stop(StopReason.SUPERSEDED)

    def store_failed(self, error: Exception, lifecycle: str) -> None:
        self.log().error("store_save_failed", lifecycle=lifecycle, error=describe(error))
        self.emit(
            AgentEvent, name="store_error", data={"error": describe(error), "lifecycle": lifecycle}
        )

    def retry_lifecycle(self) -> Lifecycle:
        return "shutdown" if self.closed else "queued"

    def retry_backoff(self) -> float:
        return self.opts.save_retry_backoff

    # -- the turn sink (called by Turn) --------------------------------------------

    def _turn_delta(self, text: str) -> None:
        self.emit(Delta, text=text)

    def _turn_emit(self, name: str, data: Any) -> None:
        self.emit(AgentEvent, name=name, data=data)

    def _turn_queue(self, content: Content) -> None:
        self.queue.check_room(self.state, self.opts.max_queued, self.conversation_id)
        message = new_message("user", content, {"origin": "agent"})
        self.state.queued.append(message)
        self.writer.changed()
        self.emit(MessageQueued, message=message)

    # -- starting ------------------------------------------------------------------

    async def run_on_start(self) -> None:
        """Run the agent's ``on_start`` hook, restarting by policy when it raises.

        Raises:
            SessionFailedError: the policy gave up.
        """
        on_start = getattr(self.agent, "on_start", None)
        if on_start is None:
            return
        try:
            self.state = await on_start(self.state)
        except Exception as exc:
            if not await self.restart(exc):
                raise SessionFailedError(
                    f"conversation {self.conversation_id!r} could not start: {describe(exc)}"
                ) from exc

    def go_live(self, *, stored_lifecycle: str | None, restored: bool) -> None:
        """Announce the first status and start whatever work was left waiting."""
        # The first broadcast: with a pending resume it is already `running`.
        self.set_status(self.status)
        self.queue.held_after_boot(self.state, stored_lifecycle, restored)
        state = self.state
        if self.turn.resume is not None:
            self.queue.held = False
            self._claim_worker()
        elif (
            stored_lifecycle in ("turn_start", "queued")
            and state.interrupt is None
            and state.messages
            and state.messages[-1].role == "user"
        ):
            # The process died mid-turn (the last save was the turn's start, or a message
            # queued behind it): the turn's user messages end the history unanswered.
            # Run that turn again (a turn is at-least-once), then the queue.
            self._worker = True
            self.queue.taken = _trailing_user_messages(state.messages)
            self.turn.active = True
            self.set_status(Status.RUNNING)
            self.host.spawn(functools.partial(self._work, begun=True))
        elif self.queue.ready(state):
            self._claim_worker()
        else:
            self.arm()

    def record_changed(self) -> None:
        """Something the store keeps outside the State changed (the route)."""
        self.writer.changed()

    # -- calls ---------------------------------------------------------------------

    async def send(
        self, content: Content, scope: Any, *, message_id: str | None = None
    ) -> tuple[bool, bool]:
        """Accept a user message.

        Returns:
            ``(queued, duplicate)``: queued when it waits behind running work;
            duplicate when a message with ``message_id`` was already accepted
            (then nothing changed, and ``queued`` says whether it still waits).
        """
        self.check_open()
        if message_id is not None:
            known = self._accepted(message_id)
            if known is not None:
                return known, True
        if not content_size_ok(content, self.opts.max_message_bytes):
            raise ValueError(
                f"content of the message for conversation {self.conversation_id!r} is larger than "
                f"max_message_bytes={self.opts.max_message_bytes} as JSON"
            )
        message = new_message("user", content, message_id=message_id)
        if self.opts.message_preprocessor is not None:
            message = await self._preprocess(message, scope)
            self.check_open()  # it may have stopped while the preprocessor ran
            if message_id is not None:
                known = self._accepted(message_id)  # a retry may have won the race meanwhile
                if known is not None:
                    return known, True
                if message.id != message_id:
                    message = message.model_copy(update={"id": message_id})
        self.queue.check_room(self.state, self.opts.max_queued, self.conversation_id)
        if scope is not None:
            self.scope = scope
        self.touch()
        self.state.queued.append(message)
        self.writer.changed()
        if self._worker:
            # A turn (or a restart) is under way: the message waits, durably, for the next turn.
            # A send lifts a hold; a turn that is still running may set it again.
            self.queue.held = False
            self.emit(MessageQueued, message=display(message))
            await self.persist("queued")
            self._check_superseded()
            return True, False
        # Nothing runs: this call starts the turn. The claim comes before any await, so
        # a concurrent send finds the worker busy and queues behind this one.
        self._worker = True
        if self.state.interrupt is not None:
            self._abandon_interrupt()
        self._begin_turn()
        await self.persist("turn_start")
        # No await between the save and the spawn: a cancelled caller still hands over.
        self.host.spawn(functools.partial(self._work, begun=True))
        self._check_superseded()
        return False, False

    def _accepted(self, message_id: str) -> bool | None:
        """Whether a message with this client id waits (True) or was taken (False); None: new."""
        state = self.state
        if any(m.id == message_id for m in state.queued):
            return True
        # Newest first: a retry is almost always of a recent message.
        if any(m.id == message_id for m in reversed(state.messages)):
            return False
        return None

    def _check_superseded(self) -> None:
        """After a save a send waited on: fail the send if the session is gone."""
        if self.life.error is not None:
            self.check_open()  # gave up while the message waited: not saved here
        if self.life.superseded:
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
            shown, model = result
            merged: Message = model.model_copy(
                update={"metadata": {**model.metadata, "display": shown.model_dump(mode="json")}}
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
        self.turn.resume = (answer, interrupt)
        self.queue.held = False  # the queue drains after the resume turn
        self.turn.active = True
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
        self.emit(StatusChanged, status=Status.RUNNING, interrupt=None, error=None)
        if not self._worker:
            self._claim_worker()
        # else: the worker is finishing the save of the interrupt; it runs the resume next
        return Status.RUNNING

    async def dismiss(self, scope: Any) -> Status:
        self.check_open()
        interrupt = self.state.interrupt
        if self.status is not Status.INTERRUPTED or interrupt is None or interrupt.kind != "notice":
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
        self.queue.held = False
        self.writer.changed()
        self.set_status(Status.IDLE)
        await self.persist("dismiss")
        if self.state.queued and not self._worker and not self.closed:
            self._claim_worker()  # the held queue runs as the next turn
        return self.status

    async def cancel(self) -> Status:
        self.check_open()
        if self.status is not Status.RUNNING or not self.turn.active:
            raise InvalidStatus(
                f"cannot cancel conversation {self.conversation_id!r}: status is "
                f"{self.status.value}, no turn is running",
                self.status.value,
            )
        self.turn.cancel()
        await self.turn.wait_done()
        return self.status

    async def stop(self, reason: StopReason = StopReason.STOPPED) -> None:
        """Persist and stop; a running turn is cancelled (on drain: after shutdown_timeout)."""
        if not self.closed:
            self.request_stop(reason)
        if reason is StopReason.DRAIN and not self.life.ended:
            clock = self.host.clock
            with anyio.CancelScope() as timer_scope:
                async with anyio.create_task_group() as tg:

                    async def expire() -> None:
                        await clock.sleep_until(clock.now() + self.opts.shutdown_timeout)
                        timer_scope.cancel()

                    tg.start_soon(expire)
                    await self.life.wait_ended()
                    tg.cancel_scope.cancel()
            if not self.life.ended:
                # The turn had its shutdown_timeout: cancel it so the drain can finish.
                self.turn.cancel()
        await self.life.wait_ended()

    def request_stop(self, reason: StopReason) -> None:
        self.life.request_stop(reason)
        if reason is not StopReason.DRAIN:
            self.turn.cancel()
        if not self._worker:
            self._claim_worker()

    async def wait_stopped(self) -> None:
        await self.life.wait_ended()

    def _end(self, reason: StopReason | None = None) -> None:
        self.life.finish(reason)
        self.host.forget(self)

    # -- the worker ----------------------------------------------------------------

    async def _work(self, begun: bool = False, idle_reason: StopReason | None = None) -> None:
        try:
            if idle_reason is not None and await self._idle_stop(idle_reason):
                return
            while True:
                reason = self.life.reason
                # A turn this worker was spawned for still runs on drain (its message is
                # already saved); any other stop wins over further work.
                if reason is not None and not (begun and reason is StopReason.DRAIN):
                    await self._finish_stop()
                    return
                try:
                    if begun:
                        begun = False
                        await run_turn(self)
                    elif self.turn.resume is not None:
                        await run_turn(self, resume=True)
                    elif self.queue.ready(self.state):
                        if self.state.interrupt is not None:
                            self._abandon_interrupt()
                        self._begin_turn()
                        await self.persist("turn_start", shield=False)
                        if self.closed:
                            continue
                        await run_turn(self)
                    else:
                        break
                except Crash as crash:
                    if not await self.restart(crash.error):
                        return
                except Exception as exc:  # an internal invariant broke: restart by policy
                    self.log().exception("actor_internal_error")
                    if not await self.restart(exc):
                        return
        finally:
            self._worker = False
            if self.status is Status.RUNNING and not self.closed:
                self.set_status(Status.IDLE)
            if not self.closed:
                self.arm()

    def _begin_turn(self) -> None:
        taken = self.queue.take(self.state)
        self.turn.active = True
        if self.status is not Status.RUNNING:
            self.set_status(Status.RUNNING)
        for message in taken:
            self.emit(MessageAppended, message=display(message))
        self.writer.changed()

    def _abandon_interrupt(self) -> None:
        self.state = abandon_interrupt(self.state, self.agent, adopt)

    # -- restart, give up, stop ----------------------------------------------------

    async def restart(self, error: BaseException) -> bool:
        """Restart by policy; return False when the session gave up."""
        restarting = self._restarting = anyio.Event()
        try:
            return await self._restart_loop(error)
        finally:
            self._restarting = None
            restarting.set()

    async def _restart_loop(self, error: BaseException) -> bool:
        clock = self.host.clock
        while True:
            now = clock.now()
            decision = decide_restart(self.restart_times, now, self.opts)
            if decision.give_up:
                self._give_up(error)
                return False
            self.restart_times = decision.times
            self.restarts += 1
            attempt = decision.attempt
            self.log().warning("session_restarting", attempt=attempt, error=describe(error))
            if decision.delay > 0:
                await clock.sleep_until(now + decision.delay)
            if self.life.reason is not None:
                return True  # stopped while waiting: the worker finishes the stop
            # Announced as it is made, so a restart whose rebuild crashes again (an
            # on_start hook that keeps raising) is seen too, not only the last one.
            self.emit(Restarted, attempt=attempt, error=describe(error))
            try:
                rebuilt = await self.host.rebuild(self)
            except Exception as exc:
                error = exc
                continue
            self._adopt_rebuilt(rebuilt)
            self.queue.held = self.state.interrupt is not None  # queued messages run next
            self.status = Status.RUNNING  # so the next line announces the settled status
            self.set_status(Status.INTERRUPTED if self.state.interrupt else Status.IDLE)
            self.log().info("session_restarted", attempt=attempt)
            return True

    def _adopt_rebuilt(self, rebuilt: Any) -> None:
        state: State = rebuilt.state
        # The mailbox survives the crash: queued messages the store has not seen come
        # along. Computed after the host's last await, so a send that raced the restart
        # counts.
        known = {m.id for m in state.queued}
        known.update(m.id for m in state.messages)
        carried = [m for m in self.state.queued if m.id not in known]
        state.queued.extend(carried)
        self.agent = rebuilt.agent
        self.opts = rebuilt.opts
        self.extra = rebuilt.extra
        self.state = state
        self.writer.reset(rebuilt.version)
        if carried:
            self.writer.changed()

    def _give_up(self, error: BaseException) -> None:
        self.life.fail(error)
        self.status = Status.NOT_RUNNING
        self.emit(SessionFailed, error=describe(error))
        self.log().error("session_failed", error=describe(error), restarts=self.restarts)
        self.turn.release_waiters()
        self.host.forget(self)

    async def _idle_stop(self, reason: StopReason) -> bool:
        """Stop for inactivity or no viewers unless something happened meanwhile."""
        writer = self.writer
        writer.changed()  # the shutdown save carries last_seq even when nothing else changed
        gen = writer.gen
        if not await self.persist("shutdown", reserve=1):
            self.touch()  # try again after another full timeout, not in a tight loop
            return False
        if writer.gen != gen or self.closed or self.queue.ready(self.state):
            return False  # work arrived while saving: keep serving
        self.life.request_stop(reason)
        self._emit_shutdown(reason)
        self._end()
        return True

    def _emit_shutdown(self, reason: StopReason) -> None:
        folded = self.folded
        interrupt = (
            folded.peek_interrupt()
            if not folded.folded or self.status is Status.INTERRUPTED
            else None
        )
        restorable = False
        if interrupt is not None:
            hook = getattr(self.agent, "restorable", None)
            try:
                restorable = True if hook is None else bool(hook(interrupt))
            except Exception as exc:  # the agent's hook must not break a stop
                self.log().warning("restorable_hook_failed", error=describe(exc))
                restorable = False
        self.emit(
            Shutdown,
            reason=str(reason),
            status=self.status,
            interrupt_restorable=restorable,
            last_activity_at=self.last_activity_at(),
            shutdown_at=utcnow(),
        )
        self.log().info("session_shutdown", reason=str(reason), status=self.status.value)

    async def _finish_stop(self) -> None:
        reason = self.life.reason or StopReason.STOPPED
        if reason is not StopReason.SUPERSEDED:
            self.writer.changed()
            # Messages still waiting (not held) are saved as `queued` so that the next
            # wake runs them; held ones stay held.
            pending = self.folded.has_unheld_queue() and not self.queue.held
            await self.persist("queued" if pending else "shutdown", reserve=1)
        self._emit_shutdown(reason)
        self._end()

    # -- idle deadlines ------------------------------------------------------------

    def _due(self) -> tuple[float, IdleAction] | None:
        if self._worker or self.closed or self.status is Status.RUNNING:
            return None
        return next_idle_action(
            opts=self.opts,
            last_activity=self._last_activity,
            viewers=self.host.viewer_count(self.conversation_id),
            viewers_left_at=self._viewers_left_at,
            can_fold=not self.folded.folded and not self.topic.subscribers,
        )

    def arm(self) -> None:
        due = self._due()
        if due is not None:
            self.host.schedule(self, due[0])

    def timer_fired(self, now: float) -> None:
        due = self._due()
        if due is None:
            return
        deadline, action = due
        if deadline > now:
            self.host.schedule(self, deadline)
            return
        if action is IdleAction.HIBERNATE:
            self._hibernate()
            self.arm()  # the inactivity deadline, if any, still stands
            return
        self._claim_worker(idle_reason=StopReason(str(action)))

    def _hibernate(self) -> None:
        if self.folded.folded or self._worker or self.closed or self.topic.subscribers:
            return
        if self.folded.fold():
            self.topic.drop_replay()
        else:
            self.log().debug("hibernate_skipped")

    def viewers_left(self) -> None:
        self._viewers_left_at = self.host.clock.now()
        self.arm()


def _trailing_user_messages(messages: list[Message]) -> int:
    count = 0
    for message in reversed(messages):
        if message.role != "user":
            break
        count += 1
    return count
