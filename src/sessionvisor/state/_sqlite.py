"""``SQLiteStore``: conversations in one SQLite file, through the stdlib ``sqlite3``.

``sqlite3`` blocks, so every call runs on a worker thread
(``anyio.to_thread``), which works the same on asyncio and trio. One
connection serves the store and a ``CapacityLimiter(1)`` lets one thread at a
time use it: SQLite has one writer per file anyway. Separate store instances
(other connections, other processes) on the same file are kept apart by
SQLite's own locking: each check-and-set runs in a ``BEGIN IMMEDIATE``
transaction, and the busy timeout makes a second writer wait instead of fail.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .._clock import utcnow
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

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

_COLUMNS = "state, version, owner, route_key, request_opts, last_seq, updated_at, lifecycle"

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS conversations (
        id TEXT PRIMARY KEY,
        state TEXT,
        version INTEGER,
        owner TEXT,
        route_key TEXT,
        request_opts TEXT,
        last_seq INTEGER,
        updated_at TEXT,
        lifecycle TEXT,
        unanswered INTEGER NOT NULL DEFAULT 0
    )
    """,
    # Quarantined rows keep their columns as they were (no decoding on the
    # way), so the bytes someone needs to inspect or repair are preserved.
    """
    CREATE TABLE IF NOT EXISTS quarantined_conversations (
        key TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL,
        state TEXT,
        version INTEGER,
        owner TEXT,
        route_key TEXT,
        request_opts TEXT,
        last_seq INTEGER,
        updated_at TEXT,
        lifecycle TEXT,
        quarantined_at TEXT NOT NULL
    )
    """,
)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class SQLiteStore:
    """A ``StateStore`` backed by one SQLite database file.

    The file is opened on first use (or on ``async with``), switched to WAL
    and given the ``conversations`` and ``quarantined_conversations`` tables
    when they are missing. Close it with ``aclose()`` or by leaving
    ``async with``; a closed store refuses further calls.

    Args:
        path: the database file (str or path), or ``":memory:"`` for a private
            in-memory database that lives as long as the store.
        migrations: the registry ``load`` upgrades old states with; the default
            one (``register_migration``) when None.
        busy_timeout: seconds to wait for another connection's write lock
            before giving up with ``sqlite3.OperationalError``.
        synchronous: SQLite's ``synchronous`` setting. ``"FULL"`` (the default)
            makes every save survive a power cut; ``"NORMAL"`` (safe against a
            crash of the process, not of the machine, in WAL mode) skips the
            fsync per save and is several times faster under load.

    Raises:
        ValueError: ``synchronous`` is not ``"FULL"``, ``"NORMAL"`` or ``"EXTRA"``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        migrations: MigrationRegistry | None = None,
        busy_timeout: float = 5.0,
        synchronous: str = "FULL",
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(
                f"synchronous must be 'FULL', 'NORMAL' or 'EXTRA', got {synchronous!r}"
            )
        self._synchronous = synchronous.upper()
        self._path = os.fspath(path)
        self._migrations = migrations
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._closed = False

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    async def __aenter__(self) -> SQLiteStore:
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
        """Close the connection; calls already waiting finish first. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Shielded: a cancelled close would leave the connection (and its
        # file handles and WAL lock) open for the rest of the process.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close_connection, limiter=self._limiter)

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """Return the stored conversation, or None when there is none.

        The state is checked with ``load_state`` (and upgraded when it was
        written with an older schema; the row itself is not rewritten).
        The first ``load_state`` of the returned state reuses that check
        instead of validating the history again.

        Returns:
            The record, or None.

        Raises:
            CorruptStateError: the row cannot be read (garbled or truncated
                JSON, a state ``load_state`` refuses, a malformed column); the
                row is left untouched.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        row = await self._run(lambda conn: self._fetch(conn, conversation_id))
        if row is None:
            return None
        # Validating a long history is pure CPU: do it on a worker thread but
        # outside the store's limiter, so the event loop stays responsive and
        # other conversations' saves can use the connection meanwhile.
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
            sqlite3.Error: the database failed (e.g. locked beyond the busy timeout).
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        check_lifecycle(conversation_id, lifecycle)

        def write(conn: sqlite3.Connection) -> int:
            # Encoded here, on the worker thread and before taking the write
            # lock: a long history costs milliseconds the event loop and the
            # other connections should not wait for.
            state_text = _dumps(record.state)
            values = (record.owner, record.route_key, _dumps(record.request_opts), record.last_seq)
            updated_at = utcnow().isoformat()
            unanswered = int(is_unanswered(lifecycle, record.state))
            # IMMEDIATE takes the write lock before the read, so no other
            # connection can commit between our version check and our write.
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT version FROM conversations WHERE id = ?", (conversation_id,)
                ).fetchone()
                actual = None if row is None else row[0]
                if actual != expected_version:
                    raise stale_write(conversation_id, expected_version, actual)
                if actual is None:
                    new_version = 1
                    conn.execute(
                        f"INSERT INTO conversations (id, {_COLUMNS}, unanswered) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            conversation_id,
                            state_text,
                            new_version,
                            *values,
                            updated_at,
                            lifecycle,
                            unanswered,
                        ),
                    )
                else:
                    new_version = actual + 1
                    conn.execute(
                        "UPDATE conversations SET state = ?, version = ?, owner = ?, "
                        "route_key = ?, request_opts = ?, last_seq = ?, updated_at = ?, "
                        "lifecycle = ?, unanswered = ? WHERE id = ?",
                        (
                            state_text,
                            new_version,
                            *values,
                            updated_at,
                            lifecycle,
                            unanswered,
                            conversation_id,
                        ),
                    )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return new_version

        return await self._run(write)

    async def unanswered(self, limit: int | None = None) -> list[str]:
        """Return the ids of the conversations with work the agent has not answered.

        Those whose last save had the lifecycle ``turn_start`` or ``queued``, or
        whose state holds queued messages. Each save keeps a flag column, and a
        partial index holds only the flagged rows, so this reads that index,
        never every row.

        Args:
            limit: at most this many ids (None: all of them).

        Raises:
            ValueError: ``limit`` is negative.
            sqlite3.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        check_limit(limit)
        query = "SELECT id FROM conversations WHERE unanswered = 1 LIMIT ?"

        def select(conn: sqlite3.Connection) -> list[str]:
            return [row[0] for row in conn.execute(query, (-1 if limit is None else limit,))]

        return await self._run(select)

    async def delete(self, conversation_id: str) -> None:
        """Remove the conversation; a missing one is not an error.

        Raises:
            sqlite3.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """

        def remove(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

        await self._run(remove)

    async def quarantine(self, conversation_id: str) -> str:
        """Move the conversation's row, byte for byte, to ``quarantined_conversations``.

        The row gets the key ``"<id>#quarantine-<n>"``; afterwards
        ``load(conversation_id)`` returns None.

        Returns:
            The quarantine key.

        Raises:
            NothingStored: no row is stored for the conversation (a ``LookupError``).
            sqlite3.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """

        def move(conn: sqlite3.Connection) -> str:
            conn.execute("BEGIN IMMEDIATE")
            try:
                exists = conn.execute(
                    "SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)
                ).fetchone()
                if exists is None:
                    raise nothing_to_quarantine(conversation_id)
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM quarantined_conversations WHERE conversation_id = ?",
                    (conversation_id,),
                ).fetchone()
                n = count + 1
                while conn.execute(
                    "SELECT 1 FROM quarantined_conversations WHERE key = ?",
                    (quarantine_key(conversation_id, n),),
                ).fetchone():
                    n += 1
                key = quarantine_key(conversation_id, n)
                conn.execute(
                    f"INSERT INTO quarantined_conversations "
                    f"(key, conversation_id, {_COLUMNS}, quarantined_at) "
                    f"SELECT ?, id, {_COLUMNS}, ? FROM conversations WHERE id = ?",
                    (key, utcnow().isoformat(), conversation_id),
                )
                conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return key

        return await self._run(move)

    # -- machinery ---------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise closed(self)
        return await anyio.to_thread.run_sync(self._call, fn, limiter=self._limiter)

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        # Runs on a worker thread; the limiter guarantees one at a time, so
        # the connection is never used by two threads at once.
        conn = self._conn
        if conn is None:
            if self._closed:
                raise closed(self)
            conn = self._conn = self._connect()
        return fn(conn)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; the writes open
        # their own BEGIN IMMEDIATE. check_same_thread=False: the worker
        # thread differs from call to call (the limiter serializes them).
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")  # checked in __init__
            for statement in _SCHEMA:
                conn.execute(statement)
            _add_unanswered_column(conn)
            conn.execute(_UNANSWERED_INDEX)
        except BaseException:
            conn.close()
            raise
        return conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @staticmethod
    def _fetch(conn: sqlite3.Connection, conversation_id: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = conn.execute(
            f"SELECT {_COLUMNS} FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        return row

    def _decode_row(self, conversation_id: str, row: tuple[Any, ...]) -> StoredConversation:
        state_raw, version, owner, route_key, opts_raw, last_seq, updated_raw, lifecycle = row
        where = f"the stored row of conversation {conversation_id!r}"
        if state_raw is None:
            raise CorruptStateError(f"cannot read {where}: its state is NULL")
        upgraded, validated = decode_state(state_raw, conversation_id, migrations=self._migrations)
        if isinstance(version, bool) or not isinstance(version, int):
            raise CorruptStateError(f"cannot read {where}: its version is {version!r}")
        if isinstance(last_seq, bool) or not isinstance(last_seq, int):
            raise CorruptStateError(f"cannot read {where}: its last_seq is {last_seq!r}")
        try:
            request_opts = {} if opts_raw is None else json.loads(opts_raw)
        except ValueError as exc:
            raise CorruptStateError(
                f"cannot read {where}: its request_opts are not valid JSON ({exc})"
            ) from exc
        if not isinstance(request_opts, dict):
            raise CorruptStateError(f"cannot read {where}: its request_opts are not an object")
        try:
            updated_at = datetime.fromisoformat(updated_raw)
        except (TypeError, ValueError) as exc:
            raise CorruptStateError(
                f"cannot read {where}: its updated_at is {updated_raw!r}"
            ) from exc
        return StoredConversation(
            state=CheckedState(upgraded, validated),
            version=version,
            owner=owner,
            route_key=route_key,
            request_opts=request_opts,
            last_seq=last_seq,
            updated_at=updated_at,
            lifecycle=lifecycle,
        )


_UNANSWERED_INDEX = (
    "CREATE INDEX IF NOT EXISTS conversations_unanswered ON conversations (id) "
    "WHERE unanswered = 1"
)


def _add_unanswered_column(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(conversations)")}
    if "unanswered" in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(conversations)")}
        if "unanswered" not in columns:  # another connection may have done it meanwhile
            conn.execute(
                "ALTER TABLE conversations ADD COLUMN unanswered INTEGER NOT NULL DEFAULT 0"
            )
            rows = conn.execute("SELECT id, lifecycle, state FROM conversations").fetchall()
            for cid, lifecycle, state in rows:
                try:
                    data = json.loads(state) if state is not None else None
                except ValueError:
                    data = None
                if is_unanswered(lifecycle or "", data):
                    conn.execute("UPDATE conversations SET unanswered = 1 WHERE id = ?", (cid,))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
