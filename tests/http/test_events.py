"""``GET /conversations/{cid}/events``: the conversation's events as Server-Sent Events.

These run the app's ASGI interface directly (see ``_support.asgi_stream``), so
they cover asyncio and trio; ``test_server.py`` repeats the essentials over a
real socket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from sessionvisor import Event, Shutdown, Status
from sessionvisor.http import close_event_streams
from sessionvisor.testing import (
    ManualClock,
    ScriptedAgent,
    wait_for_event,
    wait_for_status,
    wait_until,
)

from ._support import ALICE, BOB, WAIT, Frame, asgi_stream, open_app

pytestmark = pytest.mark.anyio


def is_status(status: str) -> Any:
    return lambda f: f.event == "StatusChanged" and f.data["status"] == status


def as_json(event: Event) -> Any:
    return json.loads(json.dumps(event.to_json()))


class Witness:
    """Every event of a conversation, received on a direct subscription (not a viewer)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def after(self, seq: int) -> list[Event]:
        return [e for e in self.events if e.seq > seq]


@asynccontextmanager
async def witness(sup: Any, cid: str, scope: Any = "alice") -> AsyncIterator[Witness]:
    seen = Witness()

    async def collect(sub: Any) -> None:
        async for event in sub:
            seen.events.append(event)

    async with sup.subscribe(cid, scope=scope, after=0) as sub, anyio.create_task_group() as tg:
        tg.start_soon(collect, sub)
        yield seen
        tg.cancel_scope.cancel()


def assert_frames_match(frames: list[Frame], events: list[Event]) -> None:
    assert [(f.id, f.event) for f in frames] == [(e.seq, e.event_type) for e in events]
    assert [f.data for f in frames] == [as_json(e) for e in events]


async def test_events_stream_as_sse_with_seq_ids_and_class_names() -> None:
    async with open_app() as env, asgi_stream(env.app, "/conversations/c-1/events") as stream:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"].startswith("no-cache")
        first = await stream.frame()
        assert first.fields == {"retry": "1000"}

        snapshot = await stream.event()
        assert (snapshot.id, snapshot.event) == (0, "StatusChanged")
        assert snapshot.data["status"] == "not_running"
        assert snapshot.data["seq"] == 0

        await env.send("c-1", "hello there")
        frames = await stream.until(is_status("idle"))
        frames = [f for f in frames if f.id > 0]
        frames += await stream.until(is_status("idle"))
        assert [f.id for f in frames] == list(range(1, len(frames) + 1))
        for frame in frames:
            assert frame.data["seq"] == frame.id
            assert frame.data["type"] == frame.event
            assert frame.data["conversation_id"] == "c-1"
        kinds = [f.event for f in frames]
        assert kinds[:3] == ["StatusChanged", "StatusChanged", "MessageAppended"]
        assert "".join(f.data["text"] for f in frames if f.event == "Delta") == "echo: hello there"
        assert frames[-2].event == "MessageAppended"
        assert frames[-2].data["message"]["content"] == "echo: hello there"


async def test_a_reconnect_with_last_event_id_gets_exactly_the_missed_events_then_live_ones() -> (
    None
):
    async with open_app() as env:
        await env.send("c-1", "one")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        async with witness(env.sup, "c-1") as seen:
            async with asgi_stream(env.app, "/conversations/c-1/events") as first:
                await first.event()
                await env.send("c-1", "two")
                got = await first.until(is_status("idle"))
            # The client saw only part of the second turn before its connection dropped.
            last_id = got[len(got) // 2].id
            await env.send("c-1", "three while away")
            await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
            missed = seen.after(last_id)
            assert len(missed) > 5

            async with asgi_stream(
                env.app,
                "/conversations/c-1/events",
                headers={**ALICE, "Last-Event-ID": str(last_id)},
            ) as second:
                replayed = [await second.event() for _ in missed]
                assert_frames_match(replayed, missed)

                await env.send("c-1", "four, live")
                live = await second.until(is_status("idle"))
                # The stream may deliver a burst before the witness task has read it.
                await wait_until(lambda: bool(seen.events) and seen.events[-1].seq >= live[-1].id)
                new = seen.after(missed[-1].seq)
                assert_frames_match(live, new[: len(live)])
                assert live[0].id == missed[-1].seq + 1


async def test_after_query_parameter_works_like_last_event_id_and_the_header_wins() -> None:
    async with open_app() as env:
        await env.send("c-1", "one")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        async with asgi_stream(env.app, "/conversations/c-1/events", query="after=3") as stream:
            assert (await stream.event()).id == 4
        async with asgi_stream(
            env.app,
            "/conversations/c-1/events",
            query="after=3",
            headers={**ALICE, "Last-Event-ID": "5"},
        ) as stream:
            assert (await stream.event()).id == 6


@pytest.mark.parametrize(
    ("header", "query"),
    [
        ("+3", ""),
        ("1_000", ""),
        ("\u0663", ""),  # an Arabic-Indic three: int() takes it, the document does not
        ("1" * 19, ""),
        ("3", "after=x"),  # checked although the header wins
        (None, "after=1&after=2"),
        (None, "after="),
    ],
)
async def test_resume_points_take_exactly_what_the_document_says(
    header: str | None, query: str
) -> None:
    headers = dict(ALICE) if header is None else {**ALICE, "Last-Event-ID": header}
    async with (
        open_app() as env,
        asgi_stream(env.app, "/conversations/c-1/events", headers=headers, query=query) as s,
    ):
        assert s.status == 400
        assert (await s.json())["error"] == "ValidationError"


async def test_a_blank_last_event_id_is_no_resume_point() -> None:
    headers = {**ALICE, "Last-Event-ID": " "}
    async with (
        open_app() as env,
        asgi_stream(env.app, "/conversations/c-1/events", headers=headers) as s,
    ):
        assert s.status == 200
        assert (await s.event()).data["status"] == "not_running"


async def test_a_gap_in_the_replay_buffer_starts_with_a_marked_snapshot() -> None:
    async with open_app(supervisor_opts={"replay_buffer": 4}) as env:
        await env.send("c-1", "a long enough reply to fall out of the buffer")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        async with asgi_stream(
            env.app, "/conversations/c-1/events", headers={**ALICE, "Last-Event-ID": "1"}
        ) as stream:
            snapshot = await stream.event()
            assert snapshot.event == "StatusChanged"
            assert snapshot.data["gap"] is True
            assert snapshot.data["status"] == "idle"


async def test_a_quiet_stream_sends_heartbeat_comments() -> None:
    async with (
        open_app(heartbeat=0.05) as env,
        asgi_stream(env.app, "/conversations/c-1/events") as stream,
    ):
        await stream.event()
        with anyio.fail_after(WAIT):
            while len(stream.comments) < 3:
                frame = await stream.frame()
                if frame.comment is not None:
                    stream.comments.append(frame.comment)
        assert stream.comments[:3] == ["ping", "ping", "ping"]


async def test_a_client_that_disconnects_is_unsubscribed_at_once() -> None:
    # No heartbeats and no events: only the disconnect itself can end the stream.
    async with open_app(heartbeat=None) as env:
        await env.send("c-1", "hello")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        async with asgi_stream(env.app, "/conversations/c-1/events") as stream:
            await stream.event()
            assert env.sup.subscriber_count("c-1") == 1
            assert env.sup.viewer_count("c-1") == 1
            stream.disconnect()
            with anyio.fail_after(0.5):
                await stream.finished.wait()
            assert env.sup.subscriber_count("c-1") == 0
            assert env.sup.viewer_count("c-1") == 0


async def test_an_open_stream_keeps_the_session_alive() -> None:
    clock = ManualClock()
    async with open_app(clock=clock, supervisor_opts={"inactivity_timeout": 60.0}) as env:
        await env.send("c-1", "hello")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        async with asgi_stream(env.app, "/conversations/c-1/events") as stream:
            await stream.event()
            for _ in range(5):
                clock.advance(60.0)
                await anyio.wait_all_tasks_blocked()  # the timer acted, if it would
            assert await env.sup.status("c-1", scope="alice") == Status.IDLE
        clock.advance(60.0)
        await wait_for_status(env.sup, "c-1", Status.NOT_RUNNING, scope="alice")


async def test_when_the_stream_leaves_the_session_stops_after_the_viewer_grace() -> None:
    clock = ManualClock()
    opts = {"inactivity_timeout": 60.0, "viewer_grace": 1.0}
    async with open_app(clock=clock, supervisor_opts=opts) as env:
        await env.send("c-1", "hello")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        async with env.sup.subscribe("c-1", scope="alice") as direct:
            async with asgi_stream(env.app, "/conversations/c-1/events") as stream:
                await stream.event()
                clock.advance(30.0)
                await anyio.wait_all_tasks_blocked()  # the timer acted, if it would
            clock.advance(0.5)
            await anyio.wait_all_tasks_blocked()  # the timer acted, if it would
            assert await env.sup.status("c-1", scope="alice") == Status.IDLE
            clock.advance(1.0)
            shutdown = await wait_for_event(direct, lambda e: isinstance(e, Shutdown))
            assert isinstance(shutdown, Shutdown)
            assert shutdown.reason == "no_viewers"


async def test_a_viewer_leaving_after_a_long_view_still_gets_the_grace() -> None:
    clock = ManualClock()
    opts = {"inactivity_timeout": 60.0, "viewer_grace": 1.0}
    async with open_app(clock=clock, supervisor_opts=opts) as env:
        await env.send("c-1", "hello")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
        async with asgi_stream(env.app, "/conversations/c-1/events") as stream:
            await stream.event()
            clock.advance(300.0)
            await anyio.wait_all_tasks_blocked()  # the timer acted, if it would
        clock.advance(0.5)
        await anyio.wait_all_tasks_blocked()  # the timer acted, if it would
        # A page reload reconnects within the grace and finds its session running.
        assert await env.sup.status("c-1", scope="alice") == Status.IDLE


async def test_a_stream_opened_before_the_session_starts_counts_as_a_viewer() -> None:
    clock = ManualClock()
    async with (
        open_app(clock=clock, supervisor_opts={"inactivity_timeout": 60.0}) as env,
        asgi_stream(env.app, "/conversations/c-1/events") as stream,
    ):
        await stream.event()
        await env.send("c-1", "hello")
        await stream.until(is_status("idle"))
        for _ in range(5):
            clock.advance(60.0)
            await anyio.wait_all_tasks_blocked()  # the timer acted, if it would
        assert await env.sup.status("c-1", scope="alice") == Status.IDLE


async def test_an_unknown_conversation_streams_its_not_running_snapshot_and_waits() -> None:
    async with open_app() as env, asgi_stream(env.app, "/conversations/new/events") as stream:
        snapshot = await stream.event()
        assert snapshot.data["status"] == "not_running"
        assert snapshot.id == 0
        with pytest.raises(TimeoutError):
            await stream.event(timeout=0.2)
        assert not stream.ended

        await env.send("new", "first words")
        frames = await stream.until(is_status("idle"))
        assert frames[0].id == 1
        assert frames[0].data["status"] == "idle"


async def test_a_stream_goes_blind_when_someone_else_creates_the_conversation() -> None:
    async with (
        open_app(heartbeat=0.05) as env,
        asgi_stream(env.app, "/conversations/x/events") as stream,
    ):
        assert (await stream.event()).data["status"] == "not_running"
        assert (await env.send("x", "mine now", headers=BOB)).status_code == 202
        await wait_for_status(env.sup, "x", Status.IDLE, scope="bob")
        # It lets go of bob's conversation at once...
        await wait_until(lambda: env.sup.subscriber_count("x") == 0)
        await wait_until(lambda: env.sup.viewer_count("x") == 0)
        # ...and does not end (an end would tell alice the id was just taken): it
        # goes on as a stream on an unused id, with heartbeats and not a single
        # event of bob's conversation.
        pings = len(stream.comments)
        with pytest.raises(TimeoutError):
            await stream.event(timeout=0.3)
        assert len(stream.comments) >= pings + 2
        assert not stream.ended


async def test_a_blind_stream_ends_when_the_supervisor_closes() -> None:
    async with open_app(enter=False, heartbeat=None) as env:
        leave = anyio.Event()
        failed: list[BaseException] = []

        async def run_supervisor(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            async with env.sup:
                task_status.started()
                await leave.wait()

        async def stream_until_the_end() -> None:
            # A failure must not cancel the supervisor's task: it is left, not cancelled.
            try:
                await env.send("c-1", "hello", headers=BOB)
                await wait_for_status(env.sup, "c-1", Status.IDLE, scope="bob")
                async with asgi_stream(env.app, "/conversations/c-1/events") as stream:
                    assert (await stream.event()).data["status"] == "not_running"
                    leave.set()
                    assert await stream.end() == []
            except Exception as exc:
                failed.append(exc)
            finally:
                leave.set()

        async with anyio.create_task_group() as tg:
            await tg.start(run_supervisor)
            await stream_until_the_end()
        if failed:
            raise failed[0]


class CrashOnce(ScriptedAgent):
    """Crashes on its first turn only (the crashing message stays in the history)."""

    def __init__(self) -> None:
        super().__init__(stream=True, crash_on=())
        self.crashed = False

    async def run(self, turn: Any) -> Any:
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("crashed on cue")
        return await super().run(turn)


async def test_the_stream_reports_restarts_and_stops_and_reattaches() -> None:
    agent = CrashOnce()
    opts = {"restart_on_error": True}
    async with (
        open_app(agent=agent, supervisor_opts=opts) as env,
        asgi_stream(env.app, "/conversations/c-1/events") as stream,
    ):
        frames = [await stream.event()]
        await env.send("c-1", "crash now")
        frames += await stream.until(lambda f: f.event == "Restarted")
        assert frames[-1].data["attempt"] == 1
        assert "crashed on cue" in frames[-1].data["error"]
        frames += await stream.until(is_status("idle"))
        assert "error" in [f.data["status"] for f in frames if f.event == "StatusChanged"]

        await env.client.delete("/conversations/c-1", headers=ALICE)
        frames += await stream.until(lambda f: f.event == "Shutdown")
        assert frames[-1].data["reason"] == "stopped"

        await env.send("c-1", "hello again")
        frames += await stream.until(
            lambda f: f.event == "MessageAppended" and f.data["message"]["role"] == "assistant"
        )
        assert frames[-1].data["message"]["content"] == "echo: crash now\nhello again"
        ids = [f.id for f in frames]
        assert ids == list(range(len(ids)))


async def test_a_stream_that_falls_behind_ends_and_the_reconnect_resumes_it() -> None:
    agent = ScriptedAgent(lambda text: " ".join(["word"] * 80), stream=True)
    opts = {"subscriber_buffer": 8, "replay_buffer": 1000}
    async with open_app(agent=agent, supervisor_opts=opts) as env, witness(env.sup, "c-1") as seen:
        # A "network" that holds one chunk: the app blocks as on a stalled client.
        async with asgi_stream(env.app, "/conversations/c-1/events", buffer=1) as stalled:
            await stalled.frame()
            await env.send("c-1", "go")
            await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice")
            # Cut off: only the witness is still subscribed.
            assert env.sup.subscriber_count("c-1") == 1
            received = await stalled.end()
        assert stalled.ended
        assert received[0].id == 0
        last = received[-1].id
        assert last < seen.events[-1].seq
        async with asgi_stream(
            env.app,
            "/conversations/c-1/events",
            headers={**ALICE, "Last-Event-ID": str(last)},
        ) as resumed:
            rest = [await resumed.event() for _ in seen.after(last)]
        assert_frames_match(received[1:] + rest, seen.after(0))


async def test_close_event_streams_ends_every_stream_and_refuses_new_ones() -> None:
    async with (
        open_app(heartbeat=None) as env,
        asgi_stream(env.app, "/conversations/a/events") as a,
        asgi_stream(env.app, "/conversations/b/events", headers=BOB) as b,
    ):
        await a.event()
        await b.event()
        assert close_event_streams(env.app) == 2
        assert await a.end() == []
        assert await b.end() == []
        async with asgi_stream(env.app, "/conversations/c/events") as refused:
            assert refused.status == 503
            assert (await refused.json())["error"] == "RegistryUnavailable"
        assert (await env.client.get("/readyz")).status_code == 503


async def test_draining_the_supervisor_ends_the_streams() -> None:
    async with open_app(enter=False, heartbeat=None) as env:
        leave = anyio.Event()

        async def run_supervisor(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            async with env.sup:
                task_status.started()
                await leave.wait()

        async with anyio.create_task_group() as tg:
            await tg.start(run_supervisor)
            await env.send("c-1", "hello")
            async with asgi_stream(env.app, "/conversations/c-1/events") as stream:
                await stream.event()
                leave.set()
                rest = await stream.end()
        assert rest[-1].event == "Shutdown"
        assert rest[-1].data["reason"] == "drain"


def test_close_event_streams_refuses_other_apps() -> None:
    with pytest.raises(LookupError):
        close_event_streams(object())
