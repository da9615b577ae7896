"""What the kill -9 round tests of durable steps share: the seed and reading the store.

``seed_from_env`` reads ``STEP_CRASH_SEED`` (a failure prints the seed, so a run can
be replayed) or draws one. ``sqlite_loader``/``postgres_loader`` return a function
that reads the given conversations' States from the store a killed server left,
from outside the event loop of the test (each call opens and closes the store).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from sessionvisor import SQLiteStore, StateStore
from sessionvisor.state import State

Loader = Callable[[], dict[str, State | None]]


def seed_from_env() -> int:
    given = os.environ.get("STEP_CRASH_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


def _loader(open_store: Callable[[], StateStore], conversations: Sequence[str]) -> Loader:
    def load() -> dict[str, State | None]:
        async def read() -> dict[str, State | None]:
            out: dict[str, State | None] = {}
            async with open_store() as store:  # type: ignore[attr-defined]
                for cid in conversations:
                    record = await store.load(cid)
                    out[cid] = None if record is None else State.model_validate(record.state)
            return out

        return anyio.run(read)

    return load


def sqlite_loader(path: Path, conversations: Sequence[str]) -> Loader:
    return _loader(lambda: SQLiteStore(path), conversations)


def postgres_loader(dsn: str, conversations: Sequence[str]) -> Loader:
    from sessionvisor.state.postgres import PostgresStore

    return _loader(lambda: PostgresStore(dsn, max_connections=1), conversations)
