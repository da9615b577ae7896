"""The cluster's event bus: every conversation's events reach subscribers on every node.

The owner's topic works as in one process (its own subscribers get each event at
once) and also hands each event to the forwarder, which appends it, in order,
to the conversation's capped Redis stream with the lease's epoch. A topic with
subscribers on a node that does not run the conversation is fed by a pump that
reads that stream: events after the topic's last seq are delivered with the seq
the owner gave them; a stale owner's events are dropped; events lost (Redis
restarted, the forwarder's buffer overflowed while Redis was down) reach the
subscribers as a ``StatusChanged`` snapshot marked ``gap=True``.

Redis is an accelerator here: when it is down, the owner's own subscribers
still get every event and nothing is slowed; the others get a gap snapshot
when it is back.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
import structlog

from .. import sessions as ev
from ..sessions.spi import LocalBus, RuntimeStats, Subscription, Topic
from ..state import Message, PendingInterrupt
from ._events import EventStreams, ReadResult, StreamReader

__all__: list[str] = ["ClusterBus", "decode_event", "encode_event"]

_log = structlog.get_logger("sessionvisor")

_TYPES: dict[str, type[ev.Event]] = {
    cls.__name__: cls
    for cls in (
        ev.StatusChanged,
        ev.MessageAppended,
        ev.Delta,
        ev.MessageQueued,
        ev.AgentEvent,
        ev.Restarted,
        ev.SessionFailed,
        ev.Shutdown,
    )
}
_TIMES = ("at", "last_activity_at", "shutdown_at")
# Events waiting for Redis; past this many (Redis slow or down) the oldest are
# dropped and the readers on other nodes see a gap.
_FORWARD_LIMIT = 10_000
_PUMP_BLOCK_MS = 100
_FORWARD_BATCH = 500  # events per pipeline to Redis


def encode_event(event: ev.Event) -> str:
    return json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":"))


def decode_event(text: str) -> ev.Event:
    """The event ``encode_event`` wrote (raises ValueError/KeyError/TypeError on others)."""
    data = json.loads(text)
    cls = _TYPES[data.pop("type")]
    for name in _TIMES:
        if data.get(name) is not None:
            data[name] = datetime.fromisoformat(data[name])
    if "message" in data:
        data["message"] = Message.model_validate(data["message"])
    if data.get("interrupt") is not None:
        data["interrupt"] = PendingInterrupt.model_validate(data["interrupt"])
    if "status" in data:
        data["status"] = ev.Status(data["status"])
    return cls(**data)


class ClusterBus:
    """Implements ``Bus`` across nodes (see the module docstring), around a
    ``LocalBus`` whose publish hook forwards this node's events."""

    def __init__(
        self,
        streams: EventStreams,
        *,
        epoch_of: Callable[[str], int | None],
        serving: Callable[[str], bool],
        on_stale: Callable[[str], None],
        stats: RuntimeStats | None = None,
    ) -> None:
        self._local = LocalBus(stats, on_publish=self._forward)
        self._streams = streams
        self._epoch_of = epoch_of
        self._serving = serving
        self._on_stale = on_stale
        self._outbox: deque[tuple[str, int, int, str]] = deque()
        self._outbox_ready = anyio.Event()
        self._flushed = anyio.Event()
        # Followed conversations: their topic and, while another node serves
        # them, the reader of their stream.
        self._follows: dict[str, tuple[Topic, StreamReader | None]] = {}
        self._follows_changed = anyio.Event()
        # Conversations that published under a first lease (epoch 1): such a lease
        # is kept when given up, since readers may hold its events.
        self._spoken: set[str] = set()
        # The epoch of the newest event each topic holds, when this node knows it
        # (it published them, or read them): a reader started from the topic's
        # last seq then tells a new owner's renumbering from events already seen.
        self._epochs: dict[str, int] = {}
        self.dropped = 0  # events that never reached Redis

    def start(self, spawn: Callable[..., None]) -> None:
        """Begin forwarding and following; ``spawn`` keeps a loop running in the node's
        task group."""
        spawn(self._forwarder)
        spawn(self._pump)

    # -- the local bus's calls --------------------------------------------------------

    def topic(self, conversation_id: str, agent_id: str, last_seq: int, replay: int) -> Topic:
        existing = self._local.existing(conversation_id)
        if (
            existing is not None
            and existing.last_seq > last_seq
            and self._epoch_of(conversation_id) is not None
        ):
            # This node starts serving (it holds the lease) a conversation whose topic
            # here got events past the stored seq: a replaced or dead owner's, never
            # saved. The new session numbers on from the store, as the stream's
            # readers expect; the subscribers here are told of the gap.
            existing.mark_gap(last_seq + 1)
        return self._local.topic(conversation_id, agent_id, last_seq, replay)

    def existing(self, conversation_id: str) -> Topic | None:
        return self._local.existing(conversation_id)

    def subscriber_count(self, conversation_id: str) -> int:
        return self._local.subscriber_count(conversation_id)

    def unsubscribe(self, sub: Subscription) -> None:
        self._local.unsubscribe(sub)

    def release(self, conversation_id: str, still_live: Callable[[str], bool]) -> None:
        self._local.release(conversation_id, still_live)
        if self._local.existing(conversation_id) is None:
            self._epochs.pop(conversation_id, None)

    def close_all(self) -> None:
        self._local.close_all()
        self._epochs.clear()

    def subscribe(
        self,
        topic: Topic,
        *,
        owner: str | None = None,
        capacity: int,
        after: int | None,
        status: ev.Status,
        interrupt: Any,
    ) -> Subscription:
        cid = topic.conversation_id
        if (
            after is not None
            and not self._serving(cid)
            and not topic.subscribers
            and cid not in self._follows
        ):
            # Served elsewhere and followed by nobody here yet: the stream, not this
            # node's empty replay buffer, knows the events after ``after``. Follow
            # it from there (a position the stream no longer holds shows as a gap).
            topic.follow_from(after)
            self._epochs.pop(cid, None)  # a client's position: its epoch is unknown
        sub = self._local.subscribe(
            topic, owner=owner, capacity=capacity, after=after, status=status, interrupt=interrupt
        )
        self._follow(topic)
        return sub

    async def status_elsewhere(
        self, conversation_id: str
    ) -> tuple[ev.Status, PendingInterrupt | None] | None:
        """The status (and interrupt) the newest owner last announced in the
        stream, when another node serves the conversation (None when this one
        does, or Redis is down)."""
        if self._serving(conversation_id):
            return None
        try:
            with anyio.move_on_after(1.0):
                found = await self._streams.last_status(conversation_id)
                if found is None:
                    return None
                interrupt = found.get("interrupt")
                return ev.Status(found["status"]), (
                    None if interrupt is None else PendingInterrupt.model_validate(interrupt)
                )
        except Exception as exc:
            _log.debug("cluster_status_unknown", conversation_id=conversation_id, error=repr(exc))
        return None

    # -- the owner's side ----------------------------------------------------------

    def _forward(self, cid: str, event: ev.Event) -> None:
        epoch = self._epoch_of(cid)
        if epoch is None:
            return  # not the owner (any more): its writes are refused too
        if epoch == 1:
            self._spoken.add(cid)
        self._epochs[cid] = epoch
        if len(self._outbox) >= _FORWARD_LIMIT:
            self._outbox.popleft()
            self.dropped += 1
        self._outbox.append((cid, event.seq, epoch, encode_event(event)))
        self._outbox_ready.set()

    def spoke(self, conversation_id: str) -> bool:
        """Whether this node published events of the conversation under its first
        lease (epoch 1), once: call it when that lease is given up or lost."""
        try:
            self._spoken.remove(conversation_id)
        except KeyError:
            return False
        return True

    async def flush(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) until the events waiting for Redis are in."""
        with anyio.move_on_after(timeout):
            while self._outbox:
                self._flushed = anyio.Event()
                await self._flushed.wait()

    async def _forwarder(self) -> None:
        redis_errors = self._streams.connection_errors()
        while True:
            if not self._outbox:
                self._flushed.set()
                self._outbox_ready = anyio.Event()
                await self._outbox_ready.wait()
            batch = [self._outbox[i] for i in range(min(len(self._outbox), _FORWARD_BATCH))]
            try:
                accepted = await self._streams.append_many(batch)
            except Exception as exc:
                # Redis is down (or refused the batch): what waits now is lost to the
                # other nodes' readers (they will see the gap); the owner's own
                # subscribers had it all.
                if not isinstance(exc, redis_errors):
                    _log.error("cluster_forwarding_failed", error=repr(exc))
                lost = len(self._outbox)
                self._outbox.clear()
                self.dropped += lost
                _log.warning("cluster_events_not_forwarded", events=lost, error=repr(exc))
                await anyio.sleep(0.5)
                continue
            for item, ok in zip(batch, accepted, strict=True):
                if not ok:
                    self._refused(item[0], item[2])
            # The batch is still at the head unless the buffer overflowed meanwhile.
            for item in batch:
                if self._outbox and self._outbox[0] is item:
                    self._outbox.popleft()

    def _refused(self, cid: str, epoch: int) -> None:
        """Redis refused an event of ``epoch``: a newer owner fenced the stream.

        Only a refusal of the epoch this node writes with now means that the
        session here was replaced. An event left over from an earlier ownership
        (still waiting here when the conversation moved away and back) is
        refused rightly and says nothing of the newer lease this node holds.
        """
        current = self._epoch_of(cid)
        if current is not None and current <= epoch:
            self._on_stale(cid)
        else:
            _log.debug(
                "cluster_stale_event_dropped", conversation_id=cid, epoch=epoch, current=current
            )

    # -- the other nodes' side -----------------------------------------------------

    def _follow(self, topic: Topic) -> None:
        cid = topic.conversation_id
        if cid in self._follows:
            return
        self._follows[cid] = (topic, None)
        self._follows_changed.set()

    async def _pump(self) -> None:
        """Feed the topics of conversations served elsewhere from their streams.

        One loop and one blocking ``XREAD`` for every followed conversation of
        this node; a new subscription joins at the next read (at most
        ``_PUMP_BLOCK_MS`` later). A conversation this node serves is not read
        back: its topic has every event already. When it moves to another node,
        reading starts again from the topic's last seq.
        """
        redis_errors = self._streams.connection_errors()
        while True:
            readers: dict[int, Topic] = {}
            for cid, (topic, reader) in list(self._follows.items()):
                if not topic.subscribers or self._local.existing(cid) is not topic:
                    del self._follows[cid]
                elif self._serving(cid):
                    self._follows[cid] = (topic, None)
                else:
                    if reader is None:
                        reader = self._streams.reader(
                            cid, after_seq=topic.last_seq, epoch=self._epochs.get(cid)
                        )
                        self._follows[cid] = (topic, reader)
                    readers[id(reader)] = topic
            if not readers:
                self._follows_changed = anyio.Event()
                with anyio.move_on_after(_PUMP_BLOCK_MS / 1000 if self._follows else math.inf):
                    await self._follows_changed.wait()
                continue
            try:
                results = await self._streams.read_many(
                    [reader for _, reader in self._follows.values() if reader is not None],
                    _PUMP_BLOCK_MS,
                )
            except redis_errors as exc:
                _log.debug("cluster_stream_read_failed", error=repr(exc))
                await anyio.sleep(0.5)
                continue
            for reader, result in results:
                topic = readers[id(reader)]
                if self._serving(topic.conversation_id):
                    continue  # it started here meanwhile: its topic has these already
                _feed(topic, result)
                if reader.epoch is not None:
                    self._epochs[topic.conversation_id] = reader.epoch


def _feed(topic: Topic, result: ReadResult) -> None:
    """Deliver what a stream read found to the topic's subscribers, seqs kept."""
    if result.gap:
        topic.mark_gap(result.events[0].seq if result.events else topic.last_seq + 1)
    for entry in result.events:
        if entry.seq <= topic.last_seq:
            continue  # this node published it itself, when it was the owner
        try:
            event = decode_event(entry.data)
        except Exception as exc:
            _log.warning(
                "cluster_event_unreadable", conversation_id=topic.conversation_id, error=repr(exc)
            )
            continue
        topic.deliver_from_elsewhere(event)
