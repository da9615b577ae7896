"""The PostgreSQL plumbing the lease table and the inbox share: one lazily
opened async pool per object, tables created once under an advisory lock."""

from __future__ import annotations

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
        """Close the pool. Idempotent."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.CancelScope(shield=True):
                await pool.close()

    async def _get_pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        require_asyncio(repr(self))
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = anyio.Lock()
        async with self._opening:
            if self._pool is None:
                import psycopg_pool

                pool = psycopg_pool.AsyncConnectionPool(
                    self._dsn,
                    min_size=1,
                    max_size=self._max_connections,
                    # libpq's connect_timeout counts whole seconds (at least 2).
                    kwargs={"autocommit": True, "connect_timeout": max(2, int(self._timeout))},
                    open=False,
                    name=repr(self),
                    timeout=self._timeout,
                )
                try:
                    await pool.open(wait=True, timeout=self._timeout)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await pool.close()
                    raise
                try:
                    async with pool.connection() as conn, conn.transaction():
                        # Two nodes creating the same table at once can collide
                        # in the catalog even with IF NOT EXISTS. One lock for
                        # every cluster table: a lease table creates the inbox's.
                        await conn.execute(
                            "SELECT pg_advisory_xact_lock(hashtext('sessionvisor:cluster'))"
                        )
                        for statement in self._schema():
                            await conn.execute(statement)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await pool.close()
                    raise
                self._pool = pool
        return self._pool

    async def _fetch(self, query: sql.Composed, params: Any) -> list[tuple[Any, ...]]:
        """One statement (its own transaction: the connections autocommit)."""
        pool = await self._get_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []


def monotonic() -> float:
    return time.monotonic()


#: Monotonic seconds (``time.monotonic`` unless a test injects another).
Clock = Callable[[], float]
