"""Checks of ``SessionSupervisor``'s arguments, so that a mistake fails at once.

A wrong argument accepted at construction fails much later and obscurely (the
first message of the first user); each check here names the argument and what
was given instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__: list[str] = ["check_constructor_args", "default_agent_id", "default_owner_of"]

_STORE_METHODS = ("load", "save", "delete", "quarantine")


def default_owner_of(scope: Any) -> str | None:
    """The owner key of a scope: ``scope["owner"]``, ``scope.owner``, a str itself, or None."""
    if scope is None:
        return None
    if isinstance(scope, str):
        return scope
    value = scope.get("owner") if isinstance(scope, Mapping) else getattr(scope, "owner", None)
    return None if value is None else str(value)


def default_agent_id(conversation_id: str) -> str:
    return f"conversation-{conversation_id}"


def _given(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def check_constructor_args(
    *,
    router: Any,
    store: Any,
    agent_id: Any,
    owner_of: Any,
    clock: Any,
    on_corrupt: Any,
    recover: Any,
    cluster: Any,
) -> None:
    """Raise TypeError/ValueError naming the first bad argument."""
    if router is None or not (callable(router) or callable(getattr(router, "resolve", None))):
        raise TypeError(
            "SessionSupervisor(router=...) must be a FactoryRouter (an object with a resolve "
            f"method) or a callable (scope, conversation_id, request_opts) -> Route; "
            f"got {_given(router)}"
        )
    if store is not None:
        missing = [name for name in _STORE_METHODS if not callable(getattr(store, name, None))]
        if missing:
            raise TypeError(
                "SessionSupervisor(store=...) must be a StateStore (async load, save, delete "
                f"and quarantine); got {_given(store)}, which lacks {', '.join(missing)}"
            )
    for name, value in (("agent_id", agent_id), ("owner_of", owner_of)):
        if value is not None and not callable(value):
            raise TypeError(
                f"SessionSupervisor({name}=...) must be callable or None; got {_given(value)}"
            )
    if clock is not None:
        missing = [
            name for name in ("now", "sleep_until") if not callable(getattr(clock, name, None))
        ]
        if missing:
            raise TypeError(
                "SessionSupervisor(clock=...) must be a Clock (now() -> float and async "
                f"sleep_until(deadline)); got {_given(clock)}, which lacks {', '.join(missing)}"
            )
    if on_corrupt not in ("fail", "quarantine"):
        raise ValueError(f"on_corrupt must be 'fail' or 'quarantine', got {on_corrupt!r}")
    if not isinstance(recover, bool):
        raise TypeError(f"SessionSupervisor(recover=...) must be a bool; got {_given(recover)}")
    if cluster is not None and not callable(getattr(cluster, "build_runtime", None)):
        # Any RuntimeProvider would do; the cluster is the one users meet.
        raise TypeError(
            "SessionSupervisor(cluster=...) must be a sessionvisor.cluster.Cluster or None; "
            f"got {_given(cluster)}"
        )
