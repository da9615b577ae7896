"""The harness of the real-process fault tests (``test_nodes_*.py``).

Three ``python -m sessionvisor demo`` processes serve one PostgreSQL database
(the module's fresh one, ``pg_dsn``) and one Redis (the module's private
``redis_server``, which a test may stop and start on the same port). The
harness starts them, waits for ``/readyz``, sends them signals (SIGKILL,
SIGSTOP/SIGCONT, SIGTERM) and starts them again under the same node id; each
run's output goes to a file under the test's ``tmp_path``, and a failure shows
the end of every node's log.

``Client`` sends over HTTP to a random live node and, on a connection error,
a timeout or a 503, retries on another one (bounded attempts and deadline),
always with the same client message id, so a retry is never a second message.
``EventReader`` follows a conversation's Server-Sent Events and reconnects
with ``Last-Event-ID``. The checkers read the truth from PostgreSQL itself:
the store's tables and the lease table.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from sessionvisor.testing import free_port, wait_until
from tests._support.sql import sql

REPO = Path(__file__).resolve().parents[2]
USER = "alice"
HEADERS = {"X-User": USER}
LEASE_TTL = 2.0
RENEW_EVERY = LEASE_TTL / 4  # Cluster's default renew_every
POLL = 0.05  # how often a wait looks at the nodes (HTTP) or the database again
WORD_DELAY = 0.005
STORE_TABLE = "sessionvisor_conversations"
LEASE_TABLE = "sessionvisor_leases"
INBOX_TABLE = "sessionvisor_inbox"

# How the demo agent's reply begins (http/_demo.py): with the user's name when the
# session woke for a request; a session recovered by another node wakes with no
# scope (the scope is never stored, see sessions/_recovery.py) and greets nobody.
_REPLY_PREFIXES = (f"Hello {USER}! You said: “", "Hello! You said: “")


def postgres_url(dsn: str) -> str:
    """The ``postgresql://`` URL of a libpq connection string (what ``--store`` takes)."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(dsn)
    user = info.get("user") or "root"
    host = info.get("host") or "127.0.0.1"
    port = info.get("port") or 5432
    return f"postgresql://{user}@{host}:{port}/{info['dbname']}"


def explained(what: str, report: Callable[[], str]) -> Callable[[], str]:
    """A ``wait_until`` message: ``what`` was awaited, then ``report()`` (a log's
    tail, the nodes' state) as it is when the wait times out."""
    return lambda: f"{what}\n{report()}"


# -- node processes -------------------------------------------------------------


class Node:
    """One ``python -m sessionvisor`` process, which can be signalled and started again."""

    def __init__(self, node_id: str, argv: Sequence[str], port: int, logdir: Path) -> None:
        self.node_id = node_id
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.argv = list(argv)
        self.logdir = logdir
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.ready = False  # /readyz answered 200 since the last start
        self.logs: list[Path] = []  # one file per run

    def __repr__(self) -> str:
        return f"Node({self.node_id!r}, port={self.port})"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start a run (the same node id and port as any run before)."""
        assert not self.running, f"{self.node_id} is already running"
        log = self.logdir / f"{self.node_id}.run{len(self.logs) + 1}.log"
        self.logs.append(log)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "src"),
            "PYTHONUNBUFFERED": "1",
        }
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.logdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.paused = False
        self.ready = False

    async def wait_ready(self, timeout: float = 30.0) -> float:
        """Poll ``GET /readyz`` until it answers 200; return the seconds it took."""
        async with httpx.AsyncClient(timeout=2.0) as http:

            async def ready() -> bool:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise AssertionError(
                        f"{self.node_id} exited ({code}) before it was ready:\n{self.tail()}"
                    )
                try:
                    answer = await http.get(f"{self.url}/readyz")
                except httpx.TransportError:
                    return False
                return answer.status_code == 200

            took = await wait_until(
                ready,
                timeout=timeout,
                interval=POLL,
                message=explained(f"{self.node_id} is ready", self.tail),
            )
        self.ready = True
        return took

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None and self.process.poll() is None, f"{self.node_id} is down"
        self.process.send_signal(sig)

    def kill(self) -> None:
        """kill -9, and reap it."""
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)
        self.paused = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end; return its exit status."""
        process = self.process
        assert process is not None
        await wait_until(
            lambda: process.poll() is not None,
            timeout=timeout,
            interval=POLL,
            message=explained(f"{self.node_id} exits", self.tail),
        )
        return int(process.returncode)

    def incarnation(self) -> str:
        """This run's incarnation, from its ``cluster_node_started`` log line."""
        text = self.logs[-1].read_text(errors="replace") if self.logs else ""
        found = re.search(r"cluster_node_started\s.*?incarnation=(\S+)", text)
        assert found, f"{self.node_id} logged no cluster_node_started line:\n{self.tail()}"
        return found.group(1)

    def log_text(self) -> str:
        parts = []
        for path in self.logs:
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class Nodes:
    """The node processes of one test, by node id."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.all = list(nodes)

    def __getitem__(self, node_id: str) -> Node:
        for node in self.all:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def __iter__(self) -> Any:
        return iter(self.all)

    def live(self) -> list[Node]:
        """The nodes a client may try, as a load balancer would: running, not stopped
        with SIGSTOP, and ready (``/readyz`` answered) since their last start."""
        return [n for n in self.all if n.running and n.ready and not n.paused]

    def others(self, *excluded: Node) -> list[Node]:
        return [n for n in self.all if n not in excluded]

    async def start(self) -> None:
        for node in self.all:
            node.start()
        async with anyio.create_task_group() as tg:
            for node in self.all:
                tg.start_soon(node.wait_ready)

    def close(self) -> None:
        for node in self.all:
            if node.running:
                assert node.process is not None
                node.process.kill()
                node.process.wait(10)

    def report(self, lines: int = 40) -> str:
        return "\n".join(f"=== {n.node_id} ===\n{n.tail(lines)}" for n in self.all)


def node_argv(
    node_id: str, port: int, store_url: str, redis_url: str, *, word_delay: float = WORD_DELAY
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sessionvisor",
        "demo",
        "--store",
        store_url,
        "--cluster",
        redis_url,
        "--node-id",
        node_id,
        "--port",
        str(port),
        "--lease-ttl",
        str(LEASE_TTL),
        "--word-delay",
        str(word_delay),
        "--inactivity-timeout",
        "none",
    ]


@asynccontextmanager
async def cluster_nodes(
    pg_dsn: str, redis_url: str, logdir: Path, count: int = 3, *, word_delay: float = WORD_DELAY
) -> AsyncIterator[Nodes]:
    """Start ``count`` nodes (``n1``, ``n2``, ...) of one cluster; kill what is left at the end.

    The end of every node's log is printed at teardown (pytest shows it when
    the test failed); the whole logs stay under ``logdir``.
    """
    store_url = postgres_url(pg_dsn)
    made = []
    for i in range(1, count + 1):
        port = free_port()
        argv = node_argv(f"n{i}", port, store_url, redis_url, word_delay=word_delay)
        made.append(Node(f"n{i}", argv, port, logdir))
    nodes = Nodes(made)
    try:
        await nodes.start()
        yield nodes
    finally:
        nodes.close()
        print(nodes.report(80))


# -- client ---------------------------------------------------------------------


class RequestFailed(Exception):
    """A request that failed on every node it was tried on."""


@dataclass
class Sent:
    """A message the cluster acknowledged (202)."""

    message_id: str
    text: str
    node_id: str  # the node that acknowledged it


class Client:
    """Spreads requests over the live nodes, retrying elsewhere on failure.

    A connection error, a timeout or a 503 is retried on another live node
    (the same client message id, so it can never be a second message), up to
    ``attempts`` tries within ``deadline`` seconds; anything else is an error.
    ``sent`` holds each conversation's acknowledged messages in the order
    they were acknowledged; ``retries`` counts the retries, ``failed`` the
    requests that gave up.
    """

    def __init__(
        self,
        nodes: Nodes,
        *,
        timeout: float = 5.0,
        attempts: int = 40,
        deadline: float = 30.0,
    ) -> None:
        self.nodes = nodes
        self.timeout = timeout
        self.attempts = attempts
        self.deadline = deadline
        self.sent: dict[str, list[Sent]] = {}
        self.retries = 0
        self.failed: list[str] = []
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Client:
        self._http = httpx.AsyncClient(
            headers=HEADERS,
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=400, max_keepalive_connections=100),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._http is not None
        await self._http.aclose()

    def _pick(self, avoid: Node | None, only: Node | None) -> Node | None:
        if only is not None:
            return only if only.running and not only.paused else None
        live = self.nodes.live()
        choices = [n for n in live if n is not avoid] or live
        return random.choice(choices) if choices else None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        expect: Iterable[int] = (200,),
        only: Node | None = None,
    ) -> tuple[Node, httpx.Response]:
        """Send one request to a random live node, retrying on others; return the node and answer.

        ``only`` sends to that node alone (retried on it).

        Raises:
            RequestFailed: no node gave an expected answer within the bounds
                (recorded in ``failed`` as well).
        """
        assert self._http is not None
        expected = set(expect)
        start = time.monotonic()
        last: Node | None = None
        problems: list[str] = []
        for attempt in range(self.attempts):
            if attempt:
                self.retries += 1
                await anyio.sleep(min(0.05 * 2 ** (attempt - 1), 0.5))
            if time.monotonic() - start > self.deadline:
                break
            node = self._pick(last, only)
            if node is None:
                problems.append("no live node")
                continue
            last = node
            try:
                answer = await self._http.request(method, node.url + path, json=json_body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                problems.append(f"{node.node_id}: {type(exc).__name__}")
                continue
            if answer.status_code in expected:
                return node, answer
            problems.append(f"{node.node_id}: {answer.status_code} {answer.text[:200]}")
            if answer.status_code != 503:
                break
        message = f"{method} {path} failed: {problems}"
        self.failed.append(message)
        raise RequestFailed(message)

    async def send(self, cid: str, text: str, message_id: str, *, only: Node | None = None) -> Sent:
        """POST a message (with its client id) and record it once acknowledged."""
        node, _ = await self.request(
            "POST",
            f"/conversations/{cid}/messages",
            json_body={"content": text, "id": message_id},
            expect=(202,),
            only=only,
        )
        sent = Sent(message_id, text, node.node_id)
        self.sent.setdefault(cid, []).append(sent)
        return sent

    async def converse(
        self, cid: str, texts: Sequence[str], *, between: Callable[[], Any] | None = None
    ) -> None:
        """Send ``texts`` one after another (each once the previous one was acknowledged)."""
        for i, text in enumerate(texts):
            if i and between is not None:
                await between()
            await self.send(cid, text, f"{cid}-m{i}")

    async def keep_sending(self, cid: str, stop: anyio.Event, *, pace: float = 0.2) -> None:
        """Send to ``cid`` one message after another, ``pace`` seconds apart, until ``stop``."""
        i = 0
        while not stop.is_set():
            await self.send(cid, f"{cid} says hello number {i}", f"{cid}-k{i}")
            i += 1
            with anyio.move_on_after(pace):
                await stop.wait()


# -- what PostgreSQL holds ------------------------------------------------------


@dataclass
class Stored:
    """A conversation's stored row and its message rows."""

    cid: str
    epoch: int
    unanswered: bool
    messages: list[dict[str, Any]]
    queued: list[dict[str, Any]]
    # Sends waiting in the inbox table for the owner (acknowledged, not yet applied).
    inbox: list[str] = field(default_factory=list)


def text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def read_store(dsn: str, prefix: str) -> dict[str, Stored]:
    """Every conversation whose id starts with ``prefix``: its stored row, its message
    rows and its sends pending in the inbox (all read in one REPEATABLE READ
    transaction, so one snapshot)."""
    import psycopg

    def select(conn: Any, query: str) -> list[tuple[Any, ...]]:
        try:
            with conn.transaction():  # a savepoint: a missing table fails it alone
                return list(conn.execute(query, (prefix,)).fetchall())
        except psycopg.errors.UndefinedTable:  # nothing stored (or posted) yet
            return []

    with psycopg.connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            heads = select(
                conn,
                f"SELECT id, head, epoch, unanswered FROM {STORE_TABLE} WHERE starts_with(id, %s)",
            )
            rows = select(
                conn,
                f"SELECT m.conversation_id, m.body FROM {STORE_TABLE}_messages m "
                f"JOIN {STORE_TABLE} t ON t.id = m.conversation_id "
                "WHERE starts_with(m.conversation_id, %s) AND m.position < t.message_count "
                "ORDER BY m.conversation_id, m.position",
            )
            posted = select(
                conn,
                f"SELECT conversation_id, command_id FROM {INBOX_TABLE} "
                "WHERE starts_with(conversation_id, %s) AND kind = 'send' ORDER BY seq",
            )
    bodies: dict[str, list[dict[str, Any]]] = {}
    for cid, body in rows:
        bodies.setdefault(cid, []).append(json.loads(body))
    inbox: dict[str, list[str]] = {}
    for cid, command_id in posted:
        inbox.setdefault(cid, []).append(command_id)
    out = {}
    for cid, head, epoch, unanswered in heads:
        queued = list(json.loads(head).get("queued") or []) if head is not None else []
        out[cid] = Stored(
            cid, int(epoch), bool(unanswered), bodies.get(cid, []), queued, inbox.get(cid, [])
        )
    for cid in inbox.keys() - out.keys():  # posted before any save
        out[cid] = Stored(cid, 0, False, [], [], inbox[cid])
    return out


@dataclass
class LeaseRow:
    node_id: str
    incarnation: str
    epoch: int
    live: bool  # lease_until >= now()


def read_leases(dsn: str, prefix: str) -> dict[str, LeaseRow]:
    import psycopg

    try:
        rows = sql(
            dsn,
            f"SELECT conversation_id, node_id, incarnation, epoch, lease_until >= now() "
            f"FROM {LEASE_TABLE} WHERE starts_with(conversation_id, %s)",
            prefix,
        )
    except psycopg.errors.UndefinedTable:
        return {}
    return {
        cid: LeaseRow(node, inc, int(epoch), bool(live)) for cid, node, inc, epoch, live in rows
    }


def lease_row_counts(dsn: str, prefix: str) -> dict[str, int]:
    """How many lease rows each conversation has (the primary key makes it one)."""
    rows = sql(
        dsn,
        f"SELECT conversation_id, count(*) FROM {LEASE_TABLE} "
        "WHERE starts_with(conversation_id, %s) GROUP BY conversation_id",
        prefix,
    )
    return {cid: int(n) for cid, n in rows}


# -- "every message answered once" ----------------------------------------------


@dataclass
class Verdict:
    """What is wrong with one conversation: ``waiting`` may still resolve, ``wrong`` cannot."""

    waiting: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


def judge(stored: Stored | None, sent: Sequence[Sent]) -> Verdict:
    """Check a stored conversation against the messages the cluster acknowledged.

    Right is: the user messages are exactly the acknowledged ones, each once,
    in the order acknowledged; every run of consecutive user messages is
    followed by exactly one assistant reply, and that reply quotes exactly
    those messages (the demo answers the messages that queued during a turn
    with one reply, quoting them joined by " / "); nothing queued or
    unanswered at the end.
    """
    verdict = Verdict()
    if stored is None:
        if sent:
            verdict.waiting.append("not stored")
        return verdict
    users = [m for m in stored.messages if m.get("role") == "user"]
    user_ids = [m.get("id") for m in users]
    queued_ids = [m.get("id") for m in stored.queued]
    wanted = [s.message_id for s in sent]
    everything = user_ids + queued_ids
    for mid in set(everything):
        if everything.count(mid) > 1:
            verdict.wrong.append(f"message {mid} stored {everything.count(mid)} times")
    unknown = [mid for mid in everything if mid not in wanted]
    if unknown:
        verdict.wrong.append(f"messages nobody acknowledged: {unknown}")
    # A send still in the inbox is acknowledged and waits for its owner: the state
    # may not have it yet (or already has it, when the row is deleted after the save).
    posted = [mid for mid in stored.inbox if mid not in everything]
    lost = [mid for mid in wanted if mid not in everything and mid not in posted]
    if lost:
        # Acknowledged means stored: a message missing from the store is lost.
        verdict.wrong.append(f"acknowledged messages missing from the store: {lost}")
    in_order = [mid for mid in everything if mid in wanted]
    if in_order != [mid for mid in wanted if mid in everything]:
        verdict.wrong.append(f"order {in_order}, acknowledged in the order {wanted}")
    # Replies: one per run of user messages, quoting exactly that run.
    block: list[dict[str, Any]] = []
    for i, message in enumerate(stored.messages):
        role = message.get("role")
        if role == "user":
            block.append(message)
        elif role == "assistant":
            if not block:
                verdict.wrong.append(f"assistant message at {i} answers no user message")
                continue
            quoted = " / ".join(text_of(m) for m in block)
            if not any(
                text_of(message).startswith(f"{start}{quoted}”.") for start in _REPLY_PREFIXES
            ):
                verdict.wrong.append(
                    f"reply at {i} does not answer {[m.get('id') for m in block]}: "
                    f"{text_of(message)[:120]!r}"
                )
            block = []
        else:
            verdict.wrong.append(f"unexpected {role} message at {i}: {text_of(message)[:120]!r}")
    if block:
        verdict.waiting.append(f"unanswered: {[m.get('id') for m in block]}")
    if stored.queued:
        verdict.waiting.append(f"queued: {queued_ids}")
    if posted:
        verdict.waiting.append(f"in the inbox: {posted}")
    return verdict


def verdicts(
    dsn: str, prefix: str, sent: Mapping[str, Sequence[Sent]], *, others: bool = True
) -> dict[str, Verdict]:
    """Judge the conversations of ``sent``; with ``others``, also every other stored
    conversation under ``prefix`` (which nobody sent anything to, so it must be empty)."""
    stored = read_store(dsn, prefix)
    out = {cid: judge(stored.get(cid), msgs) for cid, msgs in sent.items()}
    if others:
        for cid in stored.keys() - sent.keys():
            out[cid] = judge(stored[cid], [])
    return out


def describe(found: Mapping[str, Verdict], limit: int = 15) -> str:
    bad = [(cid, v) for cid, v in sorted(found.items()) if v.waiting or v.wrong]
    lines = [f"{cid}: {v.wrong + v.waiting}" for cid, v in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more conversations")
    return "\n".join(lines)


def diagnose(dsn: str, cids: Iterable[str], nodes: Nodes | None) -> list[str]:
    """For a failure message: each conversation's lease and what its owner says of it."""
    lines = []
    for cid in cids:
        lease = read_leases(dsn, cid).get(cid)
        line = f"{cid}: lease {lease}"
        if lease is not None and nodes is not None:
            owner = next((n for n in nodes if n.node_id == lease.node_id), None)
            if owner is not None and owner.running and not owner.paused:
                try:
                    answer = httpx.get(f"{owner.url}/conversations/{cid}", headers=HEADERS)
                    line += f"; GET on {owner.node_id}: status {answer.json().get('status')}"
                except (httpx.HTTPError, ValueError) as exc:
                    line += f"; GET on {owner.node_id} failed: {exc!r}"
        lines.append(line)
    return lines


async def wait_all_answered(
    dsn: str,
    prefix: str,
    sent: Mapping[str, Sequence[Sent]],
    timeout: float,
    nodes: Nodes | None = None,
    *,
    others: bool = True,
) -> float:
    """Poll the store until every acknowledged message is answered; then require
    that nothing is wrong (lost, duplicated, out of order). Returns the seconds
    waited."""
    latest: dict[str, Verdict] = {}

    def done() -> bool:
        latest.clear()
        latest.update(verdicts(dsn, prefix, sent, others=others))
        return all(not v.waiting for v in latest.values()) or any(v.wrong for v in latest.values())

    def report() -> str:
        text = describe(latest)
        stuck = sorted(cid for cid, v in latest.items() if v.waiting)[:5]
        return "\n".join([text, *diagnose(dsn, stuck, nodes)]) + (
            "\n" + nodes.report() if nodes is not None else ""
        )

    took = await wait_until(
        done, timeout=timeout, interval=0.2, message=explained("every message is answered", report)
    )
    wrong = {cid: v for cid, v in latest.items() if v.wrong}
    assert not wrong, f"wrong conversations:\n{describe(wrong)}"
    return took


def check_one_owner(dsn: str, prefix: str, cids: Iterable[str]) -> dict[str, LeaseRow]:
    """Each conversation has one lease row, and the store's epoch is the lease's."""
    cids = list(cids)
    counts = lease_row_counts(dsn, prefix)
    leases = read_leases(dsn, prefix)
    stored = read_store(dsn, prefix)
    problems = []
    for cid in cids:
        if counts.get(cid) != 1:
            problems.append(f"{cid}: {counts.get(cid, 0)} lease rows")
            continue
        if cid in stored and stored[cid].epoch != leases[cid].epoch:
            problems.append(
                f"{cid}: store epoch {stored[cid].epoch}, lease epoch {leases[cid].epoch}"
            )
    assert not problems, "\n".join(problems[:20])
    return leases


# -- event streams --------------------------------------------------------------


@dataclass
class Connection:
    node_id: str
    last_event_id: int | None
    ended: str = ""


class EventReader:
    """Follows ``GET /conversations/{cid}/events``, reconnecting when the stream ends.

    ``pick()`` names the node for each connection; a reconnect sends
    ``Last-Event-ID`` (the last ``id:`` received). ``events`` holds every
    event's JSON in arrival order, ``connections`` each connection made.
    """

    def __init__(
        self,
        cid: str,
        pick: Callable[[], Node],
        *,
        after: int | None = None,
    ) -> None:
        self.cid = cid
        self.pick = pick
        self.last_id: int | None = after
        self.events: list[dict[str, Any]] = []
        self.connections: list[Connection] = []
        self.connected = anyio.Event()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    async def run(self) -> None:
        """Read until cancelled."""
        async with httpx.AsyncClient(
            headers=HEADERS, timeout=httpx.Timeout(5.0, read=None)
        ) as http:
            while True:
                node = self.pick()
                connection = Connection(node.node_id, self.last_id)
                self.connections.append(connection)
                try:
                    await self._read(http, node)
                    connection.ended = "stream ended"
                except httpx.HTTPError as exc:
                    connection.ended = f"{type(exc).__name__}: {exc}"
                await anyio.sleep(0.1)

    async def _read(self, http: httpx.AsyncClient, node: Node) -> None:
        headers = {} if self.last_id is None else {"Last-Event-ID": str(self.last_id)}
        url = f"{node.url}/conversations/{self.cid}/events"
        async with http.stream("GET", url, headers=headers) as answer:
            if answer.status_code != 200:
                await answer.aread()
                raise httpx.HTTPStatusError(
                    f"{answer.status_code} {answer.text[:200]}",
                    request=answer.request,
                    response=answer,
                )
            self.connected.set()
            event_id: str | None = None
            data: list[str] = []
            async for line in answer.aiter_lines():
                if line == "":
                    if data:
                        event = json.loads("\n".join(data))
                        self.events.append(event)
                        if event_id is not None:
                            self.last_id = int(event_id)
                    event_id, data = None, []
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "id":
                        event_id = value
                    elif name == "data":
                        data.append(value)


def assistant_texts(events: Iterable[Mapping[str, Any]]) -> list[str]:
    return [
        text_of(e["message"])
        for e in events
        if e.get("type") == "MessageAppended" and e["message"].get("role") == "assistant"
    ]


def user_ids(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """The ids of the user messages that joined the history (``MessageAppended``)."""
    return [
        e["message"].get("id")
        for e in events
        if e.get("type") == "MessageAppended" and e["message"].get("role") == "user"
    ]
