"""The pieces of the append-only layout: cutting a state, rebuilding it, and
knowing which history list a store last wrote."""

from __future__ import annotations

import gc

import pytest

from sessionvisor._errors import CorruptStateError
from sessionvisor.state._layout import HistoryTracker, assemble, split


class History(list[int]):
    __slots__ = ("__weakref__",)


def test_a_state_is_cut_into_its_head_and_history_and_rebuilt_in_order() -> None:
    state = {"version": 1, "messages": [{"n": 1}, {"n": 2}], "queued": [], "metadata": {"k": 1}}

    cut = split(state)
    rebuilt = assemble("c-1", cut.head, ['{"n":1}', '{"n":2}'])

    assert cut.messages is state["messages"]
    assert "messages" not in cut.head
    assert rebuilt == state
    # A state without a list of messages is kept whole.
    assert split({"version": 0, "history": []}).messages is None
    assert assemble("c-1", split({"version": 0}).head, None) == {"version": 0}


@pytest.mark.parametrize(
    ("head", "bodies", "problem"),
    [
        ("{oops", [], "head is not valid JSON"),
        ("[1]", [], "head is a JSON list, not an object"),
        ("{}", ['{"n":1}', '{"n":'], "message at position 1 is not valid JSON"),
        ("{}", ['{"n":1}', None], "message at position 1 is not valid JSON"),
        ("{}", ["1,2"], "message at position 0 is not valid JSON"),
    ],
)
def test_damage_is_reported_with_the_conversation_and_the_position(
    head: str, bodies: list[str | None], problem: str
) -> None:
    with pytest.raises(CorruptStateError, match=r"'c-9'") as caught:
        assemble("c-9", head, bodies)

    assert problem in str(caught.value)


def test_the_tracker_recognises_only_the_same_growing_list_at_the_same_version() -> None:
    tracker = HistoryTracker()
    history = History([1, 2, 3])
    tracker.remember("c-1", history, 4)

    history.append(4)
    assert tracker.written("c-1", history, 4) == 3
    assert tracker.written("c-1", history, 5) == 0  # another version: rewrite
    assert tracker.written("c-1", History([1, 2, 3, 4]), 4) == 0  # another list: rewrite
    del history[1:]
    assert tracker.written("c-1", history, 4) == 0  # shorter than what was written
    tracker.remember("c-2", [1, 2], 1)  # a plain list cannot be recognised: not kept
    assert len(tracker) == 1


def test_an_entry_leaves_the_tracker_when_its_list_is_gone() -> None:
    tracker = HistoryTracker()
    history = History([1])
    tracker.remember("c-1", history, 1)
    tracker.remember("c-2", History([2]), 1)
    gc.collect()

    assert len(tracker) == 1
    del history
    gc.collect()
    assert len(tracker) == 0
