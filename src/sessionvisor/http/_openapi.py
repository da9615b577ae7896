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

from ..sessions import Event
from ._bodies import CancelBody, DismissBody, EditBody, RegenerateBody, ResumeBody, SendBody
from ._steps_routes import OPENAPI_OPERATIONS as STEP_OPERATIONS
from ._steps_routes import OPENAPI_SCHEMAS as STEP_SCHEMAS
from ._timers import TimerBody

__all__ = [
    "ERROR_STATUSES",
    "SECURITY_ATTRIBUTE",
    "bearer_security",
    "openapi_document",
    "route_operations",
    "security_of",
    "undocumented_routes",
]

OPENAPI_VERSION = "3.1.0"

#: What each error status means in this API (the body is always ``Error``).
ERROR_STATUSES: Mapping[int, str] = {
    400: "Bad input: invalid JSON, a body that does not fit, a bad id or query "
    "parameter, a message the runtime rejected, or no route for the request",
    401: "No valid credentials (when the app checks tokens)",
    403: "The caller may not create or use this conversation",
    404: "No such conversation for this caller (one owned by someone else looks "
    "the same), no such message in it, or no such path",
    405: "The path exists but not with this method",
    409: "The conversation is not in a state that allows this (e.g. nothing to resume)",
    413: "The body or the message is larger than the limit",
    415: "The body is not declared as JSON",
    429: "The conversation's queue is full",
    503: "The server is starting, draining or shutting down, the store is "
    "unavailable, or the session gave up",
}

#: The attribute of a scope function that says how it authenticates (``bearer_security``).
SECURITY_ATTRIBUTE = "openapi_security"
_BEARER = "bearerAuth"
_QUERY_TOKEN = "accessTokenQuery"

# Headers some error answers carry (none is always there).
_ERROR_HEADERS: Mapping[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The bearer challenge (RFC 6750), from a scope function that "
            "checks tokens",
            "schema": {"type": "string"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying: the store is unavailable and "
            "the command was not stored",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
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


# The largest seq ``after``/``Last-Event-ID`` take: 18 digits (an int64 holds them all).
_MAX_SEQ = 10**18 - 1

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
    "Rewritten": {
        "type": "object",
        "required": ["conversation_id", "message_id", "status"],
        "properties": {
            "conversation_id": {"type": "string"},
            "message_id": {
                "type": "string",
                "description": "The id of the user message asked again (a new message)",
            },
            "status": _ref("Status"),
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
    "Timer": {
        "type": "object",
        "required": ["conversation_id", "key", "due", "payload"],
        "properties": {
            "conversation_id": {"type": "string"},
            "key": {"type": "string"},
            "due": {"type": "string", "format": "date-time"},
            "payload": {},
        },
    },
    "Timers": {
        "type": "object",
        "required": ["conversation_id", "timers"],
        "properties": {
            "conversation_id": {"type": "string"},
            "timers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "due", "payload"],
                    "properties": {
                        "key": {"type": "string"},
                        "due": {"type": "string", "format": "date-time"},
                        "payload": {},
                    },
                },
            },
        },
    },
    "TimerCancelled": {
        "type": "object",
        "required": ["conversation_id", "key", "result"],
        "properties": {
            "conversation_id": {"type": "string"},
            "key": {"type": "string"},
            "result": {"type": "string", "enum": ["cancelled"]},
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

# An event stream's schema describes one event as an SSE client reads it (the
# ``id``, ``event`` and ``data`` fields; comments and ``retry:`` are not events),
# which is how OpenAPI 3.2's ``itemSchema`` says it and how 3.1 tools read ``schema``.
# Every event the runtime issues, named as the stream names it (its class name): taken
# from the classes, so an event added there is in the document too.
_EVENT_TYPES = sorted(cls.__name__ for cls in Event.__subclasses__())
_NATIVE_EVENT = {
    "type": "object",
    "required": ["id", "event", "data"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^(0|[1-9][0-9]*)$", "description": "The seq"},
        "event": {"type": "string", "enum": _EVENT_TYPES},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["type", "seq", "agent_id", "conversation_id", "at"],
                "properties": {
                    "type": {"type": "string", "enum": _EVENT_TYPES},
                    "seq": {"type": "integer", "minimum": 0},
                    "agent_id": {"type": "string"},
                    "conversation_id": {"type": "string"},
                    "at": {"type": "string", "format": "date-time"},
                },
            },
            "description": "The event as JSON (`to_json()`): its type, seq, agent and "
            "conversation ids, time, and the fields of its type",
        },
    },
}
_SSE_NATIVE = {
    "description": "Server-Sent Events: `id:` is the event's seq, `event:` its type, `data:` "
    "its JSON. The first event is a StatusChanged snapshot (after a `retry:` line); comment "
    "lines (`: ping`) are heartbeats. The stream stays open. A conversation that does not "
    "exist, or that belongs to another caller, streams the `not_running` snapshot at seq 0 "
    "and then nothing but heartbeats (the same answer either way).",
    "content": {"text/event-stream": {"schema": _NATIVE_EVENT}},
}


def _protocol_event(data: Mapping[str, Any]) -> dict[str, Any]:
    """A frontend protocol's event: ``data:`` lines only, so every event is a "message"."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "additionalProperties": False,
        "properties": {"event": {"const": "message"}, "data": dict(data)},
    }


_SSE_AI_SDK = {
    "description": "The UI message stream (protocol v1, header `x-vercel-ai-ui-message-stream: "
    "v1`): one JSON chunk per event (`start`, `text-delta`, `tool-approval-request`, `finish`, "
    "`data-*`, ...), then `[DONE]`; it ends when the turn ends",
    "content": {
        "text/event-stream": {
            "schema": _protocol_event(
                {
                    "type": "string",
                    "description": 'A JSON chunk with a string "type", or `[DONE]`',
                    "anyOf": [{"pattern": '^\\{"type":'}, {"const": "[DONE]"}],
                }
            )
        }
    },
}
_SSE_AG_UI = {
    "description": "AG-UI events, one JSON object each (`RUN_STARTED`, `TEXT_MESSAGE_*`, "
    "`TOOL_CALL_*`, `CUSTOM`, then `RUN_FINISHED` or `RUN_ERROR`); it ends with the run",
    "content": {
        "text/event-stream": {
            "schema": _protocol_event(
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "pattern": '^\\{"type":"[A-Z_]+"',
                    "description": "An AG-UI event as JSON",
                }
            )
        }
    },
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
                {"type": "integer", "minimum": 0, "maximum": _MAX_SEQ},
            ),
        ],
        "headers": [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "The seq of the last event received (a reconnect); empty means none",
                "schema": {"type": "string", "pattern": "^[ \\t]*([0-9]{1,18}[ \\t]*)?$"},
            }
        ],
        "answers": {200: _SSE_NATIVE},
        # No 404: an unknown or another caller's conversation streams like any other.
        "errors": _ALWAYS,
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
        "summary": "Cancel the running turn (keep_partial: keep what it streamed so far)",
        "tags": ["conversations"],
        # No body is needed, but one that is sent must be JSON (a form post is a 415).
        "body": CancelBody,
        "body_optional": True,
        "answers": {200: _json(_ref("ConversationStatus"), "Cancelled")},
        "errors": (*_CONVERSATION, 409, 413, 415),
    },
    ("POST", "/conversations/{cid}/regenerate"): {
        "summary": "Answer a user message again (default: the last one); the old answer "
        "and everything after it are superseded",
        "tags": ["conversations"],
        "body": RegenerateBody,
        "body_optional": True,
        "answers": {202: _json(_ref("Rewritten"), "Accepted: stored, the new turn runs")},
        "errors": (*_WITH_BODY, 403, 409, 429),
    },
    ("PATCH", "/conversations/{cid}/messages/{message_id}"): {
        "summary": "Edit a user message and answer it again; it and everything after it "
        "are superseded",
        "tags": ["conversations"],
        "body": EditBody,
        "answers": {202: _json(_ref("Rewritten"), "Accepted: stored, the new turn runs")},
        "errors": (*_WITH_BODY, 403, 409, 429),
    },
    ("POST", "/conversations/{cid}/timers"): {
        "summary": "Schedule a durable timer (the agent's on_timer runs when it is due)",
        "tags": ["timers"],
        "body": TimerBody,
        "answers": {201: _json(_ref("Timer"), "Stored: it fires once at its due time")},
        "errors": (*_WITH_BODY, 403),
    },
    ("GET", "/conversations/{cid}/timers"): {
        "summary": "The conversation's pending timers, soonest first",
        "tags": ["timers"],
        "answers": {200: _json(_ref("Timers"), "The pending timers")},
        "errors": _CONVERSATION,
    },
    ("DELETE", "/conversations/{cid}/timers/{key}"): {
        "summary": "Cancel a pending timer (404 when it has no such timer)",
        "tags": ["timers"],
        "answers": {200: _json(_ref("TimerCancelled"), "Cancelled")},
        "errors": _CONVERSATION,
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
                {
                    "type": "string",
                    "enum": ["true", "false", "1", "0", "yes", "no", "on", "off", ""],
                },
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
        "public": True,
        "summary": "Liveness: the process answers",
        "tags": ["operations"],
        "answers": {200: _json(_ref("Health"), "Alive")},
        "errors": (),
    },
    ("GET", "/readyz"): {
        "public": True,
        "summary": "Readiness: 503 while starting, draining or shutting down",
        "tags": ["operations"],
        "answers": {200: _json(_ref("Health"), "Ready for traffic")},
        "errors": (503,),
    },
    ("GET", "/metrics"): {
        "public": True,
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
        "public": True,
        "summary": "This document",
        "tags": ["operations"],
        "answers": {200: _json({"type": "object"}, "The OpenAPI document")},
        "errors": (),
    },
    ("GET", "/"): {
        "public": True,
        "summary": "The demo chat page",
        "tags": ["pages"],
        "answers": {200: _HTML},
        "errors": (),
    },
    ("GET", "/admin"): {
        "public": True,
        "summary": "The admin page: live sessions, status, restarts, queue, last activity",
        "tags": ["pages"],
        "answers": {200: _HTML},
        "errors": (),
    },
    ("POST", "/ai-sdk/chat"): {
        "summary": "Vercel AI SDK (useChat): send the newest message, stream the turn",
        "tags": ["frontend protocols"],
        "body": ("sessionvisor.http._aisdk", "ChatBody"),
        "refine": "ai-sdk",
        "conversation_field": "id",
        "answers": {200: _SSE_AI_SDK},
        "errors": (*_WITH_BODY, 403, 409, 429),
    },
    ("GET", "/ai-sdk/chat/{cid}/stream"): {
        "summary": "Vercel AI SDK: resume the running turn's stream (204 when none runs)",
        "tags": ["frontend protocols"],
        "answers": {
            200: _SSE_AI_SDK,
            204: {
                "description": "No turn is running (also the answer for a conversation that "
                "does not exist or belongs to another caller)"
            },
        },
        "errors": _ALWAYS,
    },
    ("POST", "/ag-ui"): {
        "summary": "AG-UI (HttpAgent): run a turn of threadId's conversation, stream it",
        "tags": ["frontend protocols"],
        "body": ("ag_ui.core", "RunAgentInput"),
        "refine": "ag-ui",
        "conversation_field": "threadId",
        "answers": {200: _SSE_AG_UI},
        "errors": (*_WITH_BODY, 403, 409, 429),
    },
}

# The usage and steps routes describe themselves (``_steps_routes``).
_COMPONENTS.update(STEP_SCHEMAS)
_OPERATIONS.update(STEP_OPERATIONS)


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


def _tags_required(schema: Any, components: dict[str, Any]) -> None:
    """Make the tag of every discriminated union a required property of each member.

    pydantic picks a member by its tag and refuses an object without one (400),
    even where the member's own schema gives the tag a default.
    """
    stack = [schema, *components.values()]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        discriminator = node.get("discriminator")
        if isinstance(discriminator, dict):
            tag = discriminator.get("propertyName")
            for ref in discriminator.get("mapping", {}).values():
                member = components.get(str(ref).rsplit("/", 1)[-1])
                if isinstance(member, dict) and tag not in member.setdefault("required", []):
                    member["required"].append(tag)
        stack.extend(node.values())


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
    _tags_required(schema, components)
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


# What ``send`` accepts as a client message id: 1-128 characters, no control character.
_MESSAGE_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$",
}


def _refine_ai_sdk(schema: dict[str, Any], components: dict[str, Any]) -> None:
    """What ``POST /ai-sdk/chat`` refuses beyond its model, said in the schema.

    The newest message is the one acted on: a user message needs a text or a file
    part and an id ``send`` takes. JSON Schema cannot single out the last item
    of an array, so the rule is stated for every user message (which real
    clients' histories keep anyway).
    """
    props = schema["properties"]
    props["messages"]["description"] = (
        "The client's copy of the conversation; only the newest message is acted on: a user "
        "message is sent, an assistant message carrying tool answers (approval responses, "
        "outputs) answers the pending interrupt (409 when nothing is pending, or when an "
        "approval's id names an interrupt that is no longer pending). A newest "
        "system message, or an assistant message that answers no pending call, is refused "
        "(400)."
    )
    props["trigger"]["description"] = (
        '"regenerate-message" answers the newest (user) message again; "submit-message" '
        "with a messageId equal to the newest user message's id edits that message"
    )
    message = components["UIMessage"]
    text = {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    }
    file = {
        "type": "object",
        "required": ["type", "url"],
        "properties": {"type": {"const": "file"}, "url": {"type": "string"}},
    }
    message["if"] = {"properties": {"role": {"const": "user"}}, "required": ["role"]}
    message["then"] = {
        "properties": {"id": dict(_MESSAGE_ID), "parts": {"contains": {"anyOf": [text, file]}}}
    }
    # A tool part that says it carries an approval response carries it.
    approval_part = {
        "type": "object",
        "required": ["type", "toolCallId", "state"],
        "properties": {
            "type": {"type": "string", "pattern": "^(tool-|dynamic-tool$)"},
            "toolCallId": {"type": "string"},
            "state": {"const": "approval-responded"},
        },
    }
    message["properties"]["parts"]["items"] = {
        **message["properties"]["parts"]["items"],
        "if": approval_part,
        "then": {
            "required": ["approval"],
            "properties": {
                "approval": {
                    "type": "object",
                    "required": ["approved"],
                    "properties": {"approved": {"type": "boolean"}},
                }
            },
        },
    }


def _refine_ag_ui(schema: dict[str, Any], components: dict[str, Any]) -> None:
    """What ``POST /ag-ui`` refuses beyond ``RunAgentInput``, said in the schema.

    A run needs something to do: a newest message (a user message to send, or
    a tool result for the pending call) or a non-empty ``resume``. A user
    message needs content and an id ``send`` takes; as for the AI SDK, this is
    said of every user message, since JSON Schema cannot single out the newest.
    """
    schema["properties"]["messages"]["description"] = (
        "The client's copy of the conversation; only the newest message is acted on: a user "
        "message is sent, a tool message answers the pending call (409 when nothing is "
        "pending). With a non-empty resume, resume answers instead. Any other newest message "
        "with no resume is refused (400)."
    )
    schema["anyOf"] = [
        {"properties": {"messages": {"minItems": 1}}},
        {"required": ["resume"], "properties": {"resume": {"type": "array", "minItems": 1}}},
    ]
    user = components["UserMessage"]
    user["properties"]["id"] = {**user["properties"]["id"], **_MESSAGE_ID}
    for choice in user["properties"]["content"]["anyOf"]:
        if choice.get("type") == "string":
            choice["minLength"] = 1
        elif choice.get("type") == "array":
            choice["minItems"] = 1


_REFINERS = {"ai-sdk": _refine_ai_sdk, "ag-ui": _refine_ag_ui}

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
            "description": _PATH_DESCRIPTIONS.get(name, name),
            "schema": dict(_MESSAGE_ID if name in ("message_id", "key") else _CONVERSATION_ID),
        }
        for name in names
    ]


_PATH_DESCRIPTIONS = {
    "cid": "The conversation id",
    "id": "The conversation id",
    "key": "A timer's key",
    "message_id": "A message id (one that was edited or regenerated names its replacement)",
}


def _operation(
    method: str,
    path: str,
    spec: Mapping[str, Any] | None,
    components: dict[str, Any],
    security: Mapping[str, Any] | None = None,
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
    params.extend(copy.deepcopy(spec.get("headers", [])))
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
    if schema is not None and spec.get("refine") is not None:
        _REFINERS[spec["refine"]](schema, components)
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
        if status in _ERROR_HEADERS:
            responses[str(status)]["headers"] = copy.deepcopy(_ERROR_HEADERS[status])
    operation["responses"] = responses
    if security is not None:
        if spec.get("public"):
            operation["security"] = []
        elif method == "GET" and path in security.get("query_routes", ()):
            operation["security"] = [{_BEARER: []}, {_QUERY_TOKEN: []}]
        else:
            operation["security"] = [{_BEARER: []}]
    return operation


def openapi_document(
    routes: Iterable[BaseRoute],
    *,
    title: str = "sessionvisor",
    version: str = "0",
    server_url: str = "/",
    security: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document describing ``routes`` (an app's ``app.routes``).

    Args:
        routes: the route table to describe.
        title: ``info.title``.
        version: ``info.version`` (the API's version, here the package's).
        server_url: where the routes are served (the mount prefix, if any).
        security: how the app's scope function authenticates a request, as
            ``security_of`` finds it (None: the document declares no scheme).

    Returns:
        The document as a JSON-ready dict. Routes with no description are
        included with ``x-undocumented: true`` (see ``undocumented_routes``).
    """
    paths: dict[str, dict[str, Any]] = {}
    components = copy.deepcopy(_COMPONENTS)
    for method, path in route_operations(routes):
        spec = _OPERATIONS.get((method, path))
        paths.setdefault(path, {})[method.lower()] = _operation(
            method, path, spec, components, security
        )
    document_components: dict[str, Any] = {"schemas": components}
    if security is not None:
        document_components["securitySchemes"] = _security_schemes(security)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "A chat backend: one supervised session per conversation. "
            'Errors answer {"error", "detail"}; a conversation owned by another '
            "caller gets exactly the answer of one that does not exist (a 404, or on "
            "the event streams the stream of an unused id).",
        },
        "servers": [{"url": server_url or "/"}],
        "paths": paths,
        "components": document_components,
    }


def bearer_security(
    *, query_param: str | None = None, query_routes: Iterable[str] = ()
) -> dict[str, Any]:
    """What a scope function that verifies bearer tokens (``jwt_scope``) says about itself.

    Set as its ``openapi_security`` attribute, it makes the document declare an
    HTTP bearer scheme on every route that asks who calls, and ``query_param``
    (e.g. ``access_token``) as a second way on a GET of ``query_routes``.
    """
    return {
        "scheme": "bearer",
        "bearer_format": "JWT",
        "query_param": query_param,
        "query_routes": sorted(query_routes) if query_param else [],
    }


def security_of(scope_from_request: Any) -> Mapping[str, Any] | None:
    """The ``openapi_security`` a scope function carries (see ``bearer_security``), or None."""
    found = getattr(scope_from_request, SECURITY_ATTRIBUTE, None)
    return found if isinstance(found, Mapping) else None


def _security_schemes(security: Mapping[str, Any]) -> dict[str, Any]:
    schemes: dict[str, Any] = {
        _BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": security.get("bearer_format", "JWT"),
            "description": "Authorization: Bearer <token>; its owner claim owns the "
            "conversations it creates",
        }
    }
    if security.get("query_param"):
        schemes[_QUERY_TOKEN] = {
            "type": "apiKey",
            "in": "query",
            "name": security["query_param"],
            "description": "The same token, for EventSource (which cannot send headers); "
            "accepted on the GET event streams only",
        }
    return schemes
