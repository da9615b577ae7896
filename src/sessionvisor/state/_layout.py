"""The append-only layout the SQL stores share: a header plus one row per message.

A stored state is split into its *head* (the state without ``messages``: the
queue, metadata, interrupt and schema version, as one JSON object) and its
history, one JSON row per message at positions ``0 .. count-1``. A save writes
the head and only the messages the store has not written yet; ``HistoryTracker``
remembers, per conversation, which list the store last wrote, how many of its
messages and at which version, so it can tell an extension (append the tail)
from a rewrite (replace every row).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import CorruptStateError

__all__ = ["HistoryTracker", "Split", "assemble", "dumps", "split"]

# One encoder for every row: json.dumps with custom separators builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """Return compact JSON text (raises TypeError for what JSON cannot hold)."""
    return _ENCODER.encode(value)


class Split:
    """A state cut for writing: the head's JSON, and the history (None: not a list)."""

    __slots__ = ("head", "messages")

    def __init__(self, head: str, messages: list[Any] | None) -> None:
        self.head = head
        self.messages = messages


def split(state: Any) -> Split:
    """Cut ``state`` into its head and its history.

    A state whose ``messages`` is not a list (an old schema, a caller's own
    shape) is kept whole: its head is the entire state and it has no history rows.

    Raises:
        TypeError: the head holds a value JSON cannot encode.
    """
    if isinstance(state, Mapping):
        messages = state.get("messages")
        if isinstance(messages, list):
            rest = {key: value for key, value in state.items() if key != "messages"}
            return Split(dumps(rest), messages)
    return Split(dumps(state), None)


def assemble(conversation_id: str, head: str, bodies: Sequence[str | None] | None) -> Any:
    """Rebuild a stored state from its head and its message rows, in order.

    ``bodies`` None means the head is the whole state. The result is what JSON
    decoding gives; ``decode_state`` validates it afterwards.

    Raises:
        CorruptStateError: the head or a message row is not valid JSON (the
            message names the conversation and the row's position).
    """
    where = f"the stored row of conversation {conversation_id!r}"
    try:
        data = json.loads(head)
    except (TypeError, ValueError) as exc:
        raise CorruptStateError(f"cannot read {where}: its head is not valid JSON ({exc})") from exc
    if bodies is None:
        return data
    if not isinstance(data, dict):
        raise CorruptStateError(
            f"cannot read {where}: its head is a JSON {type(data).__name__}, not an object"
        )
    try:
        # One parse for the whole history: much cheaper than one per row.
        messages = json.loads("[" + ",".join(bodies) + "]")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        messages = None
    if not isinstance(messages, list) or len(messages) != len(bodies):
        # Find the culprit so the error names it (a row can also hide a comma).
        messages = []
        for position, body in enumerate(bodies):
            try:
                messages.append(json.loads(body))  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                raise CorruptStateError(
                    f"cannot read {where}: its message at position {position} "
                    f"is not valid JSON ({exc})"
                ) from exc
    data["messages"] = messages
    return data


class _Written(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to the history list a store last wrote, with what it wrote."""

    __slots__ = ("conversation_id", "count", "version")

    conversation_id: str
    count: int
    version: int


class HistoryTracker:
    """Which history list each conversation's rows were last written from.

    Only weak references are kept, so an idle conversation's dicts are not held
    alive, and an entry leaves the table as soon as its list is gone (a parked
    or stopped session costs the store nothing). A missing entry only means
    the next save rewrites the rows, so the table may be read and changed from
    several threads and from a reference's callback without a lock: each
    operation is one atomic dict call.
    """

    __slots__ = ("__weakref__", "_gone", "_known")

    def __init__(self) -> None:
        self._known: dict[str, _Written] = {}
        self._gone = _gone_callback(self)  # one callback for every reference

    def written(self, conversation_id: str, messages: list[Any], version: int | None) -> int:
        """Return how many leading messages of ``messages`` are already stored.

        That is the count written last time when ``messages`` is the very list
        written then, at ``version`` (the version the save expects), and it has
        not shrunk; otherwise 0 (rewrite every row).
        """
        known = self._known.get(conversation_id)
        if (
            known is None
            or version is None
            or known.version != version
            or known() is not messages
            or known.count > len(messages)
        ):
            return 0
        return known.count

    def remember(self, conversation_id: str, messages: list[Any], version: int) -> None:
        """Record that ``messages`` is stored, whole, at ``version``."""
        try:
            ref = _Written(messages, self._gone)
        except TypeError:  # a plain list: it cannot be recognised again, so never extended
            self._known.pop(conversation_id, None)
            return
        ref.conversation_id, ref.count, ref.version = conversation_id, len(messages), version
        self._known[conversation_id] = ref

    def forget(self, conversation_id: str) -> None:
        """Drop what is known of the conversation (deleted, quarantined, failed)."""
        self._known.pop(conversation_id, None)

    def __len__(self) -> int:
        return len(self._known)


def _gone_callback(tracker: HistoryTracker) -> Any:
    # The callback holds the tracker weakly too: a store that is gone leaves
    # nothing behind in the lists it once wrote.
    tracker_ref = weakref.ref(tracker)

    def gone(ref: Any) -> None:
        owner, key = tracker_ref(), ref.conversation_id
        if owner is not None and owner._known.get(key) is ref:
            owner._known.pop(key, None)

    return gone
