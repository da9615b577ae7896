"""An agent that crashes on cue, and a supervisor that restarts it.

With ``restart_on_error=True`` a turn that raises also crashes the session's
actor: the supervisor asks the router and the factory again, reloads the
conversation from the store, emits ``Restarted`` and logs
``session_restarting``/``session_restarted``. Messages that queued up behind
the crashing turn survive and are answered by the next turn.

Run it with ``.venv/bin/python examples/crash_and_recover.py`` (offline); the
runtime's log lines are part of the output.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio

from sessionvisor import (
    FunctionAgent,
    MessageAppended,
    MessageQueued,
    Restarted,
    SessionSupervisor,
    SingleRouter,
    SQLiteStore,
    State,
    Status,
    StatusChanged,
    Subscription,
    Turn,
)


def make_router(release: anyio.Event) -> SingleRouter:
    """A router whose agent crashes on "crash" (once ``release`` is set)."""

    def factory(agent_id: str, config: Any) -> Any:
        async def on_start(state: State) -> State:
            # Called when the actor starts and again after each restart.
            state.metadata["starts"] = state.metadata.get("starts", 0) + 1
            return state

        async def reply(turn: Turn) -> str:
            newest = turn.state.messages[-1].text()
            if "crash" in newest:
                await release.wait()  # hold the turn so that messages queue behind it
                raise RuntimeError("the model backend fell over")
            unanswered: list[str] = []
            for message in reversed(turn.state.messages):
                if message.role == "assistant":
                    break
                unanswered.insert(0, message.text())
            starts = turn.state.metadata["starts"]
            return f"(actor start #{starts}) answering {unanswered}"

        return FunctionAgent(reply, on_start=on_start)

    return SingleRouter(factory)


async def show_until(events: Subscription, done: Any) -> None:
    """Print the events that tell the story, until ``done(event)``."""
    async for event in events:
        if isinstance(event, MessageQueued):
            print(f"  queued: {event.message.text()!r}")
        elif isinstance(event, MessageAppended) and event.message.role == "assistant":
            print(f"  agent> {event.message.text()}")
        elif isinstance(event, Restarted):
            print(f"  restarted: attempt {event.attempt} after {event.error}")
        elif isinstance(event, StatusChanged) and event.status is Status.ERROR:
            print(f"  turn failed: {event.error}")
        if done(event):
            return


def idle_after_reply() -> Any:
    replied = False

    def done(event: Any) -> bool:
        nonlocal replied
        if isinstance(event, MessageAppended) and event.message.role == "assistant":
            replied = True
        return replied and isinstance(event, StatusChanged) and event.status is Status.IDLE

    return done


async def main(db_path: Path | None = None) -> None:
    """Run the example; the SQLite file is temporary unless ``db_path`` is given."""
    release = anyio.Event()
    opts = {"restart_on_error": True}
    with tempfile.TemporaryDirectory() as tmp:
        db = db_path or Path(tmp) / "chat.db"
        async with (
            SQLiteStore(db) as store,
            SessionSupervisor(make_router(release), store=store, supervisor_opts=opts) as sup,
            sup.subscribe("c-1") as events,
        ):
            print("user> hello")
            await sup.send("c-1", "hello")
            await show_until(events, idle_after_reply())

            print("user> crash now")
            await sup.send("c-1", "crash now")
            for text in ("are you there?", "please answer"):
                delivery = await sup.send("c-1", text)
                print(f"user> {text}  (queued: {delivery.queued})")
            await show_until(events, lambda e: isinstance(e, MessageQueued))
            await show_until(events, lambda e: isinstance(e, MessageQueued))

            release.set()  # the held turn now crashes
            await show_until(events, idle_after_reply())

            handle = sup.get("c-1")
            assert handle is not None
            print(f"restarts: {handle.info().restarts}")
            state = await sup.load("c-1")
            assert state is not None
            print("history, as stored:")
            for message in state.messages:
                print(f"  {message.role}: {message.text()}")


if __name__ == "__main__":
    anyio.run(main)
