"""The reader's filter over any interleaving of owners' appends (no Redis needed)."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from sessionvisor.cluster._events import StreamEvent, _Filter

entries = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 4)), max_size=40)


@given(entries=entries, cuts=st.lists(st.integers(0, 40), max_size=5), after=st.integers(0, 3))
def test_a_reader_gets_increasing_seqs_of_the_newest_epoch_or_is_told_of_a_gap(
    entries: list[tuple[int, int]], cuts: list[int], after: int
) -> None:
    events = [
        StreamEvent(seq=s, epoch=e, data="{}", entry_id=str(i)) for i, (s, e) in enumerate(entries)
    ]
    bounds = [0, *sorted(min(c, len(events)) for c in cuts), len(events)]
    reader = _Filter(after)
    delivered = after
    newest = 0
    for start, end in pairwise(bounds):
        result = reader.feed(events[start:end])
        seqs = [e.seq for e in result.events]
        assert seqs == sorted(set(seqs)), "strictly increasing within a read"
        epochs = [e.epoch for e in result.events]
        assert epochs == sorted(epochs), "an epoch never goes back within a read"
        if result.events:
            assert min(epochs) >= newest, "nothing older than an epoch delivered before"
            if not result.gap:
                assert seqs == list(range(delivered + 1, delivered + 1 + len(seqs))), (
                    "without a gap, the reader continues exactly where it was"
                )
            delivered = seqs[-1]
            newest = epochs[-1]
        assert max((e.epoch for e in events[:end]), default=0) >= newest
