"""What the runtime counts for operators, without depending on a metrics library.

Counters and latency histograms live here as plain numbers; the supervisor
reads the gauges (live, parked, running sessions, queued messages) from its
registry when asked. ``SessionSupervisor.metrics()`` returns a snapshot, and
``sessionvisor.http`` exposes it to Prometheus when that extra is installed.
Labels never carry conversation ids: a label per conversation would make the
series grow without bound.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import TYPE_CHECKING

import attrs

from ._events import Status

if TYPE_CHECKING:
    from ..state import Usage
    from ._actor import Actor

__all__: list[str] = ["HistogramSnapshot", "Metrics", "RuntimeStats", "collect_metrics"]

# Seconds: from a memory store's save (~10 µs) to a slow disk or network (10 s).
SECONDS_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@attrs.frozen
class HistogramSnapshot:
    """Cumulative counts per upper bound (``+Inf`` last), the sum and the count."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


class Histogram:
    __slots__ = ("_bounds", "_counts", "count", "sum")

    def __init__(self, bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> HistogramSnapshot:
        total = 0
        cumulative: list[tuple[float, int]] = []
        for bound, count in zip((*self._bounds, float("inf")), self._counts):
            total += count
            cumulative.append((bound, total))
        return HistogramSnapshot(tuple(cumulative), self.sum, self.count)


class RuntimeStats:
    """The supervisor's counters, bumped by the runtime as things happen."""

    def __init__(self) -> None:
        self.sessions_started = 0
        self.sessions_stopped: Counter[str] = Counter()  # by stop reason
        self.turns_started = 0
        self.turns_ended: Counter[str] = Counter()  # completed, interrupted, paused, ...
        self.restarts = 0
        self.give_ups = 0
        self.events_published = 0
        self.subscribers_dropped = 0
        self.events_dropped = 0
        self.save_seconds = Histogram()
        self.turn_seconds = Histogram()
        # Steps the runtime takes by itself that failed and were put off (a fold, a
        # save retry, a timer that asked to run again at once), by step.
        self.background_failures: Counter[str] = Counter()
        self.steps_run = 0  # durable steps whose function ran and whose result was stored
        self.steps_replayed = 0  # steps a rerun answered from the store
        # Model usage of stored steps, by route key ("" for none): never by conversation.
        self.tokens: Counter[tuple[str, str]] = Counter()  # (route key, input/output)
        self.model_requests: Counter[str] = Counter()

    def count_usage(self, route_key: str | None, usage: Usage) -> None:
        key = route_key or ""
        self.tokens[(key, "input")] += usage.input_tokens
        self.tokens[(key, "output")] += usage.output_tokens
        self.model_requests[key] += usage.requests


@attrs.frozen(kw_only=True)
class Metrics:
    """A snapshot of one supervisor's figures (see ``SessionSupervisor.metrics``).

    Attributes:
        live_sessions: sessions with an actor (running, idle, interrupted, ...).
        parked_sessions: live sessions whose State is folded while idle.
        running_sessions: live sessions with a turn under way.
        queued_messages: user messages waiting for a next turn (unfolded sessions).
        sessions_started: actors started since the supervisor was entered.
        sessions_stopped: actors stopped, by reason (``inactivity``, ``drain``, ...).
        turns_started: turns begun.
        turns_ended: turns ended, by outcome (``completed``, ``interrupted``,
            ``paused``, ``failed``, ``cancelled``, ``handed_back``).
        restarts: restarts made by policy.
        give_ups: sessions that gave up after repeated crashes.
        events_published: events issued to the conversations' topics.
        subscribers_dropped: subscribers cut off for falling too far behind.
        events_dropped: events those cut-off subscribers did not receive.
        save_seconds: how long the store took per save.
        turn_seconds: how long turns took, start to saved outcome.
        background_failures: steps the runtime takes by itself that failed and
            were put off with a backoff, by step (``fold``, ``save_retry``,
            ``timer``, ``wake``).
        steps_run: durable steps whose function ran and whose result was stored.
        steps_replayed: steps a rerun of a cut turn answered from the store.
        tokens: model tokens of stored steps by ``(route key, "input"|"output")``
            (route key ``""`` for a conversation without one); a replayed step
            is not counted again.
        model_requests: model requests of stored steps, by route key.
        cluster: the cluster node's figures (cluster mode), else None.
    """

    live_sessions: int
    parked_sessions: int
    running_sessions: int
    queued_messages: int
    sessions_started: int
    sessions_stopped: dict[str, int]
    turns_started: int
    turns_ended: dict[str, int]
    restarts: int
    give_ups: int
    events_published: int
    subscribers_dropped: int
    events_dropped: int
    save_seconds: HistogramSnapshot
    turn_seconds: HistogramSnapshot
    background_failures: dict[str, int] = attrs.field(factory=dict)
    steps_run: int = 0
    steps_replayed: int = 0
    tokens: dict[tuple[str, str], int] = attrs.field(factory=dict)
    model_requests: dict[str, int] = attrs.field(factory=dict)
    cluster: ClusterMetrics | None = None


@attrs.frozen(kw_only=True)
class ClusterMetrics:
    """One cluster node's figures (see ``Metrics.cluster``).

    Attributes:
        leases_held: conversations this node holds the lease of now.
        takeovers: expired leases its sweeper claimed (another node died or left).
        leases_lost: leases it could not renew in time or found taken; each
            session stopped as ``superseded``.
        commands_posted: commands it stored in the inbox for another node.
        commands_applied: inbox commands it applied as the owner.
        events_not_forwarded: events that never reached Redis (readers on other
            nodes were told of the gap).
    """

    leases_held: int
    takeovers: int
    leases_lost: int
    commands_posted: int
    commands_applied: int
    events_not_forwarded: int


def collect_metrics(actors: list[Actor], stats: RuntimeStats) -> Metrics:
    """Count the gauges over the registered actors and snapshot the counters."""
    live = parked = running = queued = 0
    for actor in actors:
        if actor.closed:
            continue
        live += 1
        if actor.folded.folded:
            parked += 1  # its queue is not unfolded to be counted
        else:
            queued += len(actor.state.queued)
        if actor.status is Status.RUNNING:
            running += 1
    return Metrics(
        live_sessions=live,
        parked_sessions=parked,
        running_sessions=running,
        queued_messages=queued,
        sessions_started=stats.sessions_started,
        sessions_stopped=dict(stats.sessions_stopped),
        turns_started=stats.turns_started,
        turns_ended=dict(stats.turns_ended),
        restarts=stats.restarts,
        give_ups=stats.give_ups,
        events_published=stats.events_published,
        subscribers_dropped=stats.subscribers_dropped,
        events_dropped=stats.events_dropped,
        save_seconds=stats.save_seconds.snapshot(),
        turn_seconds=stats.turn_seconds.snapshot(),
        background_failures=dict(stats.background_failures),
        steps_run=stats.steps_run,
        steps_replayed=stats.steps_replayed,
        tokens=dict(stats.tokens),
        model_requests=dict(stats.model_requests),
    )
