"""``SingleRouter``: every conversation goes to one factory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from pydantic import BaseModel

from ..factories import FactoryLike
from ._config import build_config, check_config_model
from ._route import Route, check_factory

__all__ = ["SingleRouter"]


def _model_validator(_inst: Any, _attr: attrs.Attribute[Any], value: Any) -> None:
    check_config_model(value, "SingleRouter config")


def _key_validator(_inst: Any, _attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"SingleRouter key must be a str or None, got {value!r}")


@attrs.frozen
class SingleRouter:
    """Route every conversation to ``factory``.

    The config handed to the factory is ``{**request_opts, "scope": scope,
    "conversation_id": conversation_id}``, validated by the pydantic model
    ``config`` when one is given (declare ``scope`` and ``conversation_id`` on
    it, or leave pydantic's default ``extra="ignore"``).

    Attributes:
        factory: the factory of every conversation.
        config: the pydantic model class of the config, or None for the plain dict.
        key: the route key recorded for sticky routing.
    """

    factory: FactoryLike = attrs.field(validator=check_factory)
    config: type[BaseModel] | None = attrs.field(default=None, validator=_model_validator)
    key: str | None = attrs.field(default="default", kw_only=True, validator=_key_validator)

    def resolve(self, scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Route:
        """Return the route of ``conversation_id``: this factory, the validated config, the key.

        Raises:
            RouteValidationError: the config model rejected the request options;
                ``.errors`` is pydantic's error list, JSON-safe.
        """
        config = build_config(self.config, scope, conversation_id, request_opts or {})
        return Route(self.factory, config, self.key)
