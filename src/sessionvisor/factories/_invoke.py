"""``invoke_factory``: call a factory of any shape and check what it returned."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, cast

from pydantic import ValidationError

from .._errors import FactoryContractError
from .._options import SupervisorOpts
from ..agents._agent import Agent
from ..state._models import State
from ._describe import describe_callable, short_repr, summarize_validation_error
from ._factory import FactoryLike, SessionOpts

__all__ = ["factory_name", "invoke_factory"]

_EXPECTED = (
    "expected an agent (an object with an async run method), "
    "(agent, SessionOpts) or (agent, mapping)"
)
# Keys of the mapping form that are options; every other key goes to ``extra``.
_OPTION_KEYS = frozenset({"fresh_state_attrs", "supervisor_opts"})
_DEFAULT_SUPERVISOR_OPTS = SupervisorOpts()


def factory_name(factory: Any) -> str:
    """Return how error messages and logs name ``factory``."""
    return describe_callable(factory)


async def invoke_factory(
    factory: FactoryLike, agent_id: str, config: Any
) -> tuple[Agent, SessionOpts]:
    """Call ``factory`` for ``agent_id`` and check what it returned.

    ``factory`` is an object with ``create_agent`` or a plain callable
    ``(agent_id, config)``; either may be sync or async. Whether to await is
    decided by the *result*, so async ``__call__`` objects and sync functions
    that return a coroutine work too. A blocking sync factory should be wrapped
    with ``in_thread``.

    Returns:
        ``(agent, opts)``: the agent and a ``SessionOpts`` holding copies of
        what the factory returned (an agent alone gets empty options; in the
        mapping form every key but ``fresh_state_attrs`` and
        ``supervisor_opts`` becomes an entry of ``extra``).

    Raises:
        FactoryContractError: ``factory`` is no factory, or it returned
            something else than an agent, ``(agent, SessionOpts)`` or
            ``(agent, mapping)``; or the options are wrong: ``fresh_state_attrs``
            is not a mapping of State fields that validates, or
            ``supervisor_opts`` has an unknown key or a bad value. The message
            names the factory and shows what it returned.
        FactoryValidationError, FactoryPermissionError: the factory refused.
        Exception: anything else the factory raises propagates unchanged.
    """
    result = _create_function(factory)(agent_id, config)
    if inspect.isawaitable(result):
        result = await result
    return _check_result(factory, agent_id, result)


def _create_function(factory: Any) -> Callable[[str, Any], Any]:
    create = getattr(factory, "create_agent", None)
    if create is not None:
        if not callable(create):
            raise FactoryContractError(
                f"factory {factory_name(factory)} is not usable: "
                f"its create_agent is {short_repr(create)}, not a method"
            )
        return cast(Callable[[str, Any], Any], create)
    if callable(factory):
        return cast(Callable[[str, Any], Any], factory)
    raise FactoryContractError(
        f"{short_repr(factory)} is not a factory: it has no create_agent method and is not callable"
    )


def _check_result(factory: Any, agent_id: str, result: Any) -> tuple[Agent, SessionOpts]:
    def contract_error(problem: str) -> FactoryContractError:
        return FactoryContractError(
            f"factory {factory_name(factory)} for agent {agent_id!r} "
            f"returned {short_repr(result)}: {problem}"
        )

    if not isinstance(result, tuple):
        problem = _agent_problem(result)
        if problem is not None:
            raise contract_error(problem)
        return cast(Agent, result), SessionOpts()

    if len(result) != 2:
        raise contract_error(f"a tuple of {len(result)} items; {_EXPECTED}")
    agent, opts = result
    problem = _agent_problem(agent)
    if problem is not None:
        raise contract_error(f"its first item is not an agent: {problem}")

    if isinstance(opts, SessionOpts):
        fresh, supervisor, extra = opts.fresh_state_attrs, opts.supervisor_opts, opts.extra
        if not isinstance(extra, Mapping):
            raise contract_error(f"SessionOpts.extra must be a mapping, got {short_repr(extra)}")
    elif isinstance(opts, Mapping):
        fresh = opts.get("fresh_state_attrs", {})
        supervisor = opts.get("supervisor_opts")
        extra = {key: value for key, value in opts.items() if key not in _OPTION_KEYS}
    else:
        raise contract_error(
            f"its second item must be SessionOpts or a mapping, got {type(opts).__name__}"
        )

    fresh_problem = _fresh_state_problem(fresh)
    if fresh_problem is not None:
        raise contract_error(fresh_problem)
    try:
        _DEFAULT_SUPERVISOR_OPTS.merged(supervisor)
    except (ValueError, TypeError) as exc:
        raise contract_error(f"supervisor_opts is invalid: {exc}") from exc

    # Copies, so a factory that reuses (and later mutates) one dict for many
    # sessions cannot change the options of a session already started.
    return cast(Agent, agent), SessionOpts(
        fresh_state_attrs=dict(fresh),
        supervisor_opts=dict(supervisor) if isinstance(supervisor, Mapping) else supervisor,
        extra=dict(extra),
    )


def _agent_problem(candidate: Any) -> str | None:
    """Say why ``candidate`` is not an agent, or return None when it is one."""
    if inspect.isawaitable(candidate):
        if inspect.iscoroutine(candidate):
            candidate.close()  # never awaited by anyone: avoid the RuntimeWarning
        return "an awaitable, not an agent (an await is missing in the factory)"
    if isinstance(candidate, type):
        return f"the class {candidate.__qualname__} itself; return an instance of it"
    run = getattr(candidate, "run", None)
    if candidate is None:
        return _EXPECTED
    if run is None:
        return f"{type(candidate).__qualname__} has no run method; {_EXPECTED}"
    if not _is_async_callable(run):
        return (
            f"{type(candidate).__qualname__}.run is not async; "
            "an agent needs `async def run(self, turn)`"
        )
    return None


def _is_async_callable(func: Any) -> bool:
    if not callable(func):
        return False
    if inspect.iscoroutinefunction(func):
        return True
    # A decorator built with functools.wraps hides the coroutine function.
    try:
        if inspect.iscoroutinefunction(inspect.unwrap(func)):
            return True
    except ValueError:  # a __wrapped__ cycle
        pass
    # An instance whose class defines ``async def __call__``.
    return inspect.iscoroutinefunction(type(func).__call__)


def _fresh_state_problem(fresh: Any) -> str | None:
    valid = ", ".join(State.model_fields)
    if not isinstance(fresh, Mapping):
        return (
            f"fresh_state_attrs must be a mapping of State fields, got {short_repr(fresh)}; "
            f"valid fields: {valid}"
        )
    unknown = [key for key in fresh if key not in State.model_fields]
    if unknown:
        names = ", ".join(sorted(str(key) for key in unknown))
        return (
            f"fresh_state_attrs names field(s) State does not have: {names}; valid fields: {valid}"
        )
    try:
        State.model_validate(dict(fresh))
    except ValidationError as exc:
        return f"fresh_state_attrs does not fit State: {summarize_validation_error(exc)}"
    return None
