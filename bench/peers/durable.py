"""The durable peers: what a user would pick instead of sessionvisor for resumable chats.

Two frameworks, each with the stores a deployment would use, driven through
the same three workloads as sessionvisor's W2, W3 and W6 (see
docs/performance.md), with an agent that makes no model call and replies with
the number of messages it sees:

- ``langgraph``: a ``MessagesState`` graph START -> reply -> END compiled with
  a checkpointer (``InMemorySaver``, ``AsyncSqliteSaver`` on a file,
  ``AsyncPostgresSaver``); one conversation is one thread, and ``ainvoke``
  returns after its checkpoint is written.
- ``agno``: an ``Agent`` whose model is an offline stub, with a session db
  (``InMemoryDb``, ``SqliteDb``, ``PostgresDb``) and the whole history in its
  context; one conversation is one session, read and written by every ``arun``.

Workloads: ``w2`` sequential turns on one conversation, with a flat history
(LangGraph: the input removes the old messages first; Agno, which cannot drop
a session's history: a new session per turn) and with a growing one, reported
per window; ``w3`` many conversations at once, each conversation's turns in
order behind a lock of its own (neither framework orders concurrent turns of
one conversation); ``w6`` a new saver/db on the store that holds the growing
conversation (2 x turns messages), then one turn: ms to the reply.

Runs only on asyncio (both frameworks are asyncio libraries), from the venv of
``bench/requirements-peers.txt``:

    .venv-peers/bin/python bench/peers/durable.py --peer langgraph --store sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("AGNO_TELEMETRY", "false")

PG_DSN = os.environ.get("SVBENCH_POSTGRES_DSN", "postgresql://root@127.0.0.1:5432/test")


# --------------------------------------------------------------------------- LangGraph


class LangGraphPeer:
    def __init__(self, store: str, where: str) -> None:
        self.store, self.where = store, where
        self.saver: Any = None
        self.graph: Any = None
        self._memory: Any = None

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        from langchain_core.messages import AIMessage
        from langgraph.graph import END, START, MessagesState, StateGraph

        async def reply(state: MessagesState) -> dict[str, Any]:
            return {"messages": [AIMessage(content=str(len(state["messages"])))]}

        async with self._saver() as saver:
            graph = StateGraph(MessagesState)
            graph.add_node("reply", reply)
            graph.add_edge(START, "reply")
            graph.add_edge("reply", END)
            self.graph = graph.compile(checkpointer=saver)
            yield

    @contextlib.asynccontextmanager
    async def _saver(self) -> AsyncIterator[Any]:
        if self.store == "memory":
            from langgraph.checkpoint.memory import InMemorySaver

            self._memory = self._memory or InMemorySaver()
            yield self._memory
        elif self.store == "sqlite":
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            async with AsyncSqliteSaver.from_conn_string(self.where) as saver:
                await saver.setup()
                yield saver
        else:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

            async with AsyncPostgresSaver.from_conn_string(self.where) as saver:
                await saver.setup()
                yield saver

    async def turn(self, conversation: str, text: str, *, flat: bool = False) -> str:
        from langchain_core.messages import HumanMessage, RemoveMessage
        from langgraph.graph.message import REMOVE_ALL_MESSAGES

        messages: list[Any] = [HumanMessage(content=text)]
        if flat:
            messages.insert(0, RemoveMessage(id=REMOVE_ALL_MESSAGES))
        out = await self.graph.ainvoke(
            {"messages": messages}, config={"configurable": {"thread_id": conversation}}
        )
        return str(out["messages"][-1].content)


# --------------------------------------------------------------------------- Agno


def _count_model() -> Any:
    from agno.models.base import Model
    from agno.models.response import ModelResponse

    @dataclass
    class CountModel(Model):
        """Replies with the number of messages it was given; calls nothing."""

        id: str = "count"
        name: str = "count"
        provider: str = "none"

        def invoke(self, messages: Any, assistant_message: Any = None, **kw: Any) -> Any:
            return ModelResponse(role="assistant", content=str(len(messages)))

        async def ainvoke(self, messages: Any, assistant_message: Any = None, **kw: Any) -> Any:
            return self.invoke(messages)

        def invoke_stream(self, messages: Any, assistant_message: Any = None, **kw: Any) -> Any:
            yield self.invoke(messages)

        async def ainvoke_stream(
            self, messages: Any, assistant_message: Any = None, **kw: Any
        ) -> Any:
            yield self.invoke(messages)

        def _parse_provider_response(self, response: Any, **kw: Any) -> Any:
            return response

        def _parse_provider_response_delta(self, response: Any) -> Any:
            return response

    return CountModel()


class AgnoPeer:
    def __init__(self, store: str, where: str) -> None:
        self.store, self.where = store, where
        self.agent: Any = None
        self._memory: Any = None
        self._flat = 0

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        from agno.agent import Agent

        if self.store == "memory":
            from agno.db.in_memory import InMemoryDb

            self._memory = db = self._memory or InMemoryDb()
        elif self.store == "sqlite":
            from agno.db.sqlite import SqliteDb

            db = SqliteDb(db_file=self.where)
        else:
            from agno.db.postgres import PostgresDb

            db = PostgresDb(db_url=self.where.replace("postgresql://", "postgresql+psycopg://"))
        self.agent = Agent(
            model=_count_model(),
            db=db,
            add_history_to_context=True,
            num_history_runs=10**9,
            telemetry=False,
        )
        yield

    async def turn(self, conversation: str, text: str, *, flat: bool = False) -> str:
        if flat:  # no way to drop a session's history: a new session per turn
            self._flat += 1
            conversation = f"{conversation}-{self._flat}"
        out = await self.agent.arun(text, session_id=conversation)
        return str(out.content)


PEERS = {"langgraph": LangGraphPeer, "agno": AgnoPeer}


# --------------------------------------------------------------------------- workloads


async def w2(peer: Any, flat_turns: int, growing_turns: int) -> dict[str, Any]:
    await peer.turn("w2-flat", "warm", flat=True)
    t0 = time.perf_counter_ns()
    for i in range(flat_turns):
        await peer.turn("w2-flat", str(i), flat=True)
    flat_us = (time.perf_counter_ns() - t0) / flat_turns / 1e3
    windows = []
    size = max(1, growing_turns // 5)
    t0 = tw = time.perf_counter_ns()
    for i in range(growing_turns):
        reply = await peer.turn("w2-grow", str(i))
        if (i + 1) % size == 0:
            t = time.perf_counter_ns()
            windows.append(
                {"turns": size, "history_at_end": 2 * (i + 1), "us_per_call": (t - tw) / size / 1e3}
            )
            tw = t
    return {
        "us_per_call": flat_us,
        "flat_turns": flat_turns,
        "growing": {
            "calls": growing_turns,
            "us_per_call": (time.perf_counter_ns() - t0) / growing_turns / 1e3,
            "windows": windows,
            "last_reply": reply,
        },
    }


async def w3(peer: Any, conversations: int, msgs: int) -> dict[str, Any]:
    locks = {f"w3-{c}": asyncio.Lock() for c in range(conversations)}
    replies: dict[str, list[str]] = {cid: [] for cid in locks}

    async def send(cid: str, text: str) -> None:
        async with locks[cid]:
            replies[cid].append(await peer.turn(cid, text))

    t0 = time.perf_counter_ns()
    await asyncio.gather(*(send(cid, str(i)) for i in range(msgs) for cid in locks))
    seconds = (time.perf_counter_ns() - t0) / 1e9
    return {
        "conversations": conversations,
        "msgs_per_conversation": msgs,
        "msgs_per_s": conversations * msgs / seconds,
    }


async def w6(peer: Any) -> dict[str, Any]:
    """A new saver/db on the store that holds w2's growing conversation, then one turn."""
    t0 = time.perf_counter_ns()
    async with peer.opened():
        reply = await peer.turn("w2-grow", "wake")
        ms = (time.perf_counter_ns() - t0) / 1e6
    return {"ms_reply": ms, "reply": reply}


@contextlib.asynccontextmanager
async def place(store: str) -> AsyncIterator[str]:
    """Where the peer keeps its data: a temp file, or a database made for the run."""
    if store == "memory":
        yield ""
    elif store == "sqlite":
        with tempfile.TemporaryDirectory(prefix="svpeer-") as tmp:
            yield os.path.join(tmp, "peer.db")
    else:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        name = f"svpeer_{os.getpid()}"
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        try:
            p = conninfo_to_dict(PG_DSN)
            user = f"{p['user']}@" if p.get("user") else ""
            yield f"postgresql://{user}{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{name}"
        finally:
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"peer": args.peer, "store": args.store}
    async with place(args.store) as where:
        peer = PEERS[args.peer](args.store, where)
        async with peer.opened():
            out["w2"] = await w2(peer, args.w2_flat, args.w2_growing)
            out["w3"] = await w3(peer, args.w3_conversations, args.w3_msgs)
        if args.store != "memory":
            out["w6"] = await w6(peer)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", choices=sorted(PEERS), required=True)
    ap.add_argument("--store", choices=["memory", "sqlite", "postgres"], required=True)
    ap.add_argument("--w2-flat", type=int, default=500)
    ap.add_argument("--w2-growing", type=int, default=500)
    ap.add_argument("--w3-conversations", type=int, default=200)
    ap.add_argument("--w3-msgs", type=int, default=10)
    args = ap.parse_args()
    result = asyncio.run(main_async(args))
    result["versions"] = {
        name: importlib.metadata.version(name)
        for name in ("langgraph", "agno", "sqlalchemy", "psycopg")
        if _installed(name)
    }
    result["w2_growing_turns"] = args.w2_growing
    print(json.dumps(result))
    return 0


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
