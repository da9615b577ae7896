"""A real server running a pydantic-ai agent, killed with ``kill -9`` in the middle of
its turns, never repeats a completed tool call or model response, and it answers every
accepted message once.

``python -m sessionvisor serve pai_app:router`` serves the agent of
``tests/_support/pai_steps.py``: a ``PydanticAIAgent`` over a ``FunctionModel``
that makes three (non-idempotent) tool calls per turn, one per model response,
then answers; each model call and each tool writes a line with fsync. Each
round sends one or two messages to different conversations, kills the server
with SIGKILL, then starts it again and waits, with no request, until every
turn has ended. A tool cut while it ran leaves its turn at an
``unknown_outcome`` interrupt: the test answers it ``"skip"`` with ``POST
/conversations/{cid}/resume`` (the policy), and the reply tells the model it
was skipped. Even rounds kill inside a chosen call: a model request (after it
was made, before its response was stored) or a tool (before or after its side
effect) blocks until the kill; every ten such rounds cut each of the ten
places once. Odd rounds kill after a random delay. The checks, at the end,
read the store, ``GET /conversations/{cid}/steps`` and ``.../usage`` and the
two files:

- a tool whose step completed ran once; one cut inside ran at most once, was
  reported as ``unknown_outcome`` and was skipped, never called again;
- every model call either gave a stored response or was cut by a kill (at
  most one per killed server and conversation), and no call was made after
  its response was stored;
- every acknowledged message is stored once and answered by exactly one reply;
- ``GET .../usage`` equals the sum over the stored responses, as do the
  ``model:<n>`` steps ``GET .../steps`` lists, response for response.

The rounds run on SQLite and on PostgreSQL (a fresh database). There are 10
rounds each by default (together about a minute at most);
``STEP_CRASH_ROUNDS`` sets another number (up to 20 keeps every step of a
conversation in the bounded audit trail: each conversation takes at most 7
messages) and ``STEP_CRASH_SEED`` replays a seed (a failure prints the seed).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from sessionvisor.state import State
from sessionvisor.testing import free_port, wait_until_sync
from tests._support.crash_rounds import seed_from_env, store_of
from tests._support.pai_steps import (
    TOOLS,
    Seen,
    Served,
    calls,
    check,
    effects,
    held,
    write_app,
)
from tests.http._cli import Running, running

ROUNDS = int(os.environ.get("STEP_CRASH_ROUNDS", "10"))
CONVERSATIONS = tuple(f"p-{i}" for i in range(6))
#: The most messages one conversation gets: 7 turns of at most 14 steps (a
#: turn cut in a tool is resumed by a second turn) stay within the audit trail's 100.
PER_CONVERSATION = 7
HEADERS = {"X-User": "alice"}
#: The longest random delay before a kill, in seconds: about two turns.
MAX_DELAY = 0.15
WAIT = 60.0


def _ended(states: dict[str, State | None], sent: dict[str, list[str]]) -> bool:
    """Every acknowledged message is stored and each conversation's last turn ended:
    answered, or at an interrupt."""
    for cid, wanted in sent.items():
        state = states.get(cid)
        if state is None:
            return False
        users = [m.id for m in state.messages if m.role == "user"]
        if len(users) < len(wanted) or state.queued or state.journal is not None:
            return False
        if state.interrupt is None and state.messages[-1].role != "assistant":
            return False
    return True


@contextmanager
def _serving(store_url: str, port: int, cwd: Path) -> Iterator[Running]:
    args = ("serve", "pai_app:router", "--store", store_url, "--port", str(port))
    args += ("--inactivity-timeout", "none", "--log-level", "warning")
    with running(*args, cwd=cwd, healthy_on=port) as server:
        yield server


def _wait_held(where: Path, line: str, server: Running, replay: str) -> None:
    wait_until_sync(
        lambda: line in held(where),
        timeout=WAIT,
        interval=0.02,
        message=lambda: f"the turn blocks in {line}; {replay}\n{server.output}",
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_pydantic_ai_server_killed_inside_its_turns_never_repeats_a_completed_call(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    store_url, load = store_of(backend, tmp_path, CONVERSATIONS, request)
    seed = seed_from_env()
    replay = f"seed {seed} (STEP_CRASH_SEED={seed} STEP_CRASH_ROUNDS={ROUNDS} replays it)"
    print(f"pydantic-ai step crash test on {backend}: {replay}")
    rng = random.Random(seed)
    write_app(tmp_path)
    port = free_port()
    # Each place is cut once every ten held rounds, in a seeded order.
    cuts = [(f"model:{n}", "inside") for n in range(len(TOOLS) + 1)]
    cuts += [(tool, phase) for tool in TOOLS for phase in ("before", "after")]
    rng.shuffle(cuts)
    sent: dict[str, list[str]] = {}
    killed: list[int] = []
    cut_inside: list[tuple[str, str]] = []  # ("<cid> <turn> <what>", phase)
    skipped_over_http: list[str] = []

    def settle(server: Running, http: httpx.Client) -> dict[str, State | None]:
        """Wait until every turn has ended; answer each unknown-outcome interrupt
        "skip" and wait until its turn answered; return the stored conversations."""
        states: dict[str, State | None] = {}

        def ended(answered: bool) -> Callable[[], bool]:
            def done() -> bool:
                nonlocal states
                states = load()
                if answered and any(s is not None and s.interrupt for s in states.values()):
                    return False
                return _ended(states, sent)

            return done

        def stored() -> str:
            return f"{replay}\nstored: {states}\n{server.output}"

        wait_until_sync(ended(False), timeout=WAIT, interval=0.05, message=stored)
        for cid, state in states.items():
            if state is None or state.interrupt is None:
                continue
            kinds = [call["kind"] for call in state.interrupt.data["calls"]]
            assert kinds == ["unknown_outcome"], f"{cid}: {state.interrupt}; {replay}"
            answer = http.post(f"/conversations/{cid}/resume", json={"answer": "skip"})
            assert answer.status_code == 202, f"{answer.text}; {replay}"
            skipped_over_http.append(cid)
        wait_until_sync(ended(True), timeout=WAIT, interval=0.05, message=stored)
        return states

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=10) as http:
        for round_no in range(ROUNDS):
            with _serving(store_url, port, tmp_path) as server:
                settle(server, http)  # what the previous kill left, answered
                room = [c for c in CONVERSATIONS if len(sent.get(c, ())) < PER_CONVERSATION]
                targets = rng.sample(room, min(rng.randint(1, 2), len(room)))
                ids = [f"{cid}-r{round_no}-{j}" for j, cid in enumerate(targets)]
                hold = None
                if round_no % 2 == 0:
                    what, phase = cuts[(round_no // 2) % len(cuts)]
                    hold = (f"{targets[0]} {ids[0]} {what}", phase)
                    with (tmp_path / "holds.txt").open("a") as holds:
                        holds.write(f"{hold[0]} {hold[1]}\n")
                for cid, mid in zip(targets, ids, strict=True):
                    answer = http.post(
                        f"/conversations/{cid}/messages", json={"content": mid, "id": mid}
                    )
                    assert answer.status_code == 202, f"{answer.text}; {replay}"
                    sent.setdefault(cid, []).append(mid)
                if hold is None:
                    # This round's kill point: a seeded random time into the turns
                    # (not a wait for a condition).
                    time.sleep(rng.uniform(0, MAX_DELAY))
                else:
                    _wait_held(tmp_path, f"{hold[0]} {hold[1]}", server, replay)
                    cut_inside.append(hold)
                killed.append(server.proc.pid)
                server.proc.kill()  # SIGKILL
                server.proc.wait(10)
        with _serving(store_url, port, tmp_path) as server:
            states = settle(server, http)
            served = {}
            for cid in sent:
                steps = http.get(f"/conversations/{cid}/steps")
                usage = http.get(f"/conversations/{cid}/usage")
                assert steps.status_code == usage.status_code == 200, f"{cid}; {replay}"
                served[cid] = Served(steps=steps.json()["steps"], usage=usage.json())
            server.stop()  # a clean exit after all that

    seen = Seen()
    ran = effects(tmp_path)
    wrong = check(states, served, sent, calls(tmp_path), ran, killed, seen)
    assert not wrong, f"{replay}:\n" + "\n".join(wrong)
    assert seen.turns == sum(len(ids) for ids in sent.values()) >= ROUNDS, replay
    assert sorted(cid for cid, _, _ in seen.skipped) == sorted(skipped_over_http), replay
    for key, phase in cut_inside:
        cid, turn, what = key.split()
        if what.startswith("model:"):
            # Asked again after the kill: the cut call and the one that was kept.
            n = int(what.split(":")[1])
            tries = [c for c in calls(tmp_path) if (c.cid, c.turn, c.n) == (cid, turn, n)]
            assert len(tries) == 2, f"{key}: {tries}; {replay}"
        else:
            # Never called again: reported as unknown_outcome and skipped.
            assert (cid, turn, what) in seen.skipped, f"{key} cut inside, not skipped; {replay}"
            assert ran[(cid, turn, what)] == (1 if phase == "after" else 0), f"{key}; {replay}"
    print(
        f"{backend}: {ROUNDS} rounds, {seen.turns} turns, {seen.responses} responses, "
        f"{len(seen.recalled)} model calls cut and asked again, {len(seen.skipped)} tools skipped"
    )
