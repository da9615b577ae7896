"""Traces through OpenTelemetry, when it is installed; nothing at all otherwise.

The library only uses the OpenTelemetry *API* (extra ``otel``): spans go to
whatever SDK and exporter the application configured, and cost next to nothing
when it configured none. Without the package every helper here is a no-op.

Spans: ``sessionvisor.turn`` (one per turn, a child of the request that caused
it), and inside or beside it ``sessionvisor.store.save``,
``sessionvisor.factory`` and ``sessionvisor.router``. Each carries
``sessionvisor.conversation_id`` and ``sessionvisor.agent_id``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["capture_context", "span"]

try:
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _otel_trace
except ImportError:  # the extra is not installed: no tracing at all
    _otel_context = None  # type: ignore[assignment]
    _otel_trace = None  # type: ignore[assignment]

_TRACER: Any = None


def _tracer() -> Any:
    global _TRACER
    if _TRACER is None:
        assert _otel_trace is not None
        _TRACER = _otel_trace.get_tracer("sessionvisor")
    return _TRACER


def capture_context() -> Any:
    """The caller's trace context (to parent work done later, in another task), or None."""
    if _otel_context is None:
        return None
    return _otel_context.get_current()


@contextlib.contextmanager
def span(
    name: str, conversation_id: str, agent_id: str, *, parent: Any = None, **attributes: Any
) -> Iterator[Any]:
    """Run the block in a span named ``name`` (a no-op without OpenTelemetry).

    An exception escaping the block is recorded on the span and re-raised.
    """
    if _otel_trace is None:
        yield None
        return
    attrs = {
        "sessionvisor.conversation_id": conversation_id,
        "sessionvisor.agent_id": agent_id,
        **{f"sessionvisor.{k}": v for k, v in attributes.items() if v is not None},
    }
    with _tracer().start_as_current_span(name, context=parent, attributes=attrs) as current:
        yield current
