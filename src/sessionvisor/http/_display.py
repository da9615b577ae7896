"""How a stored message is shown to a client: its display copy when it has one.

A message preprocessor may store what the agent sees (a redacted or expanded
text) and keep what the user typed under ``metadata["display"]``. Every
client-facing view of the history (the REST history, AG-UI's snapshot) shows
that copy; a display copy that is not a valid message is ignored.
"""

from __future__ import annotations

from ..state import Message

__all__ = ["displayed"]


def displayed(message: Message) -> Message:
    """``message`` as a client sees it: its display copy when the preprocessor made one."""
    display = message.metadata.get("display")
    if isinstance(display, dict):
        try:
            return Message.model_validate(display)
        except ValueError:
            return message
    return message
