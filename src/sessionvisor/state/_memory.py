"""``MemoryStore``: conversations kept in a dict, for tests and single-process use."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import Any

import attrs
from anyio.lowlevel import checkpoint

from .._clock import utcnow
from ._serializer import CheckedState, MigrationRegistry, decode_state
from ._store import Lifecycle, StoredConversation
from ._writes import check_lifecycle, nothing_to_quarantine, quarantine_key, stale_write

__all__ = ["MemoryStore"]


class MemoryStore:
    """A ``StateStore`` that keeps every conversation in this process's memory.

    Nothing survives the process. Each state is kept as compact JSON bytes, not
    as the dict it was given: an idle conversation then costs a few hundred
    bytes instead of a tree of dicts, and nothing the caller does to its dict
    afterwards reaches the store.

    Each method checks the version and writes without awaiting in between, so
    a check-and-set is atomic on the event loop; every method still passes one
    checkpoint first, so it is a cancellation point like a real store's.

    Args:
        migrations: the registry ``load`` upgrades old states with; the default
            one (``register_migration``) when None.
    """

    def __init__(self, *, migrations: MigrationRegistry | None = None) -> None:
        # The record without its state, and the state as JSON bytes.
        self._records: dict[str, tuple[StoredConversation, bytes]] = {}
        self._quarantined: dict[str, tuple[StoredConversation, bytes]] = {}
        self._migrations = migrations

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Do nothing: there is nothing to release. Present so stores are interchangeable."""
        await checkpoint()

    @property
    def quarantined(self) -> Mapping[str, StoredConversation]:
        """The records moved aside by ``quarantine``, by quarantine key (read-only view)."""
        return MappingProxyType(
            {key: _unpack(packed) for key, packed in self._quarantined.items()}
        )

    def ids(self) -> list[str]:
        """Return the ids of the stored conversations, quarantined ones excluded."""
        return list(self._records)

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """Return the stored conversation, or None when there is none.

        The state is checked with ``load_state`` (and upgraded when it was
        written with an older schema; the stored record itself stays as it is).
        The first ``load_state`` of the returned state reuses that check
        instead of validating the history again.

        Returns:
            The record, or None.

        Raises:
            CorruptStateError: the stored state cannot be read; it is left untouched.
        """
        await checkpoint()
        packed = self._records.get(conversation_id)
        if packed is None:
            return None
        record = _unpack(packed)
        upgraded, validated = decode_state(
            record.state, conversation_id, migrations=self._migrations
        )
        # CheckedState is a shallow copy of the top-level dict (a handful of
        # keys), not of the history: the message dicts stay shared.
        return attrs.evolve(record, state=CheckedState(upgraded, validated))

    async def save(
        self,
        conversation_id: str,
        record: StoredConversation,
        *,
        expected_version: int | None,
        lifecycle: Lifecycle,
    ) -> int:
        """Store ``record`` if the stored version is ``expected_version``.

        ``expected_version=None`` means the conversation must not exist yet.
        The record's ``version``, ``updated_at`` and ``lifecycle`` are replaced.

        Returns:
            The new version (1 for a new conversation).

        Raises:
            StaleWriteError: the stored version is not ``expected_version``.
            ValueError: ``lifecycle`` is not one of ``LIFECYCLES``.
        """
        check_lifecycle(conversation_id, lifecycle)
        blob = _pack(record.state)
        await checkpoint()
        # From here to the assignment there is no await: no other task can
        # save this conversation between the check and the write.
        current = self._records.get(conversation_id)
        actual = None if current is None else current[0].version
        if actual != expected_version:
            raise stale_write(conversation_id, expected_version, actual)
        new_version = 1 if actual is None else actual + 1
        self._records[conversation_id] = (
            attrs.evolve(
                record,
                state=_NO_STATE,
                version=new_version,
                updated_at=utcnow(),
                lifecycle=lifecycle,
            ),
            blob,
        )
        return new_version

    async def delete(self, conversation_id: str) -> None:
        """Remove the conversation; a missing one is not an error."""
        await checkpoint()
        self._records.pop(conversation_id, None)

    async def quarantine(self, conversation_id: str) -> str:
        """Move the conversation's record aside, unchanged, and return its new key.

        The record is kept in ``quarantined`` under ``"<id>#quarantine-<n>"``;
        afterwards ``load(conversation_id)`` returns None.

        Returns:
            The quarantine key.

        Raises:
            LookupError: nothing is stored for the conversation.
        """
        await checkpoint()
        record = self._records.pop(conversation_id, None)
        if record is None:
            raise nothing_to_quarantine(conversation_id)
        n = 1
        while quarantine_key(conversation_id, n) in self._quarantined:
            n += 1
        key = quarantine_key(conversation_id, n)
        self._quarantined[key] = record
        return key


_NO_STATE: dict[str, Any] = {}


def _pack(state: Mapping[str, Any]) -> bytes:
    # Bytes that are not valid JSON (a test planting a corrupt row) are kept as they are.
    if isinstance(state, bytes | str):
        return state.encode() if isinstance(state, str) else state
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()


def _unpack(packed: tuple[StoredConversation, bytes]) -> StoredConversation:
    record, blob = packed
    try:
        state: Any = json.loads(blob)
    except ValueError:
        state = blob  # decode_state reports it as corrupt, naming the conversation
    return attrs.evolve(record, state=state)
