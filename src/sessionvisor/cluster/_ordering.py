"""What a reader of a conversation's event stream may deliver, whoever appended.

The owners of a conversation append to one Redis stream, each with its lease's
epoch; a stale owner may append after its successor did, and a Redis restart
loses what the stream held. ``_Filter`` turns the entries, in stream order,
into the events a reader delivers (``ReadResult``): increasing seqs of the
newest owner, with ``gap=True`` whenever the reader cannot continue seamlessly.
Pure logic, no Redis: ``_events`` reads the stream and feeds it.
"""

from __future__ import annotations

import attrs

__all__ = ["ReadResult", "StreamEvent"]


@attrs.frozen
class StreamEvent:
    """One event read from a conversation's stream.

    Attributes:
        seq: the event's number in the conversation (continuous across owners).
        epoch: the lease epoch of the owner that produced it.
        data: the event as the owner appended it (JSON text).
        entry_id: the Redis stream entry id.
    """

    seq: int
    epoch: int
    data: str
    entry_id: str


@attrs.frozen
class ReadResult:
    """What one read returned.

    Attributes:
        events: the events after the reader's position, in seq order, from the
            newest epoch only.
        gap: True when the reader cannot continue seamlessly from its position:
            events it should have seen are gone (trimmed by the cap, lost with
            a Redis restart, or never appended while Redis was down), or a new
            owner renumbered events the reader already got from a stale one.
            The subscriber needs a fresh snapshot of the conversation.
    """

    events: list[StreamEvent]
    gap: bool


class _Filter:
    """Turns stream entries, in stream order, into what a reader may deliver.

    A new owner continues the numbering from the store's ``last_seq``, which
    may lie below seqs a stale owner appended (events of a turn it never got
    to persist) - and the stale owner may still append after the new one did.
    So: an entry of an epoch older than the newest seen is dropped; the first
    entry of a newer epoch at or below the last accepted seq retracts the
    not yet delivered entries from that seq on, and flags a gap when some of
    them were already delivered.

    A position whose epoch is unknown (``epoch=None``: a client's last event
    id) is taken as seen once the stream shows that seq. Entries of a later
    owner (epoch 2 or more) that end below it, or skip it, mean a renumbering
    the stream no longer shows (Redis lost the stale owner's entries): they
    are delivered after a gap. A position whose seq a later owner reached
    again cannot be told from the one seen (the limit of a bare seq); a later
    owner's stream merely behind the position (the client read from the owner
    ahead of its forwarder) shows as a gap it did not need: a spurious gap,
    never a miss.
    """

    def __init__(self, after_seq: int | None, epoch: int | None = None) -> None:
        self.epoch = epoch if after_seq is not None else None
        self.last = after_seq  # last accepted seq
        self.delivered = after_seq  # last seq handed to the reader's caller
        # Entries at or below a position of unknown epoch, until it shows.
        self._unsure: list[StreamEvent] | None = [] if after_seq and epoch is None else None

    def feed(self, entries: list[StreamEvent]) -> ReadResult:
        out: list[StreamEvent] = []
        gap = False
        for entry in entries:
            if self._unsure is not None:
                if not self._place(entry):
                    continue
                gap = self._settle(out) or gap
            gap = self._accept(entry, out) or gap
        if self._unsure and max(e.epoch for e in self._unsure) > 1:
            gap = self._settle(out) or gap
        if out:
            self.delivered = out[-1].seq
        return ReadResult(events=out, gap=gap)

    def _place(self, entry: StreamEvent) -> bool:
        """While the position is unsure: keep ``entry`` aside (False), or say it
        lies past the position (True: the position never showed)."""
        assert self._unsure is not None and self.last is not None
        if entry.seq > self.last:
            return True
        if entry.seq == self.last and entry.epoch >= max(
            (e.epoch for e in self._unsure), default=0
        ):
            self._unsure, self.epoch = None, entry.epoch  # the position itself: seen
        else:
            self._unsure.append(entry)
        return False

    def _settle(self, out: list[StreamEvent]) -> bool:
        """The position did not show: deliver the newest owner's entries kept aside
        (a renumbering, so with a gap) unless they are the first owner's."""
        kept, self._unsure = self._unsure or [], None
        newest = max((e.epoch for e in kept), default=1)
        if newest <= 1:
            return False
        kept = [e for e in kept if e.epoch == newest]
        self.epoch, self.last = newest, kept[0].seq - 1
        for entry in kept:
            self._accept(entry, out)
        return True

    def _accept(self, entry: StreamEvent, out: list[StreamEvent]) -> bool:
        """The rules of the class docstring for one entry; True for a gap."""
        gap = False
        if self.epoch is not None and entry.epoch < self.epoch:
            return False  # a stale owner's
        if (
            self.epoch is not None
            and entry.epoch > self.epoch
            and self.last is not None
            and entry.seq <= self.last
        ):
            out[:] = [kept for kept in out if kept.seq < entry.seq]
            if self.delivered is not None and entry.seq <= self.delivered:
                gap = True
            self.last = entry.seq - 1
        self.epoch = entry.epoch if self.epoch is None else max(self.epoch, entry.epoch)
        if self.last is not None:
            if entry.seq <= self.last:
                return gap  # already seen, or before the reader's position
            if entry.seq > self.last + 1:
                gap = True
        out.append(entry)
        self.last = entry.seq
        return gap
