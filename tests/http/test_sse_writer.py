"""The SSE writer's shortcuts for many clients: encode once, write queued events together."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import anyio
import pytest

from sessionvisor import Delta, Status, StatusChanged
from sessionvisor.http._sse import EncodedEvents, format_event
from sessionvisor.testing import wait_for_status

from ._support import WAIT, Frame, SSEParser, asgi_stream, open_app

AT = datetime(2026, 12, 2, 5, 30, 1, 123456, tzinfo=UTC)


def generic(event: object) -> bytes:
    """What every event's encoding must equal: ``to_json()`` as compact JSON."""
    assert isinstance(event, Delta | StatusChanged)
    data = json.dumps(event.to_json(), separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.seq}\nevent: {event.event_type}\ndata: {data}\n\n".encode()


@pytest.mark.parametrize(
    "text", ["plain", ' "quoted" \\ back', "naïve — ☃ 𝄞", "line\nbreak\ttab\x00nul", ""]
)
def test_the_delta_shortcut_writes_exactly_what_to_json_gives(text: str) -> None:
    event = Delta(seq=7, agent_id='agent "a"', conversation_id="c-é/1", at=AT, text=text)
    assert format_event(event) == generic(event)
    assert json.loads(format_event(event).split(b"data: ", 1)[1]) == event.to_json()


def test_other_events_use_to_json() -> None:
    event = StatusChanged(
        seq=3, agent_id="a", conversation_id="c", at=AT, status=Status.IDLE, gap=True
    )
    assert format_event(event) == generic(event)


def test_each_event_is_encoded_once_and_the_oldest_entries_go_first() -> None:
    cache = EncodedEvents(size=2)
    one = Delta(seq=1, agent_id="a", conversation_id="c", at=AT, text="one")
    first = cache.encode(one)
    assert cache.encode(one) is first  # the same bytes object: not encoded again
    # An equal but distinct event (another conversation's seq 1, a snapshot) is its own entry.
    twin = Delta(seq=1, agent_id="a", conversation_id="c", at=AT, text="one")
    assert cache.encode(twin) == first and cache.encode(twin) is not first
    cache.encode(Delta(seq=2, agent_id="a", conversation_id="c", at=AT, text="two"))
    assert len(cache) == 2
    assert cache.encode(one) is not first  # evicted, encoded anew
    with pytest.raises(ValueError, match="size"):
        EncodedEvents(size=0)


@pytest.mark.anyio
async def test_events_queued_behind_a_blocked_write_go_out_together_and_in_order() -> None:
    words = " ".join(f"w{i}" for i in range(40))
    async with (
        open_app() as env,
        # No network buffer: the writer blocks on each write until the client reads it.
        asgi_stream(env.app, "/conversations/c-1/events", buffer=0) as stream,
    ):
        await env.send("c-1", words)
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        parser = SSEParser()
        chunks = 0
        frames: list[Frame] = []

        def idle() -> bool:
            return any(f.event == "StatusChanged" and f.data["status"] == "idle" for f in frames)

        with anyio.fail_after(WAIT):
            while not idle():
                chunk = await stream.chunk()
                chunks += 1
                frames.extend(f for f in parser.feed(chunk) if f.comment is None)
    events = [f for f in frames if "id" in f.fields]
    deltas = [f.data["text"] for f in events if f.event == "Delta"]
    assert "".join(deltas).split() == ["echo:", *words.split()]
    assert [f.id for f in events] == sorted(f.id for f in events)
    # The reply's 40 deltas and the status changes took far fewer writes than events.
    assert len(events) > 40
    assert chunks < len(events) / 4, (chunks, len(events))
