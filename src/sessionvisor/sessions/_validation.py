"""Checks on caller input, made before anything changes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .._errors import InvalidStatus, MessageTooLarge
from .._json import check_json
from ..state import PendingInterrupt
from ._events import Status

__all__: list[str] = []

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
MAX_ID_LENGTH = 256


def check_conversation_id(conversation_id: Any) -> str:
    """Return the id, or raise TypeError/ValueError naming ``conversation_id``."""
    if not isinstance(conversation_id, str):
        raise TypeError(f"conversation_id must be a str, got {type(conversation_id).__name__}")
    if not conversation_id:
        raise ValueError("conversation_id must not be empty")
    if len(conversation_id) > MAX_ID_LENGTH:
        raise ValueError(
            f"conversation_id is {len(conversation_id)} characters long; "
            f"the limit is {MAX_ID_LENGTH}"
        )
    if _CONTROL.search(conversation_id):
        raise ValueError(f"conversation_id {conversation_id!r} contains a control character")
    return conversation_id


def check_content(
    content: Any, *, max_bytes: int | None, conversation_id: str | None = None
) -> None:
    """Raise TypeError/ValueError naming ``content`` unless it is a valid message body."""
    if isinstance(content, str):
        pass
    elif isinstance(content, list):
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                raise TypeError(
                    f"content[{i}] must be a mapping with a str 'type' key, got {part!r:.80}"
                )
    else:
        raise TypeError(f"content must be a str or a list of parts, got {type(content).__name__}")
    # Before the size: measuring it encodes the content, which recursion or a lone
    # surrogate would break with an error that names nothing.
    check_json(content, "content", conversation_id=conversation_id)
    if max_bytes is not None and not content_size_ok(content, max_bytes):
        where = "" if conversation_id is None else f" for conversation {conversation_id!r}"
        raise MessageTooLarge(
            f"content of the message{where} is larger than max_message_bytes={max_bytes} as JSON"
        )


def content_size_ok(content: Any, max_bytes: int) -> bool:
    if isinstance(content, str) and len(content) * 6 + 2 <= max_bytes:
        return True  # even fully escaped it fits: skip the encoding
    try:
        size = len(json.dumps(content, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise TypeError(f"content is not JSON-serializable: {exc}") from exc
    return size <= max_bytes


MAX_MESSAGE_ID_LENGTH = 128


def check_message_id(message_id: Any, conversation_id: str) -> str | None:
    """Return a client message id (or None), or raise TypeError/ValueError naming it."""
    if message_id is None:
        return None
    if not isinstance(message_id, str):
        raise TypeError(
            f"message_id for conversation {conversation_id!r} must be a str or None, "
            f"got {type(message_id).__name__}"
        )
    if not message_id:
        raise ValueError(f"message_id for conversation {conversation_id!r} must not be empty")
    if len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise ValueError(
            f"message_id for conversation {conversation_id!r} is {len(message_id)} characters "
            f"long; the limit is {MAX_MESSAGE_ID_LENGTH}"
        )
    if _CONTROL.search(message_id):
        raise ValueError(
            f"message_id {message_id!r} for conversation {conversation_id!r} contains a "
            "control character"
        )
    return message_id


def require_interrupt(
    conversation_id: str,
    interrupt: PendingInterrupt | None,
    *,
    status: Status,
    interrupt_id: str | None = None,
) -> PendingInterrupt:
    """The pending interrupt an answer is for; InvalidStatus when there is none, or
    when the answer names another one (``interrupt_id``): a retried or replayed
    answer never answers a later question."""
    if interrupt is None:
        raise InvalidStatus(
            f"cannot resume conversation {conversation_id!r}: it holds no interrupt",
            status.value,
        )
    if interrupt_id is not None and interrupt.id != interrupt_id:
        raise InvalidStatus(
            f"cannot resume conversation {conversation_id!r}: interrupt {interrupt_id!r} "
            "is no longer pending",
            status.value,
        )
    return interrupt


def require_notice(
    conversation_id: str, interrupt: PendingInterrupt | None, *, status: Status
) -> PendingInterrupt:
    """The pending ``notice`` a dismiss is for; InvalidStatus when there is none."""
    if interrupt is None or interrupt.kind != "notice":
        raise InvalidStatus(
            f"cannot dismiss conversation {conversation_id!r}: it has no 'notice' interrupt",
            status.value,
        )
    return interrupt
