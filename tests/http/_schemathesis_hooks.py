"""The rules of the API that JSON Schema cannot state, told to schemathesis.

``POST /ai-sdk/chat`` and ``POST /ag-ui`` act on the *newest* message of the
client's copy of the conversation (the stored history is what the agent sees).
JSON Schema can constrain every item of an array, or the first ones, but not
the last: so the OpenAPI document states everything else (a user message needs
content and a usable id, a run needs a message or a ``resume``, ...) and says
in words which newest messages are acted on. A schema-valid body whose newest
message is one the server never acts on (AI SDK: a ``system`` message, or an
assistant message with no approval response in it; AG-UI: anything but a user
message or a tool result, with no ``resume``) is refused with a 400, and that
400 is the only failure excused here. Every other failure, of every check,
stands.

The second: ``POST /conversations/{cid}/timers`` refuses (400) an ``at`` more than
a year from now; JSON Schema has no "now". That 400 is excused too.

schemathesis loads this module by its name (``SCHEMATHESIS_HOOKS``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

#: The roles of a newest message each route acts on (with no ``resume``).
ACTED_ON = {"/ai-sdk/chat": ("user", "assistant"), "/ag-ui": ("user", "tool")}


def _answers_a_call(message: dict[str, Any]) -> bool:
    """An AI SDK assistant message with an approval response (``addToolApprovalResponse``)."""
    parts = message.get("parts")
    return isinstance(parts, list) and any(
        isinstance(part, dict)
        and isinstance(part.get("type"), str)
        and (part["type"].startswith("tool-") or part["type"] == "dynamic-tool")
        and isinstance(part.get("toolCallId"), str)
        and part.get("state") == "approval-responded"
        for part in parts
    )


def acts_on_nothing(path: str, body: Any) -> bool:
    """Whether the server finds nothing to act on in ``body`` (see the module docstring)."""
    roles = ACTED_ON.get(path)
    if roles is None or not isinstance(body, dict):
        return False
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or body.get("resume"):
        return False
    newest = messages[-1]
    if not isinstance(newest, dict) or newest.get("role") not in roles:
        return True
    return path == "/ai-sdk/chat" and newest["role"] == "assistant" and not _answers_a_call(newest)


def timer_too_far(path: str, body: Any) -> bool:
    """A timer's ``at`` more than a year from now (or not a time Python reads)."""
    if not path.endswith("/timers") or not isinstance(body, dict):
        return False
    at = body.get("at")
    if not isinstance(at, str):
        return False
    try:
        due = datetime.fromisoformat(at)
    except ValueError:
        return True
    if due.tzinfo is None:
        return True
    return due - datetime.now(UTC) > timedelta(days=364)


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Drop only ST202 (schema-valid body refused) with a 400 for a newest message not
    acted on, or for a timer due more than a year from now."""
    path = case.operation.path
    excused = (
        failure.code == "ST202"
        and response.status_code == 400
        and (acts_on_nothing(path, case.body) or timer_too_far(path, case.body))
    )
    return not excused
