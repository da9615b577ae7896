"""Hostile request bodies on every JSON route: a typed 4xx, never a 5xx, and no frozen loop.

Hypothesis writes the bodies as raw bytes (so that it can say what ``json.dumps``
never would: ``1e999``, ``NaN``, a lone ``\\ud800`` or its raw UTF-8 bytes),
nested just under and just over the 64 levels the stores take, with huge
integers, strings around the body limit, fields of the wrong type and media
types that are not JSON. Each body is sent through the ASGI interface to an
app on a real supervisor, on asyncio and on trio. A body that breaks a rule
gets the 4xx of that rule and leaves nothing behind; a valid one gets the
route's usual answer.

Then a real uvicorn server (in a subprocess, so only its own event loop and
GIL are measured) takes 1 MiB hostile bodies, deep and wide, one after
another, while ``/healthz`` is probed: every probe must be answered within
100 ms. Parsing happens on a worker thread, yet a C-level parse or a garbage
collection holds the GIL; this bounds how long.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionvisor import Status
from sessionvisor.testing import ScriptedAgent, free_port, wait_for_status, wait_until_sync

from ._support import ALICE, open_app

REPO = Path(__file__).resolve().parents[2]
MAX_DEPTH = 64
# A small limit, so that strings around it are cheap to make and to send.
BODY_LIMIT = 32 * 1024
MESSAGE_LIMIT = 16 * 1024
EXISTING = "c-0"  # the conversation resume, dismiss and cancel act on

JSON_TYPES = ["application/json", "application/json; charset=utf-8", "application/vnd.x+json"]
OTHER_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/json",
    None,  # a body without a Content-Type
]


# -- the hostile values -----------------------------------------------------------------


@dataclass
class Value:
    """A JSON text to put into a body, and what it breaks (None when it is fine)."""

    text: bytes
    breaks: str | None  # "json" (a rule of storable JSON), "size", or None
    depth: int = 0  # the containers it opens, one inside the other
    note: str = ""


def nested(levels: int, kinds: list[str]) -> Value:
    opening = b"".join(b"[" if k == "list" else b'{"k":' for k in kinds[:levels])
    closing = b"".join(b"]" if k == "list" else b"}" for k in reversed(kinds[:levels]))
    return Value(opening + b"1" + closing, None, depth=levels, note=f"nested {levels}")


@st.composite
def nestings(draw: st.DrawFn) -> Value:
    # Relative to where it is put: the route adds the depth of its place.
    levels = draw(st.integers(MAX_DEPTH - 8, MAX_DEPTH + 2))
    kinds = draw(st.lists(st.sampled_from(["list", "dict"]), min_size=levels, max_size=levels))
    return nested(levels, kinds)


def _decodes_to_valid_unicode(text: bytes) -> bool:
    try:
        decoded = json.loads(text)
        json.dumps(decoded, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError):
        return False
    return True


@st.composite
def strings(draw: st.DrawFn) -> Value:
    """Strings with lone surrogates (escaped or as raw UTF-8 bytes), pairs, and plain text."""
    text = draw(
        st.text(
            st.one_of(
                st.characters(categories=["Cs"]),  # surrogates, alone or side by side
                st.characters(codec="utf-8"),
            ),
            max_size=12,
        )
    )
    as_key = draw(st.booleans())
    if draw(st.booleans()):
        encoded = json.dumps(text, ensure_ascii=True).encode()  # \ud800 escapes
    else:
        encoded = json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if as_key:
        encoded = b"{" + encoded + b": 1}"
    breaks = None if _decodes_to_valid_unicode(encoded) else "json"
    return Value(encoded, breaks, depth=int(as_key), note="string")


@st.composite
def numbers(draw: st.DrawFn) -> Value:
    choice = draw(st.sampled_from(["special", "digits"]))
    if choice == "special":
        token = draw(
            st.sampled_from(
                [b"1e999", b"-1e999", b"1E400", b"NaN", b"Infinity", b"-Infinity",
                 b"1e308", b"-0.0", b"5e-324", b"0"]
            )
        )  # fmt: skip
        finite = token not in (b"NaN", b"Infinity", b"-Infinity") and math.isfinite(float(token))
        return Value(token, None if finite else "json", note=token.decode())
    digits = draw(st.one_of(st.integers(995, 1005), st.integers(4295, 4305), st.just(20_000)))
    token = draw(st.sampled_from([b"", b"-"])) + b"9" * digits
    return Value(token, None if digits <= 1000 else "json", note=f"{digits} digits")


@st.composite
def big_strings(draw: st.DrawFn) -> Value:
    size = draw(st.integers(BODY_LIMIT - 300, BODY_LIMIT + 300))
    return Value(b'"' + b"x" * size + b'"', None, note=f"{size}-byte string")


VALUES = st.one_of(nestings(), strings(), numbers(), big_strings())


# -- the routes -------------------------------------------------------------------------


@dataclass
class Route:
    """A JSON route: where a value goes in its body and what a valid body gets."""

    name: str
    path: str
    place: Any  # (value, conversation id) -> body bytes
    embedding: int  # the containers around the value's place
    ok: set[int]  # the answers of a valid body
    fresh: bool  # a new conversation each time (else EXISTING)
    wrong_types: list[bytes] = field(default_factory=list)


def _ai_sdk(value: bytes, cid: str) -> bytes:
    part = b'{"type": "text", "text": "hi", "x": ' + value + b"}"
    return b'{"id": "%s", "messages": [{"id": "m", "role": "user", "parts": [%s]}]}' % (
        cid.encode(),
        part,
    )


def _ag_ui(value: bytes, cid: str) -> bytes:
    return (
        b'{"threadId": "%s", "runId": "r", "forwardedProps": {"x": %s}, '
        b'"messages": [{"id": "u", "role": "user", "content": "hi"}]}' % (cid.encode(), value)
    )


ROUTES = [
    Route(
        "messages-opts",
        "/conversations/{cid}/messages",
        lambda v, cid: b'{"content": "hi", "request_opts": {"x": ' + v + b"}}",
        embedding=2,
        ok={202},
        fresh=True,
        wrong_types=[b'{"content": 42}', b'{"content": [1]}', b'{"content": "x", "id": 7}'],
    ),
    Route(
        "messages-part",
        "/conversations/{cid}/messages",
        lambda v, cid: b'{"content": [{"type": "text", "text": "hi", "x": ' + v + b"}]}",
        embedding=3,
        ok={202},
        fresh=True,
        wrong_types=[b'{"content": [{"type": 1}]}', b'{"content": null}'],
    ),
    Route(
        "resume",
        "/conversations/{cid}/resume",
        lambda v, cid: b'{"answer": ' + v + b"}",
        embedding=1,
        ok={409},  # nothing to resume: the answer was read and judged
        fresh=False,
        wrong_types=[b'{"answer": 1, "request_opts": []}', b"[]"],
    ),
    Route(
        "dismiss",
        "/conversations/{cid}/dismiss",
        lambda v, cid: b'{"request_opts": {"x": ' + v + b"}}",
        embedding=2,
        ok={409},  # no notice to dismiss
        fresh=False,
        wrong_types=[b'{"request_opts": "x"}', b'"dismiss"'],
    ),
    Route(
        "cancel",
        "/conversations/{cid}/cancel",
        lambda v, cid: b'{"x": ' + v + b"}",
        embedding=1,
        ok={400},  # cancel takes no fields
        fresh=False,
        wrong_types=[b'{"request_opts": {}}', b"1"],
    ),
    Route(
        "ai-sdk",
        "/ai-sdk/chat",
        _ai_sdk,
        embedding=5,
        ok={200},
        fresh=True,
        wrong_types=[b'{"id": "c", "messages": "hi"}', b'{"id": 5, "messages": []}'],
    ),
    Route(
        "ag-ui",
        "/ag-ui",
        _ag_ui,
        embedding=2,
        ok={200},
        fresh=True,
        wrong_types=[b'{"threadId": "c", "runId": 1, "messages": []}', b'{"messages": {}}'],
    ),
]


@dataclass
class Case:
    route: Route
    body: bytes
    content_type: str | None
    value: Value | None  # None: one of the route's wrong-type bodies

    def __repr__(self) -> str:
        value = "a wrong-type body" if self.value is None else self.value.note
        return f"<{self.route.name}, {self.content_type!r}, {value}, {len(self.body)} bytes>"

    def expected(self, sent: int) -> tuple[set[int], str | None]:
        """The statuses this body may get (``sent`` bytes of it, once the conversation id
        replaced the placeholder), and the error name a refusal must carry."""
        media = (self.content_type or "").split(";")[0].strip()
        if not (media == "application/json" or media.endswith("+json")):
            return {415}, "UnsupportedMediaType"
        if sent > BODY_LIMIT:
            return {413}, "PayloadTooLarge"
        if self.value is None:
            return {400}, "ValidationError"
        too_deep = self.route.embedding + self.value.depth > MAX_DEPTH
        if self.value.breaks == "json" or too_deep:
            return {400}, "InvalidJSON"
        if self.value.note.endswith("-byte string"):
            return {413, *self.route.ok}, None  # the message content over its limit, or not
        return self.route.ok, None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    route = draw(st.sampled_from(ROUTES))
    content_type = draw(
        st.one_of(st.sampled_from(JSON_TYPES), st.sampled_from(OTHER_TYPES))
        if draw(st.integers(0, 9)) == 0
        else st.sampled_from(JSON_TYPES)
    )
    if draw(st.integers(0, 9)) == 0:
        return Case(route, draw(st.sampled_from(route.wrong_types)), content_type, None)
    value = draw(VALUES)
    return Case(route, route.place(value.text, "{cid}"), content_type, value)


# -- through the ASGI interface, on both backends ------------------------------------------


def check_answer(case: Case, sent: int, status: int, body: bytes, stored: bool) -> None:
    statuses, error = case.expected(sent)
    where = f"{case.route.name} {case.content_type!r} {case.value and case.value.note!r}"
    assert status < 500, f"{where}: {status} {body[:300]!r}"
    assert status in statuses, f"{where}: {status} not in {statuses}: {body[:300]!r}"
    if status >= 400:
        answer = json.loads(body)
        assert isinstance(answer["error"], str) and isinstance(answer["detail"], str), answer
        if error is not None:
            assert answer["error"] == error, f"{where}: {answer}"
        if case.route.fresh:
            assert not stored, f"{where}: refused, yet something was stored"


def test_hostile_bodies_get_a_typed_4xx_on_every_json_route(anyio_backend: str) -> None:
    app_options: dict[str, Any] = {
        "agent": ScriptedAgent(stream=False),
        "supervisor_opts": {"max_message_bytes": MESSAGE_LIMIT},
        "max_body_bytes": BODY_LIMIT,
    }
    with (
        start_blocking_portal(anyio_backend) as portal,
        portal.wrap_async_context_manager(open_app(**app_options)) as env,
    ):

        async def seed() -> None:
            await env.send(EXISTING, "hello")
            await wait_for_status(env.sup, EXISTING, Status.IDLE, scope="alice")

        portal.call(seed)
        counter = iter(range(1, 1_000_000))

        async def post(case: Case) -> tuple[int, int, bytes, bool]:
            cid = f"c-{next(counter)}" if case.route.fresh else EXISTING
            headers = dict(ALICE)
            if case.content_type is not None:
                headers["Content-Type"] = case.content_type
            # The id replaces a placeholder of another length: near the limit, the size
            # that counts is the one sent.
            sent = case.body.replace(b"{cid}", cid.encode())
            response = await env.client.post(
                case.route.path.replace("{cid}", cid), content=sent, headers=headers
            )
            stored = case.route.fresh and await env.sup.store.load(cid) is not None
            return len(sent), response.status_code, response.content, stored

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(case=cases())
        def hostile(case: Case) -> None:
            sent, status, body, stored = portal.call(post, case)
            check_answer(case, sent, status, body, stored)

        hostile()


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
@pytest.mark.parametrize("extra", [-1, 0, 1], ids=["63", "64", "65"])
def test_nesting_at_the_limit_on_every_route(anyio_backend: str, route: Route, extra: int) -> None:
    """The exact edge, on every route: 64 levels in all are taken, 65 are not."""
    value = nested(MAX_DEPTH - route.embedding + extra, ["list"] * MAX_DEPTH)
    case = Case(route, route.place(value.text, "{cid}"), "application/json", value)
    with (
        start_blocking_portal(anyio_backend) as portal,
        portal.wrap_async_context_manager(open_app(agent=ScriptedAgent())) as env,
    ):

        async def run() -> tuple[int, int, bytes, bool]:
            if not route.fresh:
                await env.send(EXISTING, "hello")
                await wait_for_status(env.sup, EXISTING, Status.IDLE, scope="alice")
            cid = "c-new" if route.fresh else EXISTING
            sent = case.body.replace(b"{cid}", cid.encode())
            response = await env.client.post(
                route.path.replace("{cid}", cid),
                content=sent,
                headers={**ALICE, "Content-Type": "application/json"},
            )
            stored = route.fresh and await env.sup.store.load(cid) is not None
            return len(sent), response.status_code, response.content, stored

        sent, status, body, stored = portal.call(run)
    check_answer(case, sent, status, body, stored)
    refused_as_too_deep = status == 400 and json.loads(body)["error"] == "InvalidJSON"
    assert refused_as_too_deep == (extra > 0), (status, body[:200])


# -- a real server under hostile load ---------------------------------------------------

SERVER = """
import sys, uvicorn
from sessionvisor import SessionSupervisor, SingleRouter
from sessionvisor.http import create_app
from sessionvisor.testing import ScriptedAgent

agent = ScriptedAgent()
supervisor = SessionSupervisor(SingleRouter(lambda agent_id, config: agent))
uvicorn.run(create_app(supervisor), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning", lifespan="on")
"""

MiB = 1024 * 1024


def _in_opts(value: bytes) -> bytes:
    return b'{"content": "hi", "request_opts": {"x": ' + value + b"}}"


#: About 1 MiB each (the default limit is 1 MiB and 64 KiB), all refused.
HOSTILE_BODIES = {
    "350k empty arrays": _in_opts(b"[" + b",".join([b"[]"] * (MiB // 3)) + b"]"),
    "500k levels deep": _in_opts(b"[" * (MiB // 2) + b"]" * (MiB // 2)),
    "8k arrays 60 deep": _in_opts(b"[" + b",".join([b"[" * 60 + b"]" * 60] * (MiB // 121)) + b"]"),
    "49k arrays then 1e999": _in_opts(
        b"[" + b",".join([b"[]"] * 49_000) + b',"' + b"x" * (MiB - 160_000) + b'", 1e999]'
    ),
    "500k ints then 1e999": _in_opts(b"[" + b",".join([b"1"] * (MiB // 2 - 40)) + b", 1e999]"),
    "95k keys then NaN": _in_opts(
        b"{" + b",".join(b'"k%d": 1' % i for i in range(95_000)) + b', "z": NaN}'
    ),
    "116k lone surrogates": _in_opts(b"[" + b",".join([b'"\\ud800"'] * (MiB // 9)) + b"]"),
    "1 MiB string, raw surrogate at its end": b'{"content": "'
    + b"x" * (MiB - 40)
    + b'\xed\xa0\x80"}',
    "500k ints as request_opts": _in_opts(b"[" + b",".join([b"1"] * (MiB // 2 - 40)) + b"]"),
    "260k strings then a lone one": _in_opts(
        b"[" + b",".join([b'"a"'] * (MiB // 4 - 40)) + b', "\\udfff"]'
    ),
}


@contextmanager
def server_process() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=5) as client:

            def healthy() -> bool:
                assert proc.poll() is None, "the server exited"
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False  # the port is not open yet

            wait_until_sync(healthy, timeout=30, interval=0.05, message="the server started")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _post_raw(port: int, path: str, body: bytes) -> int:
    """POST over a plain socket: sending 1 MiB barely needs this process' GIL."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-User: eve\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_healthz_answers_within_100_ms_while_hostile_bodies_flow() -> None:
    with server_process() as url:
        port = int(url.rsplit(":", 1)[1])
        answers: dict[str, list[int]] = {}
        errors: list[BaseException] = []
        finished = threading.Event()

        def hostile() -> None:
            try:
                for round_ in range(2):
                    for i, (name, body) in enumerate(HOSTILE_BODIES.items()):
                        path = f"/conversations/h-{round_}-{i}/messages"
                        answers.setdefault(name, []).append(_post_raw(port, path, body))
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)
            finally:
                finished.set()

        sender = threading.Thread(target=hostile, daemon=True)
        probes: list[float] = []
        with httpx.Client(base_url=url, timeout=5) as client:
            client.get("/healthz")  # the connection is open before the load starts
            sender.start()
            while not finished.is_set():
                started = time.perf_counter()
                response = client.get("/healthz")
                probes.append(time.perf_counter() - started)
                assert response.status_code == 200
        sender.join(10)
    assert not errors, errors
    assert len(probes) >= 20, f"only {len(probes)} probes: the load ended too soon to tell"
    slowest = max(probes)
    print(f"/healthz under hostile load: max {slowest * 1000:.1f} ms of {len(probes)} probes")
    assert slowest < 0.1, (
        f"/healthz took {slowest * 1000:.0f} ms under hostile load "
        f"(median {sorted(probes)[len(probes) // 2] * 1000:.1f} ms of {len(probes)})"
    )
    assert len(answers) == len(HOSTILE_BODIES) and all(len(a) == 2 for a in answers.values())
    assert all(400 <= s < 500 for a in answers.values() for s in a), answers
