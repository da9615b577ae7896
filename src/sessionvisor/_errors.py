"""Every error sessionvisor raises, and the builtin each one also is.

Each class subclasses the builtin that fits it, so an existing ``except
ValueError`` keeps working. The tree::

    SessionvisorError
    ├── FactoryError
    │   ├── FactoryValidationError   (ValueError)       client input refused: HTTP 400
    │   ├── FactoryPermissionError   (PermissionError)  caller may not: HTTP 403
    │   └── FactoryContractError     (TypeError)        the factory returned a wrong shape
    ├── RouteError
    │   ├── RouteValidationError     (ValueError)       config model rejected the input
    │   ├── NoRouteError             (LookupError)      no route for the selected key
    │   └── RouteChangedError        (RuntimeError)     sticky route would change
    ├── RegistryUnavailable          (RuntimeError)     supervisor not entered / draining
    │   └── StoreUnavailable                            a command could not be stored: retry
    ├── NotRunning                   (LookupError)      the handle's session has stopped
    ├── UnknownMessage               (LookupError)      no such message in the conversation
    ├── UnknownTimer                 (LookupError)      no timer with that key
    ├── InvalidStatus                (RuntimeError)     the call does not fit the status
    ├── QueueFull                    (RuntimeError)     too many queued messages
    ├── RateLimited                  (RuntimeError)     the owner sent too many messages
    ├── MessageRejected              (ValueError)       the message preprocessor refused
    ├── MessageTooLarge              (ValueError)       content over max_message_bytes
    ├── InvalidAnswer                (ValueError)       a resume answer does not fit the agent
    ├── SessionFailedError           (RuntimeError)     the session gave up restarting
    ├── AccessDenied                 (PermissionError)  scope does not own the conversation
    ├── CorruptStateError            (ValueError)       stored snapshot cannot be read
    ├── StaleWriteError              (RuntimeError)     someone else wrote first
    ├── StoreClosed                  (RuntimeError)     the store was closed
    ├── NothingStored                (LookupError)      quarantine found no row
    ├── SubscriberOverflow           (RuntimeError)     a subscriber fell too far behind
    └── StepError                                       a durable step of a turn failed
        ├── StepMismatch             (RuntimeError)     a rerun called another step here
        ├── StepOutcomeUnknown       (RuntimeError)     a cut step may or may not have run
        └── StepResultError          (ValueError)       a step's result cannot be stored
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AccessDenied",
    "CorruptStateError",
    "FactoryContractError",
    "FactoryError",
    "FactoryPermissionError",
    "FactoryValidationError",
    "InvalidAnswer",
    "InvalidStatus",
    "MessageRejected",
    "MessageTooLarge",
    "NoRouteError",
    "NotRunning",
    "NothingStored",
    "QueueFull",
    "RateLimited",
    "RegistryUnavailable",
    "RouteChangedError",
    "RouteError",
    "RouteValidationError",
    "SessionFailedError",
    "SessionvisorError",
    "StaleWriteError",
    "StepError",
    "StepMismatch",
    "StepOutcomeUnknown",
    "StepResultError",
    "StoreClosed",
    "StoreUnavailable",
    "SubscriberOverflow",
    "UnknownMessage",
    "UnknownTimer",
]


class SessionvisorError(Exception):
    """Base of every error raised by sessionvisor."""


class FactoryError(SessionvisorError):
    """A factory refused or misbehaved while building an agent."""


class FactoryValidationError(FactoryError, ValueError):
    """The factory rejected the client's input (answered as HTTP 400)."""


class FactoryPermissionError(FactoryError, PermissionError):
    """The factory refused the caller (answered as HTTP 403)."""


class FactoryContractError(FactoryError, TypeError):
    """The factory returned something other than an agent or ``(agent, opts)``."""


class RouteError(SessionvisorError):
    """The router could not produce a route for a conversation."""


class RouteValidationError(RouteError, ValueError):
    """The route's config model rejected the request options."""

    def __init__(self, message: str, errors: list[Any] | None = None) -> None:
        super().__init__(message)
        self.errors: list[Any] = list(errors or [])


class NoRouteError(RouteError, LookupError):
    """The selector named a route that does not exist and there is no default."""


class RouteChangedError(RouteError, RuntimeError):
    """The router picked another route than the one the conversation was made with."""


class RegistryUnavailable(SessionvisorError, RuntimeError):
    """The supervisor cannot answer: not entered yet, draining, or closed."""


class StoreUnavailable(RegistryUnavailable):
    """A command was not stored (the store is failing), so it was not acknowledged: retry it."""


class NotRunning(SessionvisorError, LookupError):
    """The session behind this handle has stopped."""


class UnknownMessage(SessionvisorError, LookupError):
    """The conversation's visible history has no message with the id the call names."""

    def __init__(self, message: str, message_id: str) -> None:
        super().__init__(message)
        self.message_id = message_id


class UnknownTimer(SessionvisorError, LookupError):
    """The conversation has no timer with the key the call names."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


class InvalidStatus(SessionvisorError, RuntimeError):
    """The call does not fit the conversation's current status."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class QueueFull(SessionvisorError, RuntimeError):
    """More messages are waiting for the next turn than ``max_queued`` allows."""


class RateLimited(SessionvisorError, RuntimeError):
    """The owner sent more messages than ``messages_per_minute_per_owner`` allows;
    nothing was stored. ``retry_after``: seconds until the next one is accepted."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MessageRejected(SessionvisorError, ValueError):
    """The message preprocessor refused the message; nothing was stored."""


class MessageTooLarge(SessionvisorError, ValueError):
    """The content is over ``max_message_bytes`` as JSON; nothing was stored."""


class InvalidAnswer(SessionvisorError, ValueError):
    """The answer given to ``resume`` does not fit what the agent asked (its tool calls)."""


class SessionFailedError(SessionvisorError, RuntimeError):
    """The session crashed more often than its restart policy allows and gave up."""


class AccessDenied(SessionvisorError, PermissionError):
    """The caller's scope does not own this conversation."""


class CorruptStateError(SessionvisorError, ValueError):
    """The stored snapshot of a conversation cannot be read; it was left untouched."""


class StaleWriteError(SessionvisorError, RuntimeError):
    """The stored version moved on: another writer owns the conversation now."""


class StoreClosed(SessionvisorError, RuntimeError):
    """The store was closed (``aclose``) and refuses further calls."""


class NothingStored(SessionvisorError, LookupError):
    """The store holds nothing for the conversation the call names."""


class SubscriberOverflow(SessionvisorError, RuntimeError):
    """The subscriber fell further behind than its buffer; resubscribe with ``after=``."""


class StepError(SessionvisorError):
    """A durable step of a turn (``turn.step``) could not be run or replayed."""


class StepMismatch(StepError, RuntimeError):
    """A rerun of a cut turn called a different step than the one stored at that index.

    The turn fails and the stored steps are kept as they were.
    """

    def __init__(self, index: int, expected: str, called: str) -> None:
        super().__init__(
            f"step {index} of this turn was stored as {expected!r} but the rerun called "
            f"{called!r}: the turn's code changed between the cut run and the rerun"
        )
        self.index = index
        self.expected = expected
        self.called = called


class StepOutcomeUnknown(StepError, RuntimeError):
    """A step that is not idempotent started in a cut run and has no stored result.

    It may or may not have done its work; the agent decides (ask a human, tell the
    model, or call it again).
    """

    def __init__(self, name: str, index: int) -> None:
        super().__init__(
            f"step {name!r} (index {index}) started before the turn was cut and its "
            f"result was never stored: it may or may not have run"
        )
        self.name = name
        self.index = index


class StepResultError(StepError, ValueError):
    """A step's result is not JSON-ready or is over ``max_step_bytes``; it was not stored."""
