"""``PostgresStore``: conversations in a PostgreSQL table (extra ``postgres``).

Install with ``pip install 'sessionvisor[postgres]'`` (psycopg 3). psycopg's
async API needs asyncio and sessionvisor must also run on trio, so the store
drives psycopg's synchronous API on worker threads (``anyio.to_thread``) over
a small pool of connections, at most one thread per connection at a time.

Writes are single conditional statements (``INSERT ... ON CONFLICT DO
NOTHING`` to create, ``UPDATE ... WHERE version = %s`` to update): PostgreSQL
re-checks the ``WHERE`` after waiting for a concurrent writer's row lock, so of
two writers that expected the same version exactly one succeeds, on any
number of machines.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from .._errors import CorruptStateError
from ._serializer import CheckedState, MigrationRegistry, decode_state
from ._store import Lifecycle, StoredConversation
from ._writes import (
    check_lifecycle,
    check_limit,
    closed,
    is_unanswered,
    nothing_to_quarantine,
    quarantine_key,
    stale_write,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["PostgresStore"]

_T = TypeVar("_T")

# PostgreSQL truncates identifiers at 63 bytes; leave room for "_quarantine"
# so the two tables never end up with the same (truncated) name.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,51}")

_COLUMNS = "state, version, owner, route_key, request_opts, last_seq, updated_at, lifecycle"


class _Queries:
    """Every statement of one store, composed once with its table names."""

    def __init__(self, compose: Callable[[str], sql.Composed]) -> None:
        self.load = compose(f"SELECT {_COLUMNS} FROM {{t}} WHERE id = %s")
        self.version = compose("SELECT version FROM {t} WHERE id = %s")
        self.insert = compose(
            f"INSERT INTO {{t}} (id, {_COLUMNS}, unanswered) "
            "VALUES (%s, %s, 1, %s, %s, %s, %s, now(), %s, %s) "
            "ON CONFLICT (id) DO NOTHING RETURNING version"
        )
        self.update = compose(
            "UPDATE {t} SET state = %s, version = version + 1, owner = %s, route_key = %s, "
            "request_opts = %s, last_seq = %s, updated_at = now(), lifecycle = %s, "
            "unanswered = %s "
            "WHERE id = %s AND version = %s RETURNING version"
        )
        self.delete = compose("DELETE FROM {t} WHERE id = %s")
        self.lock = compose("SELECT 1 FROM {t} WHERE id = %s FOR UPDATE")
        self.count_quarantined = compose("SELECT count(*) FROM {q} WHERE conversation_id = %s")
        self.key_taken = compose("SELECT 1 FROM {q} WHERE key = %s")
        self.move_aside = compose(
            f"INSERT INTO {{q}} (key, conversation_id, {_COLUMNS}, quarantined_at) "
            f"SELECT %s, id, {_COLUMNS}, now() FROM {{t}} WHERE id = %s"
        )
        self.create_table = compose(
            "CREATE TABLE IF NOT EXISTS {t} ("
            "id TEXT PRIMARY KEY, state JSONB, version BIGINT NOT NULL, owner TEXT, "
            "route_key TEXT, request_opts JSONB, last_seq BIGINT, "
            "updated_at TIMESTAMPTZ, lifecycle TEXT, "
            "unanswered BOOLEAN NOT NULL DEFAULT false)"
        )
        # Tables made by releases before the index get the column, filled in once.
        self.add_unanswered = compose(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS unanswered BOOLEAN NOT NULL DEFAULT false"
        )
        self.fill_unanswered = compose(
            "UPDATE {t} SET unanswered = true WHERE NOT unanswered AND "
            "(lifecycle IN ('turn_start', 'queued') OR (jsonb_typeof(state) = 'object' "
            "AND jsonb_typeof(state -> 'queued') = 'array' "
            "AND jsonb_array_length(state -> 'queued') > 0))"
        )
        self.index_unanswered = compose(
            "CREATE INDEX IF NOT EXISTS {i} ON {t} (id) WHERE unanswered"
        )
        self.has_unanswered = (
            "SELECT 1 FROM information_schema.columns WHERE table_schema = "
            "coalesce(%s, current_schema()) AND table_name = %s AND column_name = 'unanswered'"
        )
        self.unanswered = compose("SELECT id FROM {t} WHERE unanswered LIMIT %s")
        self.create_quarantine = compose(
            "CREATE TABLE IF NOT EXISTS {q} ("
            "key TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, state JSONB, "
            "version BIGINT, owner TEXT, route_key TEXT, request_opts JSONB, "
            "last_seq BIGINT, updated_at TIMESTAMPTZ, lifecycle TEXT, "
            "quarantined_at TIMESTAMPTZ NOT NULL)"
        )


def _import_psycopg() -> ModuleType:
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError(
            "PostgresStore needs psycopg 3, which is not installed; "
            "install it with: pip install 'sessionvisor[postgres]'"
        ) from exc
    return psycopg


class PostgresStore:
    """A ``StateStore`` backed by a PostgreSQL table.

    The table (and ``<table>_quarantine`` for rows moved aside) is created on
    first use when missing. The state and the request options are ``JSONB``
    columns; note that ``JSONB`` cannot hold the character U+0000, so a state
    containing it fails to save with a psycopg error.

    Args:
        dsn: a libpq connection string or URL (``"postgresql://u@host/db"``).
        table: the table name, optionally schema-qualified (``"app.convs"``);
            letters, digits and underscores, at most 52 characters per part.
        max_connections: how many connections (and worker threads) the store
            uses at most.
        migrations: the registry ``load`` upgrades old states with; the default
            one (``register_migration``) when None.

    Raises:
        ImportError: psycopg is not installed (install ``sessionvisor[postgres]``).
        ValueError: ``table`` is not a plain (optionally schema-qualified) name.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "sessionvisor_conversations",
        max_connections: int = 4,
        migrations: MigrationRegistry | None = None,
    ) -> None:
        self._psycopg = _import_psycopg()
        from psycopg import sql

        parts = table.split(".")
        if len(parts) > 2 or not all(_NAME.fullmatch(part) for part in parts):
            raise ValueError(
                f"PostgresStore table name {table!r} must be a name of letters, digits and "
                "underscores (at most 52 characters), optionally prefixed by a schema"
            )
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        *schema, name = parts
        self._dsn = dsn
        self._table_name = table
        self._migrations = migrations
        self._table = sql.Identifier(*schema, name)
        self._quarantine = sql.Identifier(*schema, f"{name}_quarantine")
        self._index = sql.Identifier(f"{name}_unanswered")
        self._schema_and_name = (schema[0] if schema else None, name)
        self._q = _Queries(self._sql)
        self._limiter = anyio.CapacityLimiter(max_connections)
        # Guards the idle list and the flags; held only for list operations,
        # never across a database call.
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[tuple[Any, ...]]] = []
        self._ready = False
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresStore(table={self._table_name!r})"

    async def __aenter__(self) -> PostgresStore:
        await self._run(lambda conn: None)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections; calls in flight finish first. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []

        def close_all() -> None:
            for conn in idle:
                conn.close()

        # Shielded: a cancelled close would leak server connections.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close_all)

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """Return the stored conversation, or None when there is none.

        The state is checked with ``load_state`` (and upgraded when it was
        written with an older schema; the row itself is not rewritten).
        The first ``load_state`` of the returned state reuses that check
        instead of validating the history again.

        Returns:
            The record, or None.

        Raises:
            CorruptStateError: the row cannot be read (a state that is not a
                JSON object or that ``load_state`` refuses, a malformed
                column); the row is left untouched.
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        query = self._q.load

        def fetch(conn: psycopg.Connection[tuple[Any, ...]]) -> tuple[Any, ...] | None:
            return conn.execute(query, (conversation_id,)).fetchone()

        row = await self._run(fetch)
        if row is None:
            return None
        # Validating a long history is pure CPU: off the event loop, and
        # without holding one of the pool's connections.
        return await anyio.to_thread.run_sync(self._decode_row, conversation_id, row)

    async def save(
        self,
        conversation_id: str,
        record: StoredConversation,
        *,
        expected_version: int | None,
        lifecycle: Lifecycle,
    ) -> int:
        """Write ``record`` if the stored version is ``expected_version``.

        ``expected_version=None`` means the conversation must not exist yet.
        The record's ``version``, ``updated_at`` and ``lifecycle`` are replaced.

        Returns:
            The new version (1 for a new conversation).

        Raises:
            StaleWriteError: the stored version is not ``expected_version``.
            ValueError: ``lifecycle`` is not one of ``LIFECYCLES``.
            TypeError: the state or request options hold a value JSON cannot encode.
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        check_lifecycle(conversation_id, lifecycle)
        from psycopg.types.json import Jsonb

        query = self._q.insert if expected_version is None else self._q.update
        current = self._q.version

        def write(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
            # Jsonb encodes when the query is sent: here, on the worker thread.
            state, opts = Jsonb(record.state), Jsonb(record.request_opts)
            common = (record.owner, record.route_key, opts, record.last_seq)
            flag = is_unanswered(lifecycle, record.state)
            if expected_version is None:
                params: tuple[Any, ...] = (conversation_id, state, *common, lifecycle, flag)
            else:
                params = (state, *common, lifecycle, flag, conversation_id, expected_version)
            row = conn.execute(query, params).fetchone()
            if row is not None:
                return int(row[0])
            # Lost: read what is there now, only to name it in the error.
            found = conn.execute(current, (conversation_id,)).fetchone()
            raise stale_write(
                conversation_id, expected_version, None if found is None else found[0]
            )

        return await self._run(write)

    async def unanswered(self, limit: int | None = None) -> list[str]:
        """Return the ids of the conversations with work the agent has not answered.

        Those whose last save had the lifecycle ``turn_start`` or ``queued``, or
        whose state holds queued messages: each save keeps a boolean column and
        a partial index holds only the flagged rows, so this reads that index.

        Args:
            limit: at most this many ids (None: all of them).

        Raises:
            ValueError: ``limit`` is negative.
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        check_limit(limit)
        query = self._q.unanswered

        def select(conn: psycopg.Connection[tuple[Any, ...]]) -> list[str]:
            return [row[0] for row in conn.execute(query, (limit,)).fetchall()]

        return await self._run(select)

    async def delete(self, conversation_id: str) -> None:
        """Remove the conversation; a missing one is not an error.

        Raises:
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        query = self._q.delete

        def remove(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            conn.execute(query, (conversation_id,))

        await self._run(remove)

    async def quarantine(self, conversation_id: str) -> str:
        """Move the conversation's row, unchanged, to ``<table>_quarantine``.

        The row gets the key ``"<id>#quarantine-<n>"``; afterwards
        ``load(conversation_id)`` returns None.

        Returns:
            The quarantine key.

        Raises:
            NothingStored: no row is stored for the conversation (a ``LookupError``).
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        q = self._q

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> str:
            with conn.transaction():
                # The row lock makes a concurrent quarantine of the same
                # conversation wait, then find the row gone.
                if conn.execute(q.lock, (conversation_id,)).fetchone() is None:
                    raise nothing_to_quarantine(conversation_id)
                row = conn.execute(q.count_quarantined, (conversation_id,)).fetchone()
                n = (0 if row is None else int(row[0])) + 1
                while conn.execute(q.key_taken, (quarantine_key(conversation_id, n),)).fetchone():
                    n += 1
                key = quarantine_key(conversation_id, n)
                conn.execute(q.move_aside, (key, conversation_id))
                conn.execute(q.delete, (conversation_id,))
            return key

        return await self._run(run)

    # -- machinery ---------------------------------------------------------

    def _sql(self, template: str) -> sql.Composed:
        from psycopg import sql

        return sql.SQL(template).format(t=self._table, q=self._quarantine, i=self._index)

    async def _run(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], _T]) -> _T:
        if self._closed:
            raise closed(self)
        return await anyio.to_thread.run_sync(self._call, fn, limiter=self._limiter)

    def _call(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], _T]) -> _T:
        # On a worker thread. The limiter caps the threads at max_connections,
        # so the pool never holds more connections than that.
        conn = self._checkout()
        try:
            result = fn(conn)
        except BaseException:
            self._checkin(conn)
            raise
        self._checkin(conn)
        return result

    def _checkout(self) -> psycopg.Connection[tuple[Any, ...]]:
        with self._lock:
            if self._closed:
                raise closed(self)
            if self._idle:
                return self._idle.pop()
            ready = self._ready
        conn: psycopg.Connection[tuple[Any, ...]] = self._psycopg.connect(
            self._dsn, autocommit=True
        )
        if not ready:
            try:
                self._create_tables(conn)
            except BaseException:
                conn.close()
                raise
            with self._lock:
                self._ready = True
        return conn

    def _checkin(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        # A broken connection (server restart, network) is dropped so the
        # next call opens a fresh one instead of failing again.
        with self._lock:
            if not self._closed and not conn.closed and not conn.broken:
                self._idle.append(conn)
                return
        conn.close()

    def _create_tables(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        with conn.transaction():
            # Two stores creating the same table at once can collide in the
            # catalog even with IF NOT EXISTS; the advisory lock lines them up.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"sessionvisor:{self._table_name}",),
            )
            conn.execute(self._q.create_table)
            conn.execute(self._q.create_quarantine)
            schema, name = self._schema_and_name
            if conn.execute(self._q.has_unanswered, (schema, name)).fetchone() is None:
                conn.execute(self._q.add_unanswered)
                conn.execute(self._q.fill_unanswered)
            conn.execute(self._q.index_unanswered)

    def _decode_row(self, conversation_id: str, row: tuple[Any, ...]) -> StoredConversation:
        state_raw, version, owner, route_key, opts_raw, last_seq, updated_at, lifecycle = row
        where = f"the stored row of conversation {conversation_id!r}"
        if not isinstance(state_raw, Mapping):
            # psycopg already parsed the JSONB; anything but an object (a JSON
            # string holding truncated text, say) is not a state.
            kind = "NULL" if state_raw is None else f"a JSON {type(state_raw).__name__}"
            raise CorruptStateError(f"cannot read {where}: its state is {kind}, not an object")
        upgraded, validated = decode_state(state_raw, conversation_id, migrations=self._migrations)
        request_opts = {} if opts_raw is None else opts_raw
        if not isinstance(request_opts, dict):
            raise CorruptStateError(f"cannot read {where}: its request_opts are not an object")
        if updated_at is None:
            raise CorruptStateError(f"cannot read {where}: its updated_at is NULL")
        return StoredConversation(
            state=CheckedState(upgraded, validated),
            version=int(version),
            owner=owner,
            route_key=route_key,
            request_opts=request_opts,
            last_seq=0 if last_seq is None else int(last_seq),
            updated_at=updated_at,
            lifecycle=lifecycle,
        )
