"""The Redis side: per-conversation event streams (replay, cap, stale epochs,
gaps across a redis-server restart) and per-node wake-ups, on a redis-server
these tests start themselves."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from sessionvisor.cluster import EventStreams, Wakeups
from sessionvisor.cluster._events import StreamEvent, _Filter
from tests._support.servers import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def streams(redis_server: RedisServer) -> AsyncIterator[EventStreams]:
    async with EventStreams(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}") as made:
        yield made


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A client of the test's own, to look at (or lose) keys as another process would."""
    import redis.asyncio

    client = redis.asyncio.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def append(streams: EventStreams, cid: str, epoch: int, seqs: range | list[int]) -> None:
    for seq in seqs:
        await streams.append(cid, seq, epoch, json.dumps({"seq": seq, "epoch": epoch}))


def seqs(events: list[StreamEvent]) -> list[tuple[int, int]]:
    return [(e.seq, e.epoch) for e in events]


async def test_a_read_replays_the_events_after_a_seq_in_order(streams: EventStreams) -> None:
    await append(streams, "c-1", 1, range(1, 11))
    await append(streams, "c-2", 1, range(1, 4))

    after_4 = await streams.read("c-1", after_seq=4)
    everything = await streams.read("c-1", after_seq=0)
    nothing_new = await streams.read("c-1", after_seq=10)

    assert seqs(after_4.events) == [(s, 1) for s in range(5, 11)] and not after_4.gap
    assert [json.loads(e.data)["seq"] for e in everything.events] == list(range(1, 11))
    assert not everything.gap
    assert nothing_new.events == [] and not nothing_new.gap


async def test_the_stream_is_capped_and_a_reader_behind_the_cap_sees_a_gap(
    redis_server: RedisServer, redis: Any
) -> None:
    async with EventStreams(redis_server.url, prefix=uuid.uuid4().hex, maxlen=50) as streams:
        await append(streams, "c-1", 1, range(1, 1001))
        kept = await redis.xlen(streams.key("c-1"))

        behind = await streams.read("c-1", after_seq=0)
        recent = await streams.read("c-1", after_seq=990)

    assert 50 <= kept < 200  # MAXLEN ~ trims whole nodes: about 50
    assert behind.gap
    numbers = [e.seq for e in behind.events]
    assert numbers == list(range(numbers[0], 1001)) and numbers[0] > 1
    assert [e.seq for e in recent.events] == list(range(991, 1001)) and not recent.gap


async def test_a_stream_expires_a_while_after_its_last_event(
    redis_server: RedisServer, redis: Any
) -> None:
    prefix = uuid.uuid4().hex
    async with (
        EventStreams(redis_server.url, prefix=prefix, ttl=60) as expiring,
        EventStreams(redis_server.url, prefix=prefix + "k", ttl=None) as kept,
    ):
        await append(expiring, "c-1", 1, [1, 2])
        await append(kept, "c-1", 1, [1])
        expiring_ms = await redis.pttl(expiring.key("c-1"))
        kept_ms = await redis.pttl(kept.key("c-1"))

    assert 59_000 < expiring_ms <= 60_000
    assert kept_ms == -1  # no expiry


async def test_appends_of_an_older_epoch_are_refused_at_the_door(
    streams: EventStreams, redis: Any
) -> None:
    from sessionvisor._errors import StaleWriteError

    await append(streams, "c-1", 1, [1, 2])
    await append(streams, "c-1", 2, [3])
    with pytest.raises(StaleWriteError, match=r"'c-1'.*newer epoch"):
        await append(streams, "c-1", 1, [4])
    # A new owner fences before it produces anything.
    assert await streams.fence("c-1", 3) == 3
    assert await streams.fence("c-1", 2) == 3  # never lowered
    with pytest.raises(StaleWriteError):
        await append(streams, "c-1", 2, [4])
    await append(streams, "c-1", 3, [4])

    result = await streams.read("c-1", after_seq=0)
    assert seqs(result.events) == [(1, 1), (2, 1), (3, 2), (4, 3)]
    ttl = await redis.pttl(streams.epoch_key("c-1"))
    assert 0 < ttl <= 86_400_000  # the epoch key leaves with the stream


async def test_a_stale_owners_events_are_dropped(streams: EventStreams, redis: Any) -> None:
    # Owner of epoch 1 appended 1-5 but persisted only up to 3; the owner of
    # epoch 2 continues from 4; the stale owner, still running, appends 6 and 7,
    # which get in because Redis lost the epoch key (evicted, say).
    await append(streams, "c-1", 1, range(1, 6))
    await append(streams, "c-1", 2, [4, 5])
    await redis.delete(streams.epoch_key("c-1"))
    await append(streams, "c-1", 1, [6, 7])
    await append(streams, "c-1", 2, [6])

    result = await streams.read("c-1", after_seq=0)

    assert seqs(result.events) == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert not result.gap


async def test_a_reader_that_got_a_stale_owners_events_is_told_of_the_gap(
    streams: EventStreams,
) -> None:
    await append(streams, "c-1", 1, range(1, 6))
    reader = streams.reader("c-1", after_seq=0)
    first = await reader.read()
    await append(streams, "c-1", 1, [6])  # stale already, but the new owner did not append yet
    await append(streams, "c-1", 2, [4, 5, 6])

    second = await reader.read(block_ms=1000)

    assert [e.seq for e in first.events] == [1, 2, 3, 4, 5]
    assert second.gap  # it saw 4 and 5 of epoch 1, which epoch 2 replaced
    assert seqs(second.events) == [(4, 2), (5, 2), (6, 2)]


async def test_a_blocked_reader_gets_the_next_event(streams: EventStreams) -> None:
    await append(streams, "c-1", 1, range(1, 4))
    reader = streams.reader("c-1", after_seq=3)
    got: list[int] = []

    async def read() -> None:
        result = await reader.read(block_ms=10_000)
        got.extend(e.seq for e in result.events)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await append(streams, "c-1", 1, [4])

    assert got == [4]


async def test_a_reader_from_now_skips_the_kept_events(streams: EventStreams, redis: Any) -> None:
    await append(streams, "c-1", 3, range(1, 6))
    await redis.delete(streams.epoch_key("c-1"))  # lost: stale entries get in
    await append(streams, "c-1", 2, [6])  # a stale owner's entry last
    reader = streams.reader("c-1", after_seq=None)
    assert (await reader.read()).events == []
    await append(streams, "c-1", 2, [7])  # stale too
    await append(streams, "c-1", 3, [6])

    result = await reader.read(block_ms=1000)

    assert seqs(result.events) == [(6, 3)] and not result.gap


async def test_events_lost_with_a_redis_restart_show_as_a_gap_and_new_ones_flow(
    redis_server: RedisServer,
) -> None:
    import redis.exceptions

    prefix = uuid.uuid4().hex
    async with EventStreams(redis_server.url, prefix=prefix) as streams:
        await append(streams, "c-1", 1, range(1, 6))
        reader = streams.reader("c-1", after_seq=0)
        assert [e.seq for e in (await reader.read()).events] == [1, 2, 3, 4, 5]

        redis_server.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            await append(streams, "c-1", 1, [6])  # the owner cannot append: lost
        with pytest.raises(redis.exceptions.ConnectionError):
            await reader.read()
        redis_server.start()

        await append(streams, "c-1", 1, [7, 8])
        resumed = await reader.read(block_ms=1000)
        fresh = await streams.read("c-1", after_seq=2)
        caught_up = await streams.read("c-1", after_seq=7)

    assert [e.seq for e in resumed.events] == [7, 8] and resumed.gap
    assert [e.seq for e in fresh.events] == [7, 8] and fresh.gap  # 3-6 went with Redis
    assert [e.seq for e in caught_up.events] == [8] and not caught_up.gap


async def test_a_wakeup_reaches_the_node_it_names_only(redis_server: RedisServer) -> None:
    wakeups = Wakeups(redis_server.url, prefix=uuid.uuid4().hex)
    async with wakeups, wakeups.listen("node-a") as a, wakeups.listen("node-b") as b:
        assert await wakeups.notify("node-a", "c-1") == 1
        assert await wakeups.notify("node-a", "c-2") == 1
        assert await wakeups.notify("node-c", "c-3") == 0  # nobody listens

        woken: set[str] = set()
        with anyio.fail_after(10):
            while woken != {"c-1", "c-2"}:
                woken |= await a.wait(10)
        assert await b.wait(0.05) == set()
        assert await a.wait(0.05) == set()


async def test_a_wakeup_listener_recovers_from_a_redis_restart(
    redis_server: RedisServer,
) -> None:
    import redis.exceptions

    wakeups = Wakeups(redis_server.url, prefix=uuid.uuid4().hex)
    async with wakeups, wakeups.listen("node-a") as a:
        redis_server.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            await wakeups.notify("node-a", "c-1")
        with pytest.raises(redis.exceptions.ConnectionError):
            await a.wait(1)
        redis_server.start()

        # The listener subscribes again on its next wait; until then a
        # notify reaches nobody (and says so: 0 receivers).
        with anyio.fail_after(10):
            while await wakeups.notify("node-a", "c-2") == 0:
                assert await a.wait(0.01) == set()
            assert await a.wait(10) == {"c-2"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"redis_url": "http://x"}, ValueError, "redis_url"),
        ({"prefix": ""}, ValueError, "prefix"),
        ({"prefix": "a{b}"}, ValueError, "prefix"),
        ({"maxlen": 0}, ValueError, "maxlen"),
        ({"maxlen": 1.5}, TypeError, "maxlen"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": "1"}, TypeError, "ttl"),
    ],
)
def test_event_streams_refuse_bad_arguments(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    args: dict[str, object] = {"redis_url": "redis://127.0.0.1:1/0", **kwargs}
    url = args.pop("redis_url")
    with pytest.raises(error, match=match):
        EventStreams(url, **args)  # type: ignore[arg-type]


def ev(seq: int, epoch: int) -> StreamEvent:
    return StreamEvent(seq=seq, epoch=epoch, data="{}", entry_id=f"{seq}-{epoch}")


@pytest.mark.parametrize(
    ("after", "entries", "delivered", "gap"),
    [
        (0, [(1, 1), (2, 1), (3, 1)], [(1, 1), (2, 1), (3, 1)], False),
        (1, [(1, 1), (2, 1), (3, 1)], [(2, 1), (3, 1)], False),
        (0, [(3, 1), (4, 1)], [(3, 1), (4, 1)], True),  # 1-2 trimmed
        (0, [(1, 1), (2, 1), (4, 1)], [(1, 1), (2, 1), (4, 1)], True),  # 3 never appended
        (0, [(1, 1), (2, 1), (2, 2), (1, 1), (3, 2)], [(1, 1), (2, 2), (3, 2)], False),
        (2, [(1, 1), (2, 1), (2, 2), (3, 2)], [(2, 2), (3, 2)], True),  # saw stale 2
        (None, [(1, 5), (2, 5)], [(1, 5), (2, 5)], False),
        (0, [(1, 2), (2, 1), (3, 1), (2, 3)], [(1, 2), (2, 3)], False),
    ],
)
def test_the_filter_keeps_the_newest_epochs_numbering(
    after: int | None,
    entries: list[tuple[int, int]],
    delivered: list[tuple[int, int]],
    gap: bool,
) -> None:
    result = _Filter(after).feed([ev(s, e) for s, e in entries])
    assert seqs(result.events) == delivered
    assert result.gap is gap


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_the_event_streams_say_they_need_asyncio(anyio_backend: str) -> None:
    with pytest.raises(RuntimeError, match="asyncio only"):
        await EventStreams("redis://127.0.0.1:1/0").append("c-1", 1, 1, "{}")


async def test_event_streams_work_again_after_aclose(redis_server: RedisServer) -> None:
    streams = EventStreams(redis_server.url, prefix=uuid.uuid4().hex)
    await append(streams, "c-1", 1, [1])
    await streams.aclose()
    await append(streams, "c-1", 1, [2])  # a new client, new script objects

    assert [e.seq for e in (await streams.read("c-1", after_seq=0)).events] == [1, 2]
    await streams.aclose()
