"""One conversation's actor: a state machine that holds no task while idle.

The actor is the ``Conversation`` it holds (its State, queue, turn and status,
with their transitions) plus its work: calls mutate it synchronously (nothing
awaits between a check and the change it guards, so concurrent callers on one
event loop cannot interleave there). Work that awaits - running a turn,
restarting, stopping - belongs to the *worker* (``_turns.work``), which exists
only while there is such work: it is claimed before it is handed to the host's
runner pool and released when nothing is left, so there is never more than one
per conversation.

Every field is private; other modules read through read-only views and change
the actor only through its named transitions. The jobs live in their own
modules: accepting a message and the queue's rules (``_intake``), the worker
and running a turn (``_turns``), restarts (``_restarts``), the life cycle and
stopping (``_stopping``), idle deadlines (``_idle``), the folded State
(``_folding``) and the single writer (``_writer``). The actor reaches its
supervisor only through ``ActorHost``.
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import InvalidStatus, StaleWriteError, StoreUnavailable
from .._options import SupervisorOpts
from .._telemetry import capture_context
from ..state import Content, State
from ._conversation import Conversation, ReadOnly
from ._events import Restarted, SessionFailed, Status, StatusChanged, describe
from ._handle import SessionHandle
from ._idle import arm, timer_fired
from ._intake import Accepted, check_not_superseded, check_saved, send_message
from ._quotas import cancel_waiting
from ._rewrites import rewrite_turn
from ._stopping import StopReason, stop_session
from ._timer_calls import schedule_timer
from ._turns import work
from ._validation import require_interrupt
from ._writer import ActorWriterOwner, Writer

if TYPE_CHECKING:
    from ._bus import Topic
    from ._host import ActorHost, Rebuilt

__all__: list[str] = ["Actor"]


class Actor(Conversation):
    __slots__ = (
        "_handle",
        "_restart_times",
        "_restarting",
        "_restarts",
        "_scheduled",
        "_timer_at",
        "_viewers_left_at",
    )

    def __init__(
        self,
        host: ActorHost,
        *,
        conversation_id: str,
        agent_id: str,
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
        super().__init__(
            host,
            conversation_id=conversation_id,
            agent_id=agent_id,
            owner=owner,
            route_key=route_key,
            request_opts=request_opts,
            scope=scope,
            agent=agent,
            opts=opts,
            extra=extra,
            state=state,
            topic=topic,
        )
        self._handle = SessionHandle(self)
        self._writer = Writer(ActorWriterOwner(self), version)
        self._restarts = 0
        self._restart_times: tuple[float, ...] = ()
        self._restarting: anyio.Event | None = None
        self._viewers_left_at: float | None = None
        self._timer_at: float | None = None
        self._scheduled: tuple[str, int] = ("", 0)  # (turn, timers it scheduled without a key)

    handle: ReadOnly[SessionHandle] = ReadOnly("_handle")
    restarts: ReadOnly[int] = ReadOnly("_restarts")
    restart_times: ReadOnly[tuple[float, ...]] = ReadOnly("_restart_times")
    restarting: ReadOnly[anyio.Event | None] = ReadOnly("_restarting")  # set while restarting
    viewers_left_at: ReadOnly[float | None] = ReadOnly("_viewers_left_at")

    @property
    def timer_at(self) -> float | None:
        """The shared timer's entry for this session (kept here, written by ``Deadlines``)."""
        return self._timer_at

    @timer_at.setter
    def timer_at(self, value: float | None) -> None:
        self._timer_at = value

    # -- transitions: the worker and idle deadlines ------------------------------

    def claim_worker(self, *, begun: bool = False, idle_reason: StopReason | None = None) -> None:
        """Start the worker (the caller checked that none runs)."""
        self._worker = True
        self._host.spawn(functools.partial(work, self, begun=begun, idle_reason=idle_reason))

    def hand_over_begun_turn(self) -> None:
        """Start the worker that ``queue_user_message`` claimed for the turn it began."""
        self._host.spawn(functools.partial(work, self, begun=True))

    def release_worker(self) -> None:
        """The worker is done: announce ``idle`` after a run, and watch the idle deadlines."""
        self._worker = False
        self._host.quotas.release(self._conversation_id)  # whatever way the work ended
        if self._status is Status.RUNNING and not self.closed:
            self.set_status(Status.IDLE)
        if not self.closed:
            self.arm()
        self._turn.release_waiters()  # a rewrite waiting for the conversation to be quiet

    def rerun_unfinished_turn(self, *, taken: int) -> None:
        """On a start after a crash mid-turn: the last ``taken`` user messages run again."""
        self._turn.begin(taken=taken)
        self._host.quotas.occupy(self._conversation_id, self._owner)  # admitted work: no wait
        self.set_status(Status.RUNNING)
        self.claim_worker(begun=True)

    def arm(self) -> None:
        arm(self)

    def timer_fired(self, now: float) -> None:
        timer_fired(self, now)

    def viewers_left(self) -> None:
        self._viewers_left_at = self._host.clock.now()
        self.arm()

    def fold_state(self) -> None:
        """Fold the idle State and drop the replay buffer (raises what the dump raised)."""
        self._folded.fold(self._writer.gen)
        self._topic.drop_replay()

    def _turn_schedule(self, payload: Any, *, delay: Any, at: Any, key: Any) -> Any:
        """``turn.schedule``: store a durable timer for this conversation.

        Without a key, the key is derived from the turn (the message it answers) and
        the call's order in it: a turn that runs again after a crash schedules the
        same keys, so it replaces its timers instead of adding a second set.
        """
        host = self._host
        if key is None:
            key = self._turn_timer_key()
        return schedule_timer(
            host.store,
            host.clock,
            host.timers,
            self._conversation_id,
            payload,
            at=at,
            delay=delay,
            key=key,
        )

    def _turn_timer_key(self) -> str | None:
        started = self._turn.started_with
        history = self.state.messages
        if started is None or not started[0] or started[0] > len(history):
            return None  # not inside a turn: a generated key
        mark = started[0]
        turn = f"{mark}:{history[mark - 1].id}"
        seen, count = self._scheduled
        count = count + 1 if seen == turn else 0
        self._scheduled = (turn, count)
        digest = hashlib.sha256(f"{turn}:{count}".encode()).hexdigest()[:24]
        return "turn-" + digest

    # -- transitions: restarts ---------------------------------------------------

    def begin_restart(self) -> anyio.Event:
        restarting = self._restarting = anyio.Event()
        return restarting

    def end_restart(self, restarting: anyio.Event) -> None:
        self._restarting = None
        restarting.set()

    def count_restart(self, times: tuple[float, ...]) -> None:
        self._restart_times = times
        self._restarts += 1
        self._host.stats.restarts += 1

    def adopt_rebuilt(self, rebuilt: Rebuilt, *, attempt: int, error: str) -> None:
        """Take the parts a restart made again; announce the restart and the settled status."""
        state = rebuilt.state
        # The mailbox survives the crash: queued messages the store has not seen come
        # along. Computed after the host's last await, so a send that raced the restart
        # counts.
        known = {m.id for m in state.queued}
        known.update(m.id for m in state.messages)
        carried = [m for m in self.state.queued if m.id not in known]
        state.queued.extend(carried)
        self._agent = rebuilt.agent
        self._opts = rebuilt.opts
        self._extra = rebuilt.extra
        self._folded.set(state)
        self._writer.reset(rebuilt.version)
        if carried:
            self._writer.changed()
        self._held = state.interrupt is not None  # queued messages run next
        self.emit(Restarted, attempt=attempt, error=error)
        self.set_status(Status.INTERRUPTED if state.interrupt else Status.IDLE)

    def give_up(self, error: BaseException) -> None:
        """The restart policy refused: the session fails and leaves the registry."""
        self._host.stats.give_ups += 1
        self._life.fail(error)
        self._status = Status.NOT_RUNNING
        self.emit(SessionFailed, error=describe(error))
        self.log().error("session_failed", error=describe(error), restarts=self._restarts)
        self._turn.release_waiters()
        self._host.forget(self)

    # -- transitions: stopping, and what the writer asks -------------------------

    def request_stop(self, reason: StopReason) -> None:
        self._life.request_stop(reason)
        self._host.quotas.abandon(self._conversation_id)  # a turn waiting for a slot
        if reason is not StopReason.DRAIN:
            self._turn.cancel()
        if not self._worker:
            self.claim_worker()

    def mark_stopping(self, reason: StopReason) -> None:
        """The worker itself stops the session (an idle stop): no other work to end."""
        self._life.request_stop(reason)

    def end(self, reason: StopReason | None = None) -> None:
        self._turn.release_waiters()
        self._life.finish(reason)
        self._host.stats.sessions_stopped[str(self._life.reason or StopReason.STOPPED)] += 1
        self._host.forget(self)

    async def wait_stopped(self) -> None:
        await self._life.wait_ended()

    def superseded(self, error: StaleWriteError) -> None:
        """A save was refused as stale: another owner took the conversation."""
        if self.closed:
            self._life.supersede()
        else:
            self.request_stop(StopReason.SUPERSEDED)

    # -- calls -------------------------------------------------------------------

    async def send(
        self, content: Content, scope: Any, *, message_id: str | None = None
    ) -> Accepted:
        """Accept a user message (see ``_intake.send_message``).

        Returns:
            ``Accepted(queued, duplicate)``: queued when it
            waits behind running work; duplicate when a message with ``message_id``
            was already accepted (then nothing changed, and ``queued`` says whether
            it still waits).
        """
        return await send_message(self, content, scope=scope, message_id=message_id)

    async def resume(self, answer: Any, scope: Any, *, interrupt_id: str | None = None) -> Status:
        self.check_open()
        if self._status is not Status.INTERRUPTED:
            raise self._refused("resume", "not interrupted")
        require_interrupt(
            self._conversation_id,
            self.state.interrupt,
            status=self._status,
            interrupt_id=interrupt_id,
        )
        if scope is not None:
            self._scope = scope
        self.prepare_resume(answer)
        self._next_context = capture_context()
        self.emit(StatusChanged, status=Status.RUNNING, interrupt=None, error=None)
        if not self._worker:
            self.claim_worker()
        # else: the worker is finishing the save of the interrupt; it runs the resume next
        await self.store_answer()
        return Status.RUNNING

    async def store_answer(self) -> None:
        """Return once the store holds the answer being carried out (or its effect).

        Every save made while the resumed turn runs records the answer with the
        interrupt, so a crash before the turn's own save reruns the turn with it.

        Raises:
            StoreUnavailable: the save failed (the answer is kept in memory and
                saved by the writer's retries, but was not acknowledged).
        """
        self._writer.changed()
        saved = await self.persist("turn_start")
        check_not_superseded(self)
        check_saved(self, saved, what="the answer")

    async def dismiss(self, scope: Any) -> Status:
        self.check_open()
        state = self.state
        interrupt = state.interrupt
        if (
            self._status is not Status.INTERRUPTED
            or interrupt is None
            or interrupt.kind != "notice"
        ):
            kind = "no interrupt" if interrupt is None else f"a {interrupt.kind!r} interrupt"
            raise InvalidStatus(
                f"cannot dismiss conversation {self._conversation_id!r}: status is "
                f"{self._status.value} with {kind}; only a 'notice' interrupt can be dismissed",
                self._status.value,
            )
        if scope is not None:
            self._scope = scope
        self.touch()
        state.interrupt = None
        held = self._held
        self._held = False
        self._writer.changed()
        self.set_status(Status.IDLE)
        saved = await self.persist("dismiss")
        check_not_superseded(self)
        if not saved and self.state.interrupt is None and not self._worker and not self.closed:
            # Not stored, so not done: the notice is put back (and saved by the retry
            # with it), and the caller is told to dismiss it again.
            self.state.interrupt = interrupt
            self._held = held
            self._writer.changed()
            self.set_status(Status.INTERRUPTED)
        check_saved(self, saved, what="the dismissal")
        if self.state.queued and not self._worker and not self.closed:
            self.claim_worker()  # the held queue runs as the next turn
        return self._status

    async def cancel(self, *, keep_partial: bool = False) -> Status:
        self.check_open()
        waited = await cancel_waiting(self)  # a turn waiting for its owner's slot
        if waited is not None:
            return waited
        if self._status is not Status.RUNNING or not self._turn.active:
            raise self._refused("cancel", "no turn is running")
        if keep_partial:
            self.keep_when_cancelled()
        self._turn.cancel()
        await self._turn.wait_done()
        if self.status is Status.CANCELLED:  # not narrowed: the turn changed it
            # Stored before it is acknowledged: a crash now must not rerun the turn.
            saved = await self.persist("cancel")
            check_not_superseded(self)
            if not saved:
                raise StoreUnavailable(
                    f"conversation {self._conversation_id!r}: the turn was cancelled but the "
                    "cancel could not be stored yet (the store is failing); it is saved when "
                    "the store recovers, and a crash before then would run the turn again"
                )
        return self._status

    async def rewrite(
        self,
        message_id: str | None,
        content: Any,
        scope: Any,
        *,
        edit: bool,
        asked_id: str | None = None,
        wait: bool = False,
    ) -> str:
        """Regenerate (``edit`` False) or edit: see ``_rewrites.rewrite_turn``."""
        return await rewrite_turn(
            self, message_id, content, scope, edit=edit, asked_id=asked_id, wait=wait
        )

    def _refused(self, call: str, why: str) -> InvalidStatus:
        return InvalidStatus(
            f"cannot {call} conversation {self._conversation_id!r}: status is "
            f"{self._status.value}, {why}",
            self._status.value,
        )

    async def stop(self, reason: StopReason = StopReason.STOPPED, *, grace: bool = True) -> None:
        """Persist and stop; a running turn is cancelled (on drain: after shutdown_timeout)."""
        await stop_session(self, reason, grace=grace)
