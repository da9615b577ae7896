"""Reading and validating request bodies.

A body is read incrementally and refused (413) as soon as it passes the limit,
so a client cannot make the server buffer an arbitrarily large upload. JSON
that Python would accept but a store might not (``NaN``, ``Infinity``) is
refused here, as is any shape the pydantic models below do not describe.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request

from ._errors import HTTPError

__all__ = [
    "DismissBody",
    "ResumeBody",
    "SendBody",
    "check_content_size",
    "check_conversation_id",
    "read_body",
]

_Model = TypeVar("_Model", bound=BaseModel)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc, as the runtime checks
_MAX_ID_LENGTH = 256
# Keys the runtime sets from trusted values; a client naming them is refused outright.
_TRUSTED_KEYS = frozenset({"scope", "conversation_id"})


def reject_trusted_keys(request_opts: dict[str, Any]) -> dict[str, Any]:
    """Return ``request_opts``, or raise ValueError when they name a server-side key."""
    named = sorted(_TRUSTED_KEYS & set(request_opts))
    if named:
        raise ValueError(f"request_opts cannot set {', '.join(named)}: it comes from the server")
    return request_opts


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_opts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("request_opts")
    @classmethod
    def _no_trusted_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return reject_trusted_keys(value)


class SendBody(_Body):
    """``POST /conversations/{cid}/messages``: the message and the client's route options."""

    content: str | list[dict[str, Any]]
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        # No control characters (Unicode category Cc), as the runtime checks; in the
        # schema too, so the OpenAPI document says what is refused.
        pattern=r"^[^\x00-\x1f\x7f-\x9f]+$",
        description="The client's id for this message: a retried send with the same id is "
        "acknowledged again and not applied twice.",
    )

    @field_validator("content")
    @classmethod
    def _parts_have_a_type(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(value, list):
            for i, part in enumerate(value):
                if not isinstance(part.get("type"), str):
                    raise ValueError(f"content[{i}] must have a str 'type' key")
        return value


class ResumeBody(_Body):
    """``POST /conversations/{cid}/resume``: the answer to the pending interrupt."""

    answer: Any


class DismissBody(_Body):
    """``POST /conversations/{cid}/dismiss`` (the body is optional)."""


def check_conversation_id(conversation_id: str) -> str:
    """Return the id, or raise a 400 ``HTTPError`` when the runtime would refuse it."""
    if not conversation_id:
        raise HTTPError(400, "ValidationError", "conversation_id must not be empty")
    if len(conversation_id) > _MAX_ID_LENGTH:
        raise HTTPError(
            400,
            "ValidationError",
            f"conversation_id is {len(conversation_id)} characters long; "
            f"the limit is {_MAX_ID_LENGTH}",
        )
    if _CONTROL.search(conversation_id):
        raise HTTPError(400, "ValidationError", "conversation_id contains a control character")
    return conversation_id


def check_content_size(content: Any, max_bytes: int) -> None:
    """Raise a 413 ``HTTPError`` when ``content`` is larger than ``max_bytes`` as JSON.

    Measured as the runtime measures it (UTF-8 JSON without ASCII escaping).
    """
    size = len(json.dumps(content, ensure_ascii=False).encode())
    if size > max_bytes:
        raise HTTPError(
            413,
            "PayloadTooLarge",
            f"message content is {size} bytes as JSON; the limit is {max_bytes}",
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise HTTPError(400, "InvalidBody", "Content-Length is not a number") from None
        if length > limit:
            raise HTTPError(
                413, "PayloadTooLarge", f"request body is {length} bytes; the limit is {limit}"
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            # Stop reading here: the rest of an oversized upload is never buffered.
            raise HTTPError(
                413, "PayloadTooLarge", f"request body is over the limit of {limit} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(
    request: Request, model: type[_Model], *, limit: int, optional: bool = False
) -> _Model:
    """Read the request's JSON body (at most ``limit`` bytes) and validate it with ``model``.

    Args:
        request: the request.
        model: the pydantic model of the body.
        limit: the largest body accepted, in bytes.
        optional: an empty body stands for ``{}``.

    Returns:
        The validated model.

    Raises:
        HTTPError: 413 when the body is too large, 415 when it is not declared
            as JSON, 400 when it is not JSON or does not fit ``model`` (with
            pydantic's error list under ``errors``).
    """
    raw = await _read_limited(request, limit)
    if not raw.strip():
        if optional:
            return model.model_validate({})
        raise HTTPError(400, "InvalidBody", "the request needs a JSON body")
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # Requiring a JSON media type also keeps plain cross-site form posts out.
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPError(
            415,
            "UnsupportedMediaType",
            f"the body must be JSON (Content-Type: application/json), got {media_type or 'none'!r}",
        )
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors.
        raise HTTPError(400, "InvalidJSON", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPError(
            400, "ValidationError", f"the body must be a JSON object, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise HTTPError(
            400,
            "ValidationError",
            f"the body does not fit {model.__name__}: {errors[0]['msg']} at "
            f"{'.'.join(str(p) for p in errors[0]['loc']) or 'the top level'}",
            errors=errors,
        ) from None
