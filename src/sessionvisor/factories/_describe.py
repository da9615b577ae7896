"""How error messages show the objects a user handed us and what they returned."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

__all__ = ["describe_callable", "short_repr", "summarize_validation_error"]

#: Longest ``repr`` an error message quotes; a returned agent may hold a whole
#: conversation and a message that long helps nobody.
REPR_LIMIT = 200


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters, never raising."""
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__qualname__} object (repr failed: {type(exc).__name__})>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def describe_callable(obj: Any) -> str:
    """Name a function, class or object the way a person would look it up.

    Functions and classes are named by module and qualified name (a lambda's
    qualname still says where it was written); other objects by their repr,
    which for an instance names its class.
    """
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(qualname, str):
        module = getattr(obj, "__module__", None)
        return f"{module}.{qualname}" if isinstance(module, str) else qualname
    return short_repr(obj)


def summarize_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """Return ``"loc: msg; loc: msg"`` for the first ``limit`` problems of ``exc``.

    Inputs are left out on purpose: they may hold the trusted scope or a
    secret, and the message may end up in an HTTP response or a log.
    """
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    summary = "; ".join(problems[:limit])
    if len(problems) > limit:
        summary += f"; and {len(problems) - limit} more"
    return summary
