"""``PydanticAIAgent``: pydantic-ai runs inside a supervised session.

pydantic-ai schedules asyncio tasks of its own, so the adapter runs on asyncio
only: these tests override ``anyio_backend`` to asyncio (one test checks that
trio gets a clear failure instead of a hang or a crash). Every model is a
``FunctionModel``/``TestModel`` and ``ALLOW_MODEL_REQUESTS`` is off (``_pai``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, DeferredToolRequests, RunContext, ToolDenied
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ToolFailed, UsageLimitExceeded
from pydantic_ai.messages import (
    ImageUrl,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.tools import ToolApproved
from pydantic_ai.usage import UsageLimits

from sessionvisor import (
    AgentEvent,
    Delta,
    MessageAppended,
    PendingInterrupt,
    SessionSupervisor,
    SQLiteStore,
    State,
    Status,
    StatusChanged,
    Turn,
)
from sessionvisor.agents.pydantic_ai import (
    CURSOR_KEY,
    HISTORY_KEY,
    MOVED_ON_MESSAGE,
    PENDING_KEY,
    USAGE_KEY,
    InvalidAnswer,
    PydanticAIAgent,
    answer_to_results,
    load_history,
)
from sessionvisor.testing import ManualClock, wait_for_event, wait_for_status

from ._pai import (
    WAIT,
    ScriptedModel,
    adapter,
    advance_until_shutdown,
    build_agent,
    prompt_text,
    resume_events,
    supervisor,
    turn_events,
)


# pydantic-ai runs on asyncio only (it creates asyncio tasks itself), so these
# tests do not run on trio; the adapter's refusal on trio is tested below.
@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def deltas(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta))


def appended(events: list[Any]) -> list[tuple[str, Any]]:
    return [(e.message.role, e.message.content) for e in events if isinstance(e, MessageAppended)]


def agent_events(events: list[Any], name: str) -> list[Any]:
    return [e.data for e in events if isinstance(e, AgentEvent) and e.name == name]


def chat(state: State) -> list[tuple[str, Any]]:
    return [(m.role, m.content) for m in state.messages]


async def loaded(sup: SessionSupervisor, cid: str = "c-1") -> State:
    state = await sup.load(cid)
    assert state is not None
    return state


# -- replies and streaming ----------------------------------------------------------


@pytest.mark.anyio
async def test_reply_is_streamed_as_deltas_and_appended_as_assistant_message(
    anyio_backend: str,
) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        events = await turn_events(sup, "c-1", "hello there")
        state = await loaded(sup)

    assert [e.text for e in events if isinstance(e, Delta)] == ["echo: ", "hello there"]
    assert appended(events) == [("user", "hello there"), ("assistant", "echo: hello there")]
    assert chat(state) == [("user", "hello there"), ("assistant", "echo: hello there")]
    assert state.metadata[CURSOR_KEY] == state.messages[-1].id


@pytest.mark.anyio
async def test_test_model_runs_tools_and_replies(anyio_backend: str) -> None:
    agent: Agent[None, str] = Agent(TestModel(custom_output_text="all done"))
    ran: list[int] = []

    @agent.tool_plain
    def count(n: int) -> int:
        ran.append(n)
        return n + 1

    async with supervisor(lambda: PydanticAIAgent(agent)) as sup:
        events = await turn_events(sup, "c-1", "go")
        state = await loaded(sup)

    assert ran, "TestModel calls every tool once"
    assert deltas(events) == "all done"
    assert chat(state)[-1] == ("assistant", "all done")
    assert [c["tool_name"] for c in agent_events(events, "tool_call")] == ["count"]
    assert [r["tool_name"] for r in agent_events(events, "tool_result")] == ["count"]
    assert state.metadata[USAGE_KEY]["requests"] == 2


@pytest.mark.anyio
async def test_tool_calls_and_results_are_published_as_agent_events(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        events = await turn_events(sup, "c-1", "add 2 3")

    assert agent_events(events, "tool_call") == [
        {"tool_call_id": "call-1", "tool_name": "add", "args": {"a": 2, "b": 3}}
    ]
    assert agent_events(events, "tool_result") == [
        {"tool_call_id": "call-1", "tool_name": "add", "content": 5}
    ]
    assert deltas(events) == "tool said: 5"


@pytest.mark.anyio
async def test_tool_events_can_be_switched_off(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script, tool_events=False)) as sup:
        events = await turn_events(sup, "c-1", "add 2 3")

    assert not [e for e in events if isinstance(e, AgentEvent)]
    assert deltas(events) == "tool said: 5"


@pytest.mark.anyio
async def test_text_of_several_responses_is_streamed_as_the_reply(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        await turn_events(sup, "c-1", "delete notes.txt", until="interrupted")
        events = await resume_events(sup, "c-1", True)
        state = await loaded(sup)

    # The reply of the resumed run is only its own text; the text before the
    # tool call belonged to the interrupted turn's message.
    assert deltas(events) == "tool said: deleted notes.txt"
    assert chat(state) == [
        ("user", "delete notes.txt"),
        ("assistant", "Deleting notes.txt. "),
        ("assistant", "tool said: deleted notes.txt"),
    ]


@pytest.mark.anyio
async def test_model_without_streaming_replies_with_stream_false(anyio_backend: str) -> None:
    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        from pydantic_ai.messages import TextPart

        return ModelResponse(parts=[TextPart(f"plain: {prompt_text(messages)}")])

    agent: Agent[None, str] = Agent(FunctionModel(answer))
    async with supervisor(lambda: PydanticAIAgent(agent, stream=False)) as sup:
        events = await turn_events(sup, "c-1", "hi")
        state = await loaded(sup)

    assert [e.text for e in events if isinstance(e, Delta)] == ["plain: hi"]
    assert chat(state)[-1] == ("assistant", "plain: hi")


@pytest.mark.anyio
async def test_structured_output_is_the_reply_as_json(anyio_backend: str) -> None:
    class City(BaseModel):
        name: str
        population: int

    agent: Agent[None, City] = Agent(
        TestModel(custom_output_args={"name": "Oslo", "population": 700000}), output_type=City
    )
    async with supervisor(lambda: PydanticAIAgent(agent)) as sup:
        events = await turn_events(sup, "c-1", "a city please")
        state = await loaded(sup)

    reply = '{"name": "Oslo", "population": 700000}'
    assert chat(state)[-1] == ("assistant", reply)
    assert deltas(events) == reply


@pytest.mark.anyio
async def test_messages_queued_during_a_turn_are_one_prompt(anyio_backend: str) -> None:
    gate = anyio.Event()
    prompts: list[str] = []

    async def slow_then_echo(messages: list[ModelMessage], info: AgentInfo) -> Any:
        prompts.append(prompt_text(messages))
        if len(prompts) == 1:
            await gate.wait()
        yield f"re: {prompts[-1]}"

    agent: Agent[None, str] = Agent(FunctionModel(stream_function=slow_then_echo))
    async with supervisor(lambda: PydanticAIAgent(agent)) as sup:
        async with sup.subscribe("c-1") as events:
            await sup.send("c-1", "one")
            await wait_for_status(sup, "c-1", "running")
            await sup.send("c-1", "two")
            await sup.send("c-1", "three")
            gate.set()
            await wait_for_event(
                events,
                lambda e: isinstance(e, StatusChanged) and e.status is Status.IDLE and e.seq > 2,
                timeout=WAIT,
            )
        state = await loaded(sup)

    assert prompts == ["one", "two\n\nthree"]
    assert chat(state) == [
        ("user", "one"),
        ("assistant", "re: one"),
        ("user", "two"),
        ("user", "three"),
        ("assistant", "re: two\n\nthree"),
    ]


@pytest.mark.anyio
async def test_content_parts_become_pydantic_ai_user_content(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        await turn_events(
            sup,
            "c-1",
            [
                {"type": "text", "text": "what is in"},
                {"type": "image_url", "url": "https://example.com/cat.png"},
            ],
        )

    request = script.seen[0][-1]
    assert isinstance(request, ModelRequest)
    prompt = next(p for p in request.parts if isinstance(p, UserPromptPart))
    assert prompt.content == ["what is in", ImageUrl(url="https://example.com/cat.png")]


# -- history: lossless and restored -----------------------------------------------------


@pytest.mark.anyio
async def test_history_with_tool_calls_survives_a_restart_from_sqlite(
    anyio_backend: str, tmp_path: Path
) -> None:
    db = tmp_path / "chat.db"
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script), store=SQLiteStore(db)) as sup:
        await turn_events(sup, "c-1", "add 2 3")

    later = ScriptedModel()
    async with supervisor(lambda: adapter(later), store=SQLiteStore(db)) as sup:
        events = await turn_events(sup, "c-1", "and now?")
        state = await loaded(sup)

    seen = later.seen[0]
    calls = [
        p
        for m in seen
        if isinstance(m, ModelResponse)
        for p in m.parts
        if isinstance(p, ToolCallPart)
    ]
    returns = [
        p
        for m in seen
        if isinstance(m, ModelRequest)
        for p in m.parts
        if isinstance(p, ToolReturnPart)
    ]
    assert [(c.tool_name, c.args_as_dict()) for c in calls] == [("add", {"a": 2, "b": 3})]
    assert [(r.tool_name, r.content) for r in returns] == [("add", 5)]
    assert prompt_text(seen) == "and now?"
    assert deltas(events) == "echo: and now?"
    # The stored history is the exact pydantic-ai history, round-tripped.
    history = load_history(state)
    assert [type(m).__name__ for m in history] == [
        "ModelRequest",
        "ModelResponse",
        "ModelRequest",
        "ModelResponse",
        "ModelRequest",
        "ModelResponse",
    ]
    assert history[:4] == later.seen[0][:4]


@pytest.mark.anyio
async def test_each_turn_sends_only_new_user_messages(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        await turn_events(sup, "c-1", "first")
        await turn_events(sup, "c-1", "second")

    assert [prompt_text(seen) for seen in script.seen] == ["first", "second"]
    assert len(script.seen[1]) == 3  # request, response, and the new request


@pytest.mark.anyio
async def test_a_failed_turn_leaves_the_history_untouched_and_the_message_pending(
    anyio_backend: str,
) -> None:
    limits = UsageLimits(request_limit=1)
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script, usage_limits=limits)) as sup:
        await turn_events(sup, "c-1", "hello")
        before = (await loaded(sup)).metadata[HISTORY_KEY]
        events = await turn_events(sup, "c-1", "add 1 1", until="error")
        after = await loaded(sup)

    error = next(e for e in events if isinstance(e, StatusChanged) and e.status is Status.ERROR)
    assert error.error is not None and UsageLimitExceeded.__name__ in error.error
    assert after.metadata[HISTORY_KEY] == before
    assert chat(after)[-1] == ("user", "add 1 1")


@pytest.mark.anyio
async def test_a_cancelled_turn_rolls_back_and_the_next_turn_sees_both_messages(
    anyio_backend: str,
) -> None:
    prompts: list[str] = []

    async def stalls_once(messages: list[ModelMessage], info: AgentInfo) -> Any:
        prompts.append(prompt_text(messages))
        yield "thinking"
        if len(prompts) == 1:
            await anyio.sleep_forever()
        yield " ... done"

    agent: Agent[None, str] = Agent(FunctionModel(stream_function=stalls_once))
    async with supervisor(lambda: PydanticAIAgent(agent)) as sup:
        async with sup.subscribe("c-1") as events:
            await sup.send("c-1", "think hard")
            await wait_for_event(events, lambda e: isinstance(e, Delta), timeout=WAIT)
        with anyio.fail_after(1):
            assert await sup.cancel("c-1") is Status.CANCELLED
        cancelled = await loaded(sup)
        await turn_events(sup, "c-1", "quickly")
        state = await loaded(sup)

    assert HISTORY_KEY not in cancelled.metadata
    assert prompts == ["think hard", "think hard\n\nquickly"]
    assert chat(state)[-1] == ("assistant", "thinking ... done")


# -- deferred tools: interrupts and resume ----------------------------------------------


@pytest.mark.anyio
async def test_approval_tool_interrupts_with_the_calls(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        events = await turn_events(sup, "c-1", "delete notes.txt", until="interrupted")
        state = await loaded(sup)

    interrupted = events[-1]
    assert isinstance(interrupted, StatusChanged) and interrupted.interrupt is not None
    calls = [
        {
            "tool_call_id": "call-1",
            "tool_name": "delete_file",
            "args": {"path": "notes.txt"},
            "kind": "approval",
        }
    ]
    assert interrupted.interrupt.data == {"calls": calls}
    assert state.interrupt is not None and state.interrupt.data == {"calls": calls}
    assert state.metadata[PENDING_KEY] == calls
    assert deltas(events) == "Deleting notes.txt. "


@pytest.mark.anyio
async def test_approved_call_runs_the_tool_and_the_run_continues(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        await turn_events(sup, "c-1", "delete notes.txt", until="interrupted")
        events = await resume_events(sup, "c-1", {"approved": True})
        state = await loaded(sup)

    assert deltas(events) == "tool said: deleted notes.txt"
    assert agent_events(events, "tool_result")[0]["content"] == "deleted notes.txt"
    assert state.interrupt is None and PENDING_KEY not in state.metadata


@pytest.mark.anyio
async def test_denied_call_tells_the_model_the_reason(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        await turn_events(sup, "c-1", "delete notes.txt", until="interrupted")
        events = await resume_events(
            sup, "c-1", {"calls": {"call-1": {"approved": False, "reason": "keep it"}}}
        )

    assert deltas(events) == "tool said: keep it"


@pytest.mark.anyio
async def test_external_call_is_answered_with_its_result(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        events = await turn_events(sup, "c-1", "fetch k-7", until="interrupted")
        interrupt = events[-1].interrupt  # type: ignore[attr-defined]
        assert interrupt.data["calls"] == [
            {
                "tool_call_id": "call-1",
                "tool_name": "fetch_record",
                "args": {"key": "k-7"},
                "kind": "external",
            }
        ]
        events = await resume_events(
            sup, "c-1", {"calls": {"call-1": {"result": {"key": "k-7", "value": 42}}}}
        )

    assert deltas(events) == "tool said: {'key': 'k-7', 'value': 42}"


@pytest.mark.anyio
async def test_mixed_calls_are_answered_per_call(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        events = await turn_events(sup, "c-1", "both", until="interrupted")
        kinds = {c["tool_call_id"]: c["kind"] for c in events[-1].interrupt.data["calls"]}  # type: ignore[attr-defined]
        assert kinds == {"call-a": "approval", "call-b": "external"}
        events = await resume_events(
            sup, "c-1", {"approved": True, "calls": {"call-b": {"error": "record gone"}}}
        )

    assert deltas(events) == "tool said: deleted x; record gone"


@pytest.mark.anyio
async def test_an_answer_that_does_not_fit_keeps_the_interrupt(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        await turn_events(sup, "c-1", "fetch k-7", until="interrupted")
        events = await resume_events(sup, "c-1", {"approved": True}, until="interrupted")
        state = await loaded(sup)
        # Still answerable: the right answer goes through afterwards.
        await resume_events(sup, "c-1", {"calls": {"call-1": "v"}})
        done = await loaded(sup)

    assert "run outside the agent" in agent_events(events, "invalid_answer")[0]["error"]
    assert state.interrupt is not None
    assert state.interrupt.data["calls"][0]["tool_call_id"] == "call-1"
    assert "run outside the agent" in state.interrupt.data["error"]
    assert chat(done)[-1] == ("assistant", "tool said: v")


@pytest.mark.anyio
async def test_interrupt_survives_idle_shutdown_and_a_new_process(
    anyio_backend: str, tmp_path: Path
) -> None:
    db = tmp_path / "chat.db"
    clock = ManualClock()
    script = ScriptedModel()
    opts = {"inactivity_timeout": 60.0}
    async with supervisor(
        lambda: adapter(script), store=SQLiteStore(db), clock=clock, supervisor_opts=opts
    ) as sup:
        await turn_events(sup, "c-1", "delete notes.txt", until="interrupted")
        async with sup.subscribe("c-1") as subscription:
            shutdown = await advance_until_shutdown(clock, subscription, 61)
        assert shutdown.reason == "inactivity"
        assert shutdown.interrupt_restorable is True
        assert await sup.status("c-1") is Status.NOT_RUNNING

    async with supervisor(lambda: adapter(ScriptedModel()), store=SQLiteStore(db)) as sup:
        events = await resume_events(sup, "c-1", True)
        state = await loaded(sup)

    assert deltas(events) == "tool said: deleted notes.txt"
    assert state.interrupt is None
    assert chat(state)[-1] == ("assistant", "tool said: deleted notes.txt")


@pytest.mark.anyio
async def test_new_message_instead_of_an_answer_closes_the_calls(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        await turn_events(sup, "c-1", "delete notes.txt", until="interrupted")
        events = await turn_events(sup, "c-1", "never mind")
        state = await loaded(sup)

    # The model gets the denial of the abandoned call together with the new prompt.
    assert deltas(events) == f"tool said: {MOVED_ON_MESSAGE}"
    last_request = script.seen[-1][-1]
    assert isinstance(last_request, ModelRequest)
    assert any(
        isinstance(p, UserPromptPart) and p.content == "never mind" for p in last_request.parts
    )
    assert state.interrupt is None and PENDING_KEY not in state.metadata
    assert state.metadata["abandoned_interrupts"][0]["data"]["calls"][0]["tool_call_id"] == (
        "call-1"
    )


# -- options: deps, usage limits, model settings ------------------------------------------


@pytest.mark.anyio
async def test_deps_are_built_from_the_turn_scope_and_extra(anyio_backend: str) -> None:
    seen: list[Any] = []
    agent: Agent[dict[str, Any], str] = Agent(TestModel(custom_output_text="ok"), deps_type=dict)

    @agent.tool
    def whoami(ctx: RunContext[dict[str, Any]]) -> str:
        seen.append(ctx.deps)
        return str(ctx.deps["user"])

    async def deps(turn: Turn) -> dict[str, Any]:
        return {"user": turn.scope["owner"], "tenant": turn.extra["tenant"]}

    async with supervisor(
        lambda: PydanticAIAgent(agent, deps=deps), extra={"tenant": "acme"}
    ) as sup:
        await turn_events(sup, "c-1", "who am I?", scope={"owner": "ann"})

    assert seen == [{"user": "ann", "tenant": "acme"}]


@pytest.mark.anyio
async def test_model_settings_reach_the_model(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script, model_settings={"temperature": 0.1})) as sup:
        await turn_events(sup, "c-1", "hi")

    assert script.settings[0] is not None and script.settings[0]["temperature"] == 0.1


@pytest.mark.anyio
async def test_usage_is_totalled_across_turns(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        await turn_events(sup, "c-1", "hi")
        one = dict((await loaded(sup)).metadata[USAGE_KEY])
        await turn_events(sup, "c-1", "add 1 2")
        two = (await loaded(sup)).metadata[USAGE_KEY]

    assert one["requests"] == 1
    assert two["requests"] == 3
    assert two["output_tokens"] > one["output_tokens"] > 0


@pytest.mark.anyio
async def test_agent_that_lists_deferred_requests_itself_works(anyio_backend: str) -> None:
    script = ScriptedModel()
    agent = build_agent(script, output_type=[str, DeferredToolRequests])
    async with supervisor(lambda: PydanticAIAgent(agent)) as sup:
        await turn_events(sup, "c-1", "delete a", until="interrupted")
        events = await resume_events(sup, "c-1", True)

    assert deltas(events) == "tool said: deleted a"


# -- the asyncio-only rule ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_a_turn_fails_with_a_clear_error(anyio_backend: str) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        events = await turn_events(sup, "c-1", "hi", until="error")

    error = events[-1]
    assert isinstance(error, StatusChanged) and error.error is not None
    assert "asyncio only" in error.error
    assert script.seen == []


# -- the answer mapping, without a session ------------------------------------------------

APPROVAL = {"tool_call_id": "a", "tool_name": "delete_file", "args": {}, "kind": "approval"}
EXTERNAL = {"tool_call_id": "e", "tool_name": "fetch", "args": {}, "kind": "external"}


def test_answer_true_approves_every_approval() -> None:
    results = answer_to_results([APPROVAL], True)
    assert results.approvals == {"a": True}
    assert results.calls == {}


def test_answer_with_reason_denies_with_that_message() -> None:
    results = answer_to_results([APPROVAL], {"approved": False, "reason": "no"})
    assert results.approvals == {"a": ToolDenied("no")}


def test_answer_may_override_args() -> None:
    results = answer_to_results(
        [APPROVAL], {"calls": {"a": {"approved": True, "override_args": {"path": "b"}}}}
    )
    assert results.approvals == {"a": ToolApproved(override_args={"path": "b"})}


def test_external_results_plain_and_error() -> None:
    assert answer_to_results([EXTERNAL], {"calls": {"e": 7}}).calls == {"e": 7}
    assert answer_to_results([EXTERNAL], {"calls": {"e": {"result": [1]}}}).calls == {"e": [1]}
    failed = answer_to_results([EXTERNAL], {"calls": {"e": {"error": "gone"}}}).calls["e"]
    assert failed == ToolFailed("gone")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("yes", "expected True/False"),
        ({"approve": True}, "unknown keys"),
        ({"calls": {"zzz": True}}, "no pending tool call has id ['zzz']"),
        ({"calls": {}}, "needs an approval"),
        ({"calls": {"a": "maybe"}}, "needs true/false"),
        ({"calls": {"a": {"approved": "yes"}}}, "'approved' must be true or false"),
    ],
)
def test_answers_that_do_not_fit_are_refused(answer: Any, message: str) -> None:
    with pytest.raises(InvalidAnswer, match=message.replace("[", r"\[").replace("]", r"\]")):
        answer_to_results([APPROVAL], answer)


def test_external_call_needs_an_explicit_result() -> None:
    with pytest.raises(InvalidAnswer, match="run outside the agent"):
        answer_to_results([APPROVAL, EXTERNAL], True)


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match=r"pydantic_ai\.Agent"):
        PydanticAIAgent(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="deps"):
        PydanticAIAgent(Agent(TestModel()), deps=42)  # type: ignore[arg-type]
    interrupt = PendingInterrupt(data={"calls": []})
    assert PydanticAIAgent(Agent(TestModel()), name="helper").restorable(interrupt) is True


def test_unreadable_history_is_a_clear_error() -> None:
    state = State(metadata={HISTORY_KEY: [{"kind": "nonsense"}]})
    with pytest.raises(ValueError, match="not a valid pydantic-ai message history"):
        load_history(state)


# -- other ways pydantic-ai defers a call -----------------------------------------------


def _one_call_then_echo(tool: str, args: str) -> FunctionModel:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> Any:
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        results = [p for p in last.parts if isinstance(p, ToolReturnPart)]
        if results:
            yield f"result: {results[0].content}"
            return
        yield {0: DeltaToolCall(tool, args, tool_call_id="call-x")}

    return FunctionModel(stream_function=stream)


@pytest.mark.anyio
async def test_approval_required_raised_by_a_tool_is_an_approval(anyio_backend: str) -> None:
    agent: Agent[None, str] = Agent(_one_call_then_echo("pay", '{"amount": 500}'))

    @agent.tool
    def pay(ctx: RunContext[None], amount: int) -> str:
        if amount > 100 and not ctx.tool_call_approved:
            raise ApprovalRequired(metadata={"limit": 100})
        return f"paid {amount}"

    async with supervisor(lambda: PydanticAIAgent(agent)) as sup:
        events = await turn_events(sup, "c-1", "pay", until="interrupted")
        call = events[-1].interrupt.data["calls"][0]  # type: ignore[attr-defined]
        events = await resume_events(
            sup, "c-1", {"calls": {"call-x": {"approved": True, "override_args": {"amount": 90}}}}
        )

    assert call["kind"] == "approval"
    assert call["metadata"] == {"limit": 100}
    assert deltas(events) == "result: paid 90"


@pytest.mark.anyio
async def test_a_question_for_the_user_is_answered_with_a_result(anyio_backend: str) -> None:
    agent: Agent[None, str] = Agent(_one_call_then_echo("ask_user", '{"question": "Colour?"}'))

    @agent.tool_plain
    def ask_user(question: str) -> str:
        raise CallDeferred(kind="question")

    async with supervisor(lambda: PydanticAIAgent(agent)) as sup:
        events = await turn_events(sup, "c-1", "paint it", until="interrupted")
        call = events[-1].interrupt.data["calls"][0]  # type: ignore[attr-defined]
        events = await resume_events(sup, "c-1", {"calls": {"call-x": "blue"}})

    assert (call["kind"], call["args"]) == ("question", {"question": "Colour?"})
    assert deltas(events) == "result: blue"


@pytest.mark.anyio
async def test_a_regenerate_or_an_edit_hides_the_superseded_exchange_from_the_model(
    anyio_backend: str,
) -> None:
    script = ScriptedModel()
    async with supervisor(lambda: adapter(script)) as sup:
        await turn_events(sup, "c-1", "first question")
        await turn_events(sup, "c-1", "second question")
        await sup.regenerate("c-1")
        await wait_for_status(sup, "c-1", "idle")
        regenerated = _user_prompts(script.seen[-1])
        state = await loaded(sup)
        first = state.messages[0]
        await sup.edit("c-1", first.id, "first, edited")
        await wait_for_status(sup, "c-1", "idle")
        edited = _user_prompts(script.seen[-1])

    # The model is sent the exchange before the re-asked message and that message:
    # never the answer it replaces (nor, after the edit, anything after the edit).
    assert regenerated == ["first question", "second question"]
    assert edited == ["first, edited"]


def _user_prompts(messages: list[Any]) -> list[str]:
    return [
        part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart) and isinstance(part.content, str)
    ]
