"""The pydantic-ai adapter's journal: each model response and each tool call is a durable step.

One ``TurnJournal`` (a pydantic-ai capability) is added to each run the adapter
makes. It wraps the model that serves each request so the request is a step
``model:<n>`` (the n-th model request of the run, from 1) whose result is the
``ModelResponse``, and wraps each tool call so it is a step
``tool:<tool name>:<tool call id>`` whose result is what the tool returned (or
the retry, failure or deferral it raised). A rerun of a cut turn sends the same
prompt over the same history, so it makes the same requests and calls in the
same order: completed ones come back from the journal, the model is asked only
for what it never answered, and a tool runs again only when it is idempotent.

A tool call cut inside a non-idempotent tool raises ``ApprovalRequired`` with
``UNKNOWN_OUTCOME_MARK`` in its metadata, so the run ends with that call
deferred and the adapter asks a human to retry or skip it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import TypeAdapter
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import (
    ApprovalRequired,
    CallDeferred,
    ModelRetry,
    ToolFailed,
    ToolFailedError,
    ToolRetryError,
)
from pydantic_ai.messages import AgentStreamEvent, ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.messages import ToolReturn as _ToolReturn
from pydantic_ai.models import (
    CompletedStreamedResponse,
    Model,
    ModelRequestParameters,
    StreamedResponse,
)
from pydantic_ai.models._request_timeout import RequestDeadline, open_durable_unit_stream
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import RunContext, ToolDefinition
from pydantic_core import to_jsonable_python

from .._errors import StepOutcomeUnknown
from ..state import Usage
from ._agent import MAX_STEP_NAME, StepCall, Turn

__all__ = ["UNKNOWN_OUTCOME_MARK", "TurnJournal"]

#: The key of the deferral metadata that marks a tool call whose outcome is unknown.
UNKNOWN_OUTCOME_MARK = "sessionvisor_unknown_outcome"

_RESPONSE: TypeAdapter[ModelResponse] = TypeAdapter(ModelResponse)
_TOOL_RETURN: TypeAdapter[_ToolReturn] = TypeAdapter(_ToolReturn)

StreamHandler = Callable[[RunContext[Any], AsyncIterable[AgentStreamEvent]], Awaitable[None]]


def _usage_of(response: ModelResponse) -> Usage:
    usage = response.usage
    cost = usage.cost
    return Usage(
        input_tokens=max(int(usage.input_tokens or 0), 0),
        output_tokens=max(int(usage.output_tokens or 0), 0),
        requests=1,
        cost=float(cost) if cost is not None and cost >= 0 else None,
    )


@dataclass
class TurnJournal(AbstractCapability[Any]):
    """Journals one pydantic-ai run of a turn (see the module docstring).

    ``stream_handler`` (the adapter's streamer) sees each model response's
    events live, inside its step; a replayed response's events reach the run's
    own ``event_stream_handler`` instead, so either way each is seen once.
    """

    turn: Turn
    idempotent_tools: Collection[str] = ()
    stream_handler: StreamHandler | None = None
    model_requests: int = field(default=0, init=False)

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None

    def get_wrapper_model(self, model: Model) -> Model | None:
        return _JournaledModel(model, self)

    # -- model requests -----------------------------------------------------------------

    async def model_step(self, call: Callable[[], Awaitable[ModelResponse]]) -> ModelResponse:
        """Run one model request as the step ``model:<n>``: the response, live or stored."""
        self.model_requests += 1
        live: list[ModelResponse] = []

        async def run() -> Any:
            response = await call()
            live.append(response)
            return _RESPONSE.dump_python(response, mode="json")

        stored = await self.turn._durable_step(
            StepCall(
                name=f"model:{self.model_requests}",
                call=run,
                idempotent=True,  # a model request asked again costs tokens, nothing more
                usage=lambda _: _usage_of(live[0]) if live else None,
            )
        )
        return live[0] if live else _RESPONSE.validate_python(stored)

    # -- tool calls ---------------------------------------------------------------------------

    def is_idempotent(self, tool_def: ToolDefinition) -> bool:
        meta = tool_def.metadata or {}
        return tool_def.name in self.idempotent_tools or meta.get("idempotent") is True

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: dict[str, Any],
        handler: Callable[[dict[str, Any]], Awaitable[Any]],
    ) -> Any:
        name = f"tool:{call.tool_name}:{call.tool_call_id}"[:MAX_STEP_NAME]
        raised: list[BaseException] = []
        returned: list[Any] = []

        async def run() -> Any:
            try:
                result = await handler(args)
            except (ToolRetryError, ToolFailedError, ModelRetry, ToolFailed) as exc:
                raised.append(exc)
                return _outcome_of_error(exc)
            except (CallDeferred, ApprovalRequired) as exc:
                raised.append(exc)
                return _outcome_of_deferral(exc)
            returned.append(result)
            return _outcome_of_result(result)

        try:
            stored = await self.turn._durable_step(
                StepCall(name=name, call=run, idempotent=self.is_idempotent(tool_def))
            )
        except StepOutcomeUnknown:
            # Cut inside a tool that may not run twice: a human decides (retry or skip).
            raise ApprovalRequired({UNKNOWN_OUTCOME_MARK: True}) from None
        if raised:
            raise raised[0]
        if returned:
            return returned[0]
        ctx.usage.tool_calls += 1  # pydantic-ai counts a call only when it runs the tool
        return _replayed(stored)


def _outcome_of_result(result: Any) -> dict[str, Any]:
    if isinstance(result, _ToolReturn):
        return {"tool_return": _TOOL_RETURN.dump_python(result, mode="json")}
    return {"result": to_jsonable_python(result, fallback=str)}


def _outcome_of_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ToolRetryError):
        return {"retry": _text(exc.tool_retry.content)}
    if isinstance(exc, ModelRetry):
        return {"retry": exc.message}
    if isinstance(exc, ToolFailedError):
        return {"failed": _text(exc.tool_failed.content)}
    assert isinstance(exc, ToolFailed)
    return {"failed": exc.message}


def _outcome_of_deferral(exc: CallDeferred | ApprovalRequired) -> dict[str, Any]:
    meta = to_jsonable_python(exc.metadata, fallback=str)
    if isinstance(exc, CallDeferred):
        return {"deferred": exc.kind, "metadata": meta}
    return {"deferred": "approval", "metadata": meta}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return json.dumps(to_jsonable_python(content, fallback=str))


def _replayed(stored: Any) -> Any:
    """What a tool call that completed in the cut run returned (or raised), again."""
    if not isinstance(stored, dict):
        return stored
    if "result" in stored:
        return stored["result"]
    if "tool_return" in stored:
        return _TOOL_RETURN.validate_python(stored["tool_return"])
    if "retry" in stored:
        raise ModelRetry(str(stored["retry"]))
    if "failed" in stored:
        raise ToolFailed(str(stored["failed"]))
    deferred = stored.get("deferred")
    meta = stored.get("metadata")
    if deferred == "approval":
        raise ApprovalRequired(meta)
    if deferred in ("external", "question"):
        raise CallDeferred(meta, kind=deferred)
    return stored


class _JournaledModel(WrapperModel):
    """The model of a journaled run: each request (streamed or not) is a step."""

    def __init__(self, wrapped: Model, journal: TurnJournal) -> None:
        super().__init__(wrapped)
        self._journal = journal

    def _start_request_deadline(
        self, model_settings: ModelSettings | None, *, stream: bool
    ) -> RequestDeadline | None:
        # The step consumes the stream, under its first-event deadline; the run
        # around it gets a finished response and keeps only the request's timeout.
        return super()._start_request_deadline(model_settings, stream=False)

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        return await self._journal.model_step(
            partial(self.wrapped.request, messages, model_settings, model_request_parameters)
        )

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncGenerator[StreamedResponse]:
        handler = self._journal.stream_handler
        streamed: list[bool] = []

        async def stream() -> ModelResponse:
            async with open_durable_unit_stream(
                self.wrapped, messages, model_settings, model_request_parameters, run_context
            ) as response:
                if handler is not None and run_context is not None:
                    streamed.append(True)
                    await handler(run_context, response)
                async for _ in response:
                    pass
            return response.get()

        response = await self._journal.model_step(stream)
        # A response streamed inside its step was seen already; a replayed one is
        # played to the run's event handler as if it had just been streamed.
        yield CompletedStreamedResponse(
            response,
            model_request_parameters=model_request_parameters,
            replay_events=not streamed,
        )
