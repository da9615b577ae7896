"""The stores the contract runs against (see the ``backend`` fixture in conftest.py).

A ``Backend`` opens store instances over one shared place (a dict, a SQLite
file, a Postgres table) and can read and damage rows behind the store's back,
the way a crash, a bad deploy or a hand edit would.
"""

from __future__ import annotations

import json
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

    # The audit trail's rows (the SQL stores keep one row per step; MemoryStore
    # keeps no rows, so these return None there).

    def step_rows(self, conversation_id: str) -> list[tuple[int, str]] | None:
        """The conversation's step rows, (position, body) in order."""
        return None

    def quarantined_step_rows(self, key: str) -> list[tuple[int, str]] | None:
        """The step rows moved aside under ``key``."""
        return None

    def head(self, conversation_id: str) -> dict[str, Any] | None:
        """The stored head (the state without its row-stored lists), parsed."""
        return None

    def watch_step_rows(self, conversation_id: str) -> None:
        """Start recording which step rows the store writes from now on."""

    def step_writes(self, conversation_id: str) -> tuple[list[int], list[int]]:
        """The positions of the step rows written (inserted or updated) and the
        positions removed since ``watch_step_rows``."""
        raise NotImplementedError

    def inline_steps(self, conversation_id: str) -> None:
        """Move the step rows into the head, as a release that kept the audit trail
        in the head wrote it."""
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
SQLITE_QUARANTINED = COLUMNS + ", head, message_count, step_count"


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
        return (*header[0], tuple(bodies), tuple(self.step_rows(conversation_id)))

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
        return (*header[0], tuple(bodies), tuple(self.quarantined_step_rows(key)))

    def step_rows(self, conversation_id: str) -> list[tuple[int, str]]:
        return self._query(  # type: ignore[return-value]
            "SELECT position, body FROM steps WHERE conversation_id = ? ORDER BY position",
            (conversation_id,),
        )

    def quarantined_step_rows(self, key: str) -> list[tuple[int, str]]:
        return self._query(  # type: ignore[return-value]
            "SELECT position, body FROM quarantined_steps WHERE key = ? ORDER BY position",
            (key,),
        )

    def head(self, conversation_id: str) -> dict[str, Any] | None:
        found = self._query("SELECT head FROM conversations WHERE id = ?", (conversation_id,))
        return json.loads(found[0][0]) if found else None

    def watch_step_rows(self, conversation_id: str) -> None:
        # Triggers log every write to the step rows.
        self._query("CREATE TABLE IF NOT EXISTS step_writes (what TEXT, position INTEGER)", ())
        self._query("DELETE FROM step_writes", ())
        for op, ref in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
            self._query(
                f"CREATE TRIGGER IF NOT EXISTS log_step_{op} AFTER {op} ON steps BEGIN "
                f"INSERT INTO step_writes VALUES ('{op.lower()}', {ref}.position); END",
                (),
            )

    def step_writes(self, conversation_id: str) -> tuple[list[int], list[int]]:
        log = self._query("SELECT what, position FROM step_writes ORDER BY rowid", ())
        written = sorted({p for what, p in log if what != "delete"})
        removed = sorted({p for what, p in log if what == "delete"})
        return written, removed

    def inline_steps(self, conversation_id: str) -> None:
        rows = self.step_rows(conversation_id)
        head = self.head(conversation_id)
        assert head is not None
        head["steps"] = [json.loads(body) for _, body in rows]
        self._query(
            "UPDATE conversations SET head = ?, step_count = NULL WHERE id = ?",
            (json.dumps(head), conversation_id),
        )
        self._query("DELETE FROM steps WHERE conversation_id = ?", (conversation_id,))


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
        + ", head, message_count, step_count"
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
        return (*header, tuple(bodies), tuple(self.step_rows(conversation_id)))

    def raw_quarantined(self, key: str) -> tuple[Any, ...] | None:
        header = self._query(
            f'SELECT {self._raw_columns} FROM "{{t}}_quarantine" WHERE key = %s', (key,)
        )
        if header is None:
            return None
        bodies = self._rows(
            'SELECT position, body FROM "{t}_qmessages" WHERE key = %s ORDER BY position', (key,)
        )
        return (*header, tuple(bodies), tuple(self.quarantined_step_rows(key)))

    def step_rows(self, conversation_id: str) -> list[tuple[int, str]]:
        return self._rows(  # type: ignore[return-value]
            'SELECT position, body FROM "{t}_steps" WHERE conversation_id = %s ORDER BY position',
            (conversation_id,),
        )

    def quarantined_step_rows(self, key: str) -> list[tuple[int, str]]:
        return self._rows(  # type: ignore[return-value]
            'SELECT position, body FROM "{t}_qsteps" WHERE key = %s ORDER BY position', (key,)
        )

    def head(self, conversation_id: str) -> dict[str, Any] | None:
        found = self._query('SELECT head FROM "{t}" WHERE id = %s', (conversation_id,))
        return None if found is None else json.loads(found[0])

    def _row_versions(self, conversation_id: str) -> dict[int, str]:
        # A row's xmin changes whenever it is written (inserted or updated).
        rows = self._rows(
            'SELECT position, xmin::text FROM "{t}_steps" WHERE conversation_id = %s',
            (conversation_id,),
        )
        return dict(rows)  # type: ignore[arg-type]

    def watch_step_rows(self, conversation_id: str) -> None:
        self._watched = self._row_versions(conversation_id)

    def step_writes(self, conversation_id: str) -> tuple[list[int], list[int]]:
        now = self._row_versions(conversation_id)
        written = sorted(p for p, xmin in now.items() if self._watched.get(p) != xmin)
        removed = sorted(p for p in self._watched if p not in now)
        return written, removed

    def inline_steps(self, conversation_id: str) -> None:
        rows = self.step_rows(conversation_id)
        head = self.head(conversation_id)
        assert head is not None
        head["steps"] = [json.loads(body) for _, body in rows]
        self._query(
            'UPDATE "{t}" SET head = %s, step_count = NULL WHERE id = %s',
            (json.dumps(head), conversation_id),
        )
        self._query('DELETE FROM "{t}_steps" WHERE conversation_id = %s', (conversation_id,))

    def drop(self) -> None:
        suffixes = ("", "_quarantine", "_messages", "_qmessages", "_steps", "_qsteps", "_timers")
        tables = ", ".join(f'"{self.table}{suffix}"' for suffix in suffixes)
        self._query(f"DROP TABLE IF EXISTS {tables}", ())
