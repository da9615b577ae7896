"""Turning request options into a route's config, with a pydantic model or without."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .._errors import RouteValidationError
from ..factories._describe import short_repr, summarize_validation_error

__all__ = ["build_config", "check_config_model"]

# Set by the runtime from trusted values; a client cannot override them.
_TRUSTED_KEYS = frozenset({"scope", "conversation_id"})


def check_config_model(model: Any, what: str) -> type[BaseModel] | None:
    """Return ``model`` if it is None or a pydantic model class.

    Raises:
        TypeError: it is anything else (often an instance instead of the class).
    """
    if model is None or (isinstance(model, type) and issubclass(model, BaseModel)):
        return model
    raise TypeError(
        f"{what} must be a pydantic BaseModel subclass or None, got {short_repr(model)}"
    )


def build_config(
    model: type[BaseModel] | None,
    scope: Any,
    conversation_id: str,
    request_opts: Mapping[str, Any],
) -> Any:
    """Validate ``{**request_opts, "scope": ..., "conversation_id": ...}`` with ``model``.

    Returns:
        The model instance, or the dict itself when ``model`` is None.

    Raises:
        RouteValidationError: the model rejected it; ``.errors`` is pydantic's
            error list made JSON-safe.
    """
    # The trusted values come last so request options cannot impersonate them.
    data = {**request_opts, "scope": scope, "conversation_id": conversation_id}
    if model is None:
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RouteValidationError(
            f"cannot route conversation {conversation_id!r}: request_opts rejected by "
            f"{model.__qualname__}: {summarize_validation_error(exc)}",
            errors=_json_safe_errors(exc, set(request_opts) - _TRUSTED_KEYS),
        ) from exc


def _json_safe_errors(exc: ValidationError, client_keys: set[Any]) -> list[dict[str, Any]]:
    """pydantic's error list, ready for an HTTP 400 body.

    ``ctx`` and ``url`` are dropped (``ctx`` may hold exception objects). An
    ``input`` is kept only when it came from the client's own request options
    and is JSON: a ``missing`` error's input is the whole dict, scope included,
    and the scope (a user object, maybe with secrets) must not reach a client.
    """
    safe: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False, include_context=False):
        loc = list(error["loc"])
        item: dict[str, Any] = {"type": error["type"], "loc": loc, "msg": error["msg"]}
        if "input" in error and loc and loc[0] in client_keys:
            try:
                item["input"] = json.loads(json.dumps(error["input"], allow_nan=False))
            except (TypeError, ValueError):
                pass
        safe.append(item)
    return safe
