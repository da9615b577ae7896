"""``SQLiteStore``: conversations in one SQLite file, through the stdlib ``sqlite3``.

The layout is append-only (see ``_layout``): a ``conversations`` header row per
conversation, one ``messages`` row per message and one ``steps`` row per step of
the audit trail, so a save writes what the turn added, not the whole history.

``sqlite3`` blocks, so every call runs on a worker thread
(``anyio.to_thread``), which works the same on asyncio and trio. One
connection serves the store and a ``CapacityLimiter(1)`` lets one thread at a
time use it. Saves go through group commit (``_batch``): the saves that queue
up while a commit is in flight are written by the next one in a single
``BEGIN IMMEDIATE`` transaction, each under its own savepoint, so many
conversations pay one fsync between them. Separate store instances (other
connections, other processes) on the same file are kept apart by SQLite's own
locking; the busy timeout makes a second writer wait instead of fail.
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
from .._closing import ClosedOnExit
from .._errors import CorruptStateError
from ._batch import GroupCommit, Write
from ._layout import HistoryTracker, Split, assemble, dumps, missing_row, split
from ._serializer import CheckedState, MigrationRegistry, decode_state
from ._store import Lifecycle, StoredConversation
from ._timer_rows import StoredTimer, decode_payload, encode_payload, from_epoch
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

#: The header columns, in the order ``_decode_row`` reads them. ``state``, when
#: not NULL, holds the whole JSON state instead of head + messages: a row of the
#: single-row layout that could not be converted (it is unreadable). Every row
#: this release writes keeps it NULL.
_COLUMNS = (
    "state, head, message_count, version, owner, route_key, request_opts, "
    "last_seq, updated_at, lifecycle, step_count"
)

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
        unanswered INTEGER NOT NULL DEFAULT 0,
        head TEXT,
        message_count INTEGER,
        step_count INTEGER
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS messages (
        conversation_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        body TEXT,
        PRIMARY KEY (conversation_id, position)
    ) WITHOUT ROWID
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
        quarantined_at TEXT NOT NULL,
        head TEXT,
        message_count INTEGER,
        step_count INTEGER
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS quarantined_messages (
        key TEXT NOT NULL,
        position INTEGER NOT NULL,
        body TEXT,
        PRIMARY KEY (key, position)
    ) WITHOUT ROWID
    """,
    # The audit trail (``state["steps"]``), one row per step, like the messages.
    """
    CREATE TABLE IF NOT EXISTS steps (
        conversation_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        body TEXT,
        PRIMARY KEY (conversation_id, position)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS quarantined_steps (
        key TEXT NOT NULL,
        position INTEGER NOT NULL,
        body TEXT,
        PRIMARY KEY (key, position)
    ) WITHOUT ROWID
    """,
)

#: Histories up to this many messages are decoded on the thread that read them.
_DECODE_INLINE = 256

_UNANSWERED_INDEX = (
    "CREATE INDEX IF NOT EXISTS conversations_unanswered ON conversations (id) WHERE unanswered = 1"
)

# Durable timers, one row per (conversation, key), found by due time through the index.
# Created on every open when missing (older files get them too; no layout change).
_TIMER_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS timers (conversation_id TEXT NOT NULL, key TEXT NOT NULL, "
    "id TEXT NOT NULL, due REAL NOT NULL, payload TEXT NOT NULL, "
    "PRIMARY KEY (conversation_id, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS timers_due ON timers (due)",
)

_INSERT = (
    "INSERT INTO conversations (id, state, head, message_count, version, owner, route_key, "
    "request_opts, last_seq, updated_at, lifecycle, unanswered, step_count) "
    "VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE conversations SET state = NULL, head = ?, message_count = ?, version = ?, "
    "owner = ?, route_key = ?, request_opts = ?, last_seq = ?, updated_at = ?, "
    "lifecycle = ?, unanswered = ?, step_count = ? WHERE id = ?"
)
_APPEND = "INSERT INTO messages (conversation_id, position, body) VALUES (?, ?, ?)"
_APPEND_STEP = "INSERT INTO steps (conversation_id, position, body) VALUES (?, ?, ?)"


class SQLiteStore(ClosedOnExit):
    """A ``StateStore`` backed by one SQLite database file.

    The file is opened on first use (or on ``async with``), switched to WAL
    and given its tables when they are missing; a file written by the
    single-row layout of earlier releases is upgraded in place then (see
    ``docs/storage.md``). Close it with ``aclose()`` or by leaving
    ``async with``; a closed store refuses further calls with ``StoreClosed``.

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
            fsync per commit.

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
        self._commit_limiter = self._limiter  # one connection: its writer is everyone's
        self._closed = False
        self._history = HistoryTracker()
        self._steps = HistoryTracker()  # the audit trail's list, tracked the same way
        self._commits = GroupCommit(self._flush, self._commit_limiter, self._check_open)

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    async def __aenter__(self) -> SQLiteStore:
        await self._run(lambda conn: None)
        return self

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

        The header and the message rows are read in one transaction (a
        consistent snapshot), the state is rebuilt in order and checked with
        ``load_state`` (and upgraded when it was written with an older schema;
        the rows themselves are not rewritten). The first ``load_state`` of the
        returned state reuses that check instead of validating the history again.

        Returns:
            The record, or None.

        Raises:
            CorruptStateError: a row cannot be read (garbled JSON in the head or
                in a message or step row, a missing message or step row, a state
                ``load_state`` refuses, a malformed column); the rows are left untouched.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """

        def fetch(conn: sqlite3.Connection) -> Any:
            found = _fetch(conn, conversation_id)
            if found is None or len(found[1] or ()) + len(found[2] or ()) > _DECODE_INLINE:
                return found
            return self._decode_row(conversation_id, *found)  # short: no second thread hop

        found = await self._run(fetch)
        if found is None or isinstance(found, StoredConversation):
            return found
        # Decoding and validating a long history is pure CPU: do it on a worker
        # thread but outside the store's limiter, so the event loop stays
        # responsive and other conversations' saves can use the connection.
        return await anyio.to_thread.run_sync(self._decode_row, conversation_id, *found)

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
        When ``record.state["messages"]`` is the very list this store wrote at
        ``expected_version``, grown since (the runtime hands its history over
        that way), only the new messages are written; any other list is
        written whole. The call returns once the write is committed, possibly
        in one transaction with other conversations' saves.

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
        return await self._commits.submit(
            Write(conversation_id, record, expected_version, lifecycle)
        )

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
        """Remove the conversation, its messages and steps; a missing one is not an error.

        Raises:
            sqlite3.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """

        def remove(conn: sqlite3.Connection) -> None:
            self._forget(conversation_id)
            with _transaction(conn):
                conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
                conn.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
                conn.execute("DELETE FROM steps WHERE conversation_id = ?", (conversation_id,))
                conn.execute("DELETE FROM timers WHERE conversation_id = ?", (conversation_id,))

        await self._run(remove)

    # -- durable timers (see ``StateStore``'s optional timer methods) -------------

    async def put_timer(self, conversation_id: str, timer: StoredTimer) -> None:
        """Store ``timer`` for the conversation, replacing the one with its key."""
        row = (conversation_id, timer.key, timer.id, timer.epoch_seconds)
        payload = encode_payload(timer.payload)

        def put(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO timers (conversation_id, key, id, due, payload) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (*row, payload),
                )

        await self._run(put)

    async def drop_timer(
        self, conversation_id: str, key: str, *, timer_id: str | None = None
    ) -> bool:
        """Remove the timer ``key`` (with ``timer_id``: only that scheduling of it);
        return whether one was removed."""

        def drop(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                cursor = conn.execute(
                    "DELETE FROM timers WHERE conversation_id = ? AND key = ? "
                    "AND (? IS NULL OR id = ?)",
                    (conversation_id, key, timer_id, timer_id),
                )
            return cursor.rowcount > 0

        return await self._run(drop)

    async def drop_fired_timers(self, fired: list[tuple[str, str, str]]) -> list[bool]:
        """Remove fired timers, given as (conversation id, key, id), in one
        transaction, each only while the stored row has that id; return, per timer,
        whether it was removed."""

        def drop(conn: sqlite3.Connection) -> list[bool]:
            with _transaction(conn):
                return [
                    conn.execute(
                        "DELETE FROM timers WHERE conversation_id = ? AND key = ? AND id = ?",
                        row,
                    ).rowcount
                    > 0
                    for row in fired
                ]

        return await self._run(drop) if fired else []

    async def list_timers(self, conversation_id: str) -> list[StoredTimer]:
        """The conversation's timers, soonest first."""

        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT key, due, payload, id FROM timers WHERE conversation_id = ? "
                "ORDER BY due, key",
                (conversation_id,),
            ).fetchall()

        return [_timer(*row) for row in await self._run(select)]

    async def due_timers(self, until: datetime, limit: int) -> list[tuple[str, StoredTimer]]:
        """Up to ``limit`` timers due at or before ``until``, soonest first, with their
        conversation ids (through the index on the due time; they stay stored)."""
        check_limit(limit)
        bound = until.timestamp()

        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT conversation_id, key, due, payload, id FROM timers "
                "WHERE due <= ? ORDER BY due LIMIT ?",
                (bound, limit),
            ).fetchall()

        return [(row[0], _timer(*row[1:])) for row in await self._run(select)]

    async def next_timer_due(self) -> datetime | None:
        """When the soonest stored timer is due (None: no timer is stored)."""

        def select(conn: sqlite3.Connection) -> Any:
            return conn.execute("SELECT min(due) FROM timers").fetchone()[0]

        found = await self._run(select)
        return None if found is None else from_epoch(found)

    async def quarantine(self, conversation_id: str) -> str:
        """Move the conversation's rows, byte for byte, to the quarantine tables.

        The header goes to ``quarantined_conversations``, the message rows to
        ``quarantined_messages`` and the step rows to ``quarantined_steps``, under
        the key ``"<id>#quarantine-<n>"``;
        afterwards ``load(conversation_id)`` returns None.

        Returns:
            The quarantine key.

        Raises:
            NothingStored: no row is stored for the conversation (a ``LookupError``).
            sqlite3.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """

        def move(conn: sqlite3.Connection) -> str:
            self._forget(conversation_id)
            with _transaction(conn):
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
                conn.execute(
                    "INSERT INTO quarantined_messages (key, position, body) "
                    "SELECT ?, position, body FROM messages WHERE conversation_id = ?",
                    (key, conversation_id),
                )
                conn.execute(
                    "INSERT INTO quarantined_steps (key, position, body) "
                    "SELECT ?, position, body FROM steps WHERE conversation_id = ?",
                    (key, conversation_id),
                )
                conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
                conn.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
                conn.execute("DELETE FROM steps WHERE conversation_id = ?", (conversation_id,))
            return key

        return await self._run(move)

    # -- group commit --------------------------------------------------------

    def _flush(self, batch: list[Write]) -> None:
        # On a worker thread, holding the limiter: one transaction for the batch,
        # a savepoint per write so one write's failure leaves the others in.
        conn = self._connection()
        forget = self._forget
        updated_at = utcnow().isoformat()
        remembered: list[tuple[Write, Split]] = []
        try:
            with _transaction(conn):
                if len(batch) == 1:
                    # Alone in its transaction: a failure rolls the whole of it back
                    # (the group commit reports the error to its caller).
                    (write,) = batch
                    try:
                        remembered.append((write, self._write(conn, write, updated_at)))
                    except Exception:
                        forget(write.conversation_id)
                        raise
                    batch = []
                for write in batch:
                    conn.execute("SAVEPOINT write")
                    try:
                        cut = self._write(conn, write, updated_at)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO write")
                        conn.execute("RELEASE write")
                        forget(write.conversation_id)
                        write.fail(exc)
                        continue
                    conn.execute("RELEASE write")
                    remembered.append((write, cut))
        except BaseException as exc:
            # The transaction (or its COMMIT) failed: nothing of the batch is stored.
            for write, _ in remembered:
                forget(write.conversation_id)
                write.fail(exc)
            raise
        # Committed: only now is what was written known to be stored.
        for write, cut in remembered:
            _remember(self._history, write, cut.messages)
            _remember(self._steps, write, cut.steps)

    def _forget(self, conversation_id: str) -> None:
        self._history.forget(conversation_id)
        self._steps.forget(conversation_id)

    def _write(self, conn: sqlite3.Connection, write: Write, updated_at: str) -> Split:
        cid, record, expected = write.conversation_id, write.record, write.expected_version
        row = conn.execute(
            "SELECT version, state IS NULL AND head IS NOT NULL, message_count, step_count "
            "FROM conversations WHERE id = ?",
            (cid,),
        ).fetchone()
        actual = None if row is None else row[0]
        if actual != expected:
            raise stale_write(cid, expected, actual)
        cut = split(record.state)
        messages, steps = cut.messages, cut.steps
        header = (
            cut.head,
            None if messages is None else len(messages),
            1 if actual is None else actual + 1,
            record.owner,
            record.route_key,
            dumps(record.request_opts),
            record.last_seq,
            updated_at,
            write.lifecycle,
            int(is_unanswered(write.lifecycle, record.state)),
            None if steps is None else len(steps),
        )
        start = step_start = 0
        if messages is not None and row is not None:
            start = self._history.written(cid, messages, actual)
            if start and not (row[1] and row[2] == start):
                start = 0  # the rows are not what this store wrote: rewrite them
            if steps is not None:
                step_start = self._steps.written(cid, steps, actual)
                if step_start and not (row[1] and row[3] == step_start):
                    step_start = 0
        new_rows = [] if messages is None else [dumps(m) for m in messages[start:]]
        new_steps = [] if steps is None else [dumps(s) for s in steps[step_start:]]
        if row is None:
            conn.execute(_INSERT, (cid, *header))
        else:
            conn.execute(_UPDATE, (*header, cid))
        if start == 0 and row is not None:
            conn.execute("DELETE FROM messages WHERE conversation_id = ?", (cid,))
        if step_start == 0 and row is not None and row[3] is not None:
            conn.execute("DELETE FROM steps WHERE conversation_id = ?", (cid,))
        if new_rows:
            conn.executemany(_APPEND, [(cid, start + i, body) for i, body in enumerate(new_rows)])
        if new_steps:
            conn.executemany(
                _APPEND_STEP, [(cid, step_start + i, body) for i, body in enumerate(new_steps)]
            )
        write.succeed(header[2])
        return cut

    # -- machinery ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise closed(self)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        self._check_open()
        return await anyio.to_thread.run_sync(self._call, fn, limiter=self._limiter)

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        # Runs on a worker thread; the limiter guarantees one at a time, so
        # the connection is never used by two threads at once.
        return fn(self._connection())

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            if self._closed:
                raise closed(self)
            conn = self._conn = self._connect()
        return conn

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
            _upgrade(conn)
            for statement in _TIMER_SCHEMA:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _decode_row(
        self,
        conversation_id: str,
        row: tuple[Any, ...],
        bodies: list[str | None] | None,
        step_bodies: list[str | None] | None,
    ) -> StoredConversation:
        (
            state_raw,
            head,
            _count,
            version,
            owner,
            route_key,
            opts_raw,
            last_seq,
            updated_raw,
            lifecycle,
            _step_count,
        ) = row
        where = f"the stored row of conversation {conversation_id!r}"
        # A non-NULL ``state`` is the whole state (a row of the single-row
        # layout, or one edited by hand): it wins over the head.
        if state_raw is not None:
            state: Any = state_raw
        elif head is not None:
            state = assemble(conversation_id, head, bodies, step_bodies)
        else:
            raise CorruptStateError(f"cannot read {where}: its state is NULL")
        upgraded, validated = decode_state(state, conversation_id, migrations=self._migrations)
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


def _fetch(
    conn: sqlite3.Connection, conversation_id: str
) -> tuple[tuple[Any, ...], list[str | None] | None, list[str | None] | None] | None:
    # A read transaction: the header, its messages and its steps come from one
    # snapshot, even while another connection commits.
    with _transaction(conn, "BEGIN"):
        row: tuple[Any, ...] | None = conn.execute(
            f"SELECT {_COLUMNS} FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is None:
            return None
        state, head, count, step_count = row[0], row[1], row[2], row[10]
        if state is not None or head is None or count is None:
            return row, None, None
        bodies = _rows(conn, "messages", "message", conversation_id, count)
        # NULL: no step rows; the head holds the trail (as earlier releases wrote it).
        steps = None
        if step_count is not None:
            steps = _rows(conn, "steps", "step", conversation_id, step_count)
    return row, bodies, steps


def _rows(
    conn: sqlite3.Connection, table: str, what: str, conversation_id: str, count: Any
) -> list[str | None]:
    found = conn.execute(
        f"SELECT position, body FROM {table} WHERE conversation_id = ? AND position < ? "
        "ORDER BY position",
        (conversation_id, count),
    ).fetchall()
    if not isinstance(count, int):
        count = len(found) + 1  # reported as a row missing past those found
    error = missing_row(conversation_id, what, [position for position, _ in found], count)
    if error is not None:
        raise error
    return [body for _, body in found]


class _transaction:
    """``with _transaction(conn):`` BEGIN IMMEDIATE ... COMMIT, rolled back on error."""

    __slots__ = ("_begin", "_conn")

    def __init__(self, conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> None:
        self._conn = conn
        self._begin = begin

    def __enter__(self) -> None:
        self._conn.execute(self._begin)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            _rollback(self._conn)


def _upgrade(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring a file of an earlier layout up to this one.

    Runs in one write transaction, so two processes opening an old file at once
    upgrade it once. Rows of the single-row layout are cut into a header and
    message rows; a row whose state cannot be read stays as it was (its
    ``state`` column), so ``load`` still reports it and ``quarantine`` keeps it.
    """
    if conn.execute("PRAGMA user_version").fetchone()[0] >= _LAYOUT:
        return  # already this layout: nothing to read or write
    with _transaction(conn):
        if conn.execute("PRAGMA user_version").fetchone()[0] >= _LAYOUT:
            return  # another connection upgraded it meanwhile
        for statement in _SCHEMA:
            conn.execute(statement)
        _add_columns(conn, "conversations", ("unanswered", "head", "message_count", "step_count"))
        _add_columns(conn, "quarantined_conversations", ("head", "message_count", "step_count"))
        conn.execute(_UNANSWERED_INDEX)
        old = conn.execute(
            "SELECT id, state, lifecycle FROM conversations "
            "WHERE head IS NULL AND state IS NOT NULL"
        ).fetchall()
        for cid, state_text, lifecycle in old:
            try:
                state = json.loads(state_text)
            except (TypeError, ValueError):
                # Unreadable: left for load to report, flagged by its lifecycle alone.
                state = None
            if state is None:
                flag = int(is_unanswered(lifecycle or "", None))
                conn.execute("UPDATE conversations SET unanswered = ? WHERE id = ?", (flag, cid))
                continue
            cut = split(state)
            count = None if cut.messages is None else len(cut.messages)
            step_count = None if cut.steps is None else len(cut.steps)
            conn.execute(
                "UPDATE conversations SET state = NULL, head = ?, message_count = ?, "
                "unanswered = ?, step_count = ? WHERE id = ?",
                (cut.head, count, int(is_unanswered(lifecycle or "", state)), step_count, cid),
            )
            conn.execute("DELETE FROM messages WHERE conversation_id = ?", (cid,))
            conn.executemany(
                _APPEND,
                [(cid, i, dumps(message)) for i, message in enumerate(cut.messages or ())],
            )
            conn.execute("DELETE FROM steps WHERE conversation_id = ?", (cid,))
            conn.executemany(
                _APPEND_STEP, [(cid, i, dumps(step)) for i, step in enumerate(cut.steps or ())]
            )
        conn.execute(f"PRAGMA user_version = {_LAYOUT}")


#: The layout this release writes, kept in SQLite's ``user_version``: 0 for the
#: single-row layout of earlier releases (and for a new file), 2 for the header and
#: message rows with the audit trail in the head, 3 for this one (the trail in rows).
_LAYOUT = 3

_ADDED = {
    "unanswered": "INTEGER NOT NULL DEFAULT 0",
    "head": "TEXT",
    "message_count": "INTEGER",
    "step_count": "INTEGER",
}


def _remember(tracker: HistoryTracker, write: Write, items: list[Any] | None) -> None:
    if items is None:
        tracker.forget(write.conversation_id)
    else:
        tracker.remember(write.conversation_id, items, write.version)


def _add_columns(conn: sqlite3.Connection, table: str, names: tuple[str, ...]) -> None:
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name in names:
        if name not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {_ADDED[name]}")


def _timer(key: str, due: float, payload: str, timer_id: str) -> StoredTimer:
    return StoredTimer(key, from_epoch(due), decode_payload(payload), timer_id)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
