"""PostgreSQL unreachable from a node: nothing is acknowledged that is not
stored, calls fail with ``RegistryUnavailable``, and the node recovers when
the database is back.

The machine's PostgreSQL keeps running (other tests use it): the node reaches
it through a TCP relay of the test's own, which the test cuts (every open
connection closed, new ones refused) and restores.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator

import anyio
import pytest

from sessionvisor import RegistryUnavailable, SessionSupervisor, SingleRouter
from sessionvisor.cluster import Cluster
from sessionvisor.state.postgres import PostgresStore
from sessionvisor.testing import ScriptedAgent, wait_until
from tests._support.servers import RedisServer
from tests._support.sql import sql

pytestmark = pytest.mark.anyio


class Relay:
    """Forwards TCP connections from a free local port to PostgreSQL's."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.cut_off = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.cut_off = True
        with self._lock:
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._open.clear()

    def restore(self) -> None:
        self.cut_off = False

    def close(self) -> None:
        self.cut()
        self._listener.close()


@pytest.fixture
def relay() -> Iterator[Relay]:
    gate = Relay(("127.0.0.1", 5432))
    try:
        yield gate
    finally:
        gate.close()


def _through(dsn: str, port: int) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    parts = conninfo_to_dict(dsn)
    parts.update(host="127.0.0.1", port=str(port), connect_timeout="2")
    return make_conninfo(**parts)


async def test_while_the_database_is_unreachable_nothing_unstored_is_acknowledged(
    pg_dsn: str, redis_server: RedisServer, relay: Relay
) -> None:
    cid = "c-" + uuid.uuid4().hex[:8]
    router = SingleRouter(lambda agent_id, config: ScriptedAgent())
    dsn = _through(pg_dsn, relay.port)
    cluster = Cluster(redis_server.url, node_id="a", lease_ttl=2.0, prefix="t" + cid)
    async with (
        PostgresStore(dsn) as store,
        SessionSupervisor(router, store=store, cluster=cluster) as node,
    ):
        await node.send(cid, "before", scope="u", message_id="m1")
        relay.cut()
        with anyio.fail_after(60):
            with pytest.raises(RegistryUnavailable):
                await node.send(cid, "during", scope="u", message_id="m2")
            with pytest.raises(RegistryUnavailable):
                await node.send("c-new-" + cid, "hello", scope="u")
            # Unable to renew its lease, the node stops serving the conversation at
            # the lease's deadline: past it another node could have taken it.
            await wait_until(lambda: node.get(cid, scope="u") is None, timeout=60, interval=0.05)
        relay.restore()

        # The client retries the refused message with its id, once the database is back.
        async def accepted() -> bool:
            try:
                await node.send(cid, "during", scope="u", message_id="m2")
            except RegistryUnavailable:
                return False
            return True

        rows: list[tuple[object, ...]] = []

        def answered() -> bool:
            rows[:] = sql(
                pg_dsn,
                "SELECT body FROM sessionvisor_conversations_messages "
                "WHERE conversation_id = %s ORDER BY position",
                cid,
            )
            return len(rows) >= 4

        with anyio.fail_after(60):
            await wait_until(accepted, timeout=60, interval=0.2)
            await wait_until(answered, timeout=60, interval=0.05)
    import json

    messages = [json.loads(str(row[0])) for row in rows]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "before"),
        ("assistant", "echo: before"),
        ("user", "during"),
        ("assistant", "echo: during"),
    ]
