"""``message_preprocessor``: a display copy for people, a model copy for the agent."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from sessionvisor import (
    MessageAppended,
    MessageQueued,
    MessageRejected,
    SessionSupervisor,
    Status,
)
from sessionvisor.sessions import PreprocessContext
from sessionvisor.state import Message
from sessionvisor.testing import collect_until, wait_until_settled

from ._support import (
    WAIT,
    Backend,
    ends_in,
    stored_state,
    supervisor,
)


def redact(message: Message, ctx: PreprocessContext) -> tuple[Message, Message]:
    """Show the user what they typed; give the model a redacted, annotated copy."""
    text = message.text()
    model = Message(role="user", content=text.replace("4111", "[card]") + " (from web)")
    return message, model


def _sup(preprocessor: Any, backend: Backend | None = None) -> tuple[SessionSupervisor, Backend]:
    backend = backend or Backend()
    return supervisor(backend, supervisor_opts={"message_preprocessor": preprocessor}), backend


@pytest.mark.anyio
async def test_display_copy_is_shown_and_model_copy_is_stored(anyio_backend: str) -> None:
    sup, backend = _sup(redact)
    async with sup, sup.subscribe("c-1") as events:
        await sup.send("c-1", "pay with 4111")
        seen = await collect_until(events, ends_in(Status.IDLE))

        appended = [e.message for e in seen if isinstance(e, MessageAppended)]
        assert appended[0].role == "user"
        assert appended[0].content == "pay with 4111"
        assert appended[1].content == "re: pay with [card] (from web)"

        state = await stored_state(sup.store, "c-1")
        user = state.messages[0]
        assert user.content == "pay with [card] (from web)"
        assert user.metadata["display"]["content"] == "pay with 4111"
        assert user.metadata["display"]["role"] == "user"
        assert backend.agent.turns == [["pay with [card] (from web)"]]


@pytest.mark.anyio
async def test_queued_message_is_announced_with_its_display_copy(anyio_backend: str) -> None:
    sup, backend = _sup(redact)
    async with sup:
        await sup.send("c-1", "slow")
        with anyio.fail_after(WAIT):
            await backend.agent.slow_started.wait()
        async with sup.subscribe("c-1") as events:
            assert (await sup.send("c-1", "card 4111")).queued is True
            backend.agent.release()
            seen = await collect_until(events, ends_in(Status.IDLE))

        queued = [e.message for e in seen if isinstance(e, MessageQueued)]
        assert [m.content for m in queued] == ["card 4111"]
        appended = [e.message.content for e in seen if isinstance(e, MessageAppended)]
        assert "card 4111" in appended
        assert "card [card] (from web)" not in appended
        state = await stored_state(sup.store, "c-1")
        assert state.messages[2].content == "card [card] (from web)"


@pytest.mark.anyio
async def test_single_message_result_replaces_the_message(anyio_backend: str) -> None:
    def shout(message: Message, ctx: PreprocessContext) -> Message:
        return Message(role="user", content=message.text().upper())

    sup, _ = _sup(shout)
    async with sup, sup.subscribe("c-1") as events:
        await sup.send("c-1", "hello")
        seen = await collect_until(events, ends_in(Status.IDLE))

    appended = [e.message.content for e in seen if isinstance(e, MessageAppended)]
    assert appended == ["HELLO", "re: HELLO"]
    assert "display" not in (await stored_state(sup.store, "c-1")).messages[0].metadata


@pytest.mark.anyio
async def test_async_preprocessor_sees_the_conversation_in_its_context(
    anyio_backend: str,
) -> None:
    contexts: list[tuple[str, str, Any, int]] = []

    async def note(message: Message, ctx: PreprocessContext) -> Message:
        await anyio.lowlevel.checkpoint()  # a preprocessor that really awaits
        contexts.append((ctx.conversation_id, ctx.agent_id, ctx.scope, len(ctx.state.messages)))
        ctx.state.messages.clear()  # a read-only copy: this must not reach the session
        return message

    sup, _ = _sup(note)
    async with sup:
        await sup.send("c-1", "one", scope={"owner": "alice"})
        await wait_until_settled(sup, "c-1", scope={"owner": "alice"})
        await sup.send("c-1", "two", scope={"owner": "alice"})
        await wait_until_settled(sup, "c-1", scope={"owner": "alice"})
        state = await stored_state(sup.store, "c-1")

    assert contexts == [
        ("c-1", "conversation-c-1", {"owner": "alice"}, 0),
        ("c-1", "conversation-c-1", {"owner": "alice"}, 2),
    ]
    assert [m.content for m in state.messages] == ["one", "re: one", "two", "re: two"]


@pytest.mark.anyio
async def test_raising_preprocessor_rejects_the_message_and_stores_nothing(
    anyio_backend: str,
) -> None:
    def refuse(message: Message, ctx: PreprocessContext) -> Message:
        if "spam" in message.text():
            raise ValueError("looks like spam")
        return message

    sup, backend = _sup(refuse)
    async with sup, sup.subscribe("c-1") as events:
        with pytest.raises(MessageRejected) as caught:
            await sup.send("c-1", "buy spam")

        assert isinstance(caught.value, ValueError)
        assert "c-1" in str(caught.value)
        assert "looks like spam" in str(caught.value)
        assert await sup.store.load("c-1") is None
        assert backend.agent.turns == []
        handle = sup.get("c-1")
        if handle is not None:
            assert handle.snapshot().messages == []
            assert handle.snapshot().queued == []
        waiting = await _drain(events)
        assert not any(isinstance(e, MessageAppended | MessageQueued) for e in waiting)

        await sup.send("c-1", "hello")
        await wait_until_settled(sup, "c-1")
        assert [m.content for m in (await stored_state(sup.store, "c-1")).messages] == [
            "hello",
            "re: hello",
        ]


@pytest.mark.anyio
async def test_rejected_message_mid_turn_is_not_queued(anyio_backend: str) -> None:
    def refuse(message: Message, ctx: PreprocessContext) -> Message:
        if "spam" in message.text():
            raise RuntimeError("no")
        return message

    sup, backend = _sup(refuse)
    async with sup:
        await sup.send("c-1", "slow")
        with anyio.fail_after(WAIT):
            await backend.agent.slow_started.wait()
        version = (await sup.store.load("c-1")).version  # type: ignore[union-attr]

        with pytest.raises(MessageRejected, match="c-1"):
            await sup.send("c-1", "spam")

        record = await sup.store.load("c-1")
        assert record is not None
        assert record.version == version
        assert record.state["queued"] == []
        backend.agent.release()
        await wait_until_settled(sup, "c-1")
        assert backend.agent.turns == [["slow"]]


@pytest.mark.anyio
async def test_preprocessor_from_the_factory_applies_to_its_session_only(
    anyio_backend: str,
) -> None:
    shouted = Backend(supervisor_opts={"message_preprocessor": _upper})
    async with supervisor(shouted) as sup:
        await sup.send("c-1", "hi")
        await wait_until_settled(sup, "c-1")
        assert (await stored_state(sup.store, "c-1")).messages[0].content == "HI"

    plain = Backend()
    async with supervisor(plain) as sup:
        await sup.send("c-1", "hi")
        await wait_until_settled(sup, "c-1")
        assert (await stored_state(sup.store, "c-1")).messages[0].content == "hi"


def _upper(message: Message, ctx: PreprocessContext) -> Message:
    return Message(role="user", content=message.text().upper())


async def _drain(events: Any) -> list[Any]:
    """The events already waiting in the subscription (without waiting for more)."""
    out = []
    while events.pending():
        out.append(await anext(events))
    return out


@pytest.mark.anyio
async def test_handle_send_goes_through_the_preprocessor(anyio_backend: str) -> None:
    sup, _ = _sup(redact)
    async with sup, sup.subscribe("c-1") as events:
        handle = (await sup.start("c-1")).handle
        await handle.send("card 4111")
        seen = await collect_until(events, ends_in(Status.IDLE))

    appended = [e.message.content for e in seen if isinstance(e, MessageAppended)]
    assert appended[0] == "card 4111"
    assert handle.snapshot().messages[0].content == "card [card] (from web)"


@pytest.mark.anyio
async def test_preprocessor_returning_no_message_is_an_error_and_stores_nothing(
    anyio_backend: str,
) -> None:
    sup, backend = _sup(lambda message, ctx: message.text())
    async with sup:
        with pytest.raises(TypeError, match="message_preprocessor"):
            await sup.send("c-1", "hello")
        assert await sup.store.load("c-1") is None
        assert backend.agent.turns == []
