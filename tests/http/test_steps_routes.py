"""``GET /conversations/{cid}/usage`` and ``.../steps``, the step and token figures of
``GET /metrics``, and the demo agent's dangerous tool as a durable step."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import pytest

from sessionvisor import Done, FunctionAgent, MemoryStore, Status, Turn, Usage
from sessionvisor.agents._agent import StepCall
from sessionvisor.http import _demo as demo
from sessionvisor.http import header_or_query_scope
from sessionvisor.http._demo import DANGEROUS_TOOL, DemoAgent, demo_router
from sessionvisor.testing import wait_for_status

from ._support import ALICE, BOB, WAIT, Env, open_app, scripted_router

pytestmark = pytest.mark.anyio

#: An id that must never show in /metrics.
CID = "c-steps-4f9a1e"
#: A step result over the 4 KiB the steps list shows.
BIG = "x" * 5000


def usage_of(result: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=result["in"], output_tokens=result["out"], requests=1, cost=result["cost"]
    )


async def model_call(n: int) -> dict[str, Any]:
    return {"text": f"reply {n}", "in": 10 * n, "out": n, "cost": 0.25}


def lookup(order: str) -> str:  # a plain function: runs on a worker thread
    return f"order {order} is on its way"


async def agent(turn: Turn) -> Any:
    """Two model-response steps (with usage), a plain step and one with a large result."""
    for n in (1, 2):
        await turn._durable_step(
            StepCall(
                name=f"model-{n}", call=partial(model_call, n), idempotent=True, usage=usage_of
            )
        )
    found = await turn.step("lookup", lookup, "o-7")
    await turn.step("big", lambda: BIG, idempotent=True)
    return Done(turn.state, reply=found)


async def answered(env: Env, cid: str = CID, text: str = "where is my order?") -> None:
    assert (await env.send(cid, text)).status_code == 202
    await wait_for_status(env.sup, cid, Status.IDLE, scope="alice", timeout=WAIT)


async def test_usage_and_steps_of_a_conversation_over_http() -> None:
    async with open_app(scripted_router(FunctionAgent(agent))) as env:
        await answered(env)
        usage = await env.client.get(f"/conversations/{CID}/usage", headers=ALICE)
        assert usage.status_code == 200
        assert usage.json() == {"input_tokens": 30, "output_tokens": 3, "requests": 2, "cost": 0.5}

        answer = await env.client.get(f"/conversations/{CID}/steps", headers=ALICE)
        assert answer.status_code == 200
        steps = answer.json()["steps"]
        assert [s["name"] for s in steps] == ["model-1", "model-2", "lookup", "big"]
        assert [s["index"] for s in steps] == [0, 1, 2, 3]
        assert len({s["turn"] for s in steps}) == 1
        for step in steps:
            assert set(step) == {
                "turn",
                "index",
                "name",
                "status",
                "idempotent",
                "started_at",
                "duration",
                "result",
                "omitted",
                "usage",
                "error",
            }
            assert step["status"] == "completed" and step["error"] is None
            assert isinstance(step["started_at"], str) and step["duration"] >= 0
        model_1, model_2, found, big = steps
        assert model_1["usage"] == {
            "input_tokens": 10,
            "output_tokens": 1,
            "requests": 1,
            "cost": 0.25,
        }
        assert model_2["result"] == {"text": "reply 2", "in": 20, "out": 2, "cost": 0.25}
        assert model_1["idempotent"] is True and found["idempotent"] is False
        assert found["result"] == "order o-7 is on its way" and found["usage"] is None
        assert (big["result"], big["omitted"]) == (None, True)

        # Stored, not only live: the same answers after the session stopped.
        assert (await env.client.delete(f"/conversations/{CID}", headers=ALICE)).status_code == 200
        assert not await env.sup.running(CID, scope="alice")
        again = await env.client.get(f"/conversations/{CID}/steps", headers=ALICE)
        assert again.json()["steps"] == steps
        stored = await env.client.get(f"/conversations/{CID}/usage", headers=ALICE)
        assert stored.json() == usage.json()


async def test_a_conversation_without_steps_has_zero_usage_and_no_steps() -> None:
    async with open_app() as env:
        await answered(env, "c-plain", "hello")
        usage = await env.client.get("/conversations/c-plain/usage", headers=ALICE)
        assert usage.json() == {"input_tokens": 0, "output_tokens": 0, "requests": 0, "cost": None}
        steps = await env.client.get("/conversations/c-plain/steps", headers=ALICE)
        assert steps.json() == {"steps": []}


@pytest.mark.parametrize("route", ["usage", "steps"])
async def test_another_owners_conversation_is_answered_as_a_missing_one(route: str) -> None:
    async with open_app(scripted_router(FunctionAgent(agent))) as env:
        await answered(env)
        theirs = await env.client.get(f"/conversations/{CID}/{route}", headers=BOB)
        missing = await env.client.get(f"/conversations/c-nobody/{route}", headers=BOB)
        assert theirs.status_code == missing.status_code == 404
        # The same body but for the id the caller named.
        assert theirs.json() == {
            "error": "NotFound",
            "detail": f"conversation {CID!r} not found",
        }
        assert missing.json() == {
            "error": "NotFound",
            "detail": "conversation 'c-nobody' not found",
        }
        # Stopped (only stored): still refused the same way.
        await env.client.delete(f"/conversations/{CID}", headers=ALICE)
        stored = await env.client.get(f"/conversations/{CID}/{route}", headers=BOB)
        assert (stored.status_code, stored.json()) == (404, theirs.json())
        bad = await env.client.get(f"/conversations/{'x' * 300}/{route}", headers=ALICE)
        assert bad.status_code == 400 and bad.json()["error"] == "ValidationError"


async def test_metrics_count_steps_and_tokens_by_route_never_by_conversation() -> None:
    pytest.importorskip("prometheus_client", reason="the metrics extra is in the dev extra")
    from prometheus_client.parser import text_string_to_metric_families

    async with open_app(scripted_router(FunctionAgent(agent))) as env:
        await answered(env)
        text = (await env.client.get("/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("sessionvisor_steps_run_total", ())] == 4
    assert samples[("sessionvisor_steps_replayed_total", ())] == 0
    tokens = "sessionvisor_model_tokens_total"
    assert samples[(tokens, (("direction", "input"), ("route", "default")))] == 30
    assert samples[(tokens, (("direction", "output"), ("route", "default")))] == 3
    assert samples[("sessionvisor_model_requests_total", (("route", "default"),))] == 2
    assert 'sessionvisor_model_tokens_total{direction="input",route="default"} 30.0' in text
    assert CID not in text
    labels = {name for (metric, found) in samples for name, _ in found if "step" in metric}
    labels |= {name for (metric, found) in samples for name, _ in found if "model_" in metric}
    assert labels <= {"route", "direction"}


# -- the demo agent's tool -----------------------------------------------------------------


async def _approve(env: Env, cid: str) -> None:
    await env.send(cid, "please delete my files")
    await wait_for_status(env.sup, cid, Status.INTERRUPTED, scope="alice", timeout=WAIT)
    interrupt = (await env.client.get(f"/conversations/{cid}", headers=ALICE)).json()["interrupt"]
    response = await env.client.post(
        f"/conversations/{cid}/resume",
        json={"answer": {"approved": True}, "interrupt_id": interrupt["id"]},
        headers=ALICE,
    )
    assert response.status_code == 202


async def test_the_demo_tool_is_a_durable_step_listed_by_get_steps() -> None:
    router = demo_router(word_delay=0.001)
    async with open_app(router, scope_from_request=header_or_query_scope) as env:
        await _approve(env, "c-1")
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice", timeout=WAIT)
        steps = (await env.client.get("/conversations/c-1/steps", headers=ALICE)).json()["steps"]
        assert len(steps) == 1
        (step,) = steps
        assert (step["name"], step["status"], step["idempotent"]) == (
            "dangerous-tool",
            "completed",
            False,
        )
        assert DANGEROUS_TOOL in step["result"] and step["usage"] is None
        history = (await env.client.get("/conversations/c-1", headers=ALICE)).json()["messages"]
        tools = [m for m in history if m["role"] == "tool"]
        assert [m["content"] for m in tools] == [step["result"]]


class HeldDemo(DemoAgent):
    """The demo agent, held after its tool ran (while it says so) until ``release``."""

    def __init__(self) -> None:
        super().__init__(word_delay=0.001)
        self.held = anyio.Event()
        self.release = anyio.Event()

    async def _say(self, turn: Turn, text: str) -> None:
        if text.startswith("Approved") and not self.release.is_set():
            self.held.set()
            await self.release.wait()
        await super()._say(turn, text)


async def test_a_demo_turn_that_survives_a_crash_does_not_run_its_tool_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []
    tool = demo._dangerous_tool

    async def counted(path: str) -> str:
        ran.append(path)
        return await tool(path)

    monkeypatch.setattr(demo, "_dangerous_tool", counted)
    held = HeldDemo()
    router = scripted_router(held)
    store = MemoryStore()
    # The held turn is cut at once when the first supervisor drains (a crash, to the store).
    async with open_app(router, store=store, supervisor_opts={"shutdown_timeout": 0}) as env:
        await _approve(env, "c-1")
        with anyio.fail_after(WAIT):
            await held.held.wait()
        left = await store.load("c-1")
        assert left is not None
    assert ran == ["/tmp/sessionvisor-demo"]

    # A new process on what the store held at the crash answers the approval again.
    held.release.set()
    fresh = MemoryStore()
    await fresh.save("c-1", left, expected_version=None, lifecycle="turn_start")
    async with open_app(router, store=fresh) as env:
        await wait_for_status(env.sup, "c-1", Status.IDLE, scope="alice", timeout=WAIT)
        metrics = env.sup.metrics()
        steps = (await env.client.get("/conversations/c-1/steps", headers=ALICE)).json()["steps"]
        history = (await env.client.get("/conversations/c-1", headers=ALICE)).json()["messages"]
    assert ran == ["/tmp/sessionvisor-demo"]  # replayed, not run again
    assert (metrics.steps_run, metrics.steps_replayed) == (0, 1)
    assert [(s["name"], s["status"]) for s in steps] == [("dangerous-tool", "completed")]
    assert [m["role"] for m in history].count("tool") == 1
    assert (
        history[-1]["content"] == f"Approved: I ran {DANGEROUS_TOOL}. Nothing was really deleted."
    )
