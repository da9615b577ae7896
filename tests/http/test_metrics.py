"""``GET /metrics`` on a real server: the figures move as a scripted conversation runs."""

from __future__ import annotations

import re

import anyio
import httpx
import pytest

pytest.importorskip("prometheus_client", reason="the metrics extra is in the dev extra")

from prometheus_client.parser import text_string_to_metric_families

from sessionvisor import SessionSupervisor, SingleRouter, Status
from sessionvisor.http import create_app
from sessionvisor.testing import ScriptedAgent, wait_for_status

from ._support import serve

ALICE = {"X-User": "alice"}


def _samples(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn serves on asyncio
async def test_a_scrape_follows_the_conversation(anyio_backend: str) -> None:
    agent = ScriptedAgent()
    sup = SessionSupervisor(SingleRouter(lambda a, c: agent))
    app = create_app(sup)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        first = _samples((await client.get("/metrics")).text)
        assert first["sessionvisor_sessions_live"] == 0
        assert first["sessionvisor_turns_started_total"] == 0

        await client.post("/conversations/c-1/messages", json={"content": "hi"}, headers=ALICE)
        await wait_for_status(sup, "c-1", Status.IDLE, scope="alice")
        async with client.stream("GET", "/conversations/c-1/events", headers=ALICE) as stream:
            async for _line in stream.aiter_lines():
                break  # connected: the snapshot arrived
            during = _samples((await client.get("/metrics")).text)
        assert during["sessionvisor_http_streams_open{protocol=sse}"] == 1
        assert during["sessionvisor_sessions_live"] == 1
        assert during["sessionvisor_turns_started_total"] == 1
        assert during["sessionvisor_turns_ended_total{outcome=completed}"] == 1
        assert during["sessionvisor_store_save_seconds_count"] >= 2
        assert during["sessionvisor_events_published_total"] >= 3

        response = await client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        # Names follow Prometheus' conventions, and no label names a conversation.
        assert "c-1" not in response.text
        names = {f.name for f in text_string_to_metric_families(response.text)}
        assert all(re.fullmatch(r"sessionvisor_[a-z_]+", name) for name in names)
        with anyio.fail_after(5):
            assert await sup.stop("c-1", scope="alice") == "stopped"
        after = _samples((await client.get("/metrics")).text)
        assert after["sessionvisor_sessions_stopped_total{reason=stopped}"] == 1


def test_the_flag_turns_the_route_off() -> None:
    sup = SessionSupervisor(SingleRouter(lambda a, c: ScriptedAgent()))
    paths = {getattr(r, "path", None) for r in create_app(sup, metrics=False).routes}
    assert "/metrics" not in paths
    assert "/metrics" in {getattr(r, "path", None) for r in create_app(sup).routes}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn serves on asyncio
async def test_a_save_that_keeps_failing_shows_in_the_background_failures(
    anyio_backend: str,
) -> None:
    """The figure an operator alerts on when the runtime's own retries keep failing."""
    from sessionvisor import MemoryStore
    from sessionvisor.testing import FlakyStore, wait_until

    store = FlakyStore(MemoryStore())
    sup = SessionSupervisor(
        SingleRouter(lambda a, c: ScriptedAgent()),
        store=store,
        supervisor_opts={"save_retry_backoff": 0.01},
    )
    app = create_app(sup)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        await client.post("/conversations/c-1/messages", json={"content": "hi"}, headers=ALICE)
        await wait_for_status(sup, "c-1", Status.IDLE, scope="alice")
        store.fail_saves = True
        refused = await client.post(
            "/conversations/c-1/messages", json={"content": "again"}, headers=ALICE
        )
        assert refused.status_code == 503
        assert refused.json()["error"] == "StoreUnavailable"
        assert refused.headers["retry-after"]

        async def counted() -> bool:
            samples = _samples((await client.get("/metrics")).text)
            return samples.get("sessionvisor_background_failures_total{step=save_retry}", 0) >= 2

        await wait_until(counted)
        store.heal()
