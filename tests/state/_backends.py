"""The stores the contract runs against (see the ``backend`` fixture in conftest.py).

A ``Backend`` opens store instances over one shared place (a dict, a SQLite
file, a Postgres table) and can read and damage rows behind the store's back,
the way a crash, a bad deploy or a hand edit would.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

from sessionvisor.state import MemoryStore, MigrationRegistry, SQLiteStore, StoredConversation
from sessionvisor.testing import overwrite_stored_state, raw_quarantined_record, raw_record
from tests._support.sql import POSTGRES_DSN, sql

#: A truncated state, as a write cut off mid-way leaves it.
TRUNCATED = '{"messages": [{"role": "user", "content": "hel'


class Backend:
    """Opens stores over one shared place and reaches into it directly."""

    kind: str
    #: False for MemoryStore: two instances share nothing, so "two writers"
    #: means two tasks on one instance.
    shared_across_instances = True

    def __init__(self) -> None:
        self.stores: list[Any] = []

    def make(self, *, migrations: MigrationRegistry | None = None) -> Any:
        raise NotImplementedError

    async def open(self, *, migrations: MigrationRegistry | None = None) -> Any:
        store = self.make(migrations=migrations)
        self.stores.append(store)
        await store.__aenter__()
        return store

    async def aclose(self) -> None:
        for store in self.stores:
            await store.aclose()

    def garble(self, conversation_id: str) -> None:
        """Replace the stored state with truncated JSON."""
        raise NotImplementedError

    def raw_row(self, conversation_id: str) -> tuple[Any, ...] | None:
        """The row exactly as stored (state as text), or None."""
        raise NotImplementedError

    def raw_quarantined(self, key: str) -> tuple[Any, ...] | None:
        """A quarantined row in the shape of ``raw_row``, or None."""
        raise NotImplementedError


class MemoryBackend(Backend):
    kind = "memory"
    shared_across_instances = False

    def make(self, *, migrations: MigrationRegistry | None = None) -> MemoryStore:
        return MemoryStore(migrations=migrations)

    async def open(self, *, migrations: MigrationRegistry | None = None) -> Any:
        # The one instance is the shared place: a second open returns it.
        if self.stores:
            return self.stores[0]
        return await super().open(migrations=migrations)

    @property
    def store(self) -> MemoryStore:
        return self.stores[0]  # type: ignore[no-any-return]

    def garble(self, conversation_id: str) -> None:
        overwrite_stored_state(self.store, conversation_id, TRUNCATED.encode())

    def raw_row(self, conversation_id: str) -> tuple[Any, ...] | None:
        return _raw_tuple(raw_record(self.store, conversation_id))

    def raw_quarantined(self, key: str) -> tuple[Any, ...] | None:
        return _raw_tuple(raw_quarantined_record(self.store, key))


def _raw_tuple(raw: tuple[StoredConversation, bytes] | None) -> tuple[Any, ...] | None:
    """The row as one comparable tuple, its state as the repr of the bytes held."""
    if raw is None:
        return None
    record, blob = raw
    return (
        repr(blob),
        record.version,
        record.owner,
        record.route_key,
        repr(record.request_opts),
        record.last_seq,
        record.updated_at,
        record.lifecycle,
    )


COLUMNS = "state, version, owner, route_key, request_opts, last_seq, updated_at, lifecycle"


#: The header columns SQLiteStore keeps for a conversation and for a quarantined one.
SQLITE_QUARANTINED = COLUMNS + ", head, message_count"


class SQLiteBackend(Backend):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def make(self, *, migrations: MigrationRegistry | None = None) -> SQLiteStore:
        return SQLiteStore(self.path, migrations=migrations)

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def garble(self, conversation_id: str) -> None:
        # A message row cut short, as a torn write would leave it.
        self._query(
            "UPDATE messages SET body = ? WHERE conversation_id = ? AND position = 0",
            (TRUNCATED, conversation_id),
        )

    def raw_row(self, conversation_id: str) -> tuple[Any, ...] | None:
        header = self._query(
            f"SELECT {SQLITE_QUARANTINED} FROM conversations WHERE id = ?", (conversation_id,)
        )
        if not header:
            return None
        bodies = self._query(
            "SELECT position, body FROM messages WHERE conversation_id = ? ORDER BY position",
            (conversation_id,),
        )
        return (*header[0], tuple(bodies))

    def raw_quarantined(self, key: str) -> tuple[Any, ...] | None:
        header = self._query(
            f"SELECT {SQLITE_QUARANTINED} FROM quarantined_conversations WHERE key = ?", (key,)
        )
        if not header:
            return None
        bodies = self._query(
            "SELECT position, body FROM quarantined_messages WHERE key = ? ORDER BY position",
            (key,),
        )
        return (*header[0], tuple(bodies))


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self) -> None:
        super().__init__()
        # A table per test: tests never see each other's rows.
        self.table = f"sv_test_{uuid.uuid4().hex[:12]}"

    def make(self, *, migrations: MigrationRegistry | None = None) -> Any:
        from sessionvisor.state.postgres import PostgresStore

        return PostgresStore(POSTGRES_DSN, table=self.table, migrations=migrations)

    def _query(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The first row of ``query`` ("{t}" names this test's table), or None."""
        rows = self._rows(query, params)
        return rows[0] if rows else None

    # state::text gives the stored JSONB as text, so "byte-identical" is checked
    # on what the server holds, not on what psycopg parses it into.
    _raw_columns = (
        COLUMNS.replace("state,", "state::text,").replace("request_opts,", "request_opts::text,")
        + ", head, message_count"
    )

    def _rows(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return sql(POSTGRES_DSN, query.replace("{t}", self.table), *params)

    def garble(self, conversation_id: str) -> None:
        # A message row cut short, as a torn write would leave it.
        self._query(
            'UPDATE "{t}_messages" SET body = %s WHERE conversation_id = %s AND position = 0',
            (TRUNCATED, conversation_id),
        )

    def raw_row(self, conversation_id: str) -> tuple[Any, ...] | None:
        header = self._query(
            f'SELECT {self._raw_columns} FROM "{{t}}" WHERE id = %s AND version > 0',
            (conversation_id,),
        )
        if header is None:
            return None
        bodies = self._rows(
            'SELECT position, body FROM "{t}_messages" WHERE conversation_id = %s '
            "ORDER BY position",
            (conversation_id,),
        )
        return (*header, tuple(bodies))

    def raw_quarantined(self, key: str) -> tuple[Any, ...] | None:
        header = self._query(
            f'SELECT {self._raw_columns} FROM "{{t}}_quarantine" WHERE key = %s', (key,)
        )
        if header is None:
            return None
        bodies = self._rows(
            'SELECT position, body FROM "{t}_qmessages" WHERE key = %s ORDER BY position', (key,)
        )
        return (*header, tuple(bodies))

    def drop(self) -> None:
        tables = ", ".join(
            f'"{self.table}{suffix}"' for suffix in ("", "_quarantine", "_messages", "_qmessages")
        )
        self._query(f"DROP TABLE IF EXISTS {tables}", ())
