"""Quickstart: one conversation, end to end.

A router validates the request into a config model, a factory builds the
agent and seeds a fresh State, the agent streams its replies, everything is
saved in SQLite, and a second supervisor (a new process, in effect) reloads
the conversation: the restored State wins over the factory's seed.

Run it with ``.venv/bin/python examples/quickstart.py`` (offline, ~1 s).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from sessionvisor import (
    Delta,
    FunctionAgent,
    SessionSupervisor,
    SingleRouter,
    SQLiteStore,
    Status,
    StatusChanged,
    Subscription,
    Turn,
)


class ChatConfig(BaseModel):
    """What the router validates for each conversation (request_opts + scope + id)."""

    conversation_id: str
    persona: str = "friendly"


GREETINGS = {"pirate": "Ahoy!", "butler": "Good evening."}


def make_agent(agent_id: str, config: ChatConfig) -> Any:
    """The factory: an agent, and the State a *new* conversation starts with."""

    async def reply(turn: Turn) -> None:
        meta = turn.state.metadata
        meta["turns"] += 1
        text = turn.state.messages[-1].text()
        answer = f"{meta['greeting']} You said {text!r}. This is turn {meta['turns']}."
        for word in answer.split(" "):
            turn.delta(word + " ")  # streamed to subscribers; becomes the reply
            await anyio.sleep(0)

    greeting = GREETINGS.get(config.persona, "Hello!")
    fresh = {"metadata": {"persona": config.persona, "greeting": greeting, "turns": 0}}
    return FunctionAgent(reply), {"fresh_state_attrs": fresh}


async def say(
    sup: SessionSupervisor, events: Subscription, cid: str, text: str, **opts: Any
) -> None:
    """Send one message and print the streamed reply until the turn is over."""
    print(f"user> {text}")
    await sup.send(cid, text, **opts)
    print("agent> ", end="")
    running = False
    async for event in events:
        if isinstance(event, Delta):
            print(event.text, end="", flush=True)
        elif isinstance(event, StatusChanged):
            running = running or event.status is Status.RUNNING
            if running and event.status is Status.IDLE:
                print()
                return


async def main(db_path: Path | None = None) -> None:
    """Run the quickstart; the SQLite file is temporary unless ``db_path`` is given."""
    with tempfile.TemporaryDirectory() as tmp:
        db = db_path or Path(tmp) / "chat.db"
        router = SingleRouter(make_agent, config=ChatConfig)

        print("== first process ==")
        async with SQLiteStore(db) as store, SessionSupervisor(router, store=store) as sup:
            info = await sup.start("c-42", request_opts={"persona": "pirate"})
            print(f"started {info.agent_id} (new: {info.started})")
            async with sup.subscribe("c-42") as events:
                await say(sup, events, "c-42", "Hello")
                await say(sup, events, "c-42", "How are you?")
        print(f"saved to {db.name}")

        print("== second process, same file ==")
        async with SQLiteStore(db) as store, SessionSupervisor(router, store=store) as sup:
            async with sup.subscribe("c-42") as events:
                # The factory now offers a butler's fresh State, but the conversation
                # exists: restored state wins over fresh_state_attrs.
                opts = {"request_opts": {"persona": "butler"}}
                await say(sup, events, "c-42", "Still there?", **opts)
            state = await sup.load("c-42")
            assert state is not None
            meta = state.metadata
            print(f"history: {len(state.messages)} messages, restored from SQLite")
            print(f"restored state wins: persona={meta['persona']}, turns={meta['turns']}")


if __name__ == "__main__":
    import logging

    import structlog

    # Keep the example's output to the conversation; the runtime logs at info.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
