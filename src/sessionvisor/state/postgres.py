"""``PostgresStore``: conversations in PostgreSQL tables (extra ``postgres``).

Install with ``pip install 'sessionvisor[postgres]'`` (psycopg 3 and
psycopg_pool). psycopg's async API needs asyncio and sessionvisor must also run
on trio, so the store drives psycopg's synchronous API on worker threads
(``anyio.to_thread``) over a ``psycopg_pool.ConnectionPool``, at most one
thread per pooled connection at a time.

The layout is append-only (see ``docs/storage.md``): a header row per
conversation in ``<table>``, one row per message in ``<table>_messages`` and
one row per step of the audit trail in ``<table>_steps``.
Saves go through group commit: one writer at a time, and the saves queued
while its commit is in flight are written by the next one together, in one
statement over parallel arrays (one transaction, one WAL flush). The
statement checks each conversation's version (and epoch) in its ``WHERE``:
PostgreSQL re-checks it after waiting for a concurrent writer's row lock, so
of two writers that expected the same version exactly one succeeds, on any
number of machines, and a write that loses changes nothing (its message rows
are written only when its header row was). A batch locks its conversations in
id order, and a deadlock with another process (which the server breaks) sends
the batch down a one-save-per-transaction path.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import attrs
from pydantic import ValidationError

from .._closing import ClosedOnExit
from .._errors import CorruptStateError, StaleWriteError
from ._batch import GroupCommit, Write
from ._layout import HistoryTracker, assemble, dumps, missing_row, split
from ._models import PendingInterrupt
from ._serializer import CheckedState, MigrationRegistry, decode_state
from ._store import Lifecycle, StoredConversation
from ._timer_rows import StoredTimer, decode_payload, encode_payload
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
    import psycopg_pool
    from psycopg import sql

__all__ = ["ConversationHeader", "PostgresStore"]

_T = TypeVar("_T")

# PostgreSQL truncates identifiers at 63 bytes; leave room for "_quarantine"
# so the tables never end up with the same (truncated) name.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,51}")

#: The header columns, in the order ``_decode_row`` reads them. ``state`` holds
#: the whole JSONB state of a row of the single-row layout that could not be cut
#: into messages (not an object, or no list of messages); every other row keeps
#: it NULL.
_COLUMNS = (
    "state, head, message_count, version, owner, route_key, request_opts, "
    "last_seq, updated_at, lifecycle, step_count"
)

#: Histories up to this many messages are decoded on the thread that read them.
_DECODE_INLINE = 256

#: Marks a table already in this layout (a table comment), so opening skips the upgrade.
_LAYOUT_MARK = "sessionvisor layout 3"

# The parts both save statements share: once the header row is written (``h``
# returned a row), cut the message and step rows past the new counts and write
# the new ones; when it was not (stale), nothing else happens.
_MESSAGE_CTES = """,
cut AS (
    DELETE FROM {m} WHERE conversation_id = %(id)s AND position >= %(keep)s
    AND EXISTS (SELECT 1 FROM h)
),
ins AS (
    INSERT INTO {m} (conversation_id, position, body)
    SELECT %(id)s, p, b FROM unnest(%(positions)b::int4[], %(bodies)b::text[]) AS x(p, b)
    WHERE EXISTS (SELECT 1 FROM h)
    ON CONFLICT (conversation_id, position) DO UPDATE SET body = EXCLUDED.body
),
scut AS (
    DELETE FROM {s} WHERE conversation_id = %(id)s AND position >= %(skeep)s
    AND EXISTS (SELECT 1 FROM h)
),
sins AS (
    INSERT INTO {s} (conversation_id, position, body)
    SELECT %(id)s, p, b FROM unnest(%(step_positions)b::int4[], %(step_bodies)b::text[])
        AS x(p, b)
    WHERE EXISTS (SELECT 1 FROM h)
    ON CONFLICT (conversation_id, position) DO UPDATE SET body = EXCLUDED.body
)
SELECT version FROM h
"""

_UPDATE = (
    """
WITH h AS (
    UPDATE {t} SET state = NULL, head = %(head)s, message_count = %(count)s,
        version = version + 1, owner = %(owner)s, route_key = %(route_key)s,
        request_opts = %(opts)s::jsonb, last_seq = %(last_seq)s, updated_at = now(),
        lifecycle = %(lifecycle)s, unanswered = %(unanswered)s,
        epoch = GREATEST(epoch, COALESCE(%(epoch)s::bigint, epoch)),
        step_count = %(step_count)s
    WHERE id = %(id)s AND version = %(expected)s
        AND (%(epoch)s::bigint IS NULL OR epoch <= %(epoch)s::bigint)
        AND (%(base)s = 0 OR (message_count = %(base)s AND state IS NULL))
        AND (%(sbase)s = 0 OR step_count = %(sbase)s)
    RETURNING version
)"""
    + _MESSAGE_CTES
)

_CREATE = (
    """
WITH h AS (
    INSERT INTO {t} AS t (id, state, head, message_count, version, owner, route_key,
        request_opts, last_seq, updated_at, lifecycle, unanswered, epoch, step_count)
    VALUES (%(id)s, NULL, %(head)s, %(count)s, 1, %(owner)s, %(route_key)s, %(opts)s::jsonb,
        %(last_seq)s, now(), %(lifecycle)s, %(unanswered)s, COALESCE(%(epoch)s::bigint, 0),
        %(step_count)s)
    ON CONFLICT (id) DO UPDATE SET state = NULL, head = EXCLUDED.head,
        message_count = EXCLUDED.message_count, step_count = EXCLUDED.step_count,
        version = 1, owner = EXCLUDED.owner,
        route_key = EXCLUDED.route_key, request_opts = EXCLUDED.request_opts,
        last_seq = EXCLUDED.last_seq, updated_at = now(), lifecycle = EXCLUDED.lifecycle,
        unanswered = EXCLUDED.unanswered, epoch = GREATEST(t.epoch, EXCLUDED.epoch)
    -- Only a fenced placeholder (version 0) may be taken over by a create.
    WHERE t.version = 0 AND (%(epoch)s::bigint IS NULL OR t.epoch <= %(epoch)s::bigint)
    RETURNING version
)"""
    + _MESSAGE_CTES
)


# The fast path of a batch: every save of it in one statement. The saves come
# as parallel arrays (at most one per conversation); ``up`` writes the headers
# of updates whose version (and epoch, and stored message count when only the
# tail is sent) still match, ``cr`` creates the new ones, and the message rows
# are written for exactly the conversations one of them returned. A save whose
# id is not returned changed nothing; the caller sorts out why.
_BULK = """
WITH i AS (
    SELECT * FROM unnest(
        %(ids)b::text[], %(heads)b::text[], %(counts)b::int4[], %(owners)b::text[],
        %(route_keys)b::text[], %(opts)b::text[], %(last_seqs)b::int8[],
        %(lifecycles)b::text[], %(flags)b::bool[], %(epochs)b::int8[],
        %(expected)b::int8[], %(bases)b::int4[], %(step_counts)b::int4[],
        %(step_bases)b::int4[]
    ) AS i(id, head, count, owner, route_key, opts, last_seq, lifecycle, unanswered,
           epoch, expected, base, scount, sbase)
),
up AS (
    UPDATE {t} AS t SET state = NULL, head = i.head, message_count = NULLIF(i.count, -1),
        version = t.version + 1, owner = i.owner, route_key = i.route_key,
        request_opts = i.opts::jsonb, last_seq = i.last_seq, updated_at = now(),
        lifecycle = i.lifecycle, unanswered = i.unanswered,
        epoch = CASE WHEN i.epoch < 0 THEN t.epoch ELSE GREATEST(t.epoch, i.epoch) END,
        step_count = NULLIF(i.scount, -1)
    FROM i
    WHERE t.id = i.id AND i.expected >= 0 AND t.version = i.expected
        AND (i.epoch < 0 OR t.epoch <= i.epoch)
        AND (i.base = 0 OR (t.message_count = i.base AND t.state IS NULL))
        AND (i.sbase = 0 OR t.step_count = i.sbase)
    RETURNING t.id, t.version
),
cr AS (
    INSERT INTO {t} (id, state, head, message_count, version, owner, route_key,
        request_opts, last_seq, updated_at, lifecycle, unanswered, epoch, step_count)
    SELECT i.id, NULL, i.head, NULLIF(i.count, -1), 1, i.owner, i.route_key, i.opts::jsonb,
        i.last_seq, now(), i.lifecycle, i.unanswered, GREATEST(i.epoch, 0),
        NULLIF(i.scount, -1)
    FROM i WHERE i.expected < 0
    ON CONFLICT (id) DO NOTHING
    RETURNING id, version
),
ok AS (SELECT id, version FROM up UNION ALL SELECT id, version FROM cr),
cut AS (
    DELETE FROM {m} AS m USING i, ok
    WHERE ok.id = i.id AND m.conversation_id = i.id AND m.position >= GREATEST(i.count, 0)
),
ins AS (
    INSERT INTO {m} (conversation_id, position, body)
    SELECT r.id, r.position, r.body
    FROM unnest(%(message_ids)b::text[], %(positions)b::int4[], %(bodies)b::text[])
        AS r(id, position, body)
    JOIN ok ON ok.id = r.id
    ON CONFLICT (conversation_id, position) DO UPDATE SET body = EXCLUDED.body
),
scut AS (
    DELETE FROM {s} AS s USING i, ok
    WHERE ok.id = i.id AND s.conversation_id = i.id AND s.position >= GREATEST(i.scount, 0)
),
sins AS (
    INSERT INTO {s} (conversation_id, position, body)
    SELECT r.id, r.position, r.body
    FROM unnest(%(step_ids)b::text[], %(step_positions)b::int4[], %(step_bodies)b::text[])
        AS r(id, position, body)
    JOIN ok ON ok.id = r.id
    ON CONFLICT (conversation_id, position) DO UPDATE SET body = EXCLUDED.body
)
SELECT id, version FROM ok
"""


class _Queries:
    """Every statement of one store, composed once with its table names."""

    def __init__(self, compose: Callable[[str], sql.Composed]) -> None:
        self.bulk = compose(_BULK)
        self.update = compose(_UPDATE)
        self.create = compose(_CREATE)
        # Its header only: the owner and the state's other fields, never a message row.
        self.header = compose(
            "SELECT owner, head, state -> 'interrupt' FROM {t} WHERE id = %s AND version > 0"
        )
        self.load = compose(
            f"SELECT {_COLUMNS}, x.positions, x.bodies, y.positions, y.bodies "
            "FROM {t} t LEFT JOIN LATERAL ("
            "SELECT array_agg(m.position ORDER BY m.position) AS positions, "
            "array_agg(m.body ORDER BY m.position) AS bodies FROM {m} m "
            "WHERE m.conversation_id = t.id AND m.position < t.message_count) x ON true "
            "LEFT JOIN LATERAL ("
            "SELECT array_agg(s.position ORDER BY s.position) AS positions, "
            "array_agg(s.body ORDER BY s.position) AS bodies FROM {s} s "
            "WHERE s.conversation_id = t.id AND s.position < t.step_count) y ON true "
            "WHERE t.id = %s AND t.version > 0"
        )
        self.current = compose(
            "SELECT version, epoch, message_count, step_count FROM {t} WHERE id = %s"
        )
        self.delete = compose("DELETE FROM {t} WHERE id = %s")
        self.delete_messages = compose("DELETE FROM {m} WHERE conversation_id = %s")
        self.delete_steps = compose("DELETE FROM {s} WHERE conversation_id = %s")
        self.lock = compose("SELECT 1 FROM {t} WHERE id = %s AND version > 0 FOR UPDATE")
        self.count_quarantined = compose("SELECT count(*) FROM {q} WHERE conversation_id = %s")
        self.key_taken = compose("SELECT 1 FROM {q} WHERE key = %s")
        self.move_aside = compose(
            f"INSERT INTO {{q}} (key, conversation_id, {_COLUMNS}, epoch, quarantined_at) "
            f"SELECT %s, id, {_COLUMNS}, epoch, now() FROM {{t}} WHERE id = %s"
        )
        self.move_messages_aside = compose(
            "INSERT INTO {qm} (key, position, body) "
            "SELECT %s, position, body FROM {m} WHERE conversation_id = %s"
        )
        self.move_steps_aside = compose(
            "INSERT INTO {qs} (key, position, body) "
            "SELECT %s, position, body FROM {s} WHERE conversation_id = %s"
        )
        self.unanswered = compose("SELECT id FROM {t} WHERE unanswered LIMIT %s")
        self.put_timer = compose(
            "INSERT INTO {tm} (conversation_id, key, id, due, payload) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (conversation_id, key) DO UPDATE "
            "SET id = EXCLUDED.id, due = EXCLUDED.due, payload = EXCLUDED.payload"
        )
        # A fired timer is removed only by its scheduling's id and, in a cluster, only
        # by a writer whose epoch the conversation's header has not passed (fencing).
        self.drop_timer = compose(
            "DELETE FROM {tm} WHERE conversation_id = %(id)s AND key = %(key)s "
            "AND (%(timer_id)s::text IS NULL OR id = %(timer_id)s::text) "
            "AND (%(epoch)s::bigint IS NULL OR NOT EXISTS ("
            "SELECT 1 FROM {t} WHERE id = %(id)s AND epoch > %(epoch)s::bigint))"
        )
        # The rows of fired timers, in one statement, each on the same terms as above.
        self.drop_fired_timers = compose(
            "DELETE FROM {tm} AS tm USING unnest(%(ids)s::text[], %(keys)s::text[], "
            "%(timer_ids)s::text[], %(epochs)s::bigint[]) AS f(cid, key, tid, epoch) "
            "WHERE tm.conversation_id = f.cid AND tm.key = f.key AND tm.id = f.tid "
            "AND (f.epoch IS NULL OR NOT EXISTS ("
            "SELECT 1 FROM {t} WHERE id = f.cid AND epoch > f.epoch)) "
            "RETURNING tm.conversation_id, tm.key, tm.id"
        )
        self.list_timers = compose(
            "SELECT key, due, payload, id FROM {tm} WHERE conversation_id = %s ORDER BY due, key"
        )
        self.due_timers = compose(
            "SELECT conversation_id, key, due, payload, id FROM {tm} WHERE due <= %s "
            "ORDER BY due LIMIT %s"
        )
        self.next_timer = compose("SELECT min(due) FROM {tm}")
        self.delete_timers = compose("DELETE FROM {tm} WHERE conversation_id = %s")
        # Created on every open when missing (no layout change for the timers).
        self.timer_schema = [
            compose(
                "CREATE TABLE IF NOT EXISTS {tm} (conversation_id TEXT NOT NULL, "
                "key TEXT NOT NULL, id TEXT NOT NULL, due TIMESTAMPTZ NOT NULL, "
                "payload TEXT NOT NULL, PRIMARY KEY (conversation_id, key))"
            ),
            compose("CREATE INDEX IF NOT EXISTS {ti} ON {tm} (due)"),
        ]
        self.fence = compose(
            "INSERT INTO {t} AS t (id, version, epoch) VALUES (%s, 0, %s) "
            "ON CONFLICT (id) DO UPDATE SET epoch = GREATEST(t.epoch, EXCLUDED.epoch) "
            "RETURNING epoch"
        )
        self.layout = "SELECT obj_description(to_regclass(%s), 'pg_class')"
        self.schema = [
            compose(
                "CREATE TABLE IF NOT EXISTS {t} ("
                "id TEXT PRIMARY KEY, state JSONB, version BIGINT NOT NULL, owner TEXT, "
                "route_key TEXT, request_opts JSONB, last_seq BIGINT, "
                "updated_at TIMESTAMPTZ, lifecycle TEXT)"
            ),
            compose(
                "CREATE TABLE IF NOT EXISTS {q} ("
                "key TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, state JSONB, "
                "version BIGINT, owner TEXT, route_key TEXT, request_opts JSONB, "
                "last_seq BIGINT, updated_at TIMESTAMPTZ, lifecycle TEXT, "
                "quarantined_at TIMESTAMPTZ NOT NULL)"
            ),
            # Columns this layout added to the single-row one (no-ops on a new table).
            compose(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS "
                "unanswered BOOLEAN NOT NULL DEFAULT false, "
                "ADD COLUMN IF NOT EXISTS head TEXT, "
                "ADD COLUMN IF NOT EXISTS message_count INTEGER, "
                "ADD COLUMN IF NOT EXISTS epoch BIGINT NOT NULL DEFAULT 0"
            ),
            compose(
                "ALTER TABLE {q} ADD COLUMN IF NOT EXISTS head TEXT, "
                "ADD COLUMN IF NOT EXISTS message_count INTEGER, "
                "ADD COLUMN IF NOT EXISTS epoch BIGINT"
            ),
            # Layout 3: the audit trail in rows. NULL: the head holds it (layout 2).
            compose("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS step_count INTEGER"),
            compose("ALTER TABLE {q} ADD COLUMN IF NOT EXISTS step_count INTEGER"),
            compose(
                "CREATE TABLE IF NOT EXISTS {s} (conversation_id TEXT NOT NULL, "
                "position INTEGER NOT NULL, body TEXT, PRIMARY KEY (conversation_id, position))"
            ),
            compose(
                "CREATE TABLE IF NOT EXISTS {qs} (key TEXT NOT NULL, "
                "position INTEGER NOT NULL, body TEXT, PRIMARY KEY (key, position))"
            ),
            compose(
                "CREATE TABLE IF NOT EXISTS {m} (conversation_id TEXT NOT NULL, "
                "position INTEGER NOT NULL, body TEXT, PRIMARY KEY (conversation_id, position))"
            ),
            compose(
                "CREATE TABLE IF NOT EXISTS {qm} (key TEXT NOT NULL, "
                "position INTEGER NOT NULL, body TEXT, PRIMARY KEY (key, position))"
            ),
            compose("CREATE INDEX IF NOT EXISTS {i} ON {t} (id) WHERE unanswered"),
            # Rows of the single-row layout: flag their unanswered work, then cut
            # every state that is an object with a list of messages into rows.
            compose(
                "UPDATE {t} SET unanswered = (lifecycle IN ('turn_start', 'queued') "
                "OR (jsonb_typeof(state) = 'object' "
                "AND jsonb_typeof(state -> 'queued') = 'array' "
                "AND jsonb_array_length(state -> 'queued') > 0)) "
                "WHERE head IS NULL AND version > 0"
            ),
            compose(
                "INSERT INTO {m} (conversation_id, position, body) "
                "SELECT t.id, e.ord - 1, e.value::text FROM {t} t, jsonb_array_elements("
                "CASE WHEN jsonb_typeof(t.state -> 'messages') = 'array' "
                "THEN t.state -> 'messages' ELSE '[]'::jsonb END) WITH ORDINALITY AS e(value, ord) "
                "WHERE t.head IS NULL AND jsonb_typeof(t.state) = 'object' "
                "ON CONFLICT DO NOTHING"
            ),
            compose(
                "UPDATE {t} SET head = (state - 'messages')::text, "
                "message_count = jsonb_array_length(state -> 'messages'), state = NULL "
                "WHERE head IS NULL AND jsonb_typeof(state) = 'object' "
                "AND jsonb_typeof(state -> 'messages') = 'array'"
            ),
            compose(f"COMMENT ON TABLE {{t}} IS '{_LAYOUT_MARK}'"),
        ]


def _import_psycopg() -> ModuleType:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "PostgresStore needs psycopg 3 and psycopg_pool, which are not installed; "
            "install them with: pip install 'sessionvisor[postgres]'"
        ) from exc
    return psycopg


@attrs.frozen
class ConversationHeader:
    """What ``PostgresStore.load_header`` reads: the owner key and the pending
    interrupt (``None`` when there is none), without the history."""

    owner: str | None
    interrupt: PendingInterrupt | None


class PostgresStore(ClosedOnExit):
    """A ``StateStore`` backed by PostgreSQL tables.

    The tables are created on first use when missing: ``<table>`` (a header
    row per conversation), ``<table>_messages`` (one row per message),
    ``<table>_steps`` (one row per step of the audit trail),
    ``<table>_quarantine``, ``<table>_qmessages`` and ``<table>_qsteps``
    (rows moved aside). A
    table of the single-row layout of earlier releases is upgraded in place
    then. Message rows, the head and the request options are stored as JSON;
    the head and message rows as ``TEXT`` (so a state may hold U+0000).

    For the cluster mode, every conversation carries an ``epoch`` (a fencing
    token, see ``fence``): a save given ``epoch=`` is refused when the stored
    epoch is higher, in the same statement that checks the version.

    Args:
        dsn: a libpq connection string or URL (``"postgresql://u@host/db"``).
        table: the table name, optionally schema-qualified (``"app.convs"``);
            letters, digits and underscores, at most 52 characters per part.
        max_connections: how many connections (and worker threads) the store's
            reads, deletes and quarantines use at most; the group commit's one
            writer has one more.
        migrations: the registry ``load`` upgrades old states with; the default
            one (``register_migration``) when None.

    Raises:
        ImportError: psycopg or psycopg_pool is not installed (install
            ``sessionvisor[postgres]``).
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
        if isinstance(max_connections, bool) or max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        *schema, name = parts
        self._dsn = dsn
        self._table_name = table
        self._max_connections = max_connections
        self._migrations = migrations
        self._names = {
            "t": sql.Identifier(*schema, name),
            "m": sql.Identifier(*schema, f"{name}_messages"),
            "q": sql.Identifier(*schema, f"{name}_quarantine"),
            "qm": sql.Identifier(*schema, f"{name}_qmessages"),
            "s": sql.Identifier(*schema, f"{name}_steps"),
            "qs": sql.Identifier(*schema, f"{name}_qsteps"),
            "i": sql.Identifier(f"{name}_unanswered"),
            "tm": sql.Identifier(*schema, f"{name}_timers"),
            "ti": sql.Identifier(f"{name}_timers_due"),
        }
        self._q = _Queries(self._sql)
        self._limiter = anyio.CapacityLimiter(max_connections)
        # One writer: saves queue up while its commit is in flight and go in the
        # next one together. Several writers would split the same saves into
        # more, smaller transactions (measured: W3 halves with four).
        self._commit_limiter = anyio.CapacityLimiter(1)
        # Guards the pool's creation and the closed flag; never held across a
        # database call.
        self._lock = threading.Lock()
        # One thread opens the pool and creates the tables; the first calls of a
        # busy server arrive together, and psycopg_pool's open(wait=True) admits
        # one waiter only.
        self._opening = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._ready = False
        self._closed = False
        self._history = HistoryTracker()
        self._steps = HistoryTracker()  # the audit trail's list, tracked the same way
        self._commits = GroupCommit(self._flush, self._commit_limiter, self._check_open)

    def __repr__(self) -> str:
        return f"PostgresStore(table={self._table_name!r})"

    @property
    def dsn(self) -> str:
        """The connection string (the cluster mode opens its tables with it)."""
        return self._dsn

    @property
    def table(self) -> str:
        """The conversations' table name, as given."""
        return self._table_name

    async def __aenter__(self) -> PostgresStore:
        await self._run(lambda conn: None)
        return self

    async def aclose(self) -> None:
        """Close the pool; calls in flight finish first. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is None:
            return
        # Shielded: a cancelled close would leak server connections. Taking every
        # slot first lets the calls in flight finish on their connections.
        slots = [object() for _ in range(self._max_connections)]
        with anyio.CancelScope(shield=True):
            await self._commit_limiter.acquire_on_behalf_of(pool)
            for slot in slots:
                await self._limiter.acquire_on_behalf_of(slot)
            try:
                await anyio.to_thread.run_sync(pool.close)
            finally:
                for slot in slots:
                    self._limiter.release_on_behalf_of(slot)
                self._commit_limiter.release_on_behalf_of(pool)

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """Return the stored conversation, or None when there is none.

        The header and its message rows are read by one statement (one
        snapshot), the state is rebuilt in order and checked with
        ``load_state`` (and upgraded when it was written with an older schema;
        the rows are not rewritten). The first ``load_state`` of the returned
        state reuses that check instead of validating the history again.

        Returns:
            The record, or None.

        Raises:
            CorruptStateError: a row cannot be read (the head or a message row
                is not valid JSON, a message row is missing, a state that
                ``load_state`` refuses, a malformed column); the rows are left
                untouched.
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        query = self._q.load

        def fetch(conn: psycopg.Connection[tuple[Any, ...]]) -> Any:
            row = conn.execute(query, (conversation_id,)).fetchone()
            if row is None or (row[2] or 0) + (row[10] or 0) > _DECODE_INLINE:
                return row
            return self._decode_row(conversation_id, row)  # short: no second thread hop

        found = await self._run(fetch)
        if found is None or isinstance(found, StoredConversation):
            return found
        # Decoding a long history is pure CPU: off the event loop, and
        # without holding one of the pool's connections.
        return await anyio.to_thread.run_sync(self._decode_row, conversation_id, found)

    async def save(
        self,
        conversation_id: str,
        record: StoredConversation,
        *,
        expected_version: int | None,
        lifecycle: Lifecycle,
        epoch: int | None = None,
    ) -> int:
        """Write ``record`` if the stored version is ``expected_version``.

        ``expected_version=None`` means the conversation must not exist yet.
        The record's ``version``, ``updated_at`` and ``lifecycle`` are replaced.
        When ``record.state["messages"]`` is the very list this store wrote at
        ``expected_version``, grown since, only the new messages are written.
        The call returns once the write is committed, possibly in one
        transaction with other conversations' saves.

        Args:
            epoch: the writer's fencing token (cluster mode). When given, the
                write is refused unless the stored epoch is at most ``epoch``,
                and the stored epoch becomes ``epoch``. None: not checked.

        Returns:
            The new version (1 for a new conversation).

        Raises:
            StaleWriteError: the stored version is not ``expected_version``,
                or the stored epoch is above ``epoch``.
            ValueError: ``lifecycle`` is not one of ``LIFECYCLES``.
            TypeError: the state or request options hold a value JSON cannot encode.
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        check_lifecycle(conversation_id, lifecycle)
        if epoch is not None:
            _check_epoch(epoch)
        return await self._commits.submit(
            Write(conversation_id, record, expected_version, lifecycle, epoch)
        )

    async def fence(self, conversation_id: str, epoch: int) -> int:
        """Raise the conversation's stored epoch to at least ``epoch``; return it.

        The cluster's new owner of a conversation calls this with the epoch of
        its lease before loading it: from then on a save with a lower epoch
        (the previous owner's) fails with ``StaleWriteError``, and the load
        that follows sees every write that got in before. A conversation with
        nothing stored gets a placeholder row (version 0, invisible to
        ``load`` and ``unanswered``) that only a create with a high enough
        epoch can take. A returned epoch above ``epoch`` means a newer owner
        fenced it already.

        Raises:
            TypeError: ``epoch`` is not an int.
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        _check_epoch(epoch)
        query = self._q.fence

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
            row = conn.execute(query, (conversation_id, epoch)).fetchone()
            assert row is not None  # INSERT ... ON CONFLICT DO UPDATE returns its row
            return int(row[0])

        return await self._run(run)

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
        """Remove the conversation, its messages and steps; a missing one is not an error.

        Raises:
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        q = self._q

        def remove(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            self._forget(conversation_id)
            with conn.transaction():
                conn.execute(q.delete, (conversation_id,))
                conn.execute(q.delete_messages, (conversation_id,))
                conn.execute(q.delete_steps, (conversation_id,))
                conn.execute(q.delete_timers, (conversation_id,))

        await self._run(remove)

    # -- durable timers (see ``StateStore``'s optional timer methods) -------------

    async def put_timer(self, conversation_id: str, timer: StoredTimer) -> None:
        """Store ``timer`` for the conversation, replacing the one with its key."""
        args = (conversation_id, timer.key, timer.id, timer.due, encode_payload(timer.payload))
        query = self._q.put_timer
        await self._run(lambda conn: conn.execute(query, args))

    async def drop_timer(
        self,
        conversation_id: str,
        key: str,
        *,
        timer_id: str | None = None,
        epoch: int | None = None,
    ) -> bool:
        """Remove the timer ``key`` (with ``timer_id``: only that scheduling of it;
        with ``epoch``: only while the conversation's stored epoch is not higher);
        return whether one was removed."""
        args = {"id": conversation_id, "key": key, "timer_id": timer_id, "epoch": epoch}
        query = self._q.drop_timer

        def drop(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
            return conn.execute(query, args).rowcount > 0

        return await self._run(drop)

    async def drop_fired_timers(
        self,
        fired: list[tuple[str, str, str]],
        *,
        epochs: list[int | None] | None = None,
    ) -> list[bool]:
        """Remove fired timers, given as (conversation id, key, id), in one statement:
        each only while the stored row has that id (with ``epochs``, one per timer:
        only while its conversation's stored epoch is not higher). Return, per
        timer, whether it was removed."""
        if not fired:
            return []
        cids, keys, ids = (list(column) for column in zip(*fired, strict=True))
        args = {
            "ids": cids,
            "keys": keys,
            "timer_ids": ids,
            "epochs": [None] * len(fired) if epochs is None else list(epochs),
        }
        query = self._q.drop_fired_timers

        def drop(conn: psycopg.Connection[tuple[Any, ...]]) -> set[tuple[str, str, str]]:
            return {(row[0], row[1], row[2]) for row in conn.execute(query, args).fetchall()}

        removed = await self._run(drop)
        return [row in removed for row in fired]

    async def list_timers(self, conversation_id: str) -> list[StoredTimer]:
        """The conversation's timers, soonest first."""
        query = self._q.list_timers

        def select(conn: psycopg.Connection[tuple[Any, ...]]) -> list[Any]:
            return conn.execute(query, (conversation_id,)).fetchall()

        return [_timer(*row) for row in await self._run(select)]

    async def due_timers(self, until: datetime, limit: int) -> list[tuple[str, StoredTimer]]:
        """Up to ``limit`` timers due at or before ``until``, soonest first, with their
        conversation ids (through the index on the due time; they stay stored)."""
        check_limit(limit)
        query = self._q.due_timers

        def select(conn: psycopg.Connection[tuple[Any, ...]]) -> list[Any]:
            return conn.execute(query, (until, limit)).fetchall()

        return [(row[0], _timer(*row[1:])) for row in await self._run(select)]

    async def next_timer_due(self) -> datetime | None:
        """When the soonest stored timer is due (None: no timer is stored)."""
        query = self._q.next_timer

        def select(conn: psycopg.Connection[tuple[Any, ...]]) -> Any:
            row = conn.execute(query).fetchone()
            return None if row is None else row[0]

        found: datetime | None = await self._run(select)
        return found

    async def load_header(self, conversation_id: str) -> ConversationHeader | None:
        """The conversation's owner and pending interrupt, read from its header row
        alone (none of its message rows): what a node that does not serve the
        conversation needs to take a command for it. None when nothing is stored.

        Raises:
            CorruptStateError: the stored interrupt cannot be read.
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        query = self._q.header

        def fetch(conn: psycopg.Connection[tuple[Any, ...]]) -> Any:
            return conn.execute(query, (conversation_id,)).fetchone()

        row = await self._run(fetch)
        if row is None:
            return None
        owner, head, raw = row
        where = f"the stored header of conversation {conversation_id!r}"
        if head is not None:
            try:
                fields = json.loads(head)
            except ValueError:
                raise CorruptStateError(f"cannot read {where}: it is not JSON") from None
            if not isinstance(fields, dict):
                raise CorruptStateError(f"cannot read {where}: it is not a JSON object")
            raw = fields.get("interrupt")
        interrupt = None
        if raw is not None:
            try:
                interrupt = PendingInterrupt.model_validate(raw)
            except ValidationError as exc:
                raise CorruptStateError(
                    f"cannot read {where}: its interrupt is not valid ({exc.error_count()} errors)"
                ) from None
        return ConversationHeader(owner=owner, interrupt=interrupt)

    async def quarantine(self, conversation_id: str) -> str:
        """Move the conversation's rows, unchanged, to the quarantine tables.

        The header goes to ``<table>_quarantine``, the messages to
        ``<table>_qmessages`` and the steps to ``<table>_qsteps``, under the key
        ``"<id>#quarantine-<n>"``;
        afterwards ``load(conversation_id)`` returns None.

        Returns:
            The quarantine key.

        Raises:
            NothingStored: no row is stored for the conversation (a ``LookupError``).
            psycopg.Error: the database failed.
            StoreClosed: the store is closed (a ``RuntimeError``).
        """
        q = self._q

        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> str:
            self._forget(conversation_id)
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
                conn.execute(q.move_messages_aside, (key, conversation_id))
                conn.execute(q.move_steps_aside, (key, conversation_id))
                conn.execute(q.delete, (conversation_id,))
                conn.execute(q.delete_messages, (conversation_id,))
                conn.execute(q.delete_steps, (conversation_id,))
            return key

        return await self._run(run)

    # -- group commit --------------------------------------------------------

    def _prepare(self, write: Write, rewrite: bool, single: bool = False) -> _Item:
        """Encode one write (on the flushing thread).

        Unless ``rewrite``, the trackers tell whether only the tails of the
        history and of the audit trail must be written; ``rewrite`` writes every row.
        """
        record, cid = write.record, write.conversation_id
        cut = split(record.state)
        messages, steps = cut.messages, cut.steps
        base = step_base = 0
        if not rewrite and messages is not None:
            base = self._history.written(cid, messages, write.expected_version)
            if steps is not None:
                step_base = self._steps.written(cid, steps, write.expected_version)
        tail = [] if messages is None else messages[base:]
        step_tail = [] if steps is None else steps[step_base:]
        return _Item(
            write=write,
            messages=messages,
            head=cut.head,
            count=None if messages is None else len(messages),
            opts=dumps(record.request_opts),
            unanswered=is_unanswered(write.lifecycle, record.state),
            base=base,
            bodies=[dumps(m) for m in tail],
            steps=steps,
            step_count=None if steps is None else len(steps),
            step_base=step_base,
            step_bodies=[dumps(s) for s in step_tail],
            single=single,
        )

    def _flush(self, batch: list[Write]) -> None:
        # On a worker thread, holding a slot.
        items: list[_Item] = []
        for write in batch:
            try:
                items.append(self._prepare(write, False))
            except Exception as exc:  # e.g. a value JSON cannot encode
                write.fail(exc)
        if len(items) == 1:
            items[0].single = True  # alone: its own statement is lighter than the batch's
        pool = self._get_pool()
        with pool.connection() as conn:
            while items:
                many = [item for item in items if not item.single]
                alone = [item for item in items if item.single]
                items = self._commit_many(conn, many) if many else []
                for item in alone:
                    items.extend(self._commit_one(conn, item))

    def _commit_many(
        self, conn: psycopg.Connection[tuple[Any, ...]], items: list[_Item]
    ) -> list[_Item]:
        """Write ``items`` in one transaction, one statement per round (a round holds
        each conversation at most once); return the items to try again."""
        rounds: list[list[_Item]] = []
        seen: list[set[str]] = []
        # In id order: concurrent batches then tend to lock rows in the same order;
        # a deadlock the server still detects sends the batch down the one-by-one path.
        for item in sorted(items, key=lambda item: item.write.conversation_id):
            cid = item.write.conversation_id
            for round_, ids in zip(rounds, seen, strict=True):
                if cid not in ids:
                    round_.append(item)
                    ids.add(cid)
                    break
            else:
                rounds.append([item])
                seen.append({cid})
        results: list[tuple[_Item, int | None]] = []
        try:
            # One statement is a transaction of its own (the connection is in
            # autocommit): BEGIN and COMMIT would only add two round trips.
            with conn.transaction() if len(rounds) > 1 else nullcontext():
                for round_ in rounds:
                    written = dict(conn.execute(self._q.bulk, _arrays(round_)).fetchall())
                    results.extend(
                        (item, written.get(item.write.conversation_id)) for item in round_
                    )
        except self._psycopg.Error as exc:
            if conn.broken:
                for item in items:
                    self._forget(item.write.conversation_id)
                    item.write.fail(exc)
                return []
            # Something in the statement failed and took the transaction with it:
            # write each save on its own, so only the one at fault reports it.
            for item in items:
                item.single = True
            return items
        retry: list[_Item] = []
        for item, version in results:
            retry.extend(self._settle(conn, item, version))
        return retry

    def _commit_one(self, conn: psycopg.Connection[tuple[Any, ...]], item: _Item) -> list[_Item]:
        write = item.write
        query = self._q.create if write.expected_version is None else self._q.update
        params = {
            "id": write.conversation_id,
            "head": item.head,
            "count": item.count,
            "owner": write.record.owner,
            "route_key": write.record.route_key,
            "opts": item.opts,
            "last_seq": write.record.last_seq,
            "lifecycle": write.lifecycle,
            "unanswered": item.unanswered,
            "epoch": write.epoch,
            "expected": write.expected_version,
            "base": item.base,
            "keep": item.count or 0,
            "positions": list(range(item.base, item.base + len(item.bodies))),
            "bodies": item.bodies,
            "step_count": item.step_count,
            "sbase": item.step_base,
            "skeep": item.step_count or 0,
            "step_positions": list(range(item.step_base, item.step_base + len(item.step_bodies))),
            "step_bodies": item.step_bodies,
        }
        try:
            row = conn.execute(query, params).fetchone()  # one statement: its own transaction
        except self._psycopg.Error as exc:
            self._forget(write.conversation_id)
            write.fail(exc)
            return []
        return self._settle(conn, item, None if row is None else int(row[0]))

    def _settle(
        self, conn: psycopg.Connection[tuple[Any, ...]], item: _Item, version: int | None
    ) -> list[_Item]:
        """Report a committed write, or find out why it wrote nothing."""
        write, cid = item.write, item.write.conversation_id
        if version is not None:
            for tracker, items in ((self._history, item.messages), (self._steps, item.steps)):
                if items is None:
                    tracker.forget(cid)
                else:
                    tracker.remember(cid, items, version)
            write.succeed(version)
            return []
        self._forget(cid)
        found = conn.execute(self._q.current, (cid,)).fetchone()
        actual, epoch, count, step_count = (None, 0, None, None) if found is None else found
        if actual == 0 and write.expected_version is None and not item.single:
            # A fenced placeholder: the one-by-one statement knows how to take it.
            item.single = True
            return [item]
        if actual == 0:
            actual = None  # a fenced placeholder: nothing stored
        if write.epoch is not None and epoch > write.epoch:
            write.fail(
                StaleWriteError(
                    f"cannot save conversation {cid!r}: its epoch is {epoch}, above "
                    f"this writer's {write.epoch} (a newer owner took it over)"
                )
            )
        elif actual == write.expected_version and (
            (item.base and count != item.base) or (item.step_base and step_count != item.step_base)
        ):
            # The rows are not what this store last wrote: write them all.
            return [self._prepare(write, True, item.single)]
        else:
            write.fail(stale_write(cid, write.expected_version, actual))
        return []

    def _forget(self, conversation_id: str) -> None:
        self._history.forget(conversation_id)  # lock-free: see HistoryTracker
        self._steps.forget(conversation_id)

    # -- machinery ---------------------------------------------------------

    def _sql(self, template: str) -> sql.Composed:
        from psycopg import sql

        return sql.SQL(template).format(**self._names)

    def _check_open(self) -> None:
        if self._closed:
            raise closed(self)

    async def _run(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], _T]) -> _T:
        self._check_open()
        return await anyio.to_thread.run_sync(self._call, fn, limiter=self._limiter)

    def _call(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], _T]) -> _T:
        # On a worker thread. The limiter caps the threads at max_connections,
        # so no call ever waits for the pool.
        with self._get_pool().connection() as conn:
            return fn(conn)

    def _get_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        with self._lock:
            if self._closed:
                raise closed(self)
            pool = self._pool
        if pool is not None and self._ready:
            return pool
        import psycopg_pool

        with self._lock:
            if self._pool is None:
                self._pool = psycopg_pool.ConnectionPool(
                    self._dsn,
                    min_size=1,
                    max_size=self._max_connections + 1,  # the reads' and the writer's
                    kwargs={"autocommit": True, **_tcp_settings(self._dsn)},
                    open=False,
                    name=repr(self),
                )
            pool = self._pool
        with self._opening:
            if not self._ready:
                pool.open(wait=True)
                with pool.connection() as conn:
                    self._create_tables(conn)
                self._ready = True
        return pool

    def _create_tables(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        with conn.transaction():
            # Two stores creating the same table at once can collide in the
            # catalog even with IF NOT EXISTS; the advisory lock lines them up.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sessionvisor:{self._table_name}",)
            )
            for statement in self._q.timer_schema:
                conn.execute(statement)
            found = conn.execute(self._q.layout, (self._names["t"].as_string(conn),)).fetchone()
            if found is not None and found[0] == _LAYOUT_MARK:
                return
            for statement in self._q.schema:
                conn.execute(statement)

    def _decode_row(self, conversation_id: str, row: tuple[Any, ...]) -> StoredConversation:
        (
            state_raw,
            head,
            count,
            version,
            owner,
            route_key,
            opts_raw,
            last_seq,
            updated_at,
            lifecycle,
            step_count,
            positions,
            bodies,
            step_positions,
            step_bodies,
        ) = row
        where = f"the stored row of conversation {conversation_id!r}"
        state: Any
        if state_raw is None and head is not None:
            if count is not None:
                positions, bodies = positions or [], bodies or []
                error = missing_row(conversation_id, "message", positions, count)
                if error is not None:
                    raise error
            if step_count is not None:  # NULL: the head holds the trail (layout 2)
                step_bodies = step_bodies or []
                error = missing_row(conversation_id, "step", step_positions or [], step_count)
                if error is not None:
                    raise error
            state = assemble(
                conversation_id,
                head,
                None if count is None else bodies,
                None if step_count is None else step_bodies,
            )
        elif not isinstance(state_raw, Mapping):
            # psycopg already parsed the JSONB; anything but an object (a JSON
            # string holding truncated text, say) is not a state.
            kind = "NULL" if state_raw is None else f"a JSON {type(state_raw).__name__}"
            raise CorruptStateError(f"cannot read {where}: its state is {kind}, not an object")
        else:
            state = state_raw
        upgraded, validated = decode_state(state, conversation_id, migrations=self._migrations)
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


def _tcp_settings(dsn: str) -> dict[str, Any]:
    """Bounded connects, and TCP that notices a server gone silent (a partition):
    keepalives while a call waits for an answer, ``tcp_user_timeout`` for data
    never acknowledged; a call on a dead link then fails instead of blocking its
    thread for ever. Whatever the dsn sets itself wins."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(dsn)
    added = {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
    }
    return {key: value for key, value in added.items() if key not in given}


def _timer(key: str, due: datetime, payload: str, timer_id: str) -> StoredTimer:
    return StoredTimer(key, due.astimezone(UTC), decode_payload(payload), timer_id)


def _check_epoch(epoch: object) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise TypeError(f"epoch must be an int, got {epoch!r}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")


@attrs.define(slots=True)
class _Item:
    """One write of a batch, encoded."""

    write: Write
    messages: list[Any] | None
    head: str
    count: int | None
    opts: str
    unanswered: bool
    base: int
    bodies: list[str]
    steps: list[Any] | None
    step_count: int | None
    step_base: int
    step_bodies: list[str]
    single: bool = False


def _arrays(items: list[_Item]) -> dict[str, Any]:
    """The parameters of the batch statement: one array per column (no NULL
    integers: -1 stands for "none")."""
    message_ids: list[str] = []
    positions: list[int] = []
    bodies: list[str] = []
    step_ids: list[str] = []
    step_positions: list[int] = []
    step_bodies: list[str] = []
    for item in items:
        cid = item.write.conversation_id
        message_ids.extend([cid] * len(item.bodies))
        positions.extend(range(item.base, item.base + len(item.bodies)))
        bodies.extend(item.bodies)
        step_ids.extend([cid] * len(item.step_bodies))
        step_positions.extend(range(item.step_base, item.step_base + len(item.step_bodies)))
        step_bodies.extend(item.step_bodies)
    writes = [item.write for item in items]
    return {
        "ids": [w.conversation_id for w in writes],
        "heads": [item.head for item in items],
        "counts": [-1 if item.count is None else item.count for item in items],
        "owners": [w.record.owner for w in writes],
        "route_keys": [w.record.route_key for w in writes],
        "opts": [item.opts for item in items],
        "last_seqs": [w.record.last_seq for w in writes],
        "lifecycles": [w.lifecycle for w in writes],
        "flags": [item.unanswered for item in items],
        "epochs": [-1 if w.epoch is None else w.epoch for w in writes],
        "expected": [-1 if w.expected_version is None else w.expected_version for w in writes],
        "bases": [item.base for item in items],
        "message_ids": message_ids,
        "positions": positions,
        "bodies": bodies,
        "step_counts": [-1 if item.step_count is None else item.step_count for item in items],
        "step_bases": [item.step_base for item in items],
        "step_ids": step_ids,
        "step_positions": step_positions,
        "step_bodies": step_bodies,
    }
