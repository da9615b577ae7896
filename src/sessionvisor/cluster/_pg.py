"""The PostgreSQL plumbing the lease table and the inbox share: one lazily
opened async pool per object, tables created once under an advisory lock.

Every call is bounded by the object's ``timeout``: the connect (libpq's
``connect_timeout``), the wait for a free connection (the pool's timeout), the
statement on the server (``statement_timeout``) and again on the client (a
cancel scope), since a connection whose packets are dropped never hears of the
server's timeout. TCP keepalives and
``tcp_user_timeout`` let the kernel close a connection to a peer that is gone.
A ``reserved`` call runs on a connection of its own, which a burst of other
calls cannot take: the lease renewal must get through while requests queue.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Self

import anyio

from .._closing import ClosedOnExit
from ._common import check_table_name, import_psycopg, require_asyncio

if TYPE_CHECKING:
    import psycopg_pool
    from psycopg import sql

__all__ = ["PgTable", "check_conversation_id", "check_ids"]


def check_conversation_id(conversation_id: object) -> str:
    if not isinstance(conversation_id, str):
        raise TypeError(f"conversation_id must be a str, got {type(conversation_id).__name__}")
    if not conversation_id or len(conversation_id) > 256:
        raise ValueError(f"conversation_id must be 1 to 256 characters, got {len(conversation_id)}")
    return conversation_id


def check_ids(conversation_ids: Iterable[str], name: str = "conversation_ids") -> list[str]:
    # A str is an iterable of str: renew("c-1") would renew "c", "-" and "1".
    if isinstance(conversation_ids, str | bytes):
        raise TypeError(
            f"{name} must be an iterable of ids, not a single {type(conversation_ids).__name__}"
        )
    return sorted({check_conversation_id(cid) for cid in conversation_ids})


class PgTable(ClosedOnExit):
    """An object owning a table (and its pool) in PostgreSQL."""

    _kind = "table"

    def __init__(self, dsn: str, table: str, *, max_connections: int, timeout: float = 5.0) -> None:
        self._psycopg, _ = import_psycopg()
        if not isinstance(dsn, str) or not dsn:
            raise TypeError(f"{self._kind} dsn must be a non-empty str, got {dsn!r}")
        self._parts = check_table_name(self._kind, table)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"max_connections must be an int, got {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
        if not timeout > 0 or timeout == float("inf"):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        self._dsn = dsn
        self._timeout = float(timeout)
        self._table = table
        self._max_connections = max_connections
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._reserved: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._opening: anyio.Lock | None = None
        self._closed = False

    @property
    def table(self) -> str:
        """The table name, as given."""
        return self._table

    def _ident(self, suffix: str = "") -> sql.Identifier:
        from psycopg import sql

        *schema, name = self._parts
        return sql.Identifier(*schema, name + suffix)

    def _compose(self, template: str, **names: Any) -> sql.Composed:
        from psycopg import sql

        return sql.SQL(template).format(t=self._ident(), **names)

    def _schema(self) -> list[sql.Composed]:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self._get_pool()
        return self

    async def aclose(self) -> None:
        """Close the pools. Idempotent."""
        self._closed = True
        pools = [self._pool, self._reserved]
        self._pool = self._reserved = None
        with anyio.CancelScope(shield=True):
            for pool in pools:
                if pool is not None:
                    await pool.close()

    def connect_kwargs(self) -> dict[str, Any]:
        """The connection settings added to the dsn's (which win when they set one)."""
        from psycopg.conninfo import conninfo_to_dict

        given = conninfo_to_dict(self._dsn)
        seconds = self._timeout
        added: dict[str, Any] = {
            # libpq counts whole seconds, and takes less than 2 as 2.
            "connect_timeout": max(2, math.ceil(seconds)),
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(seconds)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": math.ceil(seconds * 1000),
        }
        kwargs = {key: value for key, value in added.items() if key not in given}
        options = str(given.get("options", ""))
        if "statement_timeout" not in options:
            # In the startup packet, so connect_timeout covers it (a SET after
            # connecting could hang on a dead link); milliseconds.
            timeout = f"-c statement_timeout={math.ceil(seconds * 1000)}"
            kwargs["options"] = f"{options} {timeout}".strip()
        return {"autocommit": True, **kwargs}

    def _new_pool(self, size: int, name: str) -> psycopg_pool.AsyncConnectionPool[Any]:
        import psycopg_pool

        return psycopg_pool.AsyncConnectionPool(
            self._dsn,
            min_size=1,
            max_size=size,
            kwargs=self.connect_kwargs(),
            open=False,
            name=name,
            timeout=self._timeout,
        )

    async def _get_pool(self, reserved: bool = False) -> psycopg_pool.AsyncConnectionPool[Any]:
        require_asyncio(repr(self))
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._pool is not None and not reserved:
            return self._pool
        if self._reserved is not None and reserved:
            return self._reserved
        if self._opening is None:
            self._opening = anyio.Lock()
        async with self._opening:
            if self._pool is None:
                pool = self._new_pool(self._max_connections, repr(self))
                try:
                    await pool.open(wait=True, timeout=self._timeout)
                    with anyio.fail_after(self._timeout):
                        await self._create(pool)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await pool.close()
                    raise
                self._pool = pool
            if not reserved:
                return self._pool
            if self._reserved is None:
                # Opened in the background: a call waits for its connection
                # (within the timeout), the opening does not.
                pool = self._new_pool(1, f"{self!r} reserved")
                await pool.open(wait=False)
                self._reserved = pool
            return self._reserved

    async def _create(self, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        async with pool.connection() as conn, conn.transaction():
            # Two nodes creating the same table at once can collide in the
            # catalog even with IF NOT EXISTS. One lock for every cluster
            # table: a lease table creates the inbox's.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sessionvisor:cluster'))")
            for statement in self._schema():
                await conn.execute(statement)

    async def _fetch(
        self, query: sql.Composed, params: Any, *, reserved: bool = False
    ) -> list[tuple[Any, ...]]:
        """One statement (its own transaction: the connections autocommit).

        Raises ``psycopg_pool.PoolTimeout`` when no connection is free within
        the timeout, ``TimeoutError`` when the statement takes longer than
        that; ``reserved`` runs it on the connection no other call takes.
        """
        pool = await self._get_pool(reserved)
        async with pool.connection() as conn:  # psycopg_pool.PoolTimeout after the timeout
            with anyio.fail_after(self._timeout):
                cur = await conn.execute(query, params)
                return await cur.fetchall() if cur.description else []


def monotonic() -> float:
    return time.monotonic()


#: Monotonic seconds (``time.monotonic`` unless a test injects another).
Clock = Callable[[], float]
