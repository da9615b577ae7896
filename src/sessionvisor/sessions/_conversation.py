"""What an actor holds: the conversation's State, its queue, the running turn and
the status, and the transitions that change them.

Every field is private (the actor's, see ``Actor``, which is a ``Conversation``).
Other modules read through read-only views and change the session only through
named transitions (``begin_turn``, ``roll_back``, ``hold_queue``,
``set_status``, ...): whatever changes a field is a method of the actor.
Transitions are synchronous; nothing awaits between a check and the change it
guards. The queue's rules are in ``_intake``, the turn's controls in ``_turns``.
"""

from __future__ import annotations

import operator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import anyio
import structlog

from .._clock import utcnow
from .._errors import NotRunning, SessionFailedError
from .._options import SupervisorOpts
from .._telemetry import capture_context
from ..state import Content, Message, PendingInterrupt, State
from ._events import (
    AgentEvent,
    Delta,
    Event,
    MessageAppended,
    MessageQueued,
    Status,
    StatusChanged,
    describe,
)
from ._folding import FoldableState
from ._intake import abandon_interrupt, check_room, give_back, new_message, take
from ._steps import run_step
from ._stopping import ActorLife, Life
from ._turns import TurnControl, display
from ._validation import check_content

if TYPE_CHECKING:
    from ..agents import Turn
    from ..agents._agent import StepCall
    from ..state import Lifecycle
    from ._bus import Topic
    from ._host import ActorHost
    from ._writer import Writer

__all__: list[str] = ["Conversation", "ReadOnly"]

_log = structlog.get_logger("sessionvisor")

T = TypeVar("T")


class ReadOnly(Generic[T]):
    """A read-only view of one of the actor's private fields (typed; assigning fails)."""

    __slots__ = ("_get",)

    def __init__(self, field: str) -> None:
        self._get = operator.attrgetter(field)

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> ReadOnly[T]: ...

    @overload
    def __get__(self, obj: object, owner: type[Any]) -> T: ...

    def __get__(self, obj: object | None, owner: type[Any]) -> ReadOnly[T] | T:
        if obj is None:
            return self
        value: T = self._get(obj)
        return value


class Conversation:
    """The state an actor owns (see the module docstring); ``Actor`` adds its work."""

    __slots__ = (
        "_agent",
        "_agent_id",
        "_conversation_id",
        "_extra",
        "_folded",
        "_held",
        "_host",
        "_keep_partial",
        "_last_activity",
        "_life",
        "_next_context",
        "_opts",
        "_owner",
        "_request_opts",
        "_route_key",
        "_scope",
        "_status",
        "_streamed",
        "_topic",
        "_turn",
        "_worker",
        "_writer",
    )

    _writer: Writer  # set by Actor.__init__ (the writer asks the actor itself)

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
        topic: Topic,
    ) -> None:
        self._host = host
        self._conversation_id = conversation_id
        self._agent_id = agent_id
        self._owner = owner
        self._route_key = route_key
        self._request_opts = request_opts
        self._scope = scope
        self._agent = agent
        self._opts = opts
        self._extra = extra
        self._folded = FoldableState(state)
        self._topic = topic
        self._status = Status.INTERRUPTED if state.interrupt is not None else Status.IDLE
        self._life = ActorLife()
        self._held = False  # the queue waits for the user (see _intake)
        self._turn = TurnControl()
        # The trace context of the request that caused the next turn (None: untraced).
        self._next_context: Any = None
        self._worker = False
        self._last_activity = host.clock.now()
        # The running turn's streamed text, kept by a cancel asked to keep it.
        self._streamed: list[str] = []
        self._keep_partial = False

    # -- reading (every field is private; these are read-only views) --------------

    conversation_id: ReadOnly[str] = ReadOnly("_conversation_id")
    agent_id: ReadOnly[str] = ReadOnly("_agent_id")
    owner: ReadOnly[str | None] = ReadOnly("_owner")
    route_key: ReadOnly[str | None] = ReadOnly("_route_key")
    request_opts: ReadOnly[dict[str, Any]] = ReadOnly("_request_opts")
    scope: ReadOnly[Any] = ReadOnly("_scope")  # the latest call's scope (turns see it)
    agent: ReadOnly[Any] = ReadOnly("_agent")
    opts: ReadOnly[SupervisorOpts] = ReadOnly("_opts")
    extra: ReadOnly[Any] = ReadOnly("_extra")
    host: ReadOnly[ActorHost] = ReadOnly("_host")
    topic: ReadOnly[Topic] = ReadOnly("_topic")
    status: ReadOnly[Status] = ReadOnly("_status")
    folded: ReadOnly[FoldableState] = ReadOnly("_folded")  # the State as kept, maybe folded
    life: ReadOnly[ActorLife] = ReadOnly("_life")
    turn: ReadOnly[TurnControl] = ReadOnly("_turn")
    held: ReadOnly[bool] = ReadOnly("_held")  # the queue waits for the user
    busy: ReadOnly[bool] = ReadOnly("_worker")  # a worker runs
    last_activity: ReadOnly[float] = ReadOnly("_last_activity")

    @property
    def state(self) -> State:
        """The State (unfolded on access); change it only through the transitions."""
        return self._folded.get()

    @property
    def queue_ready(self) -> bool:
        """True when queued messages should run as the next turn now."""
        return bool(self.state.queued) and not self._held

    @property
    def changes(self) -> int:
        """The writer's generation: bumped by every change a save must carry."""
        return self._writer.gen

    @property
    def unsaved(self) -> bool:
        return self._writer.saved_gen < self._writer.gen

    @property
    def mid_work_lifecycle(self) -> Lifecycle:
        """The lifecycle of a save made between the named ones (a queued message, a
        retry): a held queue keeps its hold, so a restart does not run it."""
        if self._turn.active:
            return "turn_start"
        if self._held:
            return "interrupt" if self.state.interrupt is not None else "cancel"
        return "queued"

    @property
    def closed(self) -> bool:
        """True once the session stopped accepting calls (stopping, stopped or failed)."""
        return self._life.state is not Life.SERVING

    def log(self) -> Any:
        return _log.bind(conversation_id=self._conversation_id, agent_id=self._agent_id)

    def emit(self, cls: type[Event], **fields: Any) -> Event:
        return self._topic.publish(cls, **fields)

    def check_open(self) -> None:
        if self._life.error is not None:
            raise SessionFailedError(
                f"conversation {self._conversation_id!r} gave up after repeated crashes "
                f"({describe(self._life.error)}); the next supervisor call starts it again"
            )
        if self.closed:
            raise NotRunning(f"conversation {self._conversation_id!r} is not running any more")

    def last_activity_at(self) -> Any:
        ago = self._host.clock.now() - self._last_activity
        return utcnow() - timedelta(seconds=max(ago, 0.0))

    async def persist(self, lifecycle: Lifecycle, *, reserve: int = 0, shield: bool = True) -> bool:
        host = self._host
        return await self._writer.persist(
            host.store,
            lifecycle,
            reserve=reserve,
            shield=shield,
            spawn=host.spawn,
            clock=host.clock,
        )

    # -- transitions: status, activity, the queue --------------------------------

    def set_status(self, status: Status, *, error: str | None = None) -> None:
        # Inactivity counts from the moment a user could see the new status.
        self._last_activity = self._host.clock.now()
        self._status = status
        self.emit(StatusChanged, status=status, interrupt=self.state.interrupt, error=error)

    def touch(self) -> None:
        self._last_activity = self._host.clock.now()

    def mark_changed(self) -> int:
        """Something a save must carry changed (the State, or the route); the generation."""
        self._writer.changed()
        return self._writer.gen

    def take_turn_context(self) -> Any:
        """The trace context the next turn runs under (spent by taking it)."""
        parent, self._next_context = self._next_context, None
        return parent

    def hold_queue(self, held: bool = True) -> None:
        self._held = held

    # -- transitions: the turn ---------------------------------------------------

    def queue_user_message(self, message: Message, scope: Any) -> bool:
        """Queue a client's message. True: it waits behind running work. False: it
        starts the turn (claimed and begun; ``hand_over_begun_turn`` after its save)."""
        state = self.state
        check_room(state, max_queued=self._opts.max_queued, conversation_id=self._conversation_id)
        if scope is not None:
            self._scope = scope
        self.touch()
        state.queued.append(message)
        self._writer.changed()
        if self._worker or not self._host.quotas.try_start(self._conversation_id, self._owner):
            # A turn (or a restart) is under way, or the owner has no turn slot free (the
            # caller then claims a worker, which waits for one): the message waits, durably,
            # for the next turn. A send lifts a hold; a turn still running may set it again.
            self._held = False
            if self._next_context is None:
                self._next_context = capture_context()  # the next turn's parent span
            self.emit(MessageQueued, message=display(message))
            return True
        # Nothing runs: this call starts the turn. The claim comes before any await, so
        # a concurrent send finds the worker busy and queues behind this one.
        self._worker = True
        self._next_context = capture_context()
        if self.state.interrupt is not None:
            self.abandon_interrupt()
        self.begin_turn()
        return False

    def abandon_interrupt(self) -> None:
        self._folded.set(abandon_interrupt(self.state, self._agent))

    def begin_rewrite(self, hidden: list[str], message: Message, scope: Any) -> None:
        """A regenerate or an edit (nothing runs; the caller checked): the ``hidden``
        messages are superseded (kept, no longer shown) and ``message``, the user
        message asked again, starts a turn ahead of any held queue (claimed and
        begun; ``hand_over_begun_turn`` after its save)."""
        if scope is not None:
            self._scope = scope
        self.touch()
        self._worker = True
        self._next_context = capture_context()
        if self.state.interrupt is not None:
            self.abandon_interrupt()  # the question belonged to the answer superseded
        state = self.state
        state.superseded = [*state.superseded, *hidden]
        state.queued.insert(0, message)
        self.emit(AgentEvent, name="messages_superseded", data={"ids": hidden, "by": message.id})
        self.begin_turn()

    def begin_turn(self) -> None:
        taken = take(self.state)
        self._held = False
        self._turn.begin(taken=len(taken))
        if self._status is not Status.RUNNING:
            self.set_status(Status.RUNNING)
        for message in taken:
            self.emit(MessageAppended, message=display(message))
        self._writer.changed()

    def replace_state(self, state: State) -> None:
        """The agent made a new State (``on_start``, a turn's outcome)."""
        self._folded.set(state)

    def announce_added(self, added: list[Message]) -> None:
        """A turn's new messages joined the history."""
        for message in added:
            self.emit(MessageAppended, message=display(message))
        self._writer.changed()

    def hold_after_turn(self, status: Status, *, interrupt: PendingInterrupt | None = None) -> None:
        """A turn ended waiting for the user (an interrupt, a pause): the queue is held."""
        if interrupt is not None:
            self.state.interrupt = interrupt
        self._held = True
        self.set_status(status)

    def roll_back(self, state: State, *, mark: int, metadata: dict[str, Any], held: bool) -> None:
        """A failed or cancelled turn: what the agent added goes; the user's messages
        (before ``mark``) stay."""
        self._held = held
        history = state.messages
        del history[mark:]
        state.messages = history
        state.metadata = metadata
        self._folded.set(state)
        self._writer.changed()

    def hand_back_turn(
        self, *, answered: PendingInterrupt | None, answer: Any, mark: int, taken: int
    ) -> None:
        """A turn cut short by a stop gives its work back: the interrupt it answered
        goes back with the answer (the next start carries it out, the question is not
        asked again), or its user messages return to the front of the queue."""
        state = self.state
        if answered is not None:
            state.interrupt = answered.model_copy(update={"answered": True, "answer": answer})
            self._writer.changed()
            self.set_status(Status.INTERRUPTED)
        else:
            give_back(state, mark=mark, taken=taken)
            self.set_status(Status.CANCELLED)

    def hand_back_unstarted_turn(self) -> None:
        """A stop won the race against a turn that was begun but never ran: its user
        messages go back to the front of the queue, saved as waiting, so the next wake
        answers them (left in the history they would never be answered)."""
        state = self.state
        give_back(state, mark=len(state.messages), taken=self._turn.taken)
        self._held = False
        self._turn.end()
        self._host.quotas.release(self._conversation_id)
        self._writer.changed()
        self.set_status(Status.CANCELLED)

    def enter_turn(
        self,
        scope: anyio.CancelScope,
        *,
        mark: int,
        metadata: dict[str, Any],
        turn: Turn | None = None,
        journal: str | None = None,
    ) -> None:
        """The agent runs ``turn`` inside ``scope`` (cancelled at once if a cancel came
        first); saves meanwhile store the history up to ``mark`` and ``metadata``, and
        its steps go to the journal named ``journal``."""
        self._turn.enter(scope, mark=mark, metadata=metadata, turn=turn, journal=journal)

    def leave_turn(self) -> None:
        """The agent returned: its scope, the resume and a cancel request are spent."""
        self._turn.leave()

    def end_turn(self) -> None:
        """The turn is over (saved or rolled back): whoever waits for it goes on."""
        self._streamed = []
        self._keep_partial = False
        self._turn.end()
        self._host.quotas.release(self._conversation_id)  # the owner's turn slot

    def keep_when_cancelled(self) -> None:
        """The running turn's cancel keeps what it streamed (``keep_partial_answer``)."""
        self._keep_partial = True

    def keep_partial_answer(self) -> None:
        """A cancelled turn whose cancel asked to keep it: the text streamed so far is
        stored as the assistant's message, marked ``cancelled`` (nothing when none was)."""
        text = "".join(self._streamed)
        if not self._keep_partial or not text:
            return
        message = new_message("assistant", text, metadata={"cancelled": True})
        self.state.messages.append(message)
        self.announce_added([message])

    def cancel_turn(self) -> None:
        self._turn.cancel()

    def prepare_resume(self, answer: Any) -> None:
        """Take the interrupt off and mark the resume turn (before any broadcast)."""
        state = self.state
        interrupt = state.interrupt
        assert interrupt is not None
        state.interrupt = None
        if interrupt.answered:  # the stored copy of an answer being carried out
            interrupt = interrupt.model_copy(update={"answered": False, "answer": None})
        self._turn.begin_resume(answer, interrupt)
        self._host.quotas.occupy(self._conversation_id, self._owner)  # admitted work: no wait
        self._held = False  # the queue drains after the resume turn
        self._status = Status.RUNNING
        self.touch()

    # -- the turn sink (called by Turn) ------------------------------------------

    def _turn_delta(self, text: str) -> None:
        self._streamed.append(text)
        self.emit(Delta, text=text)

    def _turn_emit(self, name: str, data: Any) -> None:
        self.emit(AgentEvent, name=name, data=data)

    async def _turn_step(self, turn: Turn, step: StepCall) -> Any:
        return await run_step(self, turn, step)  # type: ignore[arg-type]

    def _turn_queue(self, content: Content) -> None:
        # An agent's follow-up is stored like a client's message: held to the same rules.
        opts, cid = self._opts, self._conversation_id
        check_content(content, max_bytes=opts.max_message_bytes, conversation_id=cid)
        check_room(self.state, max_queued=opts.max_queued, conversation_id=cid)
        message = new_message("user", content, metadata={"origin": "agent"})
        self.state.queued.append(message)
        self._writer.changed()
        self.emit(MessageQueued, message=message)
