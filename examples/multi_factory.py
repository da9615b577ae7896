"""Two factories behind one KeyedRouter, and sticky routing across a restart.

The client says which kind of conversation it wants (``request_opts["kind"]``);
the router validates the rest of the request with that route's own config
model. After a "process restart" (a new supervisor over the same SQLite file)
a conversation comes back with the factory and the options it was created
with, even though the new request does not repeat them.

Run it with ``.venv/bin/python examples/multi_factory.py`` (offline).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel

from sessionvisor import (
    FunctionAgent,
    KeyedRouter,
    MessageAppended,
    NoRouteError,
    RouteChangedError,
    RouteValidationError,
    SessionSupervisor,
    SQLiteStore,
    Turn,
)

# -- two kinds of conversation, each with its own validated config --------------------


class SupportConfig(BaseModel):
    product: str
    tier: Literal["free", "pro"] = "free"


class SalesConfig(BaseModel):
    region: Literal["eu", "us"] = "eu"

    @property
    def currency(self) -> str:
        return {"eu": "EUR", "us": "USD"}[self.region]


def support_factory(agent_id: str, config: SupportConfig) -> Any:
    async def reply(turn: Turn) -> str:
        wait = "1 hour" if config.tier == "pro" else "3 days"
        return f"[support/{config.product}/{config.tier}] A technician replies within {wait}."

    return FunctionAgent(reply, name="support")


def sales_factory(agent_id: str, config: SalesConfig) -> Any:
    async def reply(turn: Turn) -> str:
        return f"[sales/{config.region}] The pro plan costs 20 {config.currency} a month."

    return FunctionAgent(reply, name="sales")


def select(scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Any:
    """Pick the route by a property of the conversation; the router validates the rest."""
    return request_opts.get("kind")


router = KeyedRouter(
    select,
    {"support": (support_factory, SupportConfig), "sales": (sales_factory, SalesConfig)},
)

# -- a little driver ---------------------------------------------------------------------


async def ask(sup: SessionSupervisor, cid: str, text: str, **opts: Any) -> None:
    """Send a message and print the reply (or the refusal)."""
    print(f"{cid} user> {text}" + (f"  {opts}" if opts else ""))
    try:
        async with sup.subscribe(cid) as events:
            await sup.send(cid, text, **opts)
            async for event in events:
                if isinstance(event, MessageAppended) and event.message.role == "assistant":
                    print(f"{cid} agent> {event.message.text()}")
                    break
    except RouteValidationError as exc:
        fields = [".".join(map(str, e["loc"])) + ": " + e["msg"] for e in exc.errors]
        print(f"{cid} refused: RouteValidationError {fields}")
    except (NoRouteError, RouteChangedError) as exc:
        print(f"{cid} refused: {type(exc).__name__}: {exc}")


async def main(db_path: Path | None = None) -> None:
    """Run the example; the SQLite file is temporary unless ``db_path`` is given."""
    with tempfile.TemporaryDirectory() as tmp:
        db = db_path or Path(tmp) / "chat.db"

        print("== first process ==")
        async with SQLiteStore(db) as store, SessionSupervisor(router, store=store) as sup:
            support = {"kind": "support", "product": "printer", "tier": "pro"}
            await ask(sup, "c-support", "My printer is on fire", request_opts=support)
            await ask(sup, "c-sales", "How much?", request_opts={"kind": "sales", "region": "us"})
            await ask(sup, "c-bad", "Help", request_opts={"kind": "support", "tier": "gold"})
            await ask(sup, "c-none", "Hi", request_opts={"kind": "legal"})

        print("== second process, same file ==")
        async with SQLiteStore(db) as store, SessionSupervisor(router, store=store) as sup:
            # No request_opts: the recorded ones choose the route and build the config.
            await ask(sup, "c-support", "It is still burning")
            await ask(sup, "c-sales", "And in a year?")
            # Waking a conversation into another route is refused...
            await sup.stop("c-support")
            await ask(sup, "c-support", "Sell me one", request_opts={"kind": "sales"})
            # ...unless the caller reroutes on purpose (the history comes along).
            opts = {"request_opts": {"kind": "sales", "region": "eu"}, "reroute": True}
            await ask(sup, "c-support", "Sell me one", **opts)
            record = await store.load("c-support")
            assert record is not None
            print(f"c-support is now recorded as {record.route_key!r} {record.request_opts}")


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
