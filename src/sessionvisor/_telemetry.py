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
from typing import Any

__all__ = ["capture_context", "span"]

try:
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _otel_trace
except ImportError:  # the extra is not installed: no tracing at all
    _otel_context = None  # type: ignore[assignment]
    _otel_trace = None  # type: ignore[assignment]

_NULL: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
_UNCONFIGURED: tuple[type, ...] = ()
if _otel_trace is not None:
    _UNCONFIGURED = (_otel_trace.ProxyTracerProvider, _otel_trace.NoOpTracerProvider)


_MISSING: Any = object()


def _enabled() -> bool:
    # Until the application sets a tracer provider, the API's spans record nothing
    # yet cost a context switch each: skip them entirely (a turn makes three). The
    # module global is read directly because get_tracer_provider() consults the
    # environment on every call until a provider is set.
    if _otel_trace is None:
        return False
    provider = getattr(_otel_trace, "_TRACER_PROVIDER", _MISSING)
    if provider is None:
        return False
    if provider is _MISSING:  # another API layout: ask it the slow way
        provider = _otel_trace.get_tracer_provider()
    return not isinstance(provider, _UNCONFIGURED)


def capture_context() -> Any:
    """The caller's trace context (to parent work done later, in another task), or None."""
    if not _enabled():
        return None
    return _otel_context.get_current()


def span(
    name: str, conversation_id: str, agent_id: str, *, parent: Any = None, **attributes: Any
) -> contextlib.AbstractContextManager[Any]:
    """A context manager running its block in a span named ``name``.

    Without OpenTelemetry, or before the application configured a tracer
    provider, it does nothing. An exception escaping the block is recorded on
    the span and re-raised.
    """
    if not _enabled():
        return _NULL
    attrs = {
        "sessionvisor.conversation_id": conversation_id,
        "sessionvisor.agent_id": agent_id,
        **{f"sessionvisor.{k}": v for k, v in attributes.items() if v is not None},
    }
    manager: contextlib.AbstractContextManager[Any] = _otel_trace.get_tracer(
        "sessionvisor"
    ).start_as_current_span(name, context=parent, attributes=attrs)
    return manager
