"""Reading and validating request bodies.

Every JSON body of every route comes through ``read_body``, so the input rules
hold in one place and no route can forget them:

* the body is declared as JSON (415 otherwise, even when it is empty), which
  also keeps a plain cross-site form post out;
* it is read incrementally and refused (413) as soon as it passes the limit,
  so a client cannot make the server buffer an arbitrarily large upload;
* it holds at most ``MAX_BODY_CONTAINERS`` arrays and objects (413), counted
  on the raw bytes before anything is parsed;
* it is JSON every store can keep (``check_json``: at most 64 levels deep,
  finite numbers, no lone surrogates, integers of bounded size), checked in
  one walk of the parsed data (400 ``InvalidJSON`` naming where);
* it fits the route's pydantic model (400 ``ValidationError``).

A large body is parsed and checked on a worker thread, so the event loop keeps
answering other requests (``/healthz`` included) meanwhile.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Mapping
from itertools import accumulate
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request

from .._json import MAX_DEPTH, JSONInputError, JSONTypeError, check_json
from ._errors import HTTPError

__all__ = [
    "MAX_BODY_CONTAINERS",
    "MAX_MESSAGE_ID_LENGTH",
    "MAX_REQUEST_OPTS_BYTES",
    "CancelBody",
    "DismissBody",
    "EditBody",
    "RegenerateBody",
    "ResumeBody",
    "SendBody",
    "body_conversation_id",
    "check_conversation_id",
    "check_request_opts",
    "message_id_ok",
    "read_body",
]

_Model = TypeVar("_Model", bound=BaseModel)

#: The most arrays and objects a request body may hold. Each one is an object
#: the garbage collector tracks: a 1 MiB body of ``[[],[],...]`` holds 350,000,
#: and building them set off full collections that held the GIL (and so the
#: event loop, even with the parse on a worker thread) for 150-650 ms. At this
#: bound the worst body measured kept ``/healthz`` under 60 ms; real bodies (a
#: message, a client's whole history) stay far below it.
MAX_BODY_CONTAINERS = 50_000
#: The largest ``request_opts`` (as JSON): the body limit leaves them 64 KiB beside
#: the message. The runtime copies and checks them on the event loop (the sticky
#: route keeps a deep copy): 1 MiB of them held the loop for 370 ms.
MAX_REQUEST_OPTS_BYTES = 64 * 1024
# Bodies up to this size are parsed on the event loop: the worst of them (5,000
# empty arrays) takes about 3 ms, less than handing it to a thread and back.
_INLINE_BYTES = 16 * 1024

# Unicode category Cc, as the runtime checks: no id may hold one.
_CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{_CONTROL_CHARACTERS}]")
_MAX_ID_LENGTH = 256
#: The longest client message id ``send`` takes.
MAX_MESSAGE_ID_LENGTH = 128
# Keys the runtime sets from trusted values; a client naming them is refused outright.
_TRUSTED_KEYS = frozenset({"scope", "conversation_id"})


def check_request_opts(request_opts: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``request_opts`` as a dict if the runtime may be handed them.

    Raises:
        ValueError: they name a key the server sets (``scope``, ``conversation_id``).
        HTTPError: 413 when they are larger than ``MAX_REQUEST_OPTS_BYTES`` as JSON.
    """
    named = sorted(_TRUSTED_KEYS & set(request_opts))
    if named:
        raise ValueError(f"request_opts cannot set {', '.join(named)}: it comes from the server")
    if _json_size_over(request_opts, MAX_REQUEST_OPTS_BYTES):
        raise HTTPError(
            413,
            "PayloadTooLarge",
            f"request_opts are more than {MAX_REQUEST_OPTS_BYTES} bytes as JSON",
        )
    return dict(request_opts)


# json.dumps' own layout; iterencode without _one_shot takes the pure-Python path,
# which yields pieces: the count stops as soon as it is over, and in a worker
# thread the event loop gets its turns in between.
_PIECES = json.JSONEncoder(ensure_ascii=False, check_circular=False)


def _json_size_over(value: Any, limit: int) -> bool:
    """Whether ``value`` is more than ``limit`` bytes as JSON (read_body checked it is JSON)."""
    size = 0
    for piece in _PIECES.iterencode(value):
        size += len(piece.encode())
        if size > limit:
            return True
    return False


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_opts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("request_opts")
    @classmethod
    def _no_trusted_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_request_opts(value)


class SendBody(_Body):
    """``POST /conversations/{cid}/messages``: the message and the client's route options."""

    content: str | list[dict[str, Any]]
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MESSAGE_ID_LENGTH,
        # No control characters, as message_id_ok says; in the schema too, so the
        # OpenAPI document says what is refused.
        pattern=rf"^[^{_CONTROL_CHARACTERS}]+$",
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
    #: The interrupt this answers (its ``id``); an answer for one that is no longer
    #: pending is a 409, so a retried answer never answers a later question.
    interrupt_id: str | None = Field(default=None, min_length=1, max_length=128)


class DismissBody(_Body):
    """``POST /conversations/{cid}/dismiss`` (the body is optional)."""


class CancelBody(BaseModel):
    """``POST /conversations/{cid}/cancel``: no body, an empty JSON object, or
    ``{"keep_partial": true}``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    keep_partial: bool = Field(
        default=False,
        description="Keep the text the turn streamed so far as the assistant's message "
        '(marked "cancelled": true in its metadata).',
    )


class RegenerateBody(BaseModel):
    """``POST /conversations/{cid}/regenerate`` (the body is optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    message_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MESSAGE_ID_LENGTH,
        pattern=rf"^[^{_CONTROL_CHARACTERS}]+$",
        description="The user message to answer again (default: the last one).",
    )


class EditBody(BaseModel):
    """``PATCH /conversations/{cid}/messages/{message_id}``: the message's new content."""

    model_config = ConfigDict(extra="forbid", strict=True)

    content: str | list[dict[str, Any]]

    @field_validator("content")
    @classmethod
    def _parts_have_a_type(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(value, list):
            for i, part in enumerate(value):
                if not isinstance(part.get("type"), str):
                    raise ValueError(f"content[{i}] must have a str 'type' key")
        return value


def message_id_ok(message_id: str) -> bool:
    """Whether ``send`` takes this client message id (1 to 128 characters, no control one)."""
    return 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH and not _CONTROL.search(message_id)


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


def body_conversation_id(request: Request, conversation_id: str) -> str:
    """``check_conversation_id`` for an id the body names (AI SDK, AG-UI).

    The id is kept on the request, so that an error answered for it (the 404
    of a conversation owned by someone else, a 503) names it as a path
    parameter would be named.
    """
    checked = check_conversation_id(conversation_id)
    request.state.conversation_id = checked
    return checked


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _unsupported(media_type: str) -> HTTPError:
    return HTTPError(
        415,
        "UnsupportedMediaType",
        f"the body must be JSON (Content-Type: application/json), got {media_type or 'none'!r}",
    )


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


# Opening brackets as +1, closing ones as -1 (signed bytes), everything else dropped.
_AS_STEPS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
# Bytes of brackets summed per step: each step is one short C call, so a worker
# thread doing it lets the event loop in between.
_DEPTH_STEP = 64 * 1024


def _outside_strings(raw: bytes) -> bytes:
    """The bytes of the JSON text ``raw`` that lie outside its strings.

    Escaped backslashes go first, then escaped quotes: the quotes left delimit
    the strings, so every other piece between them lies outside one. All of it
    runs in C: about 20 ms for the worst 1 MiB.
    """
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(unescaped.split(b'"')[::2])


def count_containers(raw: bytes) -> int:
    """How many arrays and objects the JSON text ``raw`` holds, without parsing it.

    Exact for valid JSON (brackets inside strings are not counted); for broken
    JSON only an estimate, which the parser refuses anyway.
    """
    # Every bracket counted, strings included: enough for almost every body.
    upper = raw.count(b"[") + raw.count(b"{")
    if upper <= MAX_BODY_CONTAINERS:
        return upper
    outside = _outside_strings(raw)
    return outside.count(b"[") + outside.count(b"{")


def nested_deeper_than(raw: bytes, depth: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects more than ``depth`` deep.

    Without parsing: the depth at each bracket is the running sum of +1 per
    opening and -1 per closing one, outside strings. About 25 ms for 1 MiB of
    brackets, whatever their shape.
    """
    steps = _outside_strings(raw).translate(_AS_STEPS, _NOT_BRACKETS)
    level = 0
    for start in range(0, len(steps), _DEPTH_STEP):
        chunk = array("b")
        chunk.frombytes(steps[start : start + _DEPTH_STEP])
        if max(accumulate(chunk, initial=level)) > depth:
            return True
        level += sum(chunk)
    return False


def _parse(raw: bytes, model: type[_Model]) -> _Model:
    containers = count_containers(raw)
    if containers > MAX_BODY_CONTAINERS:
        # Too deep is the better answer when it is both (the rule a client must
        # learn); either way nothing of it is parsed.
        if nested_deeper_than(raw, MAX_DEPTH):
            raise HTTPError(
                400,
                "InvalidJSON",
                f"the body is not storable JSON: it is nested more than {MAX_DEPTH} levels deep",
            )
        raise HTTPError(
            413,
            "PayloadTooLarge",
            f"the body holds {containers} arrays and objects; the limit is {MAX_BODY_CONTAINERS}",
        )
    try:
        # Bytes are decoded as UTF-8 with lone surrogates let through (json's own
        # choice): check_json then names where the bad string is.
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; RecursionError is
        # json's C parser at the interpreter's recursion limit.
        raise HTTPError(400, "InvalidJSON", f"the body is not valid JSON: {exc}") from None
    try:
        # The one walk over the client's data: the models below trust it.
        check_json(data, "body")
    except (JSONInputError, JSONTypeError) as exc:
        raise HTTPError(400, "InvalidJSON", f"the body is not storable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPError(
            400, "ValidationError", f"the body must be a JSON object, got {type(data).__name__}"
        )
    return _validate(data, model)


def _validate(data: dict[str, Any], model: type[_Model]) -> _Model:
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


async def read_body(
    request: Request,
    model: type[_Model],
    *,
    limit: int,
    optional: bool = False,
    limiter: anyio.CapacityLimiter | None = None,
) -> _Model:
    """Read the request's JSON body (at most ``limit`` bytes) and validate it with ``model``.

    Args:
        request: the request.
        model: the pydantic model of the body.
        limit: the largest body accepted, in bytes.
        optional: an empty body stands for ``{}``.
        limiter: bounds the worker threads that parse large bodies (anyio's
            default limiter when None).

    Returns:
        The validated model.

    Raises:
        HTTPError: 415 when a Content-Type other than JSON is declared (or a
            body comes without one), 413 when the body is too large or holds
            too many arrays and objects, 400 when it is not JSON, not JSON a
            store can keep, or does not fit ``model`` (with pydantic's error
            list under ``errors``).
    """
    media_type = _media_type(request)
    # Checked before the body is even read, and for an empty body too: a form on
    # another site can post (text/plain, urlencoded, multipart) without a preflight.
    if media_type and not _is_json(media_type):
        raise _unsupported(media_type)
    if not media_type and request.headers.get("content-length", "0").strip() not in ("", "0"):
        raise _unsupported(media_type)  # a body is coming, and nothing says it is JSON
    raw = await _read_limited(request, limit)
    if not raw.strip():
        if optional:
            # No body and no Content-Type stays allowed (``fetch(url, {method:
            # "POST"})``, the page's cancel): a cross-site form always declares a
            # form or text type, refused above. A cross-site fetch can send it
            # too, but cannot add the X-User or Authorization header that names
            # the caller; a scope function that trusts a cookie must check the
            # Origin itself.
            return _validate({}, model)
        raise HTTPError(400, "InvalidBody", "the request needs a JSON body")
    if not media_type:
        raise _unsupported(media_type)
    if len(raw) <= _INLINE_BYTES:
        return _parse(raw, model)
    return await anyio.to_thread.run_sync(_parse, raw, model, limiter=limiter)
