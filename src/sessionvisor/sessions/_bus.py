"""The local event bus: how events reach subscribers.

One ``Topic`` per conversation carries the sequence counter, a bounded replay
buffer and the subscribers. A topic belongs to the conversation, not to an
actor, so subscriptions survive restarts, idle shutdown and wake.

An alternative runtime composes ``LocalBus`` rather than subclassing it: the
``on_publish`` hook sees every event an actor of this process publishes (a
cluster forwards them to the other nodes), and ``Topic.follow_from`` and
``Topic.deliver_from_elsewhere`` feed a topic with events published by another
process, keeping their seqs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from .._clock import utcnow
from .._errors import AccessDenied, SubscriberOverflow
from ._events import Event, Status, StatusChanged
from ._stats import RuntimeStats

__all__: list[str] = []


class Subscription:
    """An async iterator over one conversation's events.

    Raises ``SubscriberOverflow`` (after the events it still holds) once it fell
    more than its buffer behind; ends when the supervisor drains.
    """

    __slots__ = (
        "_buffer",
        "_capacity",
        "_closed",
        "_denied",
        "_overflowed",
        "_topic",
        "_wakeup",
        "owner",
    )

    def __init__(self, topic: Topic, capacity: int, owner: str | None = None) -> None:
        self._topic = topic
        self._capacity = capacity
        self.owner = owner
        self._denied: str | None = None
        self._buffer: deque[Event] = deque()
        self._wakeup: anyio.Event | None = None
        self._overflowed = False
        self._closed = False

    @property
    def conversation_id(self) -> str:
        return self._topic.conversation_id

    def _push(self, event: Event) -> bool:
        """Queue an event; return False when the buffer is full (the caller cuts us off)."""
        if len(self._buffer) >= self._capacity:
            self._overflowed = True
            self._wake()
            return False
        self._buffer.append(event)
        self._wake()
        return True

    def _close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def _deny(self, message: str) -> None:
        self._buffer.clear()
        self._denied = message
        self._wake()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._denied is not None:
                raise AccessDenied(self._denied)
            if self._buffer:
                return self._buffer.popleft()
            if self._overflowed:
                raise SubscriberOverflow(
                    f"subscriber of conversation {self.conversation_id!r} fell more than "
                    f"{self._capacity} events behind and was cut off; resubscribe with "
                    f"after={self._topic.last_seq_delivered_to(self)}"
                )
            if self._closed:
                raise StopAsyncIteration
            wakeup = self._wakeup = anyio.Event()
            await wakeup.wait()

    def pending(self) -> int:
        """Return how many events wait in this subscriber's buffer."""
        return len(self._buffer)


_NO_SUBSCRIBERS: list[Subscription] = []  # never appended to: see LocalBus.subscribe


class Topic:
    """One conversation's seq counter, replay buffer and subscribers."""

    __slots__ = (
        "_delivered",
        "_on_publish",
        "_stats",
        "agent_id",
        "conversation_id",
        "last_seq",
        "replay",
        "replay_size",
        "subscribers",
    )

    def __init__(
        self,
        conversation_id: str,
        agent_id: str,
        last_seq: int,
        replay: int,
        stats: RuntimeStats | None = None,
        on_publish: Callable[[str, Event], None] | None = None,
    ) -> None:
        self._stats = stats
        self._on_publish = on_publish
        self.conversation_id = conversation_id
        self.agent_id = agent_id
        self.last_seq = last_seq
        self.replay_size = replay
        # Allocated on the first event and dropped when the session hibernates: a
        # parked conversation should cost bytes, not buffers.
        self.replay: deque[Event] | None = None
        # Shared and empty until the first subscriber: most topics have none.
        self.subscribers: list[Subscription] = _NO_SUBSCRIBERS
        # seq of the last event each cut-off subscriber received, for its error message
        self._delivered: dict[int, int] | None = None

    def publish(self, cls: type[Event], **fields: Any) -> Event:
        self.last_seq += 1
        event = cls(
            seq=self.last_seq,
            agent_id=self.agent_id,
            conversation_id=self.conversation_id,
            at=utcnow(),
            **fields,
        )
        self.deliver(event)
        if self._on_publish is not None:
            self._on_publish(self.conversation_id, event)
        return event

    def follow_from(self, seq: int) -> None:
        """Take events published elsewhere from after ``seq`` on (this process's
        replay buffer knows nothing of them)."""
        self.last_seq = seq
        self.replay = None

    def deliver_from_elsewhere(self, event: Event) -> bool:
        """Deliver an event another process published, with its seq; False (and
        nothing delivered) when this topic has it already."""
        if event.seq <= self.last_seq:
            return False
        self.last_seq = event.seq
        self.deliver(event)
        return True

    def mark_gap(self, next_seq: int) -> None:
        """Events before ``next_seq`` were lost on their way here: tell the
        subscribers with a snapshot marked ``gap=True``."""
        self.last_seq = next_seq - 1
        self.deliver(self.snapshot(Status.NOT_RUNNING, None, gap=True))

    def deliver(self, event: Event) -> None:
        """Keep ``event`` for replay and hand it to every subscriber (it carries its seq)."""
        replay = self.replay
        if replay is None:
            replay = self.replay = deque(maxlen=self.replay_size)
        replay.append(event)
        stats = self._stats
        if stats is not None:
            stats.events_published += 1
        if self.subscribers:
            cut = [sub for sub in self.subscribers if not sub._push(event)]
            if cut and stats is not None:
                stats.subscribers_dropped += len(cut)
                stats.events_dropped += len(cut)
            for sub in cut:
                # A slow subscriber is dropped instead of slowing the actor or the others.
                if self._delivered is None:
                    self._delivered = {}
                # It still gets what it buffered, then the error: resume after that.
                self._delivered[id(sub)] = sub._buffer[-1].seq if sub._buffer else event.seq - 1
                self.subscribers.remove(sub)

    def deny_others(self, owner: str, conversation_id: str) -> None:
        """Cut off subscribers whose owner is not the conversation's."""
        for sub in [sub for sub in self.subscribers if sub.owner != owner]:
            sub._deny(
                f"access to conversation {conversation_id!r} denied: it belongs to another owner"
            )
            self.subscribers.remove(sub)

    def drop_replay(self) -> None:
        self.replay = None

    def last_seq_delivered_to(self, sub: Subscription) -> int:
        if self._delivered is None:
            return self.last_seq
        return self._delivered.pop(id(sub), self.last_seq)

    def snapshot(self, status: Status, interrupt: Any, *, gap: bool = False) -> StatusChanged:
        return StatusChanged(
            seq=self.last_seq,
            agent_id=self.agent_id,
            conversation_id=self.conversation_id,
            at=utcnow(),
            status=status,
            interrupt=interrupt,
            gap=gap,
        )


class LocalBus:
    """Topics by conversation id; a topic lives while an actor or a subscriber holds it."""

    def __init__(
        self,
        stats: RuntimeStats | None = None,
        *,
        on_publish: Callable[[str, Event], None] | None = None,
    ) -> None:
        self._topics: dict[str, Topic] = {}
        self._stats = stats
        self._on_publish = on_publish

    def topic(self, conversation_id: str, agent_id: str, last_seq: int, replay: int) -> Topic:
        topic = self._topics.get(conversation_id)
        if topic is None:
            topic = self._topics[conversation_id] = Topic(
                conversation_id, agent_id, last_seq, replay, self._stats, self._on_publish
            )
        else:
            # The store may know of later events than a topic that outlived its actor.
            topic.last_seq = max(topic.last_seq, last_seq)
            topic.agent_id = agent_id
            if topic.replay_size != replay:
                topic.replay_size = replay
                if topic.replay is not None:
                    topic.replay = deque(topic.replay, maxlen=replay)
        return topic

    def existing(self, conversation_id: str) -> Topic | None:
        return self._topics.get(conversation_id)

    def subscriber_count(self, conversation_id: str) -> int:
        topic = self._topics.get(conversation_id)
        return 0 if topic is None else len(topic.subscribers)

    async def status_elsewhere(self, conversation_id: str) -> tuple[Status, Any] | None:
        return None  # one process: there is no elsewhere

    def release(self, conversation_id: str, still_live: Callable[[str], bool]) -> None:
        """Forget a topic nobody holds any more (its seq lives on in the store)."""
        topic = self._topics.get(conversation_id)
        if topic is not None and not topic.subscribers and not still_live(conversation_id):
            del self._topics[conversation_id]

    def subscribe(
        self,
        topic: Topic,
        *,
        owner: str | None = None,
        capacity: int,
        after: int | None,
        status: Status,
        interrupt: Any,
    ) -> Subscription:
        sub = Subscription(topic, capacity, owner)
        if after is None:
            sub._buffer.append(topic.snapshot(status, interrupt))
        elif after < topic.last_seq:
            replay = topic.replay or ()
            oldest = replay[0].seq if replay else topic.last_seq + 1
            if after >= oldest - 1 and after >= 0:
                for event in replay:
                    if event.seq > after:
                        sub._buffer.append(event)
            else:
                sub._buffer.append(topic.snapshot(status, interrupt, gap=True))
        elif after > topic.last_seq:
            # A seq we never issued (another server, a lost store): start over, marked.
            sub._buffer.append(topic.snapshot(status, interrupt, gap=True))
        if topic.subscribers is _NO_SUBSCRIBERS:
            topic.subscribers = []
        topic.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        topic = sub._topic
        if sub in topic.subscribers:
            topic.subscribers.remove(sub)
            if not topic.subscribers:
                topic.subscribers = _NO_SUBSCRIBERS
        if topic._delivered is not None:
            topic._delivered.pop(id(sub), None)

    def close_all(self) -> None:
        for topic in self._topics.values():
            for sub in topic.subscribers:
                sub._close()
            topic.subscribers = _NO_SUBSCRIBERS
        self._topics.clear()
