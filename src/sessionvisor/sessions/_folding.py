"""A session's State, folded into compact JSON while nobody looks at it.

A chat backend holds far more open conversations than busy ones. After
``hibernate_after`` an idle session with no subscriber keeps its State as the
bytes of its own JSON dump (and drops its replay buffer); the first access
unfolds it. A folded session can still be saved and stopped without unfolding:
its bytes already are the dump, and unfolding 100,000 of them to stop them is
what would make a drain slow and memory-hungry.
"""

from __future__ import annotations

import json
from typing import Any

from ..state import PendingInterrupt, State
from ._snapshot import SnapshotEncoder

__all__: list[str] = ["FoldableState"]


class FoldableState:
    """Holds a State either live or folded into JSON bytes."""

    __slots__ = ("_encoder", "_frozen", "_state", "refused_at")

    def __init__(self, state: State) -> None:
        self._state: State | None = state
        self._frozen: bytes | None = None
        self._encoder: SnapshotEncoder | None = None
        # The writer's generation when a fold last failed: the same State would fail
        # again, so no fold is tried until something changes it.
        self.refused_at: int | None = None

    @property
    def folded(self) -> bool:
        return self._state is None

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

    def fold(self) -> Exception | None:
        """Fold the State; the error when it cannot be (metadata that JSON cannot hold)."""
        state = self._state
        if state is None:
            return None
        try:
            frozen = state.model_dump_json().encode()
        except Exception as exc:
            return exc
        self._frozen = frozen
        self._state = None
        self._encoder = None
        return None

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
