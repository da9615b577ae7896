"""What counts as storable JSON, checked without recursion.

Everything a client hands the runtime (message content, ``request_opts``,
answers) ends up in a store, an event and a log line. The store, pydantic's
serializer, ``copy.deepcopy`` and the log renderers all recurse, and each has a
limit of its own that a client could reach on purpose. So input is held to one
rule before anything happens: JSON values (mappings with str keys, lists, str,
int, finite float, bool, None), at most ``MAX_DEPTH`` containers deep, strings
and keys that are valid Unicode (no lone surrogates: UTF-8 cannot encode them)
and integers of at most ``MAX_INT_DIGITS`` digits. The walk keeps its own
stack, so no input can make it recurse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "JSONInputError",
    "JSONTypeError",
    "check_json",
    "json_problem",
]

MAX_DEPTH = 64
MAX_INT_DIGITS = 1000
_INT_LIMIT = 10**MAX_INT_DIGITS


class JSONInputError(ValueError):
    """A value is not JSON that every store can keep (``.where`` is its path)."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


class JSONTypeError(TypeError):
    """A value holds something that is not a JSON type at all (``.where`` is its path)."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


# (value, depth, parent entry, key in the parent)
_Entry = tuple[Any, int, "_Entry | None", Any]


def _path(entry: _Entry | None) -> str:
    keys: list[Any] = []
    while entry is not None:
        _, _, parent, key = entry
        if parent is not None:
            keys.append(key)
        entry = parent
    text = "".join(f"[{key!r:.40}]" for key in reversed(keys))
    # A path 64 levels deep is long; the start and the end say where it is.
    return text if len(text) <= 120 else f"{text[:60]}…{text[-50:]}"


def _bad_string(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _scalar_problem(item: Any) -> tuple[str, bool] | None:
    """Why a non-container value is not JSON (``(problem, wrong_type)``); None when it is."""
    if isinstance(item, str):
        if _bad_string(item):
            return "is a string with a lone surrogate (not valid Unicode)", False
        return None
    if item is None or isinstance(item, bool):
        return None
    if isinstance(item, int):
        if -_INT_LIMIT < item < _INT_LIMIT:
            return None
        return f"is an integer of more than {MAX_INT_DIGITS} digits", False
    if isinstance(item, float):
        if math.isfinite(item):
            return None
        return f"is {float(item)!r}; only finite numbers are JSON", False
    return f"is of type {type(item).__name__}, not a JSON value", True


def json_problem(value: Any, *, max_depth: int = MAX_DEPTH) -> tuple[str, str, bool] | None:
    """The first reason ``value`` is not storable JSON; None if it is.

    Returns:
        ``(path, problem, wrong_type)``: ``path`` like ``[0]['x']`` relative to
        ``value`` (empty for the value itself); ``wrong_type`` is True when a
        value is not of a JSON type at all (a TypeError rather than a ValueError).
    """
    if not isinstance(value, Mapping | list | tuple):
        found = _scalar_problem(value)
        return None if found is None else ("", *found)
    # Only containers go on the stack; scalars are checked where they are found (the
    # common types first, inline: a 1 MiB body can hold half a million of them). Each
    # entry links to its parent, so the path costs nothing until a problem is found.
    stack: list[_Entry] = [(value, 1, None, None)]
    pop = stack.pop
    push = stack.append
    while stack:
        entry = pop()
        container, depth, _, _ = entry
        if depth > max_depth:
            return _path(entry), f"is nested more than {max_depth} levels deep", False
        pairs: Any
        if isinstance(container, Mapping):
            for key in container:
                if type(key) is not str and not isinstance(key, str):
                    wrong = f"has a key of type {type(key).__name__}; keys must be str"
                    return _path(entry), wrong, True
                if not key.isascii() and _bad_string(key):
                    wrong = "has a key with a lone surrogate (not valid Unicode)"
                    return _path(entry), wrong, False
            pairs = container.items()
        else:
            pairs = enumerate(container)
        for key, item in pairs:
            kind = type(item)
            if kind is str:
                if item.isascii() or not _bad_string(item):
                    continue
            elif kind is int:
                if -_INT_LIMIT < item < _INT_LIMIT:
                    continue
            elif kind is float:
                if item - item == 0.0:  # finite: inf - inf and nan - nan are nan
                    continue
            elif item is None or kind is bool:
                continue
            elif kind is dict or kind is list or isinstance(item, Mapping | list | tuple):
                if item or depth >= max_depth:
                    push((item, depth + 1, entry, key))
                continue  # an empty one within the limit holds nothing to look at
            found = _scalar_problem(item)
            if found is not None:
                return (_path((item, depth + 1, entry, key)), *found)
    return None


def check_json(value: Any, name: str, *, conversation_id: str | None = None) -> None:
    """Raise an error naming ``name`` unless ``value`` is storable JSON.

    Raises:
        JSONTypeError: (a TypeError) a value of a type JSON does not have.
        JSONInputError: (a ValueError) too deep, not finite, a lone surrogate,
            an integer too large.

    Args:
        value: the value to check.
        name: what the caller calls it (``content``, ``request_opts``, ``answer``).
        conversation_id: named in the message when given.
    """
    problem = json_problem(value)
    if problem is None:
        return
    where, what, wrong_type = problem
    of = "" if conversation_id is None else f" of conversation {conversation_id!r}"
    message = f"{name}{where}{of} {what}"
    if wrong_type:
        raise JSONTypeError(message, f"{name}{where}")
    raise JSONInputError(message, f"{name}{where}")
