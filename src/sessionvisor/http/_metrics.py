"""``GET /metrics``: the supervisor's figures in Prometheus' text format (extra ``metrics``).

The figures are read when Prometheus scrapes (``SessionSupervisor.metrics()``
plus the app's open streams), through a collector on a registry of the app's
own, so two apps in one process never clash and nothing is kept twice. No
label carries a conversation id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ..sessions import ClusterMetrics, HistogramSnapshot, Metrics, SessionSupervisor
from ._sse import StreamRegistry

__all__ = ["metrics_endpoint"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _SupervisorCollector(Collector):
    def __init__(self, supervisor: SessionSupervisor, streams: StreamRegistry) -> None:
        self._sup = supervisor
        self._streams = streams

    def collect(self) -> Iterator[Metric]:
        if self._sup.phase != "open":
            return
        m = self._sup.metrics()
        yield _gauge("sessions_live", "Sessions with an actor (any status).", m.live_sessions)
        yield _gauge(
            "sessions_parked", "Live sessions whose State is folded while idle.", m.parked_sessions
        )
        yield _gauge("sessions_running", "Live sessions with a turn under way.", m.running_sessions)
        yield _gauge("queued_messages", "User messages waiting for a next turn.", m.queued_messages)
        yield _counter("sessions_started", "Sessions started (actors made).", m.sessions_started)
        yield _by_label(
            "sessions_stopped", "Sessions stopped, by reason.", "reason", m.sessions_stopped
        )
        yield _counter("turns_started", "Turns begun.", m.turns_started)
        yield _by_label(
            "turns_ended",
            "Turns ended, by outcome (completed, interrupted, paused, failed, cancelled, "
            "handed_back).",
            "outcome",
            m.turns_ended,
        )
        yield _counter("restarts", "Restarts made by the restart policy.", m.restarts)
        yield _counter("give_ups", "Sessions that gave up after repeated crashes.", m.give_ups)
        yield _counter("events_published", "Events issued to conversations.", m.events_published)
        yield _counter(
            "subscribers_dropped",
            "Subscribers cut off for falling too far behind.",
            m.subscribers_dropped,
        )
        yield _counter(
            "events_dropped",
            "Events that did not fit a slow subscriber's buffer.",
            m.events_dropped,
        )
        yield _by_label(
            "background_failures",
            "Steps the runtime takes by itself (fold, save_retry, timer, wake) that failed "
            "and were put off with a backoff, by step.",
            "step",
            m.background_failures,
        )
        yield from _step_metrics(m)
        yield _histogram("store_save_seconds", "Time the store took per save.", m.save_seconds)
        yield _histogram(
            "turn_seconds", "Time a turn took, start to saved outcome.", m.turn_seconds
        )
        if m.cluster is not None:
            yield from _cluster_metrics(m.cluster)
        streams = GaugeMetricFamily(
            "sessionvisor_http_streams_open",
            "Event streams open to clients, by protocol (sse, ai-sdk, ag-ui).",
            labels=["protocol"],
        )
        by_protocol = {"sse": 0, "ai-sdk": 0, "ag-ui": 0, **self._streams.open_by_protocol()}
        for protocol, count in sorted(by_protocol.items()):
            streams.add_metric([protocol], count)
        yield streams
        batches = getattr(self._sup.store, "batch_sizes", None)
        if isinstance(batches, HistogramSnapshot):
            yield _histogram_of(
                "sessionvisor_store_batch_size", "Saves committed per store transaction.", batches
            )


def _step_metrics(m: Metrics) -> Iterator[Metric]:
    """Durable steps and the model usage they stored: by route key, never by conversation."""
    yield _counter(
        "steps_run", "Durable steps whose function ran and whose result was stored.", m.steps_run
    )
    yield _counter(
        "steps_replayed",
        "Durable steps a rerun of a cut turn answered from the store (not run again).",
        m.steps_replayed,
    )
    tokens = CounterMetricFamily(
        "sessionvisor_model_tokens",
        "Model tokens of stored model-response steps, by route key and direction "
        "(input, output); a replayed step is not counted again.",
        labels=["route", "direction"],
    )
    for (route, direction), count in sorted(m.tokens.items()):
        tokens.add_metric([route, direction], count)
    yield tokens
    yield _by_label(
        "model_requests",
        "Model requests of stored model-response steps, by route key.",
        "route",
        m.model_requests,
    )


def _by_label(name: str, doc: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"sessionvisor_{name}", doc, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"sessionvisor_{name}", doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"sessionvisor_{name}", doc, value=value)


def _histogram(name: str, doc: str, snap: HistogramSnapshot) -> HistogramMetricFamily:
    return _histogram_of(f"sessionvisor_{name}", doc, snap)


def _histogram_of(full: str, doc: str, snap: HistogramSnapshot) -> HistogramMetricFamily:
    buckets = [(_bound(bound), count) for bound, count in snap.buckets]
    return HistogramMetricFamily(full, doc, buckets=buckets, sum_value=snap.sum)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def metrics_endpoint(supervisor: SessionSupervisor, streams: StreamRegistry) -> Any:
    """Return the ``GET /metrics`` endpoint for one app."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SupervisorCollector(supervisor, streams))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    return metrics


def _cluster_metrics(c: ClusterMetrics) -> Iterator[Metric]:
    yield _gauge("cluster_leases_held", "Conversations whose lease this node holds.", c.leases_held)
    for name, doc, value in (
        ("cluster_takeovers", "Expired leases this node's sweeper claimed.", c.takeovers),
        (
            "cluster_leases_lost",
            "Leases not renewed in time or found taken (sessions stopped as superseded).",
            c.leases_lost,
        ),
        ("cluster_commands_posted", "Commands stored for another node.", c.commands_posted),
        ("cluster_commands_applied", "Inbox commands applied here.", c.commands_applied),
        (
            "cluster_events_not_forwarded",
            "Events that never reached Redis (readers elsewhere saw a gap).",
            c.events_not_forwarded,
        ),
    ):
        yield _counter(name, doc, value)
