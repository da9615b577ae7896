"""Incremental serialization of a session's State for its saves.

Every save needs the whole State as JSON-ready data, and the history only
grows at its end. Re-dumping the history at each turn would make a turn cost
O(history); instead the actor keeps each message's dict in an append-only
list and dumps only the messages appended since the last save. Messages are
frozen models, so a message's dict never goes stale; an agent that rewrites
history builds a new list (or truncates it), which the checks below detect
and answer with a full re-dump.

The list handed to the store is this cache itself, valid for the duration of
``save``: the actor never saves concurrently with itself, and a store copies
what it keeps (the ``StateStore`` contract).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from ..state import SCHEMA_VERSION, Message, State

__all__: list[str] = ["DumpedHistory"]


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


class _ListDump:
    """The dicts of one append-only list of messages, extended as the list grows."""

    __slots__ = ("dicts", "last", "source")

    def __init__(self) -> None:
        self.dicts = DumpedHistory()
        self.source: list[Message] | None = None
        self.last: Message | None = None

    def dump(self, messages: list[Message]) -> DumpedHistory:
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
            self.dicts.extend(dump_message(m) for m in messages[done:])
            self.last = messages[-1]
        return self.dicts


class SnapshotEncoder:
    """Dumps a State for a save, re-using the dicts of messages it dumped before."""

    __slots__ = ("_messages", "_queued")

    def __init__(self) -> None:
        self._messages = _ListDump()
        self._queued = _ListDump()  # queued messages pile up the same way mid-turn

    def dump(self, state: State) -> dict[str, Any]:
        data = state.model_dump(mode="json", exclude={"messages", "queued"})
        data["messages"] = self._messages.dump(state.messages)
        data["queued"] = self._queued.dump(state.queued)
        data["version"] = SCHEMA_VERSION if state.version is None else state.version
        return data
