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


def _ref(messages: list[Any]) -> Any:
    try:
        return weakref.ref(messages)
    except TypeError:  # a plain list: it cannot be recognised again, so never extended
        return None


class HistoryTracker:
    """Which history list each conversation's rows were last written from.

    Only weak references are kept, so an idle conversation's dicts are not held
    alive; entries whose list is gone are swept as the table grows. Not
    thread-safe: the store uses it from its flush only.
    """

    __slots__ = ("_known", "_sweep_at")

    def __init__(self) -> None:
        self._known: dict[str, tuple[Any, int, int]] = {}
        self._sweep_at = 1024

    def written(self, conversation_id: str, messages: list[Any], version: int | None) -> int:
        """Return how many leading messages of ``messages`` are already stored.

        That is the count written last time when ``messages`` is the very list
        written then, at ``version`` (the version the save expects), and it has
        not shrunk; otherwise 0 (rewrite every row).
        """
        known = self._known.get(conversation_id)
        if known is None or version is None:
            return 0
        ref, count, at = known
        if at != version or ref is None or ref() is not messages or count > len(messages):
            return 0
        return count

    def remember(self, conversation_id: str, messages: list[Any], version: int) -> None:
        """Record that ``messages`` is stored, whole, at ``version``."""
        ref = _ref(messages)
        if ref is None:
            self._known.pop(conversation_id, None)
            return
        self._known[conversation_id] = (ref, len(messages), version)
        if len(self._known) >= self._sweep_at:
            self._known = {k: v for k, v in self._known.items() if v[0]() is not None}
            self._sweep_at = max(1024, 2 * len(self._known))

    def forget(self, conversation_id: str) -> None:
        """Drop what is known of the conversation (deleted, quarantined, failed)."""
        self._known.pop(conversation_id, None)
