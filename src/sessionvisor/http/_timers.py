"""The durable-timer routes: ``POST/GET /conversations/{cid}/timers`` and
``DELETE /conversations/{cid}/timers/{key}`` (see ``SessionSupervisor.schedule``)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import NothingStored, UnknownTimer
from ._errors import HTTPError, not_found

if TYPE_CHECKING:
    from ._app import _Api

__all__: list[str] = ["TimerBody", "timer_routes"]


def _one_of_delay_and_at(schema: dict[str, Any]) -> None:
    """The document says what the server checks: exactly one of the two, not null."""
    properties = schema["properties"]
    properties["delay"] = {
        "type": "number",
        "minimum": 0,
        "maximum": 31536000,
        "description": properties["delay"].get("description", ""),
    }
    properties["at"] = {
        "type": "string",
        "format": "date-time",
        "description": properties["at"].get("description", ""),
    }
    schema["oneOf"] = [{"required": ["delay"]}, {"required": ["at"]}]


class TimerBody(BaseModel):
    """``POST /conversations/{cid}/timers``: when (``delay`` or ``at``), what, and its key."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_one_of_delay_and_at)

    delay: float | None = Field(
        default=None, description="Seconds from now (0 to a year); give this or at"
    )
    at: str | None = Field(
        default=None,
        description="When it is due: an ISO 8601 time with its offset, within a year (one "
        "in the past fires at once); give this or delay",
    )
    payload: Any = Field(default=None, description="JSON for the agent's on_timer (64 KiB)")
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f-\x9f]+$",
        description="Its name in the conversation: a timer with the same key is replaced; "
        "one is generated when left out",
    )

    @model_validator(mode="before")
    @classmethod
    def _not_null(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("delay", "at"):
                if name in data and data[name] is None:
                    raise ValueError(f"{name} must not be null (leave it out)")
        return data


def _at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise HTTPError(400, "BadTimer", f"at must be an ISO 8601 time, got {text!r}") from exc


def _bad(exc: Exception) -> HTTPError:
    return HTTPError(400, "BadTimer", str(exc))


async def schedule_timer(api: _Api, request: Request) -> Response:
    cid, scope = await api._target(request)
    body = await api.body(request, TimerBody)
    if isinstance(body.delay, bool):
        raise HTTPError(400, "BadTimer", "delay must be a number of seconds")
    await api._require(cid, scope)
    try:
        info = await api.supervisor.schedule(
            cid, body.payload, at=_at(body.at), delay=body.delay, key=body.key, scope=scope
        )
    except NothingStored as exc:
        raise not_found(cid) from exc
    except (TypeError, ValueError) as exc:
        raise _bad(exc) from exc
    return JSONResponse({"conversation_id": cid, **info.to_json()}, status_code=201)


async def list_timers(api: _Api, request: Request) -> Response:
    cid, scope = await api._target(request)
    await api._require(cid, scope)
    try:
        found = await api.supervisor.timers(cid, scope=scope)
    except NothingStored as exc:
        raise not_found(cid) from exc
    return JSONResponse({"conversation_id": cid, "timers": [t.to_json() for t in found]})


async def cancel_timer(api: _Api, request: Request) -> Response:
    cid, scope = await api._target(request)
    key = str(request.path_params["key"])
    await api._require(cid, scope)
    try:
        await api.supervisor.cancel_timer(cid, key, scope=scope)
    except NothingStored as exc:
        raise not_found(cid) from exc
    except UnknownTimer as exc:
        raise HTTPError(404, "UnknownTimer", str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise _bad(exc) from exc
    return JSONResponse({"conversation_id": cid, "key": key, "result": "cancelled"})


def timer_routes(api: _Api) -> list[Route]:
    """The timer routes, each answering its errors as JSON (``_Api.wrap``)."""

    async def timers(request: Request) -> Response:
        if request.method == "POST":
            return await schedule_timer(api, request)
        return await list_timers(api, request)

    async def timer(request: Request) -> Response:
        return await cancel_timer(api, request)

    return [
        Route("/conversations/{cid}/timers", api.wrap(timers), methods=["GET", "POST"]),
        Route("/conversations/{cid}/timers/{key}", api.wrap(timer), methods=["DELETE"]),
    ]
