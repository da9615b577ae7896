"""Looking inside the stores, and holding them up, from a test.

A store's public methods show what a caller may rely on; a test of the store
itself sometimes needs more: the bytes a ``MemoryStore`` holds, a corrupt row
planted the way a torn write would leave it, the ``synchronous`` setting a
``SQLiteStore`` runs with, or the group commit of the SQL stores held and
watched. These functions give that without a test reading the stores' private
attributes. Each raises ``TypeError`` for a store it does not support.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs

from ..state import MemoryStore, SQLiteStore, StoredConversation

if TYPE_CHECKING:
    from ..state._batch import Write
    from ..state.postgres import PostgresStore

__all__ = [
    "hold_commits",
    "overwrite_stored_state",
    "raw_quarantined_record",
    "raw_record",
    "record_commit_batches",
    "sqlite_synchronous",
]

# SQLite's numbering of its ``synchronous`` setting.
_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _memory_store(store: object, helper: str) -> MemoryStore:
    if not isinstance(store, MemoryStore):
        raise TypeError(f"{helper} supports a MemoryStore only, got {type(store).__name__}")
    return store


def _sql_store(store: object, helper: str) -> SQLiteStore | PostgresStore:
    if isinstance(store, SQLiteStore):
        return store
    # Looked up, not imported: without the ``postgres`` extra there is no such
    # module, and then no store can be a PostgresStore.
    postgres = sys.modules.get("sessionvisor.state.postgres")
    if postgres is not None and isinstance(store, postgres.PostgresStore):
        found: PostgresStore = store
        return found
    raise TypeError(
        f"{helper} supports a SQLiteStore or a PostgresStore only, got {type(store).__name__}"
    )


def raw_record(store: MemoryStore, conversation_id: str) -> tuple[StoredConversation, bytes] | None:
    """A conversation exactly as a ``MemoryStore`` holds it, without decoding it.

    Returns:
        The stored record with its ``state`` left empty (``{}``) and, beside
        it, the state's bytes as held (compact JSON, or whatever
        ``overwrite_stored_state`` planted); None when nothing is stored.
        Quarantined conversations are not found here (see
        ``raw_quarantined_record``).

    Raises:
        TypeError: ``store`` is not a ``MemoryStore``.
    """
    row = _memory_store(store, "raw_record")._records.get(conversation_id)
    if row is None:
        return None
    return attrs.evolve(row.record, state={}), row.state_bytes()


def raw_quarantined_record(store: MemoryStore, key: str) -> tuple[StoredConversation, bytes] | None:
    """A quarantined conversation exactly as a ``MemoryStore`` holds it.

    Like ``raw_record``, for the key ``quarantine`` returned; None when the
    store holds nothing under it.

    Raises:
        TypeError: ``store`` is not a ``MemoryStore``.
    """
    row = _memory_store(store, "raw_quarantined_record")._quarantined.get(key)
    if row is None:
        return None
    return attrs.evolve(row.record, state={}), row.state_bytes()


def overwrite_stored_state(store: MemoryStore, conversation_id: str, state: bytes) -> None:
    """Replace the state a ``MemoryStore`` holds for a conversation with ``state``.

    Behind the store's back, as a torn write or a hand edit would: the bytes
    are kept as given (truncated JSON stays truncated) and the rest of the
    record (version, owner, ...) is left as it is. The next ``load`` of the
    conversation sees them, and raises ``CorruptStateError`` when they are not
    a state.

    Raises:
        TypeError: ``store`` is not a ``MemoryStore``.
        LookupError: nothing is stored for the conversation.
    """
    row = _memory_store(store, "overwrite_stored_state")._records.get(conversation_id)
    if row is None:
        raise LookupError(f"nothing is stored for conversation {conversation_id!r}")
    row.head, row.raw = bytes(state), True


async def sqlite_synchronous(store: SQLiteStore) -> str:
    """The ``synchronous`` setting in effect on a ``SQLiteStore``'s connection.

    Read from SQLite itself (``PRAGMA synchronous``), not from the argument the
    store was given; opens the connection when it is not open yet.

    Returns:
        ``"OFF"``, ``"NORMAL"``, ``"FULL"`` or ``"EXTRA"``.

    Raises:
        TypeError: ``store`` is not a ``SQLiteStore``.
        StoreClosed: the store is closed.
    """
    if not isinstance(store, SQLiteStore):
        raise TypeError(
            f"sqlite_synchronous supports a SQLiteStore only, got {type(store).__name__}"
        )
    value = await store._run(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
    return _SYNCHRONOUS.get(value, str(value))


@asynccontextmanager
async def hold_commits(store: SQLiteStore | PostgresStore) -> AsyncIterator[None]:
    """Hold every commit slot of a SQL store while the block runs.

    Saves made meanwhile queue up and none returns; once the block ends they
    commit, together in one batch (see ``record_commit_batches``). A
    ``SQLiteStore`` has one connection, whose slot serves its reads too: its
    loads wait as well. Enter it in the task that starts the saves, before
    starting them.

    Raises:
        TypeError: ``store`` is neither a ``SQLiteStore`` nor a ``PostgresStore``.
    """
    limiter = _sql_store(store, "hold_commits")._commit_limiter
    slots = [object() for _ in range(int(limiter.total_tokens))]
    for slot in slots:
        await limiter.acquire_on_behalf_of(slot)
    try:
        yield
    finally:
        for slot in slots:
            limiter.release_on_behalf_of(slot)


def record_commit_batches(store: SQLiteStore | PostgresStore) -> list[list[str]]:
    """Record each batch a SQL store's group commit flushes, from now on.

    Returns:
        A list the store appends to for the rest of its life: one list per
        batch (one transaction), of the conversation ids of its saves, in the
        order the batch holds them. What the store does is unchanged.

    Raises:
        TypeError: ``store`` is neither a ``SQLiteStore`` nor a ``PostgresStore``.
    """
    commits = _sql_store(store, "record_commit_batches")._commits
    batches: list[list[str]] = []
    flush: Callable[[list[Write]], None] = commits._flush

    def recording(batch: list[Write]) -> None:
        batches.append([write.conversation_id for write in batch])
        flush(batch)

    commits._flush = recording
    return batches
