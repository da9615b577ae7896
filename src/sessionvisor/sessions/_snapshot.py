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


class SnapshotEncoder:
    __slots__ = ("_dicts", "_last", "_source")

    def __init__(self) -> None:
        self._dicts = DumpedHistory()
        self._source: list[Message] | None = None
        self._last: Message | None = None

    def dump(self, state: State) -> dict[str, Any]:
        messages = state.messages
        done = len(self._dicts)
        if (
            messages is not self._source
            or done > len(messages)
            or (done and messages[done - 1] is not self._last)
        ):
            # History was replaced or cut: start a new list (the old one may still be
            # referenced by a store mid-save, so it is never edited backwards).
            self._dicts = DumpedHistory()
            self._source = messages
            done = 0
        if done < len(messages):
            self._dicts.extend(dump_message(m) for m in messages[done:])
            self._last = messages[-1]
        data = state.model_dump(mode="json", exclude={"messages"})
        data["messages"] = self._dicts
        data["version"] = SCHEMA_VERSION if state.version is None else state.version
        return data
