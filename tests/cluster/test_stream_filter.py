"""The reader's filter over any interleaving of owners' appends (no Redis needed)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionvisor.cluster._ordering import ReadResult, StreamEvent, _Filter

entries = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 4)), max_size=40)


@given(
    entries=entries,
    cuts=st.lists(st.integers(0, 40), max_size=5),
    after=st.integers(0, 3),
    known=st.none() | st.integers(1, 4),
)
def test_a_reader_gets_increasing_seqs_of_the_newest_epoch_or_is_told_of_a_gap(
    entries: list[tuple[int, int]], cuts: list[int], after: int, known: int | None
) -> None:
    events = [
        StreamEvent(seq=s, epoch=e, data="{}", entry_id=str(i)) for i, (s, e) in enumerate(entries)
    ]
    bounds = [0, *sorted(min(c, len(events)) for c in cuts), len(events)]
    reader = _Filter(after, known if after else None)
    delivered = after
    newest = 0
    floor = known if after and known is not None else 0  # the position's epoch
    for start, end in pairwise(bounds):
        result = reader.feed(events[start:end])
        seqs = [e.seq for e in result.events]
        assert seqs == sorted(set(seqs)), "strictly increasing within a read"
        epochs = [e.epoch for e in result.events]
        assert epochs == sorted(epochs), "an epoch never goes back within a read"
        if result.events:
            assert min(epochs) >= max(newest, floor), "nothing older than an epoch seen before"
            if not result.gap:
                assert seqs == list(range(delivered + 1, delivered + 1 + len(seqs))), (
                    "without a gap, the reader continues exactly where it was"
                )
            delivered = seqs[-1]
            newest = epochs[-1]
        assert max((e.epoch for e in events[:end]), default=0) >= newest


def _stream(epoch: int, seqs: range) -> list[StreamEvent]:
    return [StreamEvent(seq=s, epoch=epoch, data="{}", entry_id=f"{epoch}-{s}") for s in seqs]


def _seqs(result: ReadResult) -> list[int]:
    return [e.seq for e in result.events]


# After a Redis restart the stream holds only what the new owner appended: it
# renumbered from the store's last_seq (5), below the seq the reader had reached
# with the dead owner's unsaved events (10).


@pytest.mark.parametrize("known", [1, None], ids=["epoch known", "epoch unknown"])
def test_a_new_owner_renumbering_below_the_reader_s_position_is_delivered_after_a_gap(
    known: int | None,
) -> None:
    reader = _Filter(10, known)
    first = reader.feed(_stream(2, range(6, 9)))
    assert first.gap and _seqs(first) == [6, 7, 8]
    later = reader.feed(_stream(2, range(9, 13)))
    assert not later.gap and _seqs(later) == [9, 10, 11, 12]


@pytest.mark.parametrize("known", [1, None], ids=["epoch known", "epoch unknown"])
def test_a_new_owner_that_read_one_entry_at_a_time_is_delivered_after_a_gap(
    known: int | None,
) -> None:
    reader = _Filter(10, known)
    results = [reader.feed([entry]) for entry in _stream(2, range(6, 12))]
    assert [r.gap for r in results] == [True, False, False, False, False, False]
    assert [seq for r in results for seq in _seqs(r)] == [6, 7, 8, 9, 10, 11]


def test_a_known_position_of_an_older_owner_is_renumbered_even_when_the_new_one_passed_it() -> None:
    reader = _Filter(10, 1)
    result = reader.feed(_stream(2, range(6, 15)))
    assert result.gap and _seqs(result) == list(range(6, 15))


def test_the_position_s_own_entry_confirms_a_position_of_unknown_epoch() -> None:
    reader = _Filter(5)
    result = reader.feed(_stream(1, range(1, 8)))
    assert not result.gap and _seqs(result) == [6, 7]
    # The same with an older owner's entries first, and a new owner taking over
    # after the position: nothing is renumbered below it.
    reader = _Filter(5)
    result = reader.feed([*_stream(1, range(1, 6)), *_stream(2, range(6, 8))])
    assert not result.gap and _seqs(result) == [6, 7]


def test_a_first_owner_s_stream_behind_the_reader_is_waited_for_not_renumbered() -> None:
    # The reader's position came from the owner itself, ahead of its forwarder:
    # the first owner (epoch 1) renumbers nothing, so the stream is only behind.
    reader = _Filter(10)
    behind = reader.feed(_stream(1, range(1, 8)))
    assert not behind.gap and behind.events == []
    caught_up = reader.feed(_stream(1, range(8, 13)))
    assert not caught_up.gap and _seqs(caught_up) == [11, 12]


def test_a_stream_that_starts_after_the_position_continues_or_shows_the_gap() -> None:
    assert _seqs(_Filter(10).feed(_stream(2, range(11, 13)))) == [11, 12]
    assert not _Filter(10).feed(_stream(2, range(11, 13))).gap
    lost = _Filter(10).feed(_stream(2, range(13, 15)))
    assert lost.gap and _seqs(lost) == [13, 14]


@given(
    saved=st.integers(0, 20),
    unsaved=st.integers(1, 20),
    new=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 40), max_size=5),
)
def test_a_reader_that_knows_its_epoch_never_misses_a_renumbering(
    saved: int, unsaved: int, new: int, cuts: list[int]
) -> None:
    """Owner 1 published up to ``saved + unsaved`` (the reader got all of it) and
    died having stored ``saved``; Redis lost its entries; owner 2 appends
    ``saved + 1 ...``. However the reads cut the stream, the reader delivers every
    one of owner 2's entries, and tells of the gap first."""
    stream = _stream(2, range(saved + 1, saved + 1 + new))
    bounds = [0, *sorted(min(c, len(stream)) for c in cuts), len(stream)]
    reader = _Filter(saved + unsaved, 1)
    results = [reader.feed(stream[a:b]) for a, b in pairwise(bounds)]
    delivered = [seq for r in results for seq in _seqs(r)]
    assert delivered == [e.seq for e in stream]
    first = next(r for r in results if r.events)
    assert first.gap
