"""``ClusterQuotas``: the owners' quotas counted cluster-wide, in Redis.

The rules are the one-process ones (``sessionvisor.sessions._quotas``); here
the counts live in Redis so that they hold across the nodes:

- **Running turns**: per owner a sorted set of the slots taken (member
  ``<node>|<conversation>``, scored by when it expires) and a sorted set of
  the conversations waiting (scored by an arrival ticket, with their own
  expiry beside). One Lua script purges what expired and grants a slot to a
  waiter only when it is among the first ones that fit, so the line is first
  come first served across nodes. A node refreshes its slots and waiters every
  ``renew_every`` (``lease_ttl`` is how long they last unrefreshed): a killed
  node's slots expire, and its owners' turns go on elsewhere. A waiter asks
  again when a slot is freed on its node, and every ``_POLL`` seconds for the
  slots freed elsewhere.
- **Messages per minute**: per owner a token bucket (tokens and the time they
  were counted, in a hash) updated by one Lua script on Redis's clock.

When Redis does not answer, each node enforces its share of each limit (the
limit divided by the number of live nodes it last saw in Redis, at least 1),
logs ``quota_redis_unavailable`` once, and asks Redis again only at its next
refresh (no call per message or per turn while Redis is down); the first
refresh that succeeds logs ``quota_redis_recovered`` and counts cluster-wide
again (the slots taken meanwhile are registered then).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from ..sessions.spi import TokenBuckets, rate_limited
from ._redis import RedisUser

if TYPE_CHECKING:
    from ._config import Cluster

__all__ = ["ClusterQuotas"]

_log = structlog.get_logger("sessionvisor")
_POLL = 0.5  # seconds between two asks of a waiter while Redis is up

_NOW = (
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
)

# KEYS: run, wait, wait_expiry, seq. ARGV: member, limit, ttl_ms. Returns 1: granted.
_ACQUIRE = (
    _NOW
    + """
local ttl = tonumber(ARGV[3])
local member = ARGV[1]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, m in ipairs(gone) do
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZREM', KEYS[3], m)
end
local granted = 0
if redis.call('ZSCORE', KEYS[1], member) then
  redis.call('ZADD', KEYS[1], now + ttl, member)
  granted = 1
else
  if not redis.call('ZSCORE', KEYS[2], member) then
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), member)
  end
  redis.call('ZADD', KEYS[3], now + ttl, member)
  local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
  if free > 0 and redis.call('ZRANK', KEYS[2], member) < free then
    redis.call('ZREM', KEYS[2], member)
    redis.call('ZREM', KEYS[3], member)
    redis.call('ZADD', KEYS[1], now + ttl, member)
    granted = 1
  end
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl * 3) end
return granted
"""
)

# KEYS: run, wait_expiry. ARGV: ttl_ms, n_held, held members..., waiting members...
_REFRESH = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 3, 2 + n do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
for i = 3 + n, #ARGV do redis.call('ZADD', KEYS[2], 'XX', now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl * 3)
return 1
"""
)

# KEYS: nodes. ARGV: node, ttl_ms. Returns how many nodes are live.
_NODES = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 3)
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS: bucket. ARGV: rate per minute, cost (1 takes, -1 gives back). Returns the
# seconds until a token is back (as a string), "0" when taken.
_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1]) or rate
local at = tonumber(v[2]) or now
tokens = math.min(rate, tokens + math.max(0, now - at) * rate / 60)
local wait = 0
if cost > 0 and tokens < cost then
  wait = (cost - tokens) * 60 / rate
else
  tokens = math.min(rate, tokens - cost)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], 61000)
return tostring(wait)
"""


class _Waiter:
    __slots__ = ("conversation_id", "done", "granted", "owner")

    def __init__(self, conversation_id: str, owner: str) -> None:
        self.conversation_id = conversation_id
        self.owner = owner
        self.done = False
        self.granted = False


class ClusterQuotas(RedisUser):
    """``Quotas`` for one node of a cluster (see the module docstring).

    Args:
        redis_url, prefix: the cluster's Redis and key prefix.
        node_id: this node's name (part of each slot's member).
        running, per_minute: the limits (None: none).
        ttl: seconds a slot or a waiter lasts without a refresh.
        refresh_every: seconds between two refreshes (the heartbeat).
        spawn: runs a coroutine function in the node's task group.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str,
        node_id: str,
        running: int | None,
        per_minute: int | None,
        ttl: float,
        refresh_every: float,
        spawn: Callable[..., None],
    ) -> None:
        super().__init__(redis_url, prefix)
        self.running = running
        self.per_minute = per_minute
        self._node = node_id
        self._ttl_ms = max(1, int(ttl * 1000))
        self._every = refresh_every
        self._spawn = spawn
        self._held: dict[str, str] = {}  # conversation -> owner: slots taken here
        self._lines: dict[str, deque[_Waiter]] = {}  # owner -> waiters here, in order
        self._waiters: dict[str, _Waiter] = {}
        self._freed: dict[str, anyio.Event] = {}  # owner -> set when a slot here is freed
        self._nodes = 1  # live nodes, as last seen in Redis
        self._down = False
        self._fallback: TokenBuckets | None = None

    @classmethod
    def of(
        cls,
        cluster: Cluster,
        running: int | None,
        per_minute: int | None,
        *,
        spawn: Callable[..., None],
    ) -> ClusterQuotas:
        """The quotas of the node ``cluster`` describes."""
        return cls(
            cluster.redis_url,
            prefix=cluster.prefix,
            node_id=cluster.node_id,
            running=running,
            per_minute=per_minute,
            ttl=cluster.lease_ttl,
            refresh_every=cluster.renew_every,
            spawn=spawn,
        )

    # -- Redis -------------------------------------------------------------------------

    def _key(self, owner: str, what: str) -> str:
        return f"{self._prefix}:quota:{owner}:{what}"

    def _member(self, conversation_id: str) -> str:
        return f"{self._node}|{conversation_id}"

    def _failed(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            _log.warning(
                "quota_redis_unavailable",
                error=f"{type(exc).__name__}: {exc}",
                nodes=self._nodes,
                note="each node enforces its share of the per-owner limits",
            )

    def share(self, limit: int) -> int:
        """This node's share of ``limit`` while Redis is down."""
        return max(1, limit // max(1, self._nodes))

    async def run(self) -> None:
        """Refresh this node's slots and waiters, and count the live nodes, every
        ``refresh_every``; the refresh is also how an outage ends."""
        try:
            while True:
                await self.refresh()
                await anyio.sleep(self._every)
        finally:
            await self.aclose()  # the node's task group ends: so do the connections

    async def refresh(self) -> None:
        held: dict[str, list[str]] = {}
        waiting: dict[str, list[str]] = {}
        for cid, owner in self._held.items():
            held.setdefault(owner, []).append(self._member(cid))
        for waiter in self._waiters.values():
            waiting.setdefault(waiter.owner, []).append(self._member(waiter.conversation_id))
        try:
            redis = self._redis()
            nodes = await redis.eval(
                _NODES, 1, f"{self._prefix}:quota:nodes", self._node, self._ttl_ms
            )
            for owner in set(held) | set(waiting):
                mine, queued = held.get(owner, []), waiting.get(owner, [])
                keys = (self._key(owner, "run"), self._key(owner, "wait_expiry"))
                await redis.eval(_REFRESH, 2, *keys, self._ttl_ms, len(mine), *mine, *queued)
        except self.connection_errors() as exc:
            self._failed(exc)
            return
        self._nodes = max(1, int(nodes))
        if self._down:
            self._down = False
            _log.info("quota_redis_recovered", nodes=self._nodes)
            for owner in list(self._lines):
                self._wake(owner)

    def _later(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if not self._down:
            self._spawn(self._quietly, fn, *args)

    async def _quietly(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        try:
            await fn(*args)
        except self.connection_errors() as exc:
            self._failed(exc)

    async def _forget(self, owner: str, member: str) -> None:
        redis = self._redis()
        await redis.zrem(self._key(owner, "run"), member)
        await redis.zrem(self._key(owner, "wait"), member)
        await redis.zrem(self._key(owner, "wait_expiry"), member)

    async def _add(self, owner: str, member: str) -> None:
        keys = (self._key(owner, "run"), self._key(owner, "wait_expiry"))
        await self._redis().eval(_REFRESH, 2, *keys, self._ttl_ms, 1, member)

    # -- running turns -----------------------------------------------------------------

    def try_start(self, conversation_id: str, owner: str | None) -> bool:
        if owner is None or self.running is None or conversation_id in self._held:
            return True
        if conversation_id in self._waiters:
            return False
        if self._down and not self._lines.get(owner) and self._local_room(owner):
            self._held[conversation_id] = owner
            return True
        # Up, the answer is Redis's: the worker asks it (wait_start).
        waiter = self._waiters[conversation_id] = _Waiter(conversation_id, owner)
        self._lines.setdefault(owner, deque()).append(waiter)
        return False

    def _local_room(self, owner: str) -> bool:
        assert self.running is not None
        return sum(1 for o in self._held.values() if o == owner) < self.share(self.running)

    async def wait_start(self, conversation_id: str, owner: str) -> bool:
        if self.try_start(conversation_id, owner):
            return True
        waiter = self._waiters.get(conversation_id)
        if waiter is None:
            return conversation_id in self._held
        assert self.running is not None
        try:
            while not waiter.done:
                if await self._ask(waiter):
                    self._grant(waiter)
                    break
                freed = self._freed.setdefault(owner, anyio.Event())
                with anyio.move_on_after(self._every if self._down else _POLL):
                    await freed.wait()
        except BaseException:
            if waiter.granted:
                self.release(conversation_id)
            else:
                self.abandon(conversation_id)
            raise
        return waiter.granted

    async def _ask(self, waiter: _Waiter) -> bool:
        owner = waiter.owner
        assert self.running is not None
        if not self._down:
            keys = [self._key(owner, k) for k in ("run", "wait", "wait_expiry", "seq")]
            member = self._member(waiter.conversation_id)
            try:
                granted = await self._redis().eval(
                    _ACQUIRE, 4, *keys, member, self.running, self._ttl_ms
                )
            except self.connection_errors() as exc:
                self._failed(exc)
            else:
                if granted and waiter.done:  # abandoned while asking: give it back
                    self._later(self._forget, owner, member)
                return bool(granted) and not waiter.done
        line = self._lines.get(owner)
        return line is not None and line[0] is waiter and self._local_room(owner)

    def _grant(self, waiter: _Waiter) -> None:
        self._leave_line(waiter)
        waiter.done = waiter.granted = True
        self._held[waiter.conversation_id] = waiter.owner

    def _leave_line(self, waiter: _Waiter) -> None:
        self._waiters.pop(waiter.conversation_id, None)
        line = self._lines.get(waiter.owner)
        if line is not None and waiter in line:
            line.remove(waiter)
            if not line:
                del self._lines[waiter.owner]
        self._wake(waiter.owner)  # the next one may fit now

    def _wake(self, owner: str) -> None:
        freed = self._freed.pop(owner, None)
        if freed is not None:
            freed.set()

    def waiting(self, conversation_id: str) -> bool:
        return conversation_id in self._waiters

    def abandon(self, conversation_id: str) -> None:
        waiter = self._waiters.get(conversation_id)
        if waiter is None:
            return
        waiter.done = True
        self._leave_line(waiter)
        self._later(self._forget, waiter.owner, self._member(conversation_id))

    def occupy(self, conversation_id: str, owner: str | None) -> None:
        if owner is None or self.running is None or conversation_id in self._held:
            return
        self._held[conversation_id] = owner
        self._later(self._add, owner, self._member(conversation_id))

    def release(self, conversation_id: str) -> None:
        owner = self._held.pop(conversation_id, None)
        if owner is None:
            return
        self._later(self._forget, owner, self._member(conversation_id))
        self._wake(owner)

    # -- messages ----------------------------------------------------------------------

    async def take_message(self, owner: str) -> None:
        rate = self.per_minute
        if rate is None:
            return
        if not self._down:
            try:
                wait = float(
                    await self._redis().eval(_BUCKET, 1, self._key(owner, "bucket"), rate, 1)
                )
            except self.connection_errors() as exc:
                self._failed(exc)
            else:
                if wait > 0.0:
                    raise rate_limited(rate, wait)
                return
        share = self.share(rate)
        if self._fallback is None or self._fallback.rate != share:
            self._fallback = TokenBuckets(share, anyio.current_time)
        wait = self._fallback.take(owner)
        if wait > 0.0:
            raise rate_limited(share, math.ceil(wait * 10) / 10)

    def give_back_message(self, owner: str) -> None:
        if self.per_minute is None:
            return
        if self._down:
            if self._fallback is not None:
                self._fallback.give_back(owner)
            return
        self._later(self._give_back, owner)

    async def _give_back(self, owner: str) -> None:
        await self._redis().eval(_BUCKET, 1, self._key(owner, "bucket"), self.per_minute, -1)
