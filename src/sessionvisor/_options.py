"""``SupervisorOpts``: the per-session policy, validated once, then frozen.

Shared by ``factories`` (a factory may override it per session) and
``sessions`` (which enforces it); it imports nothing of either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

__all__ = ["SupervisorOpts"]


def _non_negative(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"SupervisorOpts.{attr.name} must be >= 0, got {value!r}")


def _positive_int(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"SupervisorOpts.{attr.name} must be an int >= 1, got {value!r}")


def _optional_positive_int(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"SupervisorOpts.{attr.name} must be an int >= 1 or None, got {value!r}")
    if value < 1:
        raise ValueError(f"SupervisorOpts.{attr.name} must be an int >= 1 or None, got {value!r}")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number of seconds, got {value!r}")
    return float(value)


def _optional_number(value: Any) -> float | None:
    return None if value is None else _number(value)


def _restart_policy(_inst: Any, _attr: attrs.Attribute[Any], value: Any) -> None:
    if value not in ("transient", "temporary"):
        raise ValueError(
            f"SupervisorOpts.restart must be 'transient' or 'temporary', got {value!r}"
        )


def _optional_callable(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"SupervisorOpts.{attr.name} must be callable or None, got {value!r}")


@attrs.frozen(kw_only=True, init=False)
class SupervisorOpts:
    """How one session is supervised. Durations are in seconds.

    Attributes:
        restart: ``"transient"`` restarts a crashed actor; ``"temporary"`` gives up
            at the first crash.
        max_restarts: restarts allowed within ``max_seconds`` (counted as OTP does).
        max_seconds: the sliding window for ``max_restarts``.
        restart_backoff: delay before a restart, doubled for each further restart
            inside the window; 0 means none.
        restart_on_error: a turn whose agent raises also crashes the actor.
        inactivity_timeout: an idle session stops after this long; None disables.
        shutdown_timeout: how long a running turn may take to finish on drain.
        max_queued: how many user messages may wait for the next turn.
        max_message_bytes: the largest message content, measured as JSON.
        max_step_bytes: the largest result a durable step (``turn.step``) may store,
            measured as JSON.
        subscriber_buffer: events one subscriber may fall behind before it is cut off.
        replay_buffer: events kept per conversation for ``subscribe(after=...)``.
        message_preprocessor: ``(message, ctx) -> Message | (display, model)``.
        viewer_grace: delay before a session whose last viewer left is stopped.
        save_retry_backoff: first delay before retrying a failed save (doubles, max 30 s).
        hibernate_after: an idle session nobody subscribes to folds its State into
            compact JSON and drops its replay buffer after this long (it unfolds on
            the next access); None keeps it unfolded.
        max_running_per_owner: turns of one owner (``owner_of(scope)``) running at
            once across its conversations; further turns wait in their queues, in
            arrival order. None: no limit. Read from the supervisor's options only.
        messages_per_minute_per_owner: messages one owner may send per minute (a
            token bucket holding that many, refilled continuously); past it ``send``
            raises ``RateLimited``. None: no limit. Read from the supervisor's
            options only.
        extra: application keys, never inspected.
    """

    restart: Literal["transient", "temporary"] = attrs.field(
        default="transient", validator=_restart_policy
    )
    max_restarts: int = attrs.field(default=3, validator=_non_negative)
    max_seconds: float = attrs.field(default=5.0, converter=_number, validator=_non_negative)
    restart_backoff: float = attrs.field(default=0.0, converter=_number, validator=_non_negative)
    restart_on_error: bool = attrs.field(default=False, converter=bool)
    inactivity_timeout: float | None = attrs.field(
        default=300.0, converter=_optional_number, validator=_non_negative
    )
    shutdown_timeout: float = attrs.field(default=5.0, converter=_number, validator=_non_negative)
    max_queued: int = attrs.field(default=100, validator=_positive_int)
    max_message_bytes: int = attrs.field(default=1024 * 1024, validator=_positive_int)
    max_step_bytes: int = attrs.field(default=1024 * 1024, validator=_positive_int)
    subscriber_buffer: int = attrs.field(default=256, validator=_positive_int)
    replay_buffer: int = attrs.field(default=128, validator=_positive_int)
    message_preprocessor: Callable[..., Any] | None = attrs.field(
        default=None, validator=_optional_callable
    )
    viewer_grace: float = attrs.field(default=1.0, converter=_number, validator=_non_negative)
    save_retry_backoff: float = attrs.field(default=0.5, converter=_number, validator=_non_negative)
    hibernate_after: float | None = attrs.field(
        default=30.0, converter=_optional_number, validator=_non_negative
    )
    max_running_per_owner: int | None = attrs.field(default=None, validator=_optional_positive_int)
    messages_per_minute_per_owner: int | None = attrs.field(
        default=None, validator=_optional_positive_int
    )
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)

    def __init__(self, **options: Any) -> None:
        """Build options from keyword arguments.

        Raises:
            ValueError: a key is not an option (the message lists the valid ones),
                or a value is out of range.
            TypeError: a value has the wrong type.
        """
        _check_keys(options)
        self.__attrs_init__(**options)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Return the valid option names."""
        return tuple(a.name for a in attrs.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SupervisorOpts:
        """Build options from a mapping.

        Raises:
            ValueError: a key is not an option (the message lists the valid ones).
            TypeError: ``values`` is not a mapping.
        """
        return cls().merged(values)

    def merged(self, overrides: SupervisorOpts | Mapping[str, Any] | None) -> SupervisorOpts:
        """Return these options with ``overrides`` applied.

        A whole ``SupervisorOpts`` replaces these; a mapping overrides only its keys.

        Raises:
            ValueError: a key is not an option (the message lists the valid ones).
            TypeError: ``overrides`` is neither a mapping nor ``SupervisorOpts``.
        """
        if overrides is None:
            return self
        if isinstance(overrides, SupervisorOpts):
            return overrides
        if not isinstance(overrides, Mapping):
            raise TypeError(
                f"supervisor_opts must be a mapping or SupervisorOpts, got {overrides!r}"
            )
        _check_keys(overrides)
        return attrs.evolve(self, **dict(overrides))


def _check_keys(options: Mapping[str, Any]) -> None:
    valid = SupervisorOpts.field_names()
    unknown = sorted(str(k) for k in options if k not in valid)
    if unknown:
        raise ValueError(
            f"unknown supervisor option(s) {', '.join(unknown)}; "
            f"valid options are: {', '.join(valid)}"
        )
