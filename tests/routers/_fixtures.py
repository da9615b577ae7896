"""Factories and config models shared by the router tests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


def analyst_factory(agent_id: str, config: Any) -> Any:
    raise AssertionError("routers never call the factory")


def writer_factory(agent_id: str, config: Any) -> Any:
    raise AssertionError("routers never call the factory")


class PersonaConfig(BaseModel):
    """A config model as an application would write one."""

    persona: Literal["analyst", "writer"]
    temperature: float = 0.2
    conversation_id: str
    scope: Any = None


class User:
    """A trusted scope object: not JSON, and never to be shown to a client."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.api_token = "secret-token"

    def __repr__(self) -> str:
        return f"User({self.user_id!r}, api_token={self.api_token!r})"
