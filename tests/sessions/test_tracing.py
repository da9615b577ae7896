"""Traces: a span per turn, parented by the caller's span, with saves, router and factory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra's SDK is in the dev extra")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sessionvisor import SessionSupervisor, SingleRouter, Status
from sessionvisor.testing import ScriptedAgent, wait_for_status

EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_PROVIDER)  # once per process: OpenTelemetry refuses a second


@pytest.mark.anyio
async def test_a_turn_is_a_span_under_the_request_that_caused_it(anyio_backend: str) -> None:
    EXPORTER.clear()
    agent = ScriptedAgent()
    tracer = trace.get_tracer("the-app")
    async with SessionSupervisor(SingleRouter(lambda a, c: agent)) as sup:
        with tracer.start_as_current_span("POST /messages") as request:
            await sup.send("c-1", "hello")
        await wait_for_status(sup, "c-1", Status.IDLE)

    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    turn = spans["sessionvisor.turn"]
    assert turn.parent is not None
    assert turn.parent.span_id == request.get_span_context().span_id
    assert turn.context.trace_id == request.get_span_context().trace_id
    assert turn.attributes is not None
    assert turn.attributes["sessionvisor.conversation_id"] == "c-1"
    assert turn.attributes["sessionvisor.agent_id"] == "conversation-c-1"
    for name in ("sessionvisor.router", "sessionvisor.factory"):
        assert spans[name].parent is not None  # started inside the request's trace
        assert spans[name].context.trace_id == turn.context.trace_id
    saves = [s for s in EXPORTER.get_finished_spans() if s.name == "sessionvisor.store.save"]
    lifecycles = [s.attributes["sessionvisor.lifecycle"] for s in saves if s.attributes]
    assert "turn_start" in lifecycles and "completion" in lifecycles
    completion = next(
        s for s in saves if s.attributes and s.attributes["sessionvisor.lifecycle"] == "completion"
    )
    assert completion.parent is not None and completion.parent.span_id == turn.context.span_id


def test_without_opentelemetry_nothing_is_traced_and_everything_works() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the package were not installed
        import anyio
        from sessionvisor import SessionSupervisor, SingleRouter, Status, _telemetry
        from sessionvisor.testing import ScriptedAgent, wait_for_status

        async def main():
            async with SessionSupervisor(SingleRouter(lambda a, c: ScriptedAgent())) as sup:
                await sup.send("c-1", "hello")
                await wait_for_status(sup, "c-1", Status.IDLE)
                state = await sup.load("c-1")
                print(_telemetry.capture_context(), [m.text() for m in state.messages])

        anyio.run(main)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "None ['hello', 'echo: hello']" in done.stdout.splitlines()
