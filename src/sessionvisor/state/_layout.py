"""The append-only layout the SQL stores share: a header plus one row per message
and one row per audit-trail step.

A stored state is split into its *head* (the state without ``messages`` and
``steps``: the queue, metadata, interrupt, journal and schema version, as one
JSON object), its history, one JSON row per message at positions
``0 .. count-1``, and its audit trail (``steps``, the steps of ended turns),
one JSON row per step the same way. A save writes the head and only the rows
the store has not written yet; a ``HistoryTracker`` per list remembers, per
conversation, which list the store last wrote, how many of its items and at
which version, so it can tell an extension (append the tail) from a rewrite
(replace every row).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import CorruptStateError

__all__ = ["HistoryTracker", "Split", "assemble", "dumps", "missing_row", "split"]

# One encoder for every row: json.dumps with custom separators builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """Return compact JSON text (raises TypeError for what JSON cannot hold)."""
    return _ENCODER.encode(value)


class Split:
    """A state cut for writing: the head's JSON, the history (None: not a list)
    and the audit trail (None: not a list, kept in the head)."""

    __slots__ = ("head", "messages", "steps")

    def __init__(self, head: str, messages: list[Any] | None, steps: list[Any] | None) -> None:
        self.head = head
        self.messages = messages
        self.steps = steps


def split(state: Any) -> Split:
    """Cut ``state`` into its head, its history and its audit trail.

    A state whose ``messages`` is not a list (an old schema, a caller's own
    shape) is kept whole: its head is the entire state and it has no rows. A
    ``steps`` that is not a list (or is missing) stays in the head.

    Raises:
        TypeError: the head holds a value JSON cannot encode.
    """
    if isinstance(state, Mapping):
        messages = state.get("messages")
        if isinstance(messages, list):
            steps = state.get("steps")
            if not isinstance(steps, list):
                steps = None
            cut = _ROW_KEYS if steps is not None else _MESSAGES_ONLY
            rest = {key: value for key, value in state.items() if key not in cut}
            return Split(dumps(rest), messages, steps)
    return Split(dumps(state), None, None)


_ROW_KEYS = frozenset(("messages", "steps"))
_MESSAGES_ONLY = frozenset(("messages",))


def assemble(
    conversation_id: str,
    head: str,
    bodies: Sequence[str | None] | None,
    step_bodies: Sequence[str | None] | None = None,
) -> Any:
    """Rebuild a stored state from its head, its message rows and its step rows, in order.

    ``bodies`` None means the head is the whole state. ``step_bodies`` None
    means the audit trail has no rows: the head holds it (as a release that
    kept it there wrote it) or there is none. The result is what JSON decoding
    gives; ``decode_state`` validates it afterwards.

    Raises:
        CorruptStateError: the head or a row is not valid JSON (the message
            names the conversation and the row's position).
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
    data["messages"] = _rows(where, "message", bodies)
    if step_bodies is not None:
        data["steps"] = _rows(where, "step", step_bodies)
    return data


def _rows(where: str, what: str, bodies: Sequence[str | None]) -> list[Any]:
    try:
        # One parse for the whole list: much cheaper than one per row.
        items = json.loads("[" + ",".join(bodies) + "]")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        items = None
    if isinstance(items, list) and len(items) == len(bodies):
        return items
    # Find the culprit so the error names it (a row can also hide a comma).
    items = []
    for position, body in enumerate(bodies):
        try:
            items.append(json.loads(body))  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise CorruptStateError(
                f"cannot read {where}: its {what} at position {position} is not valid JSON ({exc})"
            ) from exc
    return items


def missing_row(
    conversation_id: str, what: str, positions: Sequence[int], count: int
) -> CorruptStateError | None:
    """The error for rows ``0 .. count-1`` when ``positions`` (sorted, all below
    ``count``) are not exactly those; None when they are."""
    if len(positions) == count and (not positions or positions[-1] == count - 1):
        return None
    present = set(positions)
    missing = next((p for p in range(count) if p not in present), count)
    return CorruptStateError(
        f"cannot read the stored row of conversation {conversation_id!r}: its {what} "
        f"at position {missing} is missing ({len(positions)} of {count} rows found)"
    )


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
