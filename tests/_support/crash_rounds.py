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
from typing import Any

import anyio

from sessionvisor import SQLiteStore, StateStore
from sessionvisor.state import State

Loader = Callable[[], dict[str, State | None]]

#: The served test apps' file helpers (pasted into their source): an fsync'd line
#: append, a line read, and ``_hold``, which blocks once at a place ``holds.txt``
#: names (recording it in ``held.log``) until the test kills the process.
APP_HELPERS = """def _append(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _lines(path):
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


async def _hold(key, phase):
    wanted = f"{key} {phase}"
    if wanted in _lines(HOLDS) and wanted not in _lines(HELD):
        _append(HELD, wanted)
        await anyio.sleep_forever()
"""


def read_lines(path: Path) -> list[str]:
    """A file's lines, or none when the served process never wrote it."""
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


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


def store_of(
    backend: str, tmp_path: Path, conversations: Sequence[str], request: Any
) -> tuple[str, Loader]:
    """The ``--store`` URL a served process uses and the reader of what it stored:
    a SQLite file in ``tmp_path``, or a fresh PostgreSQL database (``pg_dsn``)."""
    if backend == "sqlite":
        path = tmp_path / "steps.db"
        return f"sqlite:///{path}", sqlite_loader(path, conversations)
    from tests.cluster._nodes import postgres_url

    dsn = request.getfixturevalue("pg_dsn")  # a fresh database for this test
    return postgres_url(dsn), postgres_loader(dsn, conversations)
