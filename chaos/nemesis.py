"""The nemesis: faults injected at random moments, chosen by the seed.

Single mode (one node) and cluster mode (several) share these faults:

- ``kill``: ``kill -9`` of a node at a random moment, restart after a random pause;
- ``kill-after-resume``: ``kill -9`` shortly after the next acknowledged resume,
  so it lands in the turn that answer started;
- ``kill-after-send``: ``kill -9`` shortly after the next acknowledged send
  (mid-turn, or between the save and the turn);
- ``kill-in-recovery``: ``kill -9``, restart, and ``kill -9`` again while the
  new process recovers, then restart;
- ``pause``: SIGSTOP for 1-8 s (past the client's timeout, and in a cluster
  past the lease), then SIGCONT: the client's retries with the same message id
  queue up behind the frozen process and arrive together with the original;
- ``redis`` (cluster mode only): ``kill -9`` of the cluster's Redis, restarted
  empty on the same port after 0-3 s (Redis is only an accelerator: no
  acknowledged message may depend on it);
- ``pg-blackhole`` (cluster mode on PostgreSQL): one node's relay to the
  database stops passing bytes in both directions, closing nothing, for 0.5 s
  to 2.5 lease TTLs (so often past the lease: the node must stop serving its
  conversations by its own deadline while the others take them over), then
  forwards again and the held bytes arrive late;
- ``pg-reset`` (cluster mode on PostgreSQL): every connection of one node's
  relay is cut (RST), either at once or after a black hole of 0.5 s to 2 lease
  TTLs.

Every fault is recorded as a ``process: "nemesis"`` invoke/info pair (``f`` is
``kill``, ``pause`` or ``partition``); a node found dead that the nemesis did
not kill is recorded as ``died`` (with its exit code) and restarted.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

from .model import Event, History
from .procs import Node, Redis

__all__ = ["CLUSTER_FAULTS", "FAULTS", "RELAY_FAULTS", "Nemesis"]

FAULTS = {
    "kill": 3,
    "kill-after-resume": 3,
    "kill-after-send": 3,
    "kill-in-recovery": 1,
    "pause": 2,
}
#: Faults only a cluster has.
CLUSTER_FAULTS = {"redis": 2}
#: Faults only a cluster on PostgreSQL has (each node reaches it through its own relay).
RELAY_FAULTS = {"pg-blackhole": 2, "pg-reset": 1}


class Nemesis:
    def __init__(
        self,
        history: History,
        nodes: Sequence[Node],
        seed: int,
        *,
        interval: tuple[float, float] = (1.0, 6.0),
        faults: dict[str, int] | None = None,
        redis: Redis | None = None,
        lease_ttl: float = 3.0,
    ) -> None:
        self.history = history
        self.redis = redis
        self.lease_ttl = lease_ttl
        self.nodes = list(nodes)
        self.rng = random.Random(f"{seed}:nemesis")
        self.interval = interval
        self.faults = faults or dict(FAULTS)
        self.count: dict[str, int] = {}
        self._acked: dict[str, asyncio.Event] = {"resume": asyncio.Event(), "send": asyncio.Event()}
        history.listeners.append(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.get("type") == "ok" and event.get("process", "").startswith("w"):
            flag = self._acked.get(str(event.get("f")))
            if flag is not None:
                flag.set()

    def _record(self, type_: str, f: str, value: dict[str, Any]) -> None:
        self.history.record(process="nemesis", type=type_, f=f, value=value)

    async def _restart(self, node: Node) -> None:
        await asyncio.to_thread(node.start)
        ready = await asyncio.to_thread(node.wait_ready, 60.0)
        self._record("info", "start", {"node": node.name, "ready": ready, "pid": _pid(node)})
        if not ready:
            self._record("info", "start-failed", {"node": node.name, "exit": node.exit_code()})

    async def _kill(self, node: Node, fault: str, **extra: Any) -> None:
        self._record("invoke", "kill", {"node": node.name, "fault": fault, **extra})
        await asyncio.to_thread(node.kill)
        self._record("info", "kill", {"node": node.name, "fault": fault, "pid": _pid(node)})

    async def check_alive(self) -> None:
        """Restart a node that died without the nemesis (recorded as ``died``)."""
        for node in self.nodes:
            if node.proc is not None and not node.alive():
                self._record("info", "died", {"node": node.name, "exit": node.exit_code()})
                await self._restart(node)

    async def fault(self) -> None:
        fault = self.rng.choices(list(self.faults), list(self.faults.values()))[0]
        node = self.rng.choice(self.nodes)
        delay = round(self.rng.uniform(0.0, 0.4), 3)
        down = round(self.rng.uniform(0.0, 2.0), 3)
        if fault in ("kill-after-resume", "kill-after-send"):
            flag = self._acked[fault.rsplit("-", 1)[1]]
            flag.clear()
            try:
                await asyncio.wait_for(flag.wait(), 15.0)
            except TimeoutError:
                fault = "kill"
            if fault == "kill-after-send":
                delay = round(self.rng.uniform(0.0, 1.5), 3)
            await asyncio.sleep(delay)
        if fault == "redis" and self.redis is not None:
            self._record("invoke", "kill", {"node": "redis", "fault": fault, "down": down})
            await asyncio.to_thread(self.redis.kill)
            self._record("info", "kill", {"node": "redis", "fault": fault})
            self.count[fault] = self.count.get(fault, 0) + 1
            await asyncio.sleep(down * 1.5)
            await asyncio.to_thread(self.redis.start)
            self._record("info", "start", {"node": "redis"})
            return
        if fault in RELAY_FAULTS:
            relayed = [n for n in self.nodes if n.relay is not None]
            if relayed:
                await self._partition(self.rng.choice(relayed), fault)
                return
            fault = "kill"
        if fault == "pause":
            frozen = round(self.rng.uniform(1.0, 8.0), 3)
            self._record("invoke", "pause", {"node": node.name, "fault": fault, "for": frozen})
            await asyncio.to_thread(node.pause)
            self.count[fault] = self.count.get(fault, 0) + 1
            await asyncio.sleep(frozen)
            await asyncio.to_thread(node.unpause)
            self._record("info", "pause", {"node": node.name, "fault": fault, "for": frozen})
            return
        await self._kill(node, fault, delay=delay, down=down)
        self.count[fault] = self.count.get(fault, 0) + 1
        await asyncio.sleep(down)
        await self._restart(node)
        if fault == "kill-in-recovery":
            await asyncio.sleep(self.rng.uniform(0.0, 0.5))
            await self._kill(node, "kill-in-recovery (again)")
            await asyncio.sleep(self.rng.uniform(0.0, 1.0))
            await self._restart(node)

    async def _partition(self, node: Node, fault: str) -> None:
        """Black-hole or reset the node's PostgreSQL connections (its relay), then restore."""
        relay = node.relay
        assert relay is not None
        mode = "blackhole"
        hold = round(self.rng.uniform(0.5, 2.5 * self.lease_ttl), 3)
        if fault == "pg-reset":
            mode = self.rng.choice(["reset", "blackhole-reset"])
            hold = 0.0 if mode == "reset" else round(self.rng.uniform(0.5, 2 * self.lease_ttl), 3)
        value = {"node": node.name, "fault": fault, "mode": mode, "for": hold}
        self._record("invoke", "partition", value)
        self.count[fault] = self.count.get(fault, 0) + 1
        if hold:
            await asyncio.to_thread(relay.blackhole)
            await asyncio.sleep(hold)
        if fault == "pg-reset":
            await asyncio.to_thread(relay.reset)
        await asyncio.to_thread(relay.forward)
        self._record("info", "partition", {**value, "open": relay.connections})

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.rng.uniform(*self.interval))
            except TimeoutError:
                pass
            else:
                break
            await self.check_alive()
            await self.fault()
        await self.check_alive()


def _pid(node: Node) -> int | None:
    return node.proc.pid if node.proc is not None else None
