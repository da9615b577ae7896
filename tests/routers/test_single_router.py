"""``SingleRouter`` sends every conversation to one factory with a validated config."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from sessionvisor.routers import Route, RouteValidationError, SingleRouter

from ._fixtures import PersonaConfig, User, analyst_factory


def test_without_model_config_is_the_request_opts_with_scope_and_conversation() -> None:
    user = User("u-1")
    router = SingleRouter(analyst_factory)

    route = router.resolve(user, "c-42", {"persona": "analyst"})

    assert route == Route(
        analyst_factory,
        {"persona": "analyst", "scope": user, "conversation_id": "c-42"},
        "default",
    )


def test_with_model_config_is_the_validated_instance() -> None:
    user = User("u-1")
    router = SingleRouter(analyst_factory, PersonaConfig, key="personas")

    route = router.resolve(user, "c-42", {"persona": "writer", "temperature": "0.7"})

    assert route.factory is analyst_factory
    assert route.key == "personas"
    assert route.config == PersonaConfig(
        persona="writer", temperature=0.7, conversation_id="c-42", scope=user
    )


def test_request_opts_cannot_impersonate_scope_or_conversation() -> None:
    user = User("u-1")
    router = SingleRouter(analyst_factory, PersonaConfig)

    route = router.resolve(
        user, "c-42", {"persona": "analyst", "scope": "admin", "conversation_id": "c-1"}
    )

    assert route.config.scope is user
    assert route.config.conversation_id == "c-42"


def test_validation_failure_names_the_conversation_and_the_problems() -> None:
    router = SingleRouter(analyst_factory, PersonaConfig)

    with pytest.raises(RouteValidationError) as info:
        router.resolve(User("u-1"), "c-42", {"persona": "pirate", "temperature": "hot"})

    message = str(info.value)
    assert "'c-42'" in message
    assert "PersonaConfig" in message
    assert "persona: Input should be 'analyst' or 'writer'" in message
    assert "temperature: Input should be a valid number" in message
    assert isinstance(info.value, ValueError)


def test_validation_error_carries_pydantics_list_json_safe() -> None:
    router = SingleRouter(analyst_factory, PersonaConfig)

    with pytest.raises(RouteValidationError) as info:
        router.resolve(User("u-1"), "c-42", {"persona": "pirate"})

    errors = info.value.errors
    assert json.loads(json.dumps(errors)) == errors
    assert errors == [
        {
            "type": "literal_error",
            "loc": ["persona"],
            "msg": "Input should be 'analyst' or 'writer'",
            "input": "pirate",
        }
    ]


def test_validation_error_never_shows_the_scope() -> None:
    class NeedsTopic(BaseModel):
        topic: str

    router = SingleRouter(analyst_factory, NeedsTopic)

    with pytest.raises(RouteValidationError) as info:
        router.resolve(User("u-1"), "c-42", {})

    # pydantic puts the whole input dict, scope included, into a "missing" error.
    assert info.value.errors == [{"type": "missing", "loc": ["topic"], "msg": "Field required"}]
    assert "secret-token" not in str(info.value)
    assert "secret-token" not in json.dumps(info.value.errors)


def test_none_request_opts_are_empty() -> None:
    route = SingleRouter(analyst_factory).resolve(None, "c-1", None)  # type: ignore[arg-type]

    assert route.config == {"scope": None, "conversation_id": "c-1"}


def test_construction_rejects_a_non_factory_and_a_non_model() -> None:
    with pytest.raises(TypeError, match="factory must be"):
        SingleRouter(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pydantic BaseModel subclass"):
        SingleRouter(analyst_factory, PersonaConfig(persona="analyst", conversation_id="c"))  # type: ignore[arg-type]
