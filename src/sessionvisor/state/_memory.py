"""``MemoryStore``: conversations kept in a dict, for tests and single-process use."""

from __future__ import annotations

import heapq
import itertools
import json
import weakref
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

import attrs
from anyio.lowlevel import checkpoint

from .._clock import utcnow
from .._closing import ClosedOnExit
from ._serializer import CheckedState, MigrationRegistry, decode_state
from ._store import Lifecycle, StoredConversation
from ._timer_rows import StoredTimer, decode_payload, encode_payload, from_epoch
from ._writes import (
    check_lifecycle,
    check_limit,
    is_unanswered,
    nothing_to_quarantine,
    quarantine_key,
    stale_write,
)

__all__ = ["MemoryStore"]


class MemoryStore(ClosedOnExit):
    """A ``StateStore`` that keeps every conversation in this process's memory.

    Nothing survives the process. Each state is kept as compact JSON bytes, one
    piece per message, not as the dict it was given: an idle conversation then
    costs a few hundred bytes instead of a tree of dicts, and nothing the caller
    does to its dict afterwards reaches the store. A save whose history (or
    audit trail of steps) extends the one stored (the same list, as the
    runtime's encoder hands it over) encodes only the new items, so a turn
    costs what it added, not the length of the conversation.

    Each method checks the version and writes without awaiting in between, so
    a check-and-set is atomic on the event loop; every method still passes one
    checkpoint first, so it is a cancellation point like a real store's.

    Args:
        migrations: the registry ``load`` upgrades old states with; the default
            one (``register_migration``) when None.
    """

    def __init__(self, *, migrations: MigrationRegistry | None = None) -> None:
        self._records: dict[str, _Row] = {}
        self._quarantined: dict[str, _Row] = {}
        # The index behind ``unanswered``: kept on every save, delete and quarantine.
        self._unanswered: dict[str, None] = {}
        self._migrations = migrations
        # Durable timers: per conversation by key, and a heap on the due time. The
        # heap is lazy: an entry whose row was replaced or dropped is skipped.
        self._timers: dict[str, dict[str, _TimerRow]] = {}
        self._due: list[tuple[float, int, str, str, str]] = []
        self._due_seq = itertools.count()

    async def __aenter__(self) -> MemoryStore:
        return self

    async def aclose(self) -> None:
        """Do nothing: there is nothing to release. Present so stores are interchangeable."""
        await checkpoint()

    @property
    def quarantined(self) -> Mapping[str, StoredConversation]:
        """The records moved aside by ``quarantine``, by quarantine key (read-only view)."""
        return MappingProxyType({key: row.unpack() for key, row in self._quarantined.items()})

    def ids(self) -> list[str]:
        """Return the ids of the stored conversations, quarantined ones excluded."""
        return list(self._records)

    async def unanswered(self, limit: int | None = None) -> list[str]:
        """Return the ids of the conversations with work the agent has not answered.

        Those whose last save had the lifecycle ``turn_start`` or ``queued``, or
        whose state holds queued messages; read from an index, not from the rows.

        Args:
            limit: at most this many ids (None: all of them).

        Raises:
            ValueError: ``limit`` is negative.
        """
        check_limit(limit)
        await checkpoint()
        ids = iter(self._unanswered)
        if limit is None:
            return list(ids)
        return [cid for cid, _ in zip(ids, range(limit), strict=False)]

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """Return the stored conversation, or None when there is none.

        The state is checked with ``load_state`` (and upgraded when it was
        written with an older schema; the stored record itself stays as it is).
        The first ``load_state`` of the returned state reuses that check
        instead of validating the history again.

        Returns:
            The record, or None.

        Raises:
            CorruptStateError: the stored state cannot be read; it is left untouched.
        """
        row = self._records.get(conversation_id)
        # Read now, yield after: like a real store's answer, it can be stale by the
        # time the caller resumes (rows are updated in place, so unpack first).
        record = None if row is None else row.unpack()
        await checkpoint()
        if record is None:
            return None
        upgraded, validated = decode_state(
            record.state, conversation_id, migrations=self._migrations
        )
        # CheckedState is a shallow copy of the top-level dict (a handful of
        # keys), not of the history: the message dicts stay shared.
        return attrs.evolve(record, state=CheckedState(upgraded, validated))

    async def save(
        self,
        conversation_id: str,
        record: StoredConversation,
        *,
        expected_version: int | None,
        lifecycle: Lifecycle,
    ) -> int:
        """Store ``record`` if the stored version is ``expected_version``.

        ``expected_version=None`` means the conversation must not exist yet.
        The record's ``version``, ``updated_at`` and ``lifecycle`` are replaced.

        Returns:
            The new version (1 for a new conversation).

        Raises:
            StaleWriteError: the stored version is not ``expected_version``.
            ValueError: ``lifecycle`` is not one of ``LIFECYCLES``.
        """
        check_lifecycle(conversation_id, lifecycle)
        # No checkpoint here (unlike the other methods): a save is on every turn's
        # path, and without an await the check-and-set below is atomic.
        current = self._records.get(conversation_id)
        actual = None if current is None else current.record.version
        if actual != expected_version:
            raise stale_write(conversation_id, expected_version, actual)
        new_version = 1 if actual is None else actual + 1
        head = attrs.evolve(
            record,
            state=_NO_STATE,
            version=new_version,
            updated_at=utcnow(),
            lifecycle=lifecycle,
        )
        if current is not None and current.extend(record.state):
            current.record = head
        else:
            self._records[conversation_id] = _Row.pack(head, record.state)
        if is_unanswered(lifecycle, record.state):
            self._unanswered[conversation_id] = None
        else:
            self._unanswered.pop(conversation_id, None)
        return new_version

    async def delete(self, conversation_id: str) -> None:
        """Remove the conversation and its timers; a missing one is not an error."""
        await checkpoint()
        self._records.pop(conversation_id, None)
        self._unanswered.pop(conversation_id, None)
        self._timers.pop(conversation_id, None)

    # -- durable timers (see ``StateStore``'s optional timer methods) -------------

    async def put_timer(self, conversation_id: str, timer: StoredTimer) -> None:
        """Store ``timer`` for the conversation, replacing the one with its key."""
        await checkpoint()
        row = _TimerRow(timer.epoch_seconds, timer.id, encode_payload(timer.payload).encode())
        self._timers.setdefault(conversation_id, {})[timer.key] = row
        heapq.heappush(
            self._due, (row.due, next(self._due_seq), conversation_id, timer.key, timer.id)
        )

    async def drop_timer(
        self, conversation_id: str, key: str, *, timer_id: str | None = None
    ) -> bool:
        """Remove the timer ``key`` (with ``timer_id``: only that scheduling of it);
        return whether one was removed."""
        await checkpoint()
        return self._drop_timer(conversation_id, key, timer_id)

    def _drop_timer(self, conversation_id: str, key: str, timer_id: str | None) -> bool:
        rows = self._timers.get(conversation_id)
        row = None if rows is None else rows.get(key)
        if rows is None or row is None or (timer_id is not None and row.id != timer_id):
            return False
        del rows[key]
        if not rows:
            del self._timers[conversation_id]
        return True

    async def drop_fired_timers(self, fired: list[tuple[str, str, str]]) -> list[bool]:
        """Remove fired timers, given as (conversation id, key, id), each only while
        the stored one has that id; return, per timer, whether it was removed."""
        await checkpoint()
        return [self._drop_timer(cid, key, timer_id) for cid, key, timer_id in fired]

    async def list_timers(self, conversation_id: str) -> list[StoredTimer]:
        """The conversation's timers, soonest first."""
        await checkpoint()
        rows = self._timers.get(conversation_id, {})
        timers = [row.timer(key) for key, row in rows.items()]
        return sorted(timers, key=lambda t: (t.due, t.key))

    async def due_timers(self, until: datetime, limit: int) -> list[tuple[str, StoredTimer]]:
        """Up to ``limit`` timers due at or before ``until``, soonest first, with their
        conversation ids (read from the heap; they stay stored)."""
        check_limit(limit)
        await checkpoint()
        bound = until.timestamp()
        heap = self._due
        found: list[tuple[str, StoredTimer]] = []
        kept: list[tuple[float, int, str, str, str]] = []
        while heap and heap[0][0] <= bound and len(found) < limit:
            entry = heapq.heappop(heap)
            _, _, cid, key, timer_id = entry
            row = self._timers.get(cid, {}).get(key)
            if row is None or row.id != timer_id:
                continue  # replaced or dropped since
            found.append((cid, row.timer(key)))
            kept.append(entry)
        for entry in kept:  # still stored: they stay due until dropped
            heapq.heappush(heap, entry)
        return found

    async def next_timer_due(self) -> datetime | None:
        """When the soonest stored timer is due (None: no timer is stored)."""
        await checkpoint()
        heap = self._due
        while heap:
            _, _, cid, key, timer_id = heap[0]
            row = self._timers.get(cid, {}).get(key)
            if row is not None and row.id == timer_id:
                return from_epoch(row.due)
            heapq.heappop(heap)
        return None

    async def quarantine(self, conversation_id: str) -> str:
        """Move the conversation's record aside, unchanged, and return its new key.

        The record is kept in ``quarantined`` under ``"<id>#quarantine-<n>"``;
        afterwards ``load(conversation_id)`` returns None.

        Returns:
            The quarantine key.

        Raises:
            LookupError: nothing is stored for the conversation.
        """
        await checkpoint()
        record = self._records.pop(conversation_id, None)
        if record is None:
            raise nothing_to_quarantine(conversation_id)
        self._unanswered.pop(conversation_id, None)
        n = 1
        while quarantine_key(conversation_id, n) in self._quarantined:
            n += 1
        key = quarantine_key(conversation_id, n)
        self._quarantined[key] = record
        return key


_NO_STATE: dict[str, Any] = {}


class _TimerRow:
    """One stored timer: its due time (epoch seconds), id and payload as JSON bytes."""

    __slots__ = ("due", "id", "payload")

    def __init__(self, due: float, timer_id: str, payload: bytes) -> None:
        self.due = due
        self.id = timer_id
        self.payload = payload

    def timer(self, key: str) -> StoredTimer:
        return StoredTimer(key, from_epoch(self.due), decode_payload(self.payload), self.id)


def _weak(messages: list[Any]) -> Any:
    try:
        return weakref.ref(messages)
    except TypeError:  # a plain list: every save rewrites the history
        return None


# One encoder for every save: json.dumps with custom separators builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _encode(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


class _Piece:
    """One growing list of a stored state: its items' JSON, comma-joined in one buffer."""

    __slots__ = ("buffer", "count", "source")

    def __init__(self, items: list[Any]) -> None:
        self.buffer = bytearray(b",".join(_encode(item) for item in items))
        self.count = len(items)
        # A weak reference to the list the items came from, when the writer keeps an
        # append-only list (the runtime's encoder does): the next save of that same
        # list only adds its tail. Weak, so an idle conversation keeps no dicts.
        self.source = _weak(items)

    def extend(self, items: list[Any]) -> bool:
        source = self.source
        if source is None or source() is not items or self.count > len(items):
            return False
        buffer = self.buffer
        for item in items[self.count :]:
            if buffer:
                buffer += b","
            buffer += _encode(item)
        self.count = len(items)
        return True


def _piece(items: list[Any]) -> _Piece | None:
    return _Piece(items) if items else None  # most queues are empty: keep nothing


class _Row:
    """One stored conversation: the record, its state without ``messages``,
    ``queued`` and ``steps`` (as JSON), and those growing lists as pieces (None:
    empty). ``steps`` (the audit trail) is a piece only when the state holds it
    as a list; otherwise whatever it is stays in the head."""

    __slots__ = ("has_steps", "head", "messages", "queued", "raw", "record", "steps")

    def __init__(self, record: StoredConversation, head: bytes, raw: bool = False) -> None:
        self.record = record
        self.head = head  # a JSON object without the lists, or raw bytes (raw=True)
        self.raw = raw
        self.messages: _Piece | None = None
        self.queued: _Piece | None = None
        self.steps: _Piece | None = None
        self.has_steps = False

    @classmethod
    def pack(cls, record: StoredConversation, state: Any) -> _Row:
        if isinstance(state, bytes | str):
            # Bytes that are not a state (a test planting a corrupt row) stay as they are.
            return cls(record, state.encode() if isinstance(state, str) else state, raw=True)
        if not (
            isinstance(state, Mapping)
            and isinstance(state.get("messages"), list)
            and isinstance(state.get("queued"), list)
        ):
            return cls(record, _encode(state), raw=True)
        row = cls(record, _encode(_rest(state)))
        row.messages = _piece(state["messages"])
        row.queued = _piece(state["queued"])
        steps = state.get("steps")
        row.has_steps = isinstance(steps, list)
        row.steps = _piece(steps) if isinstance(steps, list) else None
        return row

    def extend(self, state: Any) -> bool:
        """Take ``state``, re-encoding only a list that does not extend ours (the
        queue is a new list after every turn; the history rarely is). Return False
        when the shape differs and the caller must pack a new row."""
        if self.raw or not isinstance(state, Mapping):
            return False
        messages, queued = state.get("messages"), state.get("queued")
        if not isinstance(messages, list) or not isinstance(queued, list):
            return False
        if self.messages is None or not self.messages.extend(messages):
            self.messages = _piece(messages)
        if self.queued is None or not self.queued.extend(queued):
            self.queued = _piece(queued)
        steps = state.get("steps")
        self.has_steps = isinstance(steps, list)
        if not isinstance(steps, list):
            self.steps = None
        elif self.steps is None or not self.steps.extend(steps):
            self.steps = _piece(steps)
        self.head = _encode(_rest(state))
        return True

    def state_bytes(self) -> bytes:
        if self.raw:
            return self.head
        inner = self.head[1:-1]
        messages = b"" if self.messages is None else bytes(self.messages.buffer)
        queued = b"" if self.queued is None else bytes(self.queued.buffer)
        lists = b'"messages":[' + messages + b'],"queued":[' + queued + b"]"
        if self.has_steps:
            steps = b"" if self.steps is None else bytes(self.steps.buffer)
            lists += b',"steps":[' + steps + b"]"
        return b"{" + (inner + b"," if inner else b"") + lists + b"}"

    def unpack(self) -> StoredConversation:
        try:
            state: Any = json.loads(self.state_bytes())
        except ValueError:
            state = self.head  # decode_state reports it as corrupt, naming the conversation
        return attrs.evolve(self.record, state=state)


def _rest(state: Mapping[str, Any]) -> dict[str, Any]:
    lists = _LISTS if isinstance(state.get("steps"), list) else _LISTS[:2]
    return {k: v for k, v in state.items() if k not in lists}


_LISTS = ("messages", "queued", "steps")
