"""``Inbox``: commands for a conversation owned by another node, in PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import anyio
import attrs

from ._pg import PgTable, check_conversation_id

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["COMMAND_KINDS", "Command", "CommandKind", "Inbox", "InboxListener", "Posted"]

CommandKind = Literal["send", "resume", "dismiss", "cancel", "stop", "regenerate", "edit"]
COMMAND_KINDS: frozenset[str] = frozenset(get_args(CommandKind))

# The CHECK constraint listing the kinds, by a name of its own: a new name with
# every change of COMMAND_KINDS, so a table made by an earlier version (whose
# check lists fewer kinds) gets the new one at the next start (``_UPGRADE``).
# Constraint names are per table, so one name serves every inbox.
_KINDS_CHECK = "inbox_kinds_2"

# Replace any other check on ``kind`` (the unnamed one of the first version)
# with the current one. The rows already there hold kinds of an earlier list,
# a subset of this one, so they stay valid. Runs under the advisory lock that
# guards the creation of every cluster table.
_UPGRADE = """
DO $upgrade$
DECLARE
    rel regclass := {rel}::regclass;
    old name;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = rel AND conname = {check}) THEN
        RETURN;
    END IF;
    FOR old IN
        SELECT c.conname FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attname = 'kind'
        WHERE c.conrelid = rel AND c.contype = 'c' AND c.conkey = ARRAY[a.attnum]
    LOOP
        EXECUTE {drop} || quote_ident(old);
    END LOOP;
    EXECUTE {add};
END
$upgrade$
"""

# The insert and its notification in one statement: pg_notify runs only for a
# row actually inserted, and PostgreSQL delivers it at commit, so a listener
# woken by it finds the row.
_POST = """
WITH ins AS (
    INSERT INTO {t} (conversation_id, command_id, kind, payload)
    VALUES (%(cid)s, %(command_id)s, %(kind)s, %(payload)s)
    ON CONFLICT (conversation_id, command_id) DO NOTHING
    RETURNING seq
)
SELECT seq, pg_notify(%(channel)s, %(cid)s) FROM ins
"""


def inbox_schema(parts: tuple[str, ...]) -> list[sql.Composed]:
    """The statements creating an inbox table (also run by a ``LeaseTable``
    that claims conversations with pending commands)."""
    from psycopg import sql

    *schema, name = parts
    table = sql.Identifier(*schema, name)
    check = sql.SQL("CONSTRAINT {c} CHECK (kind IN ({kinds}))").format(
        c=sql.Identifier(_KINDS_CHECK),
        kinds=sql.SQL(", ").join(sql.Literal(kind) for kind in sorted(COMMAND_KINDS)),
    )
    quoted = table.as_string()
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            "seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "conversation_id TEXT NOT NULL, command_id TEXT NOT NULL, "
            "kind TEXT NOT NULL, {check}, payload TEXT NOT NULL, "
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "UNIQUE (conversation_id, command_id))"
        ).format(t=table, check=check),
        sql.SQL(_UPGRADE).format(
            rel=sql.Literal(quoted),
            check=sql.Literal(_KINDS_CHECK),
            drop=sql.Literal(f"ALTER TABLE {quoted} DROP CONSTRAINT "),
            add=sql.Literal(f"ALTER TABLE {quoted} ADD {check.as_string()}"),
        ),
        # take() reads one conversation in seq order; pending_conversations()
        # and the sweeper read the distinct conversation ids: all from this index.
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (conversation_id, seq)").format(
            i=sql.Identifier(name + "_by_conversation"), t=table
        ),
    ]


@attrs.frozen
class Posted:
    """The outcome of ``Inbox.post``.

    Attributes:
        command_id: the command's id (the caller's, or one the inbox made).
        created: False when a pending row with this id was there already (a
            retry): nothing was inserted.
    """

    command_id: str
    created: bool


@attrs.frozen
class Command:
    """One pending command.

    Attributes:
        seq: its row number; commands of a conversation are taken in ``seq`` order.
        conversation_id: the conversation.
        command_id: its unique id within the conversation.
        kind: ``send``, ``resume``, ``dismiss``, ``cancel``, ``stop``,
            ``regenerate`` or ``edit``.
        payload: the decoded JSON payload.
        created_at: when it was committed (the database's clock).
    """

    seq: int
    conversation_id: str
    command_id: str
    kind: CommandKind
    payload: Any
    created_at: datetime


class Inbox(PgTable):
    """Commands for conversations owned elsewhere, one row each.

    The table (created on first use) holds ``seq`` (insertion order),
    ``conversation_id``, ``command_id`` (unique per conversation), ``kind``,
    ``payload`` (JSON as ``TEXT``, so it may hold U+0000) and ``created_at``.
    A post returns once its row is committed. Every inserted row also sends a
    ``NOTIFY`` on the channel ``channel``, the fallback wake-up when Redis is
    down (``listen``).

    Asyncio only: it uses psycopg's async API.

    Args:
        dsn: a libpq connection string or URL.
        table: the inbox table, optionally schema-qualified.
        max_connections: the pool's size (``listen`` uses a connection of its own).
        timeout: seconds to wait for a connection (when PostgreSQL is down, a
            call fails with ``psycopg_pool.PoolTimeout`` after it).

    Raises:
        ImportError: psycopg or psycopg_pool is missing.
        TypeError, ValueError: a bad argument (named in the message).
    """

    _kind = "Inbox"

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "sessionvisor_inbox",
        max_connections: int = 4,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(dsn, table, max_connections=max_connections, timeout=timeout)
        # A channel name is an identifier (at most 63 bytes): derive a short,
        # stable one from the table so two inboxes in one database stay apart.
        digest = hashlib.sha1(table.encode()).hexdigest()[:12]
        self.channel = f"sessionvisor_inbox_{digest}"
        self._post = self._compose(_POST)
        self._take = self._compose(
            "SELECT seq, conversation_id, command_id, kind, payload, created_at FROM {t} "
            "WHERE conversation_id = %s ORDER BY seq LIMIT %s"
        )
        self._done = self._compose("DELETE FROM {t} WHERE seq = ANY(%s) RETURNING seq")
        self._pending = self._compose(
            "SELECT DISTINCT conversation_id FROM {t} ORDER BY conversation_id LIMIT %s"
        )
        self._among = self._compose(
            "SELECT DISTINCT conversation_id FROM {t} WHERE conversation_id = ANY(%s)"
        )

    def __repr__(self) -> str:
        return f"Inbox(table={self._table!r})"

    def _schema(self) -> list[Any]:
        return inbox_schema(self._parts)

    async def post(
        self,
        conversation_id: str,
        kind: CommandKind,
        payload: Any = None,
        *,
        command_id: str | None = None,
    ) -> Posted:
        """Store a command for the conversation's owner; return once committed.

        A ``command_id`` (a client message id, say) that a pending command of
        the conversation already carries inserts nothing and answers
        ``created=False``: a retried request is stored once. Once the owner
        took and deleted the row, the same id is stored again; the owner's
        state (which keeps client message ids) then recognizes it.

        Returns:
            ``Posted(command_id, created)``.

        Raises:
            TypeError: a bad conversation id, kind, command id, or a payload
                JSON cannot encode.
            ValueError: an unknown kind, an empty or too long id.
            psycopg.Error: the database failed.
        """
        check_conversation_id(conversation_id)
        if kind not in COMMAND_KINDS:
            raise ValueError(f"kind must be one of {sorted(COMMAND_KINDS)}, got {kind!r}")
        if command_id is None:
            command_id = "cmd-" + secrets.token_hex(12)
        elif not isinstance(command_id, str):
            raise TypeError(f"command_id must be a str, got {type(command_id).__name__}")
        elif not command_id or len(command_id) > 256:
            raise ValueError(f"command_id must be 1 to 256 characters, got {len(command_id)}")
        try:
            text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"the payload of a {kind!r} command for conversation {conversation_id!r} "
                f"is not JSON-serializable: {exc}"
            ) from None
        rows = await self._fetch(
            self._post,
            {
                "cid": conversation_id,
                "command_id": command_id,
                "kind": kind,
                "payload": text,
                "channel": self.channel,
            },
        )
        return Posted(command_id=command_id, created=bool(rows))

    async def take(self, conversation_id: str, limit: int = 1000) -> list[Command]:
        """The conversation's pending commands, oldest first (they stay until ``done``).

        Raises:
            TypeError, ValueError: a bad conversation id or limit.
            psycopg.Error: the database failed.
        """
        check_conversation_id(conversation_id)
        _check_limit(limit)
        rows = await self._fetch(self._take, (conversation_id, limit))
        return [
            Command(
                seq=int(seq),
                conversation_id=cid,
                command_id=command_id,
                kind=kind,
                payload=json.loads(payload),
                created_at=created_at,
            )
            for seq, cid, command_id, kind, payload, created_at in rows
        ]

    async def done(self, seqs: Iterable[int]) -> int:
        """Delete the commands with these ``seq`` numbers; return how many were deleted.

        Raises:
            TypeError: a seq is not an int.
            psycopg.Error: the database failed.
        """
        if isinstance(seqs, str | bytes):
            raise TypeError("seqs must be an iterable of ints")
        found = sorted(set(seqs))
        if any(isinstance(s, bool) or not isinstance(s, int) for s in found):
            raise TypeError(f"seqs must be ints, got {found!r}")
        if not found:
            return 0
        return len(await self._fetch(self._done, (found,)))

    async def pending_conversations(self, limit: int = 1000) -> list[str]:
        """The conversations that have pending commands, by id.

        Raises:
            TypeError, ValueError: a bad limit.
            psycopg.Error: the database failed.
        """
        _check_limit(limit)
        return [row[0] for row in await self._fetch(self._pending, (limit,))]

    async def pending_among(self, conversation_ids: Iterable[str]) -> set[str]:
        """Which of these conversations have pending commands (one indexed query).

        Raises:
            TypeError, ValueError: a bad id.
            psycopg.Error: the database failed.
        """
        ids = sorted({check_conversation_id(cid) for cid in conversation_ids})
        if not ids:
            return set()
        return {row[0] for row in await self._fetch(self._among, (ids,))}

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[InboxListener]:
        """Listen for the inbox's notifications on a dedicated connection.

        The listener is ready when this is entered: every post committed
        afterwards is reported by its ``wait``.
        """
        await self._get_pool()  # the table exists, the arguments were checked
        conn = await self._psycopg.AsyncConnection.connect(self._dsn, **self.connect_kwargs())
        try:
            from psycopg import sql

            with anyio.fail_after(self._timeout):
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            yield InboxListener(conn)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()


class InboxListener:
    """Notifications of an ``Inbox``: which conversations got a command."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def wait(self, timeout: float) -> set[str]:
        """Wait up to ``timeout`` seconds for a notification; return the ids of
        the conversations notified since the last call (empty on timeout).

        Raises:
            ValueError: a negative or non-finite timeout.
            psycopg.Error: the connection failed (poll the inbox instead).
        """
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
        if not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
        found: set[str] = set()
        async for note in self._conn.notifies(timeout=timeout, stop_after=1):
            found.add(note.payload)
        if found:
            # Collect what arrived together without waiting again.
            async for note in self._conn.notifies(timeout=0):
                found.add(note.payload)
        return found


def _check_limit(limit: object) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {limit!r}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
