"""``GET /conversations/{cid}/usage`` and ``GET /conversations/{cid}/steps``.

Both read what a conversation's durable steps left (``SessionSupervisor.usage``
and ``.steps``: the live copy, else the stored one). A conversation that does
not exist and one owned by another caller get the same 404, after the same
store read, as ``GET /conversations/{cid}``. Their OpenAPI descriptions live
here too (``OPENAPI_SCHEMAS``, ``OPENAPI_OPERATIONS``), next to the answers
they describe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import AccessDenied
from ..state import StepRecord, Usage
from ._errors import not_found
from ._sse import read_as_unknown_would

if TYPE_CHECKING:
    from ._app import _Api

__all__ = ["OPENAPI_OPERATIONS", "OPENAPI_SCHEMAS", "step_json", "step_routes", "usage_json"]

# What a listed step shows: everything ``StepRecord`` holds but the model class it was dumped from.
_STEP_FIELDS = [
    "turn",
    "index",
    "name",
    "status",
    "idempotent",
    "started_at",
    "duration",
    "result",
    "omitted",
    "usage",
    "error",
]


def usage_json(usage: Usage) -> dict[str, Any]:
    """A usage total as the routes answer it (``cost`` is null while no step reported one)."""
    return usage.model_dump(mode="json")


def step_json(step: StepRecord) -> dict[str, Any]:
    """One step as ``GET .../steps`` lists it (its stored model class name stays inside)."""
    out = step.model_dump(mode="json", include=set(_STEP_FIELDS))
    if step.omitted:
        out["result"] = None
    return out


def step_routes(api: _Api) -> list[Route]:
    """The two routes, over ``api``'s supervisor."""
    supervisor = api.supervisor

    async def usage(request: Request) -> Response:
        cid, scope = await api._target(request)
        try:
            found = await supervisor.usage(cid, scope=scope)
        except AccessDenied:
            await read_as_unknown_would(supervisor, cid, scope=scope)
            found = None
        if found is None:
            raise not_found(cid)
        return JSONResponse(usage_json(found))

    async def steps(request: Request) -> Response:
        cid, scope = await api._target(request)
        try:
            found = await supervisor.steps(cid, scope=scope)
        except AccessDenied:
            await read_as_unknown_would(supervisor, cid, scope=scope)
            found = None
        if found is None:
            raise not_found(cid)
        return JSONResponse({"steps": [step_json(step) for step in found]})

    return [
        Route("/conversations/{cid}/usage", api.wrap(usage), methods=["GET"]),
        Route("/conversations/{cid}/steps", api.wrap(steps), methods=["GET"]),
    ]


# -- the OpenAPI description -------------------------------------------------------------

_COUNT = {"type": "integer", "minimum": 0}
_USAGE = {
    "type": "object",
    "required": ["input_tokens", "output_tokens", "requests", "cost"],
    "additionalProperties": False,
    "properties": {
        "input_tokens": _COUNT,
        "output_tokens": _COUNT,
        "requests": _COUNT,
        "cost": {
            "type": ["number", "null"],
            "minimum": 0,
            "description": "In the model provider's currency; null while no step reported a cost",
        },
    },
}

#: Schemas the two routes' answers use (joined to the document's components).
OPENAPI_SCHEMAS: dict[str, Any] = {
    "Usage": _USAGE,
    "Step": {
        "type": "object",
        "required": _STEP_FIELDS,
        "additionalProperties": False,
        "properties": {
            "turn": {
                "type": "string",
                "description": "The turn's journal id (the same for a cut turn and its rerun)",
            },
            "index": {**_COUNT, "description": "The step's position in its turn"},
            "name": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["started", "completed", "failed", "unknown"],
                "description": (
                    "failed: its function raised (see error); unknown: an ended turn's "
                    "step that started and stored no result"
                ),
            },
            "idempotent": {"type": "boolean"},
            "started_at": {"type": "string", "format": "date-time"},
            "duration": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "Seconds from start to stored result; null until completed",
            },
            "result": {"description": "The stored result (JSON); null when omitted"},
            "omitted": {
                "type": "boolean",
                "description": "The result was too large to list (over 4 KiB as JSON)",
            },
            "usage": {
                "anyOf": [{"$ref": "#/components/schemas/Usage"}, {"type": "null"}],
                "description": "What a model-response step cost",
            },
            "error": {
                "type": ["string", "null"],
                "description": "A failed step's exception, as 'TypeName: message'",
            },
        },
    },
    "Steps": {
        "type": "object",
        "required": ["steps"],
        "additionalProperties": False,
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
        },
    },
}


def _answer(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


# What every conversation GET may answer: bad id, no credentials, no such
# conversation for this caller, the server not open or the store unavailable.
_ERRORS = (400, 401, 404, 503)

#: (method, path) -> the operations' descriptions, in ``_openapi._OPERATIONS``'s form.
OPENAPI_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/conversations/{cid}/usage"): {
        "summary": "The conversation's model usage totals (each stored model response once)",
        "tags": ["conversations"],
        "answers": {200: _answer("Usage", "The totals, live or stored")},
        "errors": _ERRORS,
    },
    ("GET", "/conversations/{cid}/steps"): {
        "summary": "The durable steps of the conversation's turns, oldest first (the ended "
        "turns' most recent ones, then the running or cut turn's)",
        "tags": ["conversations"],
        "answers": {200: _answer("Steps", "The steps, live or stored")},
        "errors": _ERRORS,
    },
}
