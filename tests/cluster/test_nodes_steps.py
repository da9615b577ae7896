"""A turn of durable steps whose owner is killed (kill -9) inside a step is
finished by another node, and no step that completed runs again.

Three real nodes (``python -m sessionvisor serve steps_app:router``, see
``_nodes``) share the module's fresh PostgreSQL database and its
redis-server. They serve the step agent of ``tests/_support/steps.py``: five
steps per turn, each writing a side-effect line with fsync. The owner blocks
in ``charge`` (not idempotent) just after its side effect and is killed there.
Once its lease runs out, another node takes the conversation over with no
request and runs the turn again. ``reserve`` and ``quote`` come back from the store
and do not run again. ``charge`` is reported as unknown to the agent, which does
not call it again, as its policy says. ``render`` and ``notify`` run once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from sessionvisor.state import State
from sessionvisor.state.postgres import PostgresStore
from sessionvisor.testing import free_port, wait_until
from tests._support.servers import RedisServer
from tests._support.steps import STEPS, Tally, check, effects, held, write_app

from ._nodes import (
    HEADERS,
    LEASE_TTL,
    POLL,
    Node,
    Nodes,
    check_one_owner,
    explained,
    postgres_url,
    read_leases,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def _argv(node_id: str, port: int, store_url: str, redis_url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sessionvisor",
        "serve",
        "steps_app:router",
        "--store",
        store_url,
        "--cluster",
        redis_url,
        "--node-id",
        node_id,
        "--port",
        str(port),
        "--lease-ttl",
        str(LEASE_TTL),
        "--inactivity-timeout",
        "none",
    ]


async def _stored(dsn: str, cid: str) -> State | None:
    async with PostgresStore(dsn, max_connections=1) as store:
        record = await store.load(cid)
    return None if record is None else State.model_validate(record.state)


async def test_the_owner_killed_inside_a_step_another_node_finishes_the_turn_without_repeats(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    cid, mid = "steps-failover", "steps-failover-m0"
    write_app(tmp_path)  # the nodes run in tmp_path, so they import steps_app from there
    (tmp_path / "holds.txt").write_text(f"{cid} {mid} charge after\n")
    store_url = postgres_url(pg_dsn)
    made = []
    for node_id in ("n1", "n2", "n3"):
        port = free_port()
        made.append(
            Node(node_id, _argv(node_id, port, store_url, redis_server.url), port, tmp_path)
        )
    nodes = Nodes(made)
    try:
        await nodes.start()
        async with httpx.AsyncClient(headers=HEADERS, timeout=10) as http:
            sent = await http.post(
                f"{nodes['n1'].url}/conversations/{cid}/messages",
                json={"content": "buy", "id": mid},
            )
            assert sent.status_code == 202, sent.text
        await wait_until(
            lambda: f"{cid} {mid} charge after" in held(tmp_path),
            timeout=60,
            interval=POLL,
            message=explained("the turn blocks in charge", nodes.report),
        )
        leases = read_leases(pg_dsn, cid)
        owner = nodes[leases[cid].node_id]
        before = await _stored(pg_dsn, cid)
        assert before is not None and before.journal is not None
        # Cut inside charge: the two steps before it are stored as completed.
        assert [(s.name, s.status) for s in before.journal.steps] == [
            ("reserve", "completed"),
            ("quote", "completed"),
            ("charge", "started"),
        ]
        owner.kill()

        state: State | None = None

        async def answered() -> bool:
            nonlocal state
            state = await _stored(pg_dsn, cid)
            return (
                state is not None
                and state.messages[-1].role == "assistant"
                and state.journal is None
            )

        await wait_until(
            answered,
            timeout=60,
            interval=POLL,
            message=explained("another node finishes the turn", nodes.report),
        )
        assert state is not None
        assert state.messages[-1].text() == (
            f"answered {mid}: ok:reserve ok:quote unknown:charge ok:render ok:notify"
        )
        # Each step's side effect ran exactly once: none was repeated by the takeover.
        ran = effects(tmp_path)
        assert {step: ran[(cid, mid, step)] for step, _ in STEPS} == {step: 1 for step, _ in STEPS}
        tally = Tally()
        assert check({cid: state}, {cid: [mid]}, ran, tally) == []
        assert tally.unknown == [f"{cid} {mid} charge"]
        new_owner = check_one_owner(pg_dsn, cid, [cid])[cid].node_id
        assert new_owner != owner.node_id
    finally:
        nodes.close()
        print(nodes.report(80))
