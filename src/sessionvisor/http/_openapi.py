"""The OpenAPI 3.1 description of the app, served at ``GET /openapi.json``.

The document is built from the app's own route table: every path and method
the app answers appears, with its path parameters taken from the route, and
request bodies come from the same pydantic models that validate them. What a
route table cannot say (a summary, the success answer, which errors a route
gives) lives in ``_OPERATIONS`` below, keyed by method and path. A route with
no entry there still appears (marked ``x-undocumented``) and
``undocumented_routes`` names it, which the test suite turns into a failure,
so a new route cannot ship without its description.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel
from starlette.routing import BaseRoute, Mount, Route

from ._bodies import DismissBody, ResumeBody, SendBody

__all__ = ["ERROR_STATUSES", "openapi_document", "route_operations", "undocumented_routes"]

OPENAPI_VERSION = "3.1.0"

#: What each error status means in this API (the body is always ``Error``).
ERROR_STATUSES: Mapping[int, str] = {
    400: "Bad input: invalid JSON, a body that does not fit, a bad id or query "
    "parameter, a message the runtime rejected, or no route for the request",
    401: "No valid credentials (when the app checks tokens)",
    403: "The caller may not create or use this conversation",
    404: "No such conversation for this caller (one owned by someone else looks "
    "the same), or no such path",
    405: "The path exists but not with this method",
    409: "The conversation is not in a state that allows this (e.g. nothing to resume)",
    413: "The body or the message is larger than the limit",
    415: "The body is not declared as JSON",
    429: "The conversation's queue is full",
    503: "The server is starting, draining or shutting down, the store is "
    "unavailable, or the session gave up",
}

# Answers of every route that asks the scope function who calls (401 when it
# checks tokens, as jwt_scope does), bad path parameters, the supervisor not open.
_ALWAYS = (400, 401, 503)
_CONVERSATION = (*_ALWAYS, 404)
_WITH_BODY = (*_CONVERSATION, 413, 415)


def _json(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_STATUS_VALUES = ["idle", "running", "interrupted", "paused", "cancelled", "error", "not_running"]

_COMPONENTS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "description": "The error's class name"},
            "detail": {"type": "string", "description": "What went wrong, for a person"},
            "errors": {
                "type": "array",
                "items": {"type": "object"},
                "description": "pydantic's list of validation errors, when there is one",
            },
        },
    },
    "Status": {"type": "string", "enum": _STATUS_VALUES},
    "Message": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string"},
            "content": {"anyOf": [{"type": "string"}, {"type": "array"}]},
            "queued": {"type": "boolean"},
        },
    },
    "SendAccepted": {
        "type": "object",
        "required": ["conversation_id", "agent_id", "queued", "started"],
        "properties": {
            "conversation_id": {"type": "string"},
            "agent_id": {"type": "string"},
            "queued": {"type": "boolean", "description": "Queued behind a running turn"},
            "started": {"type": "boolean", "description": "This request started the session"},
        },
    },
    "ConversationStatus": {
        "type": "object",
        "required": ["conversation_id", "status"],
        "properties": {"conversation_id": {"type": "string"}, "status": _ref("Status")},
    },
    "Conversation": {
        "type": "object",
        "required": ["conversation_id", "status", "messages", "interrupt"],
        "properties": {
            "conversation_id": {"type": "string"},
            "status": _ref("Status"),
            "messages": {"type": "array", "items": _ref("Message")},
            "interrupt": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        },
    },
    "StopResult": {
        "type": "object",
        "required": ["result"],
        "properties": {"result": {"type": "string", "enum": ["stopped", "not_running"]}},
    },
    "SessionSummary": {
        "type": "object",
        "required": ["conversation_id", "agent_id", "status", "restarts", "last_activity_at"],
        "properties": {
            "conversation_id": {"type": "string"},
            "agent_id": {"type": "string"},
            "status": _ref("Status"),
            "restarts": {"type": "integer", "minimum": 0},
            "last_activity_at": {"type": ["string", "number", "null"]},
            "queued": {
                "type": "integer",
                "minimum": 0,
                "description": "Messages waiting for the next turn (admin view only)",
            },
        },
    },
    "Sessions": {
        "type": "object",
        "required": ["sessions"],
        "properties": {"sessions": {"type": "array", "items": _ref("SessionSummary")}},
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
}

_SSE_NATIVE = {
    "description": "Server-Sent Events: `id:` is the event's seq, `event:` its type "
    "(StatusChanged, MessageAppended, Delta, MessageQueued, AgentEvent, Restarted, "
    "SessionFailed, Shutdown), `data:` its JSON. The first event is a StatusChanged "
    "snapshot. Comment lines (`: ping`) are heartbeats. The stream stays open.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
_SSE_PROTOCOL = {
    "description": "The turn's stream in the frontend protocol's own event format; "
    "it ends when the turn ends",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
_HTML = {"description": "An HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}


def _query(name: str, description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": dict(schema),
    }


# (method, path) -> what the route table cannot tell: summary, answers, body, query.
_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/conversations/{cid}/messages"): {
        "summary": "Send a user message (starts the session when needed)",
        "tags": ["conversations"],
        "body": SendBody,
        "answers": {202: _json(_ref("SendAccepted"), "Accepted: stored and queued or started")},
        "errors": (*_WITH_BODY, 403, 409, 429),
    },
    ("GET", "/conversations/{cid}/events"): {
        "summary": "Stream the conversation's events (Server-Sent Events)",
        "tags": ["conversations"],
        "query": [
            _query(
                "after",
                "Resume after this seq (the Last-Event-ID header wins)",
                {"type": "integer", "minimum": 0},
            ),
        ],
        "headers": ["Last-Event-ID"],
        "answers": {200: _SSE_NATIVE},
        "errors": _CONVERSATION,
    },
    ("POST", "/conversations/{cid}/resume"): {
        "summary": "Answer the pending interrupt",
        "tags": ["conversations"],
        "body": ResumeBody,
        "answers": {202: _json(_ref("ConversationStatus"), "Accepted")},
        "errors": (*_WITH_BODY, 403, 409, 429),
    },
    ("POST", "/conversations/{cid}/dismiss"): {
        "summary": "Dismiss a notice interrupt",
        "tags": ["conversations"],
        "body": DismissBody,
        "body_optional": True,
        "answers": {200: _json(_ref("ConversationStatus"), "Dismissed")},
        "errors": (*_WITH_BODY, 403, 409, 429),
    },
    ("POST", "/conversations/{cid}/cancel"): {
        "summary": "Cancel the running turn",
        "tags": ["conversations"],
        "answers": {200: _json(_ref("ConversationStatus"), "Cancelled")},
        # No body is needed, but one that is sent must be JSON (a form post is a 415).
        "errors": (*_CONVERSATION, 409, 413, 415),
    },
    ("GET", "/conversations/{cid}"): {
        "summary": "The conversation's status, history and pending interrupt",
        "tags": ["conversations"],
        "answers": {200: _json(_ref("Conversation"), "The conversation, live or stored")},
        "errors": _CONVERSATION,
    },
    ("DELETE", "/conversations/{cid}"): {
        "summary": "Stop the session; with purge=true also delete the stored conversation",
        "tags": ["conversations"],
        "query": [
            _query(
                "purge",
                "Also delete the stored conversation",
                {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]},
            ),
        ],
        "answers": {200: _json(_ref("StopResult"), "Stopped (or was not running)")},
        "errors": _CONVERSATION,
    },
    ("GET", "/sessions"): {
        "summary": "The caller's own running sessions",
        "tags": ["sessions"],
        "answers": {200: _json(_ref("Sessions"), "The running sessions the caller owns")},
        "errors": _ALWAYS,
    },
    ("GET", "/admin/sessions"): {
        "summary": "The caller's running sessions with their queue lengths (the admin view)",
        "tags": ["sessions"],
        "answers": {200: _json(_ref("Sessions"), "The running sessions the caller owns")},
        "errors": _ALWAYS,
    },
    ("GET", "/healthz"): {
        "summary": "Liveness: the process answers",
        "tags": ["operations"],
        "answers": {200: _json(_ref("Health"), "Alive")},
        "errors": (),
    },
    ("GET", "/readyz"): {
        "summary": "Readiness: 503 while starting, draining or shutting down",
        "tags": ["operations"],
        "answers": {200: _json(_ref("Health"), "Ready for traffic")},
        "errors": (503,),
    },
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics (sessions, turns, restarts, events, saves, streams)",
        "tags": ["operations"],
        "answers": {
            200: {
                "description": "Prometheus' text exposition format; no label carries a "
                "conversation id",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
        "errors": (),
    },
    ("GET", "/openapi.json"): {
        "summary": "This document",
        "tags": ["operations"],
        "answers": {200: _json({"type": "object"}, "The OpenAPI document")},
        "errors": (),
    },
    ("GET", "/"): {
        "summary": "The demo chat page",
        "tags": ["pages"],
        "answers": {200: _HTML},
        "errors": (),
    },
    ("GET", "/admin"): {
        "summary": "The admin page: live sessions, status, restarts, queue, last activity",
        "tags": ["pages"],
        "answers": {200: _HTML},
        "errors": (),
    },
    ("POST", "/ai-sdk/chat"): {
        "summary": "Vercel AI SDK (useChat): send the newest message, stream the turn",
        "tags": ["frontend protocols"],
        "body": ("sessionvisor.http._aisdk", "ChatBody"),
        "conversation_field": "id",
        "answers": {200: _SSE_PROTOCOL},
        "errors": (*_WITH_BODY, 403, 409, 429),
    },
    ("GET", "/ai-sdk/chat/{cid}/stream"): {
        "summary": "Vercel AI SDK: resume the running turn's stream (204 when none runs)",
        "tags": ["frontend protocols"],
        "answers": {200: _SSE_PROTOCOL, 204: {"description": "No turn is running"}},
        "errors": _CONVERSATION,
    },
    ("POST", "/ag-ui"): {
        "summary": "AG-UI (HttpAgent): run a turn of threadId's conversation, stream it",
        "tags": ["frontend protocols"],
        "body": ("ag_ui.core", "RunAgentInput"),
        "conversation_field": "threadId",
        "answers": {200: _SSE_PROTOCOL},
        "errors": (*_WITH_BODY, 403, 409, 429),
    },
}


def route_operations(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(method, path)`` for every route, mounted ones included (HEAD left out).

    Starlette adds HEAD to every GET route by itself; it is not an operation of its own.
    """
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield method, prefix + route.path
        elif isinstance(route, Mount):
            yield from route_operations(route.routes, prefix + route.path)


def undocumented_routes(routes: Iterable[BaseRoute]) -> list[tuple[str, str]]:
    """Return the ``(method, path)`` of every route this module has no description for."""
    return [op for op in route_operations(routes) if op not in _OPERATIONS]


def _body_schema(spec: Any, components: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a body model; its nested definitions join ``components``.

    ``spec`` is the model, or ``(module, name)`` for a model whose module needs
    an optional package (imported only when the app serves that route).
    """
    found = getattr(importlib.import_module(spec[0]), spec[1]) if isinstance(spec, tuple) else spec
    model: type[BaseModel] = found
    schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    schema.pop("title", None)
    opts = schema.get("properties", {}).get("request_opts")
    if isinstance(opts, dict):
        # The server sets these from trusted values; a body naming them is refused.
        opts["propertyNames"] = {"not": {"enum": ["scope", "conversation_id"]}}
    content = schema.get("properties", {}).get("content")
    if isinstance(content, dict):
        for choice in content.get("anyOf", ()):
            if choice.get("type") == "array":
                # Each content part is an object with a string "type" (checked by SendBody).
                choice["items"] = {
                    "type": "object",
                    "required": ["type"],
                    "properties": {"type": {"type": "string"}},
                }
    return schema


# What check_conversation_id accepts: 1-256 characters, no control character.
_CONVERSATION_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$",
}


def _path_parameters(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": "The conversation id" if name in ("cid", "id") else name,
            "schema": dict(_CONVERSATION_ID),
        }
        for name in names
    ]


def _operation(
    method: str, path: str, spec: Mapping[str, Any] | None, components: dict[str, Any]
) -> dict[str, Any]:
    op_id = (method.lower() + path.replace("/", "_").replace("{", "").replace("}", "")).replace(
        ".", "_"
    )
    params = _path_parameters(path)
    if spec is None:
        return {
            "operationId": op_id,
            "summary": "Undocumented route",
            "x-undocumented": True,
            "parameters": params,
            "responses": {"default": _json(_ref("Error"), "Any answer")},
        }
    params.extend(copy.deepcopy(spec.get("query", [])))
    for header in spec.get("headers", ()):
        params.append(
            {"name": header, "in": "header", "required": False, "schema": {"type": "string"}}
        )
    operation: dict[str, Any] = {
        "operationId": op_id,
        "summary": spec["summary"],
        "tags": list(spec.get("tags", ())),
    }
    if params:
        operation["parameters"] = params
    schema = None
    if spec.get("body") is not None:
        schema = _body_schema(spec["body"], components)
        field = spec.get("conversation_field")
        if field is not None:
            # The body names the conversation; the same id rules as in a path apply.
            described = schema["properties"][field]
            schema["properties"][field] = {**described, **_CONVERSATION_ID}
    if schema is not None:
        operation["requestBody"] = {
            "required": not spec.get("body_optional", False),
            "content": {"application/json": {"schema": copy.deepcopy(schema)}},
        }
    responses: dict[str, Any] = {str(k): copy.deepcopy(v) for k, v in spec["answers"].items()}
    errors = set(spec["errors"])
    if schema is not None:
        errors |= {413, 415}
    for status in sorted(errors):
        responses[str(status)] = _json(_ref("Error"), ERROR_STATUSES[status])
    operation["responses"] = responses
    return operation


def openapi_document(
    routes: Iterable[BaseRoute],
    *,
    title: str = "sessionvisor",
    version: str = "0",
    server_url: str = "/",
) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document describing ``routes`` (an app's ``app.routes``).

    Args:
        routes: the route table to describe.
        title: ``info.title``.
        version: ``info.version`` (the API's version, here the package's).
        server_url: where the routes are served (the mount prefix, if any).

    Returns:
        The document as a JSON-ready dict. Routes with no description are
        included with ``x-undocumented: true`` (see ``undocumented_routes``).
    """
    paths: dict[str, dict[str, Any]] = {}
    components = copy.deepcopy(_COMPONENTS)
    for method, path in route_operations(routes):
        spec = _OPERATIONS.get((method, path))
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, spec, components)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "A chat backend: one supervised session per conversation. "
            'Errors answer {"error", "detail"}; a conversation owned by another '
            "caller answers 404, as one that does not exist.",
        },
        "servers": [{"url": server_url or "/"}],
        "paths": paths,
        "components": {"schemas": components},
    }
