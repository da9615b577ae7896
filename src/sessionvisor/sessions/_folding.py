"""A session's State: folded into compact JSON while nobody looks at it, and
dumped incrementally for its saves.

A chat backend holds far more open conversations than busy ones. After
``hibernate_after`` an idle session with no subscriber keeps its State as the
bytes of its own JSON dump (and drops its replay buffer); the first access
unfolds it. A folded session can still be saved and stopped without unfolding:
its bytes already are the dump, and unfolding 100,000 of them to stop them is
what would make a drain slow and memory-hungry.

Every save needs the whole State as JSON-ready data, and the history only
grows at its end. Re-dumping the history at each turn would make a turn cost
O(history); instead the State keeps each message's dict in an append-only
list and dumps only the messages appended since the last save. Messages are
frozen models, so a message's dict never goes stale; an agent that rewrites
history builds a new list (or truncates it), which the checks below detect
and answer with a full re-dump.

The list handed to the store is this cache itself, valid for the duration of
``save``: the actor never saves concurrently with itself, and a store copies
what it keeps (the ``StateStore`` contract).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC
from typing import Any

from pydantic import BaseModel

from ..state import SCHEMA_VERSION, Journal, Message, PendingInterrupt, State

__all__: list[str] = ["DumpedHistory", "FoldableState"]


class DumpedHistory(list[dict[str, Any]]):
    """The encoder's append-only list of message dicts.

    Weakly referenceable, so a store can recognise the next save as an
    extension of this very list without keeping it (or its dicts) alive.
    """

    __slots__ = ("__weakref__",)


def dump_message(message: Message) -> dict[str, Any]:
    if not message.metadata and isinstance(message.content, str):
        # The common case, without pydantic's general serializer; same JSON shape.
        created = message.created_at
        stamp = (
            created.astimezone(UTC).isoformat().replace("+00:00", "Z")
            if created.tzinfo is not None
            else created.isoformat()
        )
        return {
            "id": message.id,
            "role": message.role,
            "content": message.content,
            "created_at": stamp,
            "metadata": {},
        }
    return message.model_dump(mode="json")


def dump_record(record: BaseModel) -> dict[str, Any]:
    return record.model_dump(mode="json")


class _ListDump:
    """The dicts of one append-only list of frozen items (messages, the audit trail's
    steps), extended as the list grows."""

    __slots__ = ("dicts", "dumper", "last", "source")

    def __init__(self, dumper: Callable[[Any], dict[str, Any]] = dump_message) -> None:
        self.dicts = DumpedHistory()
        self.dumper = dumper
        self.source: list[Any] | None = None
        self.last: Any = None

    def dump(self, messages: list[Any]) -> DumpedHistory:
        done = len(self.dicts)
        if (
            messages is not self.source
            or done > len(messages)
            or (done and messages[done - 1] is not self.last)
        ):
            # The list was replaced or cut: start a new one (the old one may still be
            # referenced by a store mid-save, so it is never edited backwards).
            self.dicts = DumpedHistory()
            self.source = messages
            done = 0
        if done < len(messages):
            dumper = self.dumper
            self.dicts.extend(dumper(m) for m in messages[done:])
            self.last = messages[-1]
        return self.dicts


class _JournalDump:
    """The running turn's journal, re-dumping only the steps that changed: a step's
    record is final once completed (a turn of many steps stays linear)."""

    __slots__ = ("_done", "_journal")

    def __init__(self) -> None:
        self._journal: Journal | None = None
        self._done: list[dict[str, Any]] = []  # the dicts of the leading completed steps

    def dump(self, journal: Journal | None) -> dict[str, Any] | None:
        if journal is None:
            self._journal, self._done = None, []
            return None
        if journal is not self._journal:
            self._journal, self._done = journal, []
        done = self._done
        steps = journal.steps
        while len(done) < len(steps) and steps[len(done)].status == "completed":
            done.append(steps[len(done)].model_dump(mode="json"))
        rest = [record.model_dump(mode="json") for record in steps[len(done) :]]
        return {"turn": journal.turn, "steps": [*done, *rest]}


class SnapshotEncoder:
    """Dumps a State for a save, re-using the dicts of messages it dumped before."""

    __slots__ = ("_journal", "_messages", "_queued", "_steps")

    def __init__(self) -> None:
        self._messages = _ListDump()
        self._queued = _ListDump()  # queued messages pile up the same way mid-turn
        self._steps = _ListDump(dump_record)  # the audit trail: ended turns' steps
        self._journal = _JournalDump()

    def dump(self, state: State) -> dict[str, Any]:
        data = state.model_dump(mode="json", exclude={"messages", "queued", "journal", "steps"})
        data["messages"] = self._messages.dump(state.messages)
        data["queued"] = self._queued.dump(state.queued)
        data["steps"] = self._steps.dump(state.steps)
        data["journal"] = self._journal.dump(state.journal)
        data["version"] = SCHEMA_VERSION if state.version is None else state.version
        return data


class FoldableState:
    """Holds a State either live or folded into JSON bytes (changed only by its methods)."""

    __slots__ = ("_encoder", "_frozen", "_refused_at", "_state")

    def __init__(self, state: State) -> None:
        self._state: State | None = state
        self._frozen: bytes | None = None
        self._encoder: SnapshotEncoder | None = None
        # The writer's generation when a fold last failed: the same State would fail
        # again, so no fold is tried until something changes it.
        self._refused_at: int | None = None

    @property
    def folded(self) -> bool:
        return self._state is None

    def can_fold(self, gen: int) -> bool:
        """True when unfolded and no fold failed at this generation of the State."""
        return self._state is not None and self._refused_at != gen

    def get(self) -> State:
        state = self._state
        if state is None:
            # Unfold; the bytes are our own dump of this State.
            assert self._frozen is not None
            state = self._state = State.model_validate_json(self._frozen)
            self._frozen = None
        return state

    def set(self, value: State) -> None:
        self._state = value
        self._frozen = None

    def fold(self, gen: int) -> None:
        """Fold the State (``gen``: the writer's generation of it).

        Raises:
            Exception: what the dump raised (metadata that JSON cannot hold); no
                fold is tried again until the generation moves on.
        """
        state = self._state
        if state is None:
            return
        try:
            frozen = state.model_dump_json().encode()
        except Exception:
            self._refused_at = gen
            raise
        self._frozen = frozen
        self._state = None
        self._encoder = None

    def dump(self) -> dict[str, Any]:
        """The JSON-ready form for a save, re-using what earlier saves dumped."""
        if self._state is None:
            assert self._frozen is not None
            data: dict[str, Any] = json.loads(self._frozen)
            return data
        encoder = self._encoder
        if encoder is None:
            encoder = self._encoder = SnapshotEncoder()
        return encoder.dump(self._state)

    def peek_interrupt(self) -> PendingInterrupt | None:
        """The pending interrupt, without unfolding."""
        if self._state is not None:
            return self._state.interrupt
        assert self._frozen is not None
        data = json.loads(self._frozen).get("interrupt")
        return None if data is None else PendingInterrupt.model_validate(data)

    def queued_count(self) -> int:
        """How many user messages wait in the queue (reads the JSON of a folded State)."""
        if self._state is not None:
            return len(self._state.queued)
        assert self._frozen is not None
        queued = json.loads(self._frozen).get("queued") or ()
        return len(queued)

    def has_unheld_queue(self) -> bool:
        """True when live queued messages exist (a folded session never parks with any)."""
        return self._state is not None and bool(self._state.queued)
