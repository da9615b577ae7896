"""Who watches a conversation: subscriptions to its events, running or not,
and the viewers that keep it from stopping for inactivity."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ._events import Status

if TYPE_CHECKING:
    from .._options import SupervisorOpts
    from ..state import StateStore
    from ._actor import Actor
    from ._bus import Subscription, Topic
    from ._seams import Bus, Registry

__all__: list[str] = ["open_subscription", "viewer_of"]


@asynccontextmanager
async def open_subscription(
    conversation_id: str,
    *,
    after: int | None,
    owner: str | None,
    live: Callable[[], Actor | None],
    check_stored: Callable[[str | None], None],
    store: StateStore,
    registry: Registry,
    bus: Bus,
    agent_id: str,
    defaults: SupervisorOpts,
) -> AsyncIterator[Subscription]:
    """Subscribe to ``conversation_id`` (see ``SessionSupervisor.subscribe``).

    ``live`` returns the live actor after checking the scope may see it;
    ``check_stored`` checks the stored owner the same way.
    """
    cid = conversation_id
    actor = live()
    topic: Topic
    status, interrupt = Status.NOT_RUNNING, None
    if actor is None:
        stored = await store.load(cid)
        if stored is not None:
            check_stored(stored.owner)
        # Served by another node (cluster mode): its stream knows the status.
        elsewhere = await bus.status_elsewhere(cid)
        if elsewhere is not None:
            status, interrupt = elsewhere
        actor = live()  # it may have started while we read the store
        if actor is None:
            topic = bus.topic(
                cid,
                agent_id,
                stored.last_seq if stored is not None else 0,
                defaults.replay_buffer,
            )
    if actor is not None:
        topic = actor.topic
        status, interrupt = actor.status, actor.state.interrupt
    sub = bus.subscribe(
        topic,
        owner=owner,
        capacity=(actor.opts if actor else defaults).subscriber_buffer,
        after=after,
        status=status,
        interrupt=interrupt,
    )
    try:
        yield sub
    finally:
        bus.unsubscribe(sub)
        bus.release(cid, registry.holds)
        still = registry.live(cid)
        if still is not None and not bus.subscriber_count(cid):
            still.arm()  # nobody listens any more: it may hibernate


@asynccontextmanager
async def viewer_of(conversation_id: str, registry: Registry) -> AsyncIterator[None]:
    """Count one viewer of the conversation while the block runs (see
    ``SessionSupervisor.viewing``); the last one to leave tells the session."""
    registry.add_viewer(conversation_id)
    try:
        yield
    finally:
        if not registry.remove_viewer(conversation_id):
            actor = registry.live(conversation_id)
            if actor is not None:
                actor.viewers_left()
