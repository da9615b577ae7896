"""Crash safety under group commit: ``kill -9`` a process while a thousand
conversations save concurrently, then check the store.

A zygote process imports sessionvisor once and forks one writer per round, so
twenty rounds fit in seconds. Each writer runs 1,000 conversations that save
a growing history (one message more per save, the append-only path), and
writes an acknowledgement line after each save returned. The test kills the
writer with SIGKILL after a random number of acknowledgements, then checks
every conversation: each acknowledged message is stored, in order, once; the
only message beyond them is the one save that was in flight (all of it or
nothing); no message row lies beyond the stored count.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from sessionvisor.state import SQLiteStore
from tests._support.servers import require_server
from tests._support.sql import POSTGRES_DSN, sql

CONVERSATIONS = 1000
ROUNDS = 20

_ZYGOTE = textwrap.dedent(
    """
    import os, sys
    import anyio
    from sessionvisor.state import SQLiteStore, StoredConversation

    class History(list):
        __slots__ = ("__weakref__",)

    def ack(text):
        os.write(1, text.encode())

    async def converse(store, cid):
        history, version, n = History(), None, 0
        while True:
            history.append({
                "id": f"{cid}-{n}", "role": "user", "content": f"{cid}:{n}",
                "created_at": "2026-01-01T00:00:00Z", "metadata": {},
            })
            state = {"version": 1, "messages": history, "queued": [], "metadata": {},
                     "interrupt": None}
            version = await store.save(
                cid, StoredConversation(state=state), expected_version=version,
                lifecycle="completion",
            )
            ack(f"ack {cid} {n}\\n")
            n += 1

    async def write(kind, target, conversations, prefix):
        if kind == "sqlite":
            store = SQLiteStore(target)
        else:
            from sessionvisor.state.postgres import PostgresStore
            dsn, table = target.rsplit("|", 1)
            store = PostgresStore(dsn, table=table)
        async with store, anyio.create_task_group() as tg:
            ack("ready\\n")
            for i in range(conversations):
                tg.start_soon(converse, store, f"{prefix}c{i}")

    for line in sys.stdin:
        kind, target, backend, conversations, prefix = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                anyio.run(write, kind, target, int(conversations), prefix, backend=backend)
            finally:
                os._exit(0)
        ack(f"pid {pid}\\n")
        os.waitpid(pid, 0)
        ack(f"dead {pid}\\n")
    """
)


class Zygote:
    """The forking parent of the writers, driven line by line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def round(
        self, kind: str, target: str, backend: str, kill_after: int, prefix: str = "-"
    ) -> dict[str, int]:
        """Run one writer, SIGKILL it after ``kill_after`` acks; return the last ack per id."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{kind} {target} {backend} {CONVERSATIONS} {prefix}\n")
        self.proc.stdin.flush()
        acked: dict[str, int] = {}
        pid = None
        seen = 0
        ready = False
        killed = False
        for line in self.proc.stdout:
            word, *rest = line.split()
            if word == "pid":
                pid = int(rest[0])
            elif word == "ready":
                ready = True
            elif word == "ack":
                cid, n = rest[0], int(rest[1])
                # Each conversation acknowledges its saves in order, one by one.
                assert n == acked.get(cid, -1) + 1, line
                acked[cid] = n
                seen += 1
            elif word == "dead":
                assert killed, "the writer died before it was killed"
                return acked
            if not killed and pid is not None and ready and seen >= kill_after:
                os.kill(pid, signal.SIGKILL)
                killed = True
        raise AssertionError("the zygote exited")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    made = Zygote()
    try:
        yield made
    finally:
        made.close()


def check(
    stored: dict[str, list[str]], counts: dict[str, int], acked: dict[str, int], prefix: str = "-"
) -> None:
    for i in range(CONVERSATIONS):
        cid = f"{prefix}c{i}"
        texts = stored.get(cid, [])
        last = acked.get(cid, -1)
        # In order and once: exactly the first len(texts) messages sent.
        assert texts == [f"{cid}:{n}" for n in range(len(texts))], cid
        # Every acknowledged save is there; beyond it at most the one in flight.
        assert last + 1 <= len(texts) <= last + 2, (cid, last, len(texts))
        # No row of a save that did not commit lies past the stored count.
        assert counts.get(cid, 0) == len(texts), cid


def kill_points(rng: random.Random) -> list[int]:
    # Early (mid-creation of the conversations), and later in the appends.
    return [
        rng.choice([rng.randint(0, CONVERSATIONS), rng.randint(0, 6 * CONVERSATIONS)])
        for _ in range(ROUNDS)
    ]


@pytest.mark.slow
def test_sqlite_keeps_every_acknowledged_save_across_kill_9(zygote: Zygote, tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for round_no, kill_after in enumerate(kill_points(rng)):
        path = tmp_path / f"round-{round_no}.db"
        backend = "trio" if round_no % 2 else "asyncio"
        acked = zygote.round("sqlite", str(path), backend, kill_after)

        stored = anyio.run(_load_all_sqlite, path)
        conn = sqlite3.connect(path)
        try:
            counts = dict(conn.execute("SELECT conversation_id, count(*) FROM messages GROUP BY 1"))
        finally:
            conn.close()
        try:
            check(stored, counts, acked)
        except AssertionError as exc:
            raise AssertionError(
                f"round {round_no} (seed {seed}, kill after {kill_after})"
            ) from exc


async def _load_all_sqlite(path: Path) -> dict[str, list[str]]:
    async with SQLiteStore(path) as store:
        return await _load_all(store)


async def _load_all(store: Any, prefix: str = "-") -> dict[str, list[str]]:
    stored: dict[str, list[str]] = {}

    async def load(first: int) -> None:
        for i in range(first, CONVERSATIONS, 20):
            cid = f"{prefix}c{i}"
            record = await store.load(cid)  # a half-written row would raise here
            if record is not None:
                stored[cid] = [m["content"] for m in record.state["messages"]]
                assert record.version == len(stored[cid])

    async with anyio.create_task_group() as tg:
        for first in range(20):
            tg.start_soon(load, first)
    return stored


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_keeps_every_acknowledged_save_across_kill_9(zygote: Zygote) -> None:
    require_server("PostgreSQL", 5432)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # One table for every round (its tables are made once), fresh ids per round.
    table = f"sv_crash_{uuid.uuid4().hex[:10]}"
    try:
        for round_no, kill_after in enumerate(kill_points(rng)):
            prefix = f"r{round_no}-"
            backend = "trio" if round_no % 2 else "asyncio"
            acked = zygote.round("postgres", f"{POSTGRES_DSN}|{table}", backend, kill_after, prefix)

            stored = anyio.run(_load_all_postgres, table, prefix)
            counts = dict(
                sql(
                    POSTGRES_DSN,
                    f"SELECT conversation_id, count(*) FROM {table}_messages "
                    "WHERE conversation_id LIKE %s GROUP BY 1",
                    prefix + "%",
                )
            )
            try:
                check(stored, counts, acked, prefix)
            except AssertionError as exc:
                raise AssertionError(
                    f"round {round_no} (seed {seed}, kill after {kill_after})"
                ) from exc
    finally:
        names = ", ".join(
            f"{table}{suffix}" for suffix in ("", "_messages", "_quarantine", "_qmessages")
        )
        sql(POSTGRES_DSN, f"DROP TABLE IF EXISTS {names}")


async def _load_all_postgres(table: str, prefix: str) -> dict[str, list[str]]:
    from sessionvisor.state.postgres import PostgresStore

    async with PostgresStore(POSTGRES_DSN, table=table) as store:
        return await _load_all(store, prefix)
