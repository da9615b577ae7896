"""Durable timers across real node processes: a timer whose owner is killed with
``kill -9`` before it is due fires exactly once, on another node, with no request.

Three ``python -m sessionvisor demo`` processes share the module's fresh PostgreSQL
database and its private redis-server (see ``_nodes``). The demo agent answers
"remind me in N seconds to X" at once, schedules a timer, and says "Reminder: X"
when it fires.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from sessionvisor.testing import wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

from ._nodes import (
    HEADERS,
    POLL,
    STORE_TABLE,
    cluster_nodes,
    explained,
    read_leases,
    read_store,
    text_of,
)

pytestmark = pytest.mark.anyio
TIMERS = f"{STORE_TABLE}_timers"


def _timer_rows(dsn: str, cid: str) -> int:
    return int(sql(dsn, f"SELECT count(*) FROM {TIMERS} WHERE conversation_id = %s", cid)[0][0])


def _reminders(dsn: str, cid: str) -> list[str]:
    stored = read_store(dsn, cid).get(cid)
    if stored is None:
        return []
    return [
        text_of(m)
        for m in stored.messages
        if m.get("role") == "assistant" and text_of(m).startswith("Reminder:")
    ]


async def test_a_timer_fires_once_on_another_node_after_its_owner_is_killed(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    cid = "timer-owner-kill"
    async with (
        cluster_nodes(pg_dsn, redis_server.url, tmp_path) as nodes,
        httpx.AsyncClient(headers=HEADERS, timeout=10) as http,
    ):
        n1 = nodes["n1"]
        sent = await http.post(
            f"{n1.url}/conversations/{cid}/messages",
            json={"content": "remind me in 3 seconds to stand up"},
        )
        assert sent.status_code == 202, sent.text
        await wait_until(
            lambda: _timer_rows(pg_dsn, cid) == 1,
            timeout=30,
            interval=POLL,
            message=explained("the timer stored", nodes.report),
        )
        leases = read_leases(pg_dsn, cid)
        owner = nodes[leases[cid].node_id]
        owner.kill()  # before the timer is due
        assert _reminders(pg_dsn, cid) == []

        await wait_until(
            lambda: _reminders(pg_dsn, cid) and _timer_rows(pg_dsn, cid) == 0,
            timeout=60,
            interval=POLL,
            message=explained("the reminder after the owner's kill", nodes.report),
        )
        new_owner = read_leases(pg_dsn, cid)[cid].node_id
        assert new_owner != owner.node_id
        # Once: and still once after every live node's timer loop has polled again.
        await anyio.sleep(2.0)
        assert _reminders(pg_dsn, cid) == ["Reminder: stand up"]
        fired = [
            m for m in read_store(pg_dsn, cid)[cid].messages if "timer" in (m.get("metadata") or {})
        ]
        assert len(fired) == 1


async def test_a_timer_scheduled_on_one_node_fires_on_the_owner_within_a_second(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    cid = "timer-elsewhere"
    async with (
        cluster_nodes(pg_dsn, redis_server.url, tmp_path) as nodes,
        httpx.AsyncClient(headers=HEADERS, timeout=10) as http,
    ):
        n1 = nodes["n1"]
        sent = await http.post(f"{n1.url}/conversations/{cid}/messages", json={"content": "hi"})
        assert sent.status_code == 202, sent.text
        await wait_until(lambda: cid in read_leases(pg_dsn, cid), timeout=30, interval=POLL)
        owner = read_leases(pg_dsn, cid)[cid].node_id
        other = next(n for n in nodes if n.node_id != owner)
        made = await http.post(
            f"{other.url}/conversations/{cid}/timers",
            json={"delay": 1.0, "payload": {"reminder": "tea"}},
        )
        assert made.status_code == 201, made.text
        started = anyio.current_time()
        await wait_until(
            lambda: _reminders(pg_dsn, cid),
            timeout=30,
            interval=POLL,
            message=explained("the reminder", nodes.report),
        )
        assert anyio.current_time() - started < 1.0 + 1.0 + 0.5  # due in 1 s, fired within 1 s
        assert _reminders(pg_dsn, cid) == ["Reminder: tea"]
        assert read_leases(pg_dsn, cid)[cid].node_id == owner
