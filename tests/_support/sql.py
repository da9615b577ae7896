"""One way to run SQL on PostgreSQL from a test: a statement on a connection
of its own, committed at once, as another process would run it."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["POSTGRES_DSN", "sql"]

#: The database the tests use (a test makes its own tables, schemas or databases in it).
POSTGRES_DSN = os.environ.get(
    "SESSIONVISOR_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


def sql(dsn: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own (autocommit); return its rows.

    ``params`` fill the ``%s`` placeholders (without any, a ``%`` in the
    query is a plain character); a statement that returns no rows (DDL, an
    UPDATE) returns ``[]``.
    """
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []
