"""The versioned JSON form of ``State`` and the migrations that upgrade old forms.

``dump_state`` writes the current schema (``SCHEMA_VERSION``); ``load_state``
reads any version from which a chain of registered migrations leads to the
current one. A migration is a plain ``fn(dict) -> dict`` that upgrades the
serialized form by exactly one version; ``register_migration(n)`` registers the
step ``n -> n+1`` on the default registry, and a fresh ``MigrationRegistry``
can be passed to ``load_state`` (and to the stores) to keep tests isolated.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from .._errors import CorruptStateError
from ._models import SCHEMA_VERSION, State

__all__ = ["Migration", "MigrationRegistry", "dump_state", "load_state", "register_migration"]

#: Upgrades a serialized State from one version to the next.
Migration = Callable[[dict[str, Any]], dict[str, Any]]

#: How many validation errors a CorruptStateError message lists before "...".
_MAX_LISTED_ERRORS = 3


def _subject(conversation_id: str | None) -> str:
    if conversation_id is None:
        return "the stored state"
    return f"the stored state of conversation {conversation_id!r}"


class MigrationRegistry:
    """The migrations known to one reader of stored states, by source version.

    ``sessionvisor.state`` keeps one default instance (used by
    ``register_migration`` and by every store unless told otherwise); build a
    separate one to try migrations without touching the default.
    """

    def __init__(self) -> None:
        self._steps: dict[int, Migration] = {}

    def register(self, from_version: int) -> Callable[[Migration], Migration]:
        """Return a decorator that registers ``fn`` as the step ``from_version -> +1``.

        The decorated function receives a private copy of the serialized dict,
        may change it in place or build a new one, and returns the upgraded
        dict; its ``version`` key is set to ``from_version + 1`` afterwards.

        Returns:
            The decorator; it returns the function unchanged.

        Raises:
            TypeError: ``from_version`` is not an int.
            ValueError: ``from_version`` is negative, or a migration from that
                version is already registered.
        """
        if isinstance(from_version, bool) or not isinstance(from_version, int):
            raise TypeError(f"migration source version must be an int, got {from_version!r}")
        if from_version < 0:
            raise ValueError(f"migration source version must be >= 0, got {from_version}")

        def decorator(fn: Migration) -> Migration:
            existing = self._steps.get(from_version)
            if existing is not None:
                raise ValueError(
                    f"a migration from schema version {from_version} is already registered "
                    f"({existing.__qualname__}); cannot also register {fn.__qualname__}"
                )
            self._steps[from_version] = fn
            return fn

        return decorator

    def get(self, from_version: int) -> Migration | None:
        """Return the migration from ``from_version``, or None when there is none."""
        return self._steps.get(from_version)

    def upgrade(
        self,
        data: Mapping[str, Any],
        *,
        conversation_id: str | None = None,
        target: int = SCHEMA_VERSION,
    ) -> dict[str, Any]:
        """Run the migrations from ``data["version"]`` up to ``target``, in order.

        ``data`` itself is never changed: when a migration has to run, the
        migrations work on a deep copy, so a record a store still holds stays
        as it was.

        Returns:
            ``data`` itself when it already is at ``target``, else the upgraded dict.

        Raises:
            CorruptStateError: the version is missing or not an int, is newer
                than ``target``, a step has no migration, or a migration failed
                or returned something other than a dict.
        """
        subject = _subject(conversation_id)
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise CorruptStateError(
                f"cannot read {subject}: its schema version is {version!r}, not an integer"
            )
        if version > target:
            raise CorruptStateError(
                f"cannot read {subject}: it was written with schema version {version}, "
                f"newer than this release reads ({target}); upgrade sessionvisor"
            )
        if version == target:
            # The common case costs nothing: no copy, no migration.
            return data if isinstance(data, dict) else dict(data)
        upgraded: dict[str, Any] = copy.deepcopy(dict(data))
        for step in range(version, target):
            fn = self._steps.get(step)
            if fn is None:
                raise CorruptStateError(
                    f"cannot read {subject}: it has schema version {version} and no "
                    f"migration from version {step} to {step + 1} is registered"
                )
            try:
                result = fn(upgraded)
            except Exception as exc:
                raise CorruptStateError(
                    f"cannot read {subject}: the migration from schema version {step} "
                    f"({fn.__qualname__}) failed: {exc!r}"
                ) from exc
            if not isinstance(result, dict):
                raise CorruptStateError(
                    f"cannot read {subject}: the migration from schema version {step} "
                    f"({fn.__qualname__}) returned {type(result).__name__}, not a dict"
                )
            result["version"] = step + 1
            upgraded = result
        return upgraded


_default_registry = MigrationRegistry()


def register_migration(from_version: int) -> Callable[[Migration], Migration]:
    """Register ``fn(dict) -> dict`` upgrading stored states from ``from_version`` by one.

    Use as a decorator: ``@register_migration(1)`` on a function that turns a
    version-1 dict into a version-2 dict. Register migrations at import time,
    before any store loads a conversation.

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: a migration from ``from_version`` is already registered, or
            ``from_version`` is negative.
    """
    return _default_registry.register(from_version)


def dump_state(state: State) -> dict[str, Any]:
    """Serialize ``state`` to a JSON-ready dict carrying its schema ``version``.

    Called at every persist, so it is one pydantic call. Per-message caching
    was measured and left out: a frozen ``Message`` still holds mutable
    ``metadata``/``content`` containers, so a cached dump could silently miss
    an in-place change, and the safe variant (copying each cached dict) only
    halved a cost of under a microsecond per message.

    Returns:
        A fresh dict of plain JSON types (datetimes become ISO 8601 strings).

    Raises:
        pydantic_core.PydanticSerializationError (a ValueError): ``metadata``
            or ``content`` holds a value JSON cannot represent.
    """
    return state.model_dump(mode="json")


class CheckedState(dict[str, Any]):
    """A stored state dict that a store has already validated, carrying the result.

    A store's ``load`` validates the state (so a corrupt row fails there,
    where it can be quarantined) and the runtime then calls ``load_state`` on
    the same dict: without this, a wake would validate the whole history
    twice. The State is handed out once, to the first ``load_state`` of this
    dict; later calls validate afresh, so no two callers share a mutable State.
    """

    __slots__ = ("_validated",)

    def __init__(self, data: Mapping[str, Any], state: State) -> None:
        super().__init__(data)
        # A list so that taking it is one atomic pop, even across threads.
        self._validated = [state]

    def take(self) -> State | None:
        """Return the validated State the first time, None afterwards."""
        try:
            return self._validated.pop()
        except IndexError:
            return None


def decode_state(
    data: Mapping[str, Any] | str | bytes | bytearray,
    conversation_id: str | None = None,
    *,
    migrations: MigrationRegistry | None = None,
) -> tuple[dict[str, Any], State]:
    """Parse, upgrade and validate a stored state; shared by ``load_state`` and the stores.

    Returns:
        The upgraded dict (``data`` itself when no migration ran) and the State.

    Raises:
        CorruptStateError: see ``load_state``.
    """
    if type(data) is CheckedState:
        validated = data.take()
        if validated is not None:
            return data, validated
    subject = _subject(conversation_id)
    if isinstance(data, str | bytes | bytearray):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            # JSONDecodeError is a ValueError; bytes that are not UTF-8 raise
            # UnicodeDecodeError (also a ValueError, listed for the reader).
            raise CorruptStateError(f"cannot read {subject}: it is not valid JSON ({exc})") from exc
    if not isinstance(data, Mapping):
        raise CorruptStateError(
            f"cannot read {subject}: it is a JSON {type(data).__name__}, not an object"
        )
    registry = _default_registry if migrations is None else migrations
    upgraded = registry.upgrade(data, conversation_id=conversation_id)
    try:
        state = State.model_validate(upgraded)
    except ValidationError as exc:
        raise CorruptStateError(
            f"cannot read {subject}: it does not fit schema version {SCHEMA_VERSION}: "
            f"{_summarize(exc)}"
        ) from exc
    return upgraded, state


def load_state(
    data: Mapping[str, Any] | str | bytes | bytearray,
    conversation_id: str | None = None,
    *,
    migrations: MigrationRegistry | None = None,
) -> State:
    """Read a serialized State, upgrading it from older schema versions first.

    Args:
        data: the dict ``dump_state`` made, or its JSON text (str or bytes).
        conversation_id: named in error messages.
        migrations: the registry to upgrade with; the default one when None.

    Returns:
        The State, at ``SCHEMA_VERSION``. ``data`` is never changed.

    Raises:
        CorruptStateError: the data is not JSON, not a JSON object, has no
            integer ``version``, was written by a newer release, needs a
            migration that is not registered or fails, or does not validate.
            The message names the conversation and the problem.
    """
    return decode_state(data, conversation_id, migrations=migrations)[1]


def _summarize(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = [
        f"{'.'.join(str(loc) for loc in error['loc']) or '<root>'}: {error['msg']}"
        for error in errors[:_MAX_LISTED_ERRORS]
    ]
    if len(errors) > _MAX_LISTED_ERRORS:
        parts.append(f"... ({len(errors) - _MAX_LISTED_ERRORS} more)")
    return "; ".join(parts)
