"""The history every operation is recorded in, and the random client.

A history is a list of events (one JSON object per line in the saved file):

``{"i": 12, "t": 3.214, "process": "w1", "type": "invoke", "f": "send", "op": 5,
"attempt": 0, "cid": "c2", "value": {"id": "c2.w1.3", "content": "hello c2.w1.3"},
"node": "n0"}``

``type`` is ``invoke`` for an attempt that starts, then ``ok`` (2xx), ``fail``
(a definite refusal: 4xx, or the connection was refused so nothing was sent)
or ``info`` (unknown: a timeout, a reset connection, a 5xx) for the same
``op`` and ``attempt``. One logical operation (``op``) may take several
attempts: a send is retried with the same message id after an unknown result
or a refused connection. The nemesis records its faults as ``process:
"nemesis"`` events, the settle phase its reads and commands as ``settle`` /
``final``, and the final state of every conversation as a ``type: "final"``
event whose ``value`` is the body of ``GET /conversations/{cid}``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

__all__ = [
    "Attempt",
    "Client",
    "ClientConfig",
    "History",
    "conversation_summary",
    "interrupt_id",
    "question_key",
]

Event = dict[str, Any]


class History:
    """Events in the order they happened, written through to a JSON-lines file."""

    def __init__(self, path: Path | None = None) -> None:
        self.events: list[Event] = []
        self.t0 = time.monotonic()
        self._ops = 0
        self._file: IO[str] | None = path.open("w", encoding="utf-8") if path else None
        self.listeners: list[Callable[[Event], None]] = []

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 4)

    def next_op(self) -> int:
        self._ops += 1
        return self._ops

    def record(self, **fields: Any) -> Event:
        event: Event = {"i": len(self.events), "t": self.now(), **fields}
        self.events.append(event)
        if self._file is not None:
            self._file.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
            self._file.flush()
        for listener in list(self.listeners):
            listener(event)
        return event

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def question_key(body: dict[str, Any]) -> str | None:
    """The pending question's identity: the id of the assistant message that asked it."""
    if not body.get("interrupt"):
        return None
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "assistant":
            return str(message.get("id"))
    return None


def interrupt_id(body: dict[str, Any]) -> str | None:
    """The pending interrupt's id (what a resume names), if there is one."""
    interrupt = body.get("interrupt")
    if isinstance(interrupt, dict) and interrupt.get("id") is not None:
        return str(interrupt["id"])
    return None


def _unanswered(messages: Sequence[dict[str, Any]]) -> list[str]:
    """Ids of the user messages after the last assistant/system message (the demo's pending)."""
    ids: list[str] = []
    for message in reversed(messages):
        if message.get("role") in ("assistant", "system"):
            break
        if message.get("role") == "user" and not (message.get("metadata") or {}).get("resume"):
            ids.append(str(message.get("id")))
    return ids[::-1]


def conversation_summary(body: dict[str, Any]) -> dict[str, Any]:
    """What a read records: status, pending question, queue and unanswered counts, and the
    ids of the user messages it shows (``users``) and of those still waiting (``waiting``:
    unanswered or queued)."""
    messages = body.get("messages") or []
    unanswered = _unanswered(messages)
    queued = [str(m.get("id")) for m in messages if m.get("queued")]
    return {
        "status": body.get("status"),
        "question": question_key(body),
        "interrupt": interrupt_id(body),
        "messages": len(messages),
        "queued": len(queued),
        "unanswered": len(unanswered),
        "users": [str(m.get("id")) for m in messages if m.get("role") == "user"],
        "waiting": list(dict.fromkeys(unanswered + queued)),
    }


@dataclass
class Attempt:
    """The completion of one HTTP attempt."""

    type: str  # ok | fail | info
    status: int | None
    body: Any
    error: str | None = None


@dataclass
class ClientConfig:
    conversations: int = 5
    workers: int = 4
    request_timeout: float = 3.0
    max_attempts: int = 25
    think: float = 0.25
    weights: dict[str, int] = field(
        default_factory=lambda: {
            "send": 44,
            "send_delete": 16,
            "resume": 20,
            "read": 8,
            "cancel": 5,
            "stop": 5,
            "dismiss": 2,
            "race": 10,
        }
    )


class Client:
    """Random commands over a handful of conversations, one operation per conversation at a time.

    Args:
        history: where every attempt is recorded.
        nodes: the servers' base URLs by node name; each attempt picks one at random.
        seed: drives every choice (each worker has its own ``random.Random``).
    """

    def __init__(
        self,
        history: History,
        nodes: dict[str, str],
        seed: int,
        config: ClientConfig | None = None,
    ) -> None:
        self.history = history
        self.nodes = nodes
        self.seed = seed
        self.config = config or ClientConfig()
        self.cids = [f"c{k}" for k in range(self.config.conversations)]
        self.locks = {cid: asyncio.Lock() for cid in self.cids}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.request_timeout),
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._node_rng = random.Random(f"{seed}:nodes")
        self.owner_hint: dict[str, str] = {}  # the node a read last found serving each conversation
        self.ops_done = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- one attempt ----------------------------------------------------------------------

    async def _attempt(
        self,
        *,
        process: str,
        op: int,
        attempt: int,
        f: str,
        cid: str,
        method: str,
        path: str,
        body: Any = None,
        value: dict[str, Any] | None = None,
        node: str | None = None,
    ) -> Attempt:
        if node is None:
            node = self._node_rng.choice(sorted(self.nodes))
        self.history.record(
            process=process,
            type="invoke",
            f=f,
            op=op,
            attempt=attempt,
            cid=cid,
            value=value or {},
            node=node,
        )
        url = self.nodes[node] + path
        try:
            response = await self._http.request(method, url, json=body)
        except httpx.ConnectError as exc:
            result = Attempt("fail", None, None, f"connect: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            result = Attempt("info", None, None, f"{type(exc).__name__}: {exc}"[:200])
        else:
            try:
                parsed: Any = response.json()
            except ValueError:
                parsed = response.text[:300]
            code = response.status_code
            kind = "ok" if code < 300 else "fail" if code < 500 else "info"
            result = Attempt(kind, code, parsed)
        recorded = result.body
        if f == "read" and isinstance(recorded, dict) and result.type == "ok":
            recorded = conversation_summary(recorded)
            if recorded["status"] not in (None, "not_running"):
                self.owner_hint[cid] = node  # a live session: this node served it then
        self.history.record(
            process=process,
            type=result.type,
            f=f,
            op=op,
            attempt=attempt,
            cid=cid,
            value=value or {},
            node=node,
            status=result.status,
            body=recorded,
            error=result.error,
        )
        return result

    # -- operations ---------------------------------------------------------------------

    async def read(self, process: str, cid: str, node: str | None = None) -> Attempt:
        op = self.history.next_op()
        return await self._attempt(
            process=process,
            op=op,
            attempt=0,
            f="read",
            cid=cid,
            method="GET",
            path=f"/conversations/{cid}",
            node=node,
        )

    async def send(
        self, process: str, cid: str, mid: str, content: str, node: str | None = None
    ) -> str:
        """Send until acknowledged or refused, always with the same message id (the first
        attempt to ``node`` if given, the retries anywhere)."""
        op = self.history.next_op()
        value = {"id": mid, "content": content}
        outcome = "fail"
        for attempt in range(self.config.max_attempts):
            result = await self._attempt(
                process=process,
                op=op,
                attempt=attempt,
                f="send",
                cid=cid,
                method="POST",
                path=f"/conversations/{cid}/messages",
                body=value,
                value=value,
                node=node if attempt == 0 else None,
            )
            if result.type == "ok":
                return "ok"
            if result.type == "info":
                outcome = "info"
            elif result.status is not None:  # a definite refusal
                return outcome
            await asyncio.sleep(min(0.2 * (attempt + 1), 1.0))
        return outcome

    async def resume(self, process: str, cid: str, answer: str) -> str:
        """Answer the pending question, if there is one; retried only while it is still pending."""
        op = self.history.next_op()
        outcome = "skip"
        for attempt in range(self.config.max_attempts):
            seen = await self.read(process, cid)
            if (seen.type == "fail" and seen.status is None) or seen.type == "info":
                await asyncio.sleep(min(0.2 * (attempt + 1), 1.0))
                continue
            if seen.type != "ok" or not isinstance(seen.body, dict):
                return outcome
            key = question_key(seen.body)
            if key is None:
                return outcome
            iid = interrupt_id(seen.body)
            value = {"answer": answer, "question": key, "interrupt": iid}
            body: dict[str, Any] = {"answer": answer}
            if iid is not None:  # answers that question only, however late it arrives
                body["interrupt_id"] = iid
            result = await self._attempt(
                process=process,
                op=op,
                attempt=attempt,
                f="resume",
                cid=cid,
                method="POST",
                path=f"/conversations/{cid}/resume",
                body=body,
                value=value,
            )
            if result.type == "ok":
                return "ok"
            if result.type == "info":
                outcome = "info"
            elif result.status is not None:
                return "fail" if outcome == "skip" else outcome
            await asyncio.sleep(min(0.2 * (attempt + 1), 1.0))
        return outcome

    async def answer(
        self, process: str, cid: str, answer: str, key: str, iid: str, node: str
    ) -> str:
        """Answer the question ``key`` (interrupt ``iid``) without reading first: the first
        attempt to ``node``, retried with the same interrupt id after an unknown result."""
        op = self.history.next_op()
        value = {"answer": answer, "question": key, "interrupt": iid}
        outcome = "fail"
        for attempt in range(5):
            result = await self._attempt(
                process=process,
                op=op,
                attempt=attempt,
                f="resume",
                cid=cid,
                method="POST",
                path=f"/conversations/{cid}/resume",
                body={"answer": answer, "interrupt_id": iid},
                value=value,
                node=node if attempt == 0 else None,
            )
            if result.type == "ok":
                return "ok"
            if result.type == "info":
                outcome = "info"
            elif result.status is not None:
                return outcome
            await asyncio.sleep(min(0.2 * (attempt + 1), 1.0))
        return outcome

    async def race(self, process: str, cid: str, rng: random.Random, mid: str) -> None:
        """Two commands back to back through two nodes, where acknowledgement order matters;
        the second mostly goes to the node a read last found serving the conversation, so
        the first is stored in the inbox and the second reaches the owner directly.

        ``send-answer``: read the pending question, send a message through one
        node, then at once answer the question through another: the message was
        acknowledged first, so it supersedes the question and the answer is
        refused (at once, or by the owner once it reaches it). ``cancel-send``:
        cancel through one node, then at once send through another, and read
        soon after: the cancel applies first, so it cannot cut the message's
        turn.
        """
        names = sorted(self.nodes)
        owner = self.owner_hint.get(cid)
        second = owner if owner is not None and rng.random() < 0.8 else rng.choice(names)
        first = rng.choice([n for n in names if n != second] or names)
        if rng.random() < 0.5:
            seen = await self.read(process, cid)
            body = seen.body if seen.type == "ok" and isinstance(seen.body, dict) else {}
            key, iid = question_key(body), interrupt_id(body)
            await self.send(process, cid, mid, f"hello {mid}", node=first)
            if key is not None and iid is not None:
                await self.answer(process, cid, rng.choice(["yes", "no"]), key, iid, second)
        else:
            await self.simple(process, cid, "cancel", node=first)
            await self.send(process, cid, mid, f"hello {mid}", node=second)
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            await self.read(process, cid, node=second)

    async def simple(self, process: str, cid: str, f: str, node: str | None = None) -> Attempt:
        method, path = {
            "cancel": ("POST", f"/conversations/{cid}/cancel"),
            "stop": ("DELETE", f"/conversations/{cid}"),
            "dismiss": ("POST", f"/conversations/{cid}/dismiss"),
        }[f]
        op = self.history.next_op()
        return await self._attempt(
            process=process, op=op, attempt=0, f=f, cid=cid, method=method, path=path, node=node
        )

    # -- the random workload ------------------------------------------------------------

    async def worker(self, index: int, *, until: float, max_ops: int | None) -> None:
        rng = random.Random(f"{self.seed}:client:{index}")
        kinds = list(self.config.weights)
        weights = [self.config.weights[k] for k in kinds]
        process = f"w{index}"
        sent = 0
        while time.monotonic() < until and (max_ops is None or self.ops_done < max_ops):
            self.ops_done += 1
            cid = rng.choice(self.cids)
            kind = rng.choices(kinds, weights)[0]
            answer = rng.choice(["yes", "no"])
            async with self.locks[cid]:
                if kind in ("send", "send_delete"):
                    sent += 1
                    mid = f"{cid}.w{index}.{sent}"
                    text = f"please delete {mid}" if kind == "send_delete" else f"hello {mid}"
                    await self.send(process, cid, mid, text)
                elif kind == "resume":
                    await self.resume(process, cid, answer)
                elif kind == "race":
                    sent += 1
                    await self.race(process, cid, rng, f"{cid}.w{index}.{sent}")
                elif kind == "read":
                    await self.read(process, cid)
                else:
                    await self.simple(process, cid, kind)
            await asyncio.sleep(rng.uniform(0, self.config.think))

    async def run(self, *, seconds: float | None, max_ops: int | None) -> None:
        until = time.monotonic() + (seconds if seconds is not None else 1e9)
        async with asyncio.TaskGroup() as group:
            for index in range(self.config.workers):
                group.create_task(self.worker(index, until=until, max_ops=max_ops))

    # -- after the faults ---------------------------------------------------------------

    async def quiesce(self, deadline: float) -> dict[str, dict[str, Any] | None]:
        """Without any command, wait until no conversation runs or holds unanswered work.

        Returns each conversation's last summary (None: never created); the
        checker decides whether what is left at the deadline was allowed to be
        left (a cancel or a stop holds work until the next message). A read
        from a node that does not serve the conversation sees ``not_running``.
        """
        last: dict[str, dict[str, Any] | None] = {}
        waiting = set(self.cids)
        until = time.monotonic() + deadline
        while waiting and time.monotonic() < until:
            for cid in sorted(waiting):
                seen = await self.read("settle", cid)
                if seen.status == 404:
                    last[cid] = None
                    waiting.discard(cid)
                elif seen.type == "ok" and isinstance(seen.body, dict):
                    summary = conversation_summary(seen.body)
                    last[cid] = summary
                    status = summary["status"]
                    # a question pending (live, or stored where nothing serves it now)
                    # or a cancel holds the queue until the user acts
                    held = status in ("interrupted", "cancelled") or summary["question"] is not None
                    if status != "running" and (
                        held or not (summary["queued"] or summary["unanswered"])
                    ):
                        waiting.discard(cid)
            if waiting:
                await asyncio.sleep(0.5)
        for cid in sorted(self.cids):
            self.history.record(
                process="settle",
                type="quiesce",
                f="quiesce",
                cid=cid,
                value={"settled": cid not in waiting, "last": last.get(cid)},
            )
        return last

    async def settle(self, deadline: float) -> set[str]:
        """Answer what is pending and send one last message each; returns the unsettled ones."""
        waiting = set(self.cids)
        finals = dict.fromkeys(self.cids, 0)
        clean = dict.fromkeys(self.cids, 0)
        until = time.monotonic() + deadline
        while waiting and time.monotonic() < until:
            for cid in sorted(waiting):
                seen = await self.read("final", cid)
                if seen.status == 404:
                    waiting.discard(cid)
                    continue
                if seen.type != "ok" or not isinstance(seen.body, dict):
                    continue
                summary = conversation_summary(seen.body)
                status = summary["status"]
                if status == "running":
                    clean[cid] = 0
                    continue
                if status == "interrupted" or summary["question"] is not None:
                    clean[cid] = 0
                    await self.resume("final", cid, "no")
                elif (
                    summary["queued"]
                    or summary["unanswered"]
                    or status not in ("idle", "not_running")
                    or not finals[cid]
                ):
                    clean[cid] = 0
                    if finals[cid] >= 5:
                        continue
                    finals[cid] += 1
                    mid = f"{cid}.final.{finals[cid]}"
                    await self.send("final", cid, mid, f"hello {mid}")
                else:  # clean twice in a row: a node that does not serve it may lag
                    clean[cid] += 1
                    if clean[cid] >= 2:
                        waiting.discard(cid)
            if waiting:
                await asyncio.sleep(0.5)
        for cid in self.cids:
            result = await self.read("final", cid)
            self.history.record(
                process="final",
                type="final",
                f="final",
                cid=cid,
                value=result.body if result.type == "ok" else None,
                settled=cid not in waiting,
                status=result.status,
            )
        return waiting
