"""What the cluster modules share: name checks, the asyncio guard, id makers."""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from types import ModuleType
from typing import Any

__all__ = [
    "check_table_name",
    "default_node_id",
    "import_psycopg",
    "import_redis",
    "new_incarnation",
    "require_asyncio",
]

# The same rule as PostgresStore's table names: letters, digits and underscores,
# at most 52 characters per part (PostgreSQL truncates identifiers at 63 bytes
# and the index names add a suffix), optionally prefixed by a schema.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,51}")


def check_table_name(owner: str, table: object) -> tuple[str, ...]:
    """Return the parts of a (schema-qualified) table name, or raise.

    Raises:
        TypeError: ``table`` is not a str.
        ValueError: it is not a plain, optionally schema-qualified, name.
    """
    if not isinstance(table, str):
        raise TypeError(f"{owner} table must be a str, got {type(table).__name__}")
    parts = table.split(".")
    if len(parts) > 2 or not all(_NAME.fullmatch(part) for part in parts):
        raise ValueError(
            f"{owner} table name {table!r} must be a name of letters, digits and "
            "underscores (at most 52 characters), optionally prefixed by a schema"
        )
    return tuple(parts)


def require_asyncio(what: str) -> None:
    """Raise a clear error when called outside an asyncio event loop.

    psycopg's async connections and ``redis.asyncio`` are built on asyncio;
    on trio they would fail deep inside with an unrelated message.
    """
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{what} runs on asyncio only (psycopg's async API and redis.asyncio need it); "
            "the cluster mode is not available on trio"
        ) from None


def import_psycopg() -> tuple[ModuleType, ModuleType]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise ImportError(
            "the cluster mode needs psycopg 3 and psycopg_pool, which are not installed; "
            "install them with: pip install 'sessionvisor[cluster]'"
        ) from exc
    return psycopg, psycopg_pool


def import_redis() -> Any:
    try:
        import redis.asyncio
    except ImportError as exc:
        raise ImportError(
            "the cluster mode needs the redis package, which is not installed; "
            "install it with: pip install 'sessionvisor[cluster]'"
        ) from exc
    return redis.asyncio


def default_node_id() -> str:
    """``<hostname>-<pid>``: unique per process on a network of distinct hostnames."""
    return f"{socket.gethostname()}-{os.getpid()}"


def new_incarnation() -> str:
    """A fresh id for one run of a node: 16 hex digits of wall-clock
    nanoseconds, a dash, 16 random hex digits.

    The time prefix makes a later incarnation compare greater (as text, in the
    "C" collation), which is how the lease statement tells a node's restart
    from an older run of it still alive; the random part keeps two starts in
    the same nanosecond apart.
    """
    return f"{time.time_ns():016x}-{secrets.token_hex(8)}"
