"""One conversation's actor: a state machine that holds no task while idle.

Calls mutate the actor synchronously (nothing awaits between a check and the
change it guards, so concurrent callers on one event loop cannot interleave
there). Work that awaits - running a turn, restarting, stopping - belongs to
the *worker*, which exists only while there is such work: it is claimed by
setting ``_worker`` before it is handed to the host's runner pool and released
when nothing is left, so there is never more than one per conversation.

The jobs around it live in their own modules: the lifecycle state
(``_lifecycle``), the single writer (``_writer``), the held queue
(``_held_queue``), running a turn (``_turns``), restarts (``_restarts``),
stopping (``_stopping``), accepting a message (``_intake``), folding an idle
State (``_folding``) and idle deadlines (``_idle``). The actor reaches its
supervisor only through ``ActorHost``.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from .._clock import utcnow
from .._errors import (
    InvalidStatus,
    NotRunning,
    SessionFailedError,
    StaleWriteError,
    StoreUnavailable,
)
from .._options import SupervisorOpts
from .._telemetry import capture_context
from ..state import Content, State, StoredConversation
from ._events import (
    AgentEvent,
    Delta,
    Event,
    MessageAppended,
    MessageQueued,
    Status,
    StatusChanged,
)
from ._folding import FoldableState
from ._held_queue import HeldQueue, abandon_interrupt
from ._idle import arm, timer_fired
from ._intake import accepted, new_message, preprocess
from ._lifecycle import ActorLife, Life, StopReason
from ._restarts import restart_by_policy
from ._stopping import finish_stop, idle_stop, stop_session
from ._turns import Crash, TurnControl, adopt, describe, display, run_turn
from ._validation import check_content, content_size_ok
from ._writer import Writer

if TYPE_CHECKING:
    from ..state import Lifecycle
    from ._bus import Topic
    from ._handle import SessionHandle
    from ._host import ActorHost

__all__: list[str] = ["Actor"]

_log = structlog.get_logger("sessionvisor")


class Actor:
    __slots__ = (
        "_worker",
        "agent",
        "agent_id",
        "conversation_id",
        "extra",
        "folded",
        "handle",
        "host",
        "last_activity",
        "life",
        "opts",
        "owner",
        "queue",
        "request_opts",
        "restart_times",
        "restarting",
        "restarts",
        "route_key",
        "scope",
        "status",
        "timer_at",
        "topic",
        "turn",
        "viewers_left_at",
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
        self.restarting: anyio.Event | None = None
        self.last_activity = host.clock.now()
        self.viewers_left_at: float | None = None
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
        return self.life.state is not Life.SERVING

    @property
    def busy(self) -> bool:
        return self._worker

    def log(self) -> Any:
        return _log.bind(conversation_id=self.conversation_id, agent_id=self.agent_id)

    def emit(self, cls: type[Event], **fields: Any) -> Event:
        return self.topic.publish(cls, **fields)

    def set_status(self, status: Status, *, error: str | None = None) -> None:
        # Inactivity counts from the moment a user could see the new status.
        self.last_activity = self.host.clock.now()
        self.status = status
        self.emit(StatusChanged, status=status, interrupt=self.state.interrupt, error=error)

    def touch(self) -> None:
        self.last_activity = self.host.clock.now()

    def check_open(self) -> None:
        if self.life.error is not None:
            raise SessionFailedError(
                f"conversation {self.conversation_id!r} gave up after repeated crashes "
                f"({describe(self.life.error)}); the next supervisor call starts it again"
            )
        if self.closed:
            raise NotRunning(f"conversation {self.conversation_id!r} is not running any more")

    def last_activity_at(self) -> Any:
        ago = self.host.clock.now() - self.last_activity
        return utcnow() - timedelta(seconds=max(ago, 0.0))

    def claim_worker(self, **kwargs: Any) -> None:
        """Start the worker (the caller checked that none runs)."""
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
        return self.restarting

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

    def retry_failed(self, error: Exception, *, first: bool) -> None:
        self.host.stats.background_failures["save_retry"] += 1
        if first:
            self.log().warning("store_save_retry_failed", error=describe(error))

    def session_ended(self) -> bool:
        return self.life.ended

    def retry_lifecycle(self) -> Lifecycle:
        return "shutdown" if self.closed else self._mid_work_lifecycle()

    def _mid_work_lifecycle(self) -> Lifecycle:
        return "turn_start" if self.turn.active else "queued"

    def retry_backoff(self) -> float:
        return self.opts.save_retry_backoff

    # -- the turn sink (called by Turn) --------------------------------------------

    def _turn_delta(self, text: str) -> None:
        self.emit(Delta, text=text)

    def _turn_emit(self, name: str, data: Any) -> None:
        self.emit(AgentEvent, name=name, data=data)

    def _turn_queue(self, content: Content) -> None:
        # An agent's follow-up is stored like a client's message: held to the same rules.
        check_content(content, self.opts.max_message_bytes, self.conversation_id)
        self.queue.check_room(self.state, self.opts.max_queued, self.conversation_id)
        message = new_message("user", content, {"origin": "agent"})
        self.state.queued.append(message)
        self.writer.changed()
        self.emit(MessageQueued, message=message)

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
            known = accepted(self.state, message_id)
            if known is not None:
                await self._stored_before_acknowledged()
                return known, True
        if not content_size_ok(content, self.opts.max_message_bytes):
            raise ValueError(
                f"content of the message for conversation {self.conversation_id!r} is larger than "
                f"max_message_bytes={self.opts.max_message_bytes} as JSON"
            )
        message = new_message("user", content, message_id=message_id)
        if self.opts.message_preprocessor is not None:
            pre = self.opts.message_preprocessor
            message = await preprocess(
                pre, message, scope, self.conversation_id, self.agent_id, self.state
            )
            self.check_open()  # it may have stopped while the preprocessor ran
            if message_id is not None:
                known = accepted(self.state, message_id)  # a retry may have won the race meanwhile
                if known is not None:
                    await self._stored_before_acknowledged()
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
            if self.turn.next_context is None:
                self.turn.next_context = capture_context()  # the next turn's parent span
            self.emit(MessageQueued, message=display(message))
            # Saved mid-turn, the record says a turn was running (``turn_start``): if the
            # process dies now, recovery runs that turn again before the queue.
            saved = await self.persist(self._mid_work_lifecycle())
            self._check_superseded()
            self._check_saved(saved)
            return True, False
        # Nothing runs: this call starts the turn. The claim comes before any await, so
        # a concurrent send finds the worker busy and queues behind this one.
        self._worker = True
        self.turn.next_context = capture_context()
        if self.state.interrupt is not None:
            self._abandon_interrupt()
        self._begin_turn()
        saved = await self.persist("turn_start")
        # No await between the save and the spawn: a cancelled caller still hands over.
        self.host.spawn(functools.partial(self._work, begun=True))
        self._check_superseded()
        self._check_saved(saved)
        return False, False

    async def _stored_before_acknowledged(self) -> None:
        """A retried send: acknowledge it again only once the store holds it.

        The first attempt may have been refused with ``StoreUnavailable`` while
        the message stayed in memory; the retry must not be told "stored" until
        a save carried it.
        """
        if self.writer.saved_gen < self.writer.gen:
            saved = await self.persist(self._mid_work_lifecycle())
            self._check_superseded()
            self._check_saved(saved)

    def _check_superseded(self) -> None:
        """After a save a send waited on: fail the send if the session is gone."""
        if self.life.error is not None:
            self.check_open()  # gave up while the message waited: not saved here
        if self.life.superseded:
            raise NotRunning(
                f"conversation {self.conversation_id!r} was taken over by another writer "
                "(its stored version moved on); the message was not saved here"
            )

    def _check_saved(self, saved: bool, what: str = "the message") -> None:
        """Refuse to acknowledge a command whose save failed.

        It stays in memory and the save is retried, but a crash before the retry
        lands (or, in a cluster, losing the lease) would lose what the caller was
        told is kept: the caller is told it is not stored, and a retry with the
        same message id is recognised.
        """
        if not saved:
            raise StoreUnavailable(
                f"conversation {self.conversation_id!r}: {what} could not be stored "
                "(the store is failing); retry it (a message with the same message id)"
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
        self.turn.next_context = capture_context()
        self.emit(StatusChanged, status=Status.RUNNING, interrupt=None, error=None)
        if not self._worker:
            self.claim_worker()
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
        held = self.queue.held
        self.queue.held = False
        self.writer.changed()
        self.set_status(Status.IDLE)
        saved = await self.persist("dismiss")
        self._check_superseded()
        if not saved and self.state.interrupt is None and not self._worker and not self.closed:
            # Not stored, so not done: the notice is put back (and saved by the retry
            # with it), and the caller is told to dismiss it again.
            self.state.interrupt = interrupt
            self.queue.held = held
            self.writer.changed()
            self.set_status(Status.INTERRUPTED)
        self._check_saved(saved, "the dismissal")
        if self.state.queued and not self._worker and not self.closed:
            self.claim_worker()  # the held queue runs as the next turn
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

    async def stop(self, reason: StopReason = StopReason.STOPPED, *, grace: bool = True) -> None:
        """Persist and stop; a running turn is cancelled (on drain: after shutdown_timeout)."""
        await stop_session(self, reason, grace=grace)

    def request_stop(self, reason: StopReason) -> None:
        self.life.request_stop(reason)
        if reason is not StopReason.DRAIN:
            self.turn.cancel()
        if not self._worker:
            self.claim_worker()

    async def wait_stopped(self) -> None:
        await self.life.wait_ended()

    def end(self, reason: StopReason | None = None) -> None:
        self.life.finish(reason)
        self.host.stats.sessions_stopped[str(self.life.reason or StopReason.STOPPED)] += 1
        self.host.forget(self)

    def save_took(self, seconds: float) -> None:
        self.host.stats.save_seconds.observe(seconds)

    # -- the worker ----------------------------------------------------------------

    async def _work(self, begun: bool = False, idle_reason: StopReason | None = None) -> None:
        try:
            if idle_reason is not None and await idle_stop(self, idle_reason):
                return
            while True:
                reason = self.life.reason
                # A turn this worker was spawned for still runs on drain (its message is
                # already saved); any other stop wins over further work.
                if reason is not None and not (begun and reason is StopReason.DRAIN):
                    if begun:
                        self._hand_back_unstarted_turn()
                    await finish_stop(self)
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
                    if not await restart_by_policy(self, crash.error):
                        return
                except Exception as exc:  # an internal invariant broke: restart by policy
                    self.log().exception("actor_internal_error")
                    if not await restart_by_policy(self, exc):
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

    def _hand_back_unstarted_turn(self) -> None:
        """A stop won the race against a turn that was begun but never ran: its user
        messages go back to the front of the queue, saved as waiting, so the next wake
        answers them (left in the history they would never be answered)."""
        state = self.state
        history = state.messages
        self.queue.give_back(state, history, len(history), self.queue.taken)
        self.queue.held = False
        self.turn.active = False
        self.turn.release_waiters()
        self.writer.changed()
        self.set_status(Status.CANCELLED)

    def _abandon_interrupt(self) -> None:
        self.state = abandon_interrupt(self.state, self.agent, adopt)

    # -- idle deadlines (rules in _idle) -------------------------------------------

    def arm(self) -> None:
        arm(self)

    def timer_fired(self, now: float) -> None:
        timer_fired(self, now)

    def viewers_left(self) -> None:
        self.viewers_left_at = self.host.clock.now()
        self.arm()
