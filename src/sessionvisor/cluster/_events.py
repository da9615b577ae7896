"""The Redis event streams: a capped event stream per conversation.

Redis carries only what can be rebuilt: losing it loses live events (readers
are told with ``gap=True``). The per-node wake-ups are in ``_wakeups``.
Asyncio only: ``redis.asyncio``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .._errors import StaleWriteError
from ._ordering import ReadResult, StreamEvent, _Filter
from ._pg import check_conversation_id
from ._redis import RedisUser

__all__ = ["EventStreams", "ReadResult", "StreamEvent", "StreamReader"]


# The append, atomically: refused (nil) when the conversation's epoch key holds
# a newer epoch, so a stale owner's events stop at the door while Redis
# remembers the epoch; the reader's filter covers the rest (entries that got in
# before the new owner's first append or fence, and a Redis that forgot).
_APPEND = """
local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
local epoch = tonumber(ARGV[2])
if epoch < newest then return false end
if epoch > newest then redis.call('SET', KEYS[2], ARGV[2]) end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*',
    'seq', ARGV[1], 'epoch', ARGV[2], 'data', ARGV[3])
if ARGV[5] ~= '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
    redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
return id
"""

# Raise the conversation's epoch key (never lower it); return the value kept.
_FENCE = """
local newest = tonumber(redis.call('GET', KEYS[1]) or '0')
local epoch = tonumber(ARGV[1])
if epoch > newest then
    redis.call('SET', KEYS[1], ARGV[1])
    newest = epoch
end
if ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return newest
"""


class EventStreams(RedisUser):
    """A capped Redis stream per conversation: ``<prefix>:events:{<cid>}``.

    Each entry holds ``seq``, ``epoch`` and ``data`` (the event's JSON). The
    stream keeps about ``maxlen`` entries (``XADD ... MAXLEN ~``: Redis trims
    whole nodes, so a few more may stay).

    Args:
        redis_url: ``redis://host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: the key prefix.
        maxlen: about how many events each stream keeps (the replay buffer).
        ttl: seconds after its last append that a stream is deleted (None:
            never), so the streams of conversations nobody talks to any more
            do not hold Redis memory for ever.

    Raises:
        ImportError: the redis package is missing.
        ValueError, TypeError: a bad argument.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "sessionvisor",
        maxlen: int = 1000,
        ttl: float | None = 86400.0,
    ) -> None:
        super().__init__(redis_url, prefix)
        if isinstance(maxlen, bool) or not isinstance(maxlen, int):
            raise TypeError(f"maxlen must be an int, got {maxlen!r}")
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, int | float):
                raise TypeError(f"ttl must be None or a number of seconds, got {ttl!r}")
            if not math.isfinite(ttl) or ttl < 0.001:
                raise ValueError(f"ttl must be at least 0.001 seconds, got {ttl}")
        self.maxlen = maxlen
        self.ttl = ttl
        self._scripts: tuple[Any, Any, Any] | None = None  # (client, append, fence)

    def __repr__(self) -> str:
        return f"EventStreams(prefix={self._prefix!r}, maxlen={self.maxlen})"

    def key(self, conversation_id: str) -> str:
        """The stream's key (the id in braces: one hash slot per conversation)."""
        return f"{self._prefix}:events:{{{conversation_id}}}"

    def epoch_key(self, conversation_id: str) -> str:
        """The key holding the newest epoch appended or fenced."""
        return f"{self._prefix}:epoch:{{{conversation_id}}}"

    def _script(self, which: int) -> Any:
        client = self._redis()
        if self._scripts is None or self._scripts[0] is not client:
            # Script objects send EVALSHA and fall back to EVAL when Redis
            # lost its script cache (a restart). They are bound to a client.
            self._scripts = (
                client,
                client.register_script(_APPEND),
                client.register_script(_FENCE),
            )
        return self._scripts[1 + which]

    def _ttl_ms(self) -> str:
        return "" if self.ttl is None else str(max(1, round(self.ttl * 1000)))

    async def fence(self, conversation_id: str, epoch: int) -> int:
        """Refuse, from now on, appends with an epoch below ``epoch``; return
        the newest epoch Redis holds for the conversation.

        A new owner calls it right after fencing the store: the stale owner's
        next ``append`` then fails instead of reaching the readers. Redis keeps
        nothing on disk, so this is a courtesy, not a guarantee (readers still
        drop stale entries).

        Raises:
            TypeError: a bad argument.
            redis.exceptions.ConnectionError: Redis is unreachable.
        """
        check_conversation_id(conversation_id)
        _check_count("epoch", epoch)
        kept = await self._script(1)(
            keys=[self.epoch_key(conversation_id)], args=[epoch, self._ttl_ms()]
        )
        return int(kept)

    async def append(self, conversation_id: str, seq: int, epoch: int, data: str) -> str:
        """Append one event; return its stream entry id.

        One script, atomically: refused when a newer epoch appended or fenced
        already; otherwise ``XADD ... MAXLEN ~ maxlen`` and the expiry.

        Raises:
            TypeError: a bad argument.
            StaleWriteError: Redis holds a newer epoch for the conversation:
                another owner took it over (stop serving it).
            redis.exceptions.ConnectionError: Redis is unreachable (the event is
                not in the stream; readers will see a gap).
        """
        check_conversation_id(conversation_id)
        _check_count("seq", seq)
        _check_count("epoch", epoch)
        if not isinstance(data, str):
            raise TypeError(f"data must be the event's JSON text, got {type(data).__name__}")
        entry_id = await self._script(0)(
            keys=[self.key(conversation_id), self.epoch_key(conversation_id)],
            args=[seq, epoch, data, self.maxlen, self._ttl_ms()],
        )
        if entry_id is None:
            raise StaleWriteError(
                f"cannot append event {seq} of conversation {conversation_id!r}: its stream "
                f"holds a newer epoch than this writer's {epoch} (a newer owner took it over)"
            )
        return str(entry_id)

    async def append_many(self, events: list[tuple[str, int, int, str]]) -> list[bool]:
        """Append ``(conversation_id, seq, epoch, data)`` events in one round trip
        (a pipeline of the ``append`` script), in order.

        Returns:
            For each event, False when it was refused for an older epoch (its
            conversation has a newer owner), else True.

        Raises:
            redis.exceptions.ConnectionError: Redis is unreachable (none of the
                events may be in the stream).
        """
        client = self._redis()
        script = self._script(0)
        ttl = self._ttl_ms()
        async with client.pipeline(transaction=False) as pipe:  # gives its connection back
            for cid, seq, epoch, data in events:
                await script(  # queued on the pipeline, sent by execute()
                    keys=[self.key(cid), self.epoch_key(cid)],
                    args=[seq, epoch, data, self.maxlen, ttl],
                    client=pipe,
                )
            results = await pipe.execute()
        return [result is not None for result in results]

    async def last_status(self, conversation_id: str, scan: int = 200) -> dict[str, Any] | None:
        """The newest owner's latest ``StatusChanged`` event (as JSON) among the
        last ``scan`` entries, ``{"status": "not_running"}`` after its
        ``Shutdown``, or None.

        Raises:
            redis.exceptions.ConnectionError: Redis is unreachable.
        """
        entries = _parse(await self._redis().xrevrange(self.key(conversation_id), count=scan))
        if not entries:
            return None
        newest = max(entry.epoch for entry in entries)
        for entry in entries:  # newest first
            if entry.epoch != newest:
                continue
            event = json.loads(entry.data)
            if event.get("type") == "Shutdown":
                return {"status": "not_running"}
            if event.get("type") == "StatusChanged" and isinstance(event.get("status"), str):
                return dict(event)
        return None

    def reader(
        self, conversation_id: str, after_seq: int | None, epoch: int | None = None
    ) -> StreamReader:
        """A reader of the conversation's events after ``after_seq`` (None: only
        events appended from now on), which an owner of ``epoch`` numbered (None:
        unknown). Keep it across reads: it remembers the position and the newest epoch."""
        check_conversation_id(conversation_id)
        for name, value in (("after_seq", after_seq), ("epoch", epoch)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise TypeError(f"{name} must be None or an int >= 0, got {value!r}")
        return StreamReader(self, conversation_id, after_seq, epoch)

    async def read(
        self, conversation_id: str, after_seq: int, block_ms: int | None = None
    ) -> ReadResult:
        """The events after ``after_seq`` in order (one read of a fresh reader)."""
        return await self.reader(conversation_id, after_seq).read(block_ms)

    async def read_many(
        self, readers: list[StreamReader], block_ms: int
    ) -> list[tuple[StreamReader, ReadResult]]:
        """The next events of several readers with one blocking ``XREAD`` (one
        connection however many conversations a node follows).

        A reader's first read replays its kept stream (one ``XRANGE`` each);
        when any reader has something, nothing blocks.

        Raises:
            redis.exceptions.ConnectionError: Redis is unreachable; every reader
                keeps its position.
        """
        out: list[tuple[StreamReader, ReadResult]] = []
        for reader in readers:
            if reader._cursor is None:
                result = await reader.read(None)
                if result.events or result.gap:
                    out.append((reader, result))
        if out or not readers:
            return out
        by_key = {reader._key: reader for reader in readers}
        found = await self._redis().xread(
            {key: reader._cursor for key, reader in by_key.items()},
            count=1000,
            block=block_ms or None,
        )
        for key, entries in found or ():
            reader = by_key[key]
            if entries:
                reader._cursor = entries[-1][0]
                result = reader._filter.feed(_parse(entries))
                if result.events or result.gap:
                    out.append((reader, result))
        return out


class StreamReader:
    """Reads one conversation's stream from a position, read after read."""

    def __init__(
        self,
        streams: EventStreams,
        conversation_id: str,
        after_seq: int | None,
        epoch: int | None = None,
    ) -> None:
        self._streams = streams
        self._key = streams.key(conversation_id)
        self._filter = _Filter(after_seq, epoch)
        self._from_end = after_seq is None
        self._cursor: str | None = None  # the last entry id read; None before the first read

    @property
    def epoch(self) -> int | None:
        """The epoch of the newest owner read so far (None: unknown yet)."""
        return self._filter.epoch

    async def read(self, block_ms: int | None = None) -> ReadResult:
        """The next events; waits up to ``block_ms`` milliseconds when there are
        none yet (None: do not wait).

        The first read replays the whole kept stream from the reader's
        position; later reads continue from the last entry read.

        Raises:
            redis.exceptions.ConnectionError: Redis is unreachable; the reader
                keeps its position and may read again.
        """
        if block_ms is not None and (
            isinstance(block_ms, bool) or not isinstance(block_ms, int) or block_ms < 0
        ):
            raise TypeError(f"block_ms must be None or an int >= 0, got {block_ms!r}")
        client = self._streams._redis()
        result = ReadResult(events=[], gap=False)
        if self._cursor is None:
            entries = await client.xrange(self._key, "-", "+")
            self._cursor = entries[-1][0] if entries else "0-0"
            result = self._filter.feed(_parse(entries))
            if self._from_end:
                # The kept entries set the position and the newest epoch (a
                # stale owner's entry may be the last one); none is delivered.
                result = ReadResult(events=[], gap=False)
            if result.events or result.gap or not block_ms:
                return result
        found = await client.xread({self._key: self._cursor}, count=1000, block=block_ms or None)
        entries = found[0][1] if found else []
        if not entries:
            return result
        self._cursor = entries[-1][0]
        more = self._filter.feed(_parse(entries))
        return ReadResult(events=more.events, gap=more.gap or result.gap)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{name} must be an int >= 0, got {value!r}")


def _parse(entries: list[tuple[str, dict[str, str]]]) -> list[StreamEvent]:
    events = []
    for entry_id, fields in entries:
        try:
            events.append(
                StreamEvent(
                    seq=int(fields["seq"]),
                    epoch=int(fields["epoch"]),
                    data=fields["data"],
                    entry_id=entry_id,
                )
            )
        except (KeyError, ValueError):
            continue  # not one of ours: a stream entry cannot stop the reader
    return events
