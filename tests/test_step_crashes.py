"""A real server killed with ``kill -9`` in the middle of multi-step turns never repeats
a completed step that is not idempotent, and it answers every accepted message once.

``python -m sessionvisor serve steps_app:router`` serves the step agent of
``tests/_support/steps.py``. Each turn runs five steps (``reserve``, ``quote``,
``charge``, ``render`` and ``notify``; ``quote`` and ``render`` are
idempotent), and each step writes a side-effect line with fsync. Each round
sends one to three messages to three conversations, kills the server with
SIGKILL, then starts it again and waits, with no request, until every message
is answered. Even rounds kill inside a chosen step: the step blocks before or
after its side effect until the kill, and over ten such rounds every step is
cut in both places. Odd rounds kill after a random delay. The checks read the
store (the stored steps, the replies) and the side-effect file:

- a step the store has as completed ran its side effect once when it is not
  idempotent (at least once when it is);
- a non-idempotent step never ran twice, and one cut inside is reported to the
  agent (StepOutcomeUnknown) and, as the agent's policy says, is not called
  again: the reply says ``unknown:<step>``;
- every acknowledged message is stored once and answered by exactly one reply.

The rounds run on SQLite and on PostgreSQL (a fresh database). There are 20
rounds each by default; ``STEP_CRASH_ROUNDS`` sets another number, and
``STEP_CRASH_SEED`` replays a seed (a failure prints the seed).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from sessionvisor.state import State
from sessionvisor.testing import free_port, wait_until_sync
from tests._support.crash_rounds import seed_from_env, store_of
from tests._support.steps import IDEMPOTENT, STEPS, Tally, check, effects, held, write_app
from tests.http._cli import Running, running

ROUNDS = int(os.environ.get("STEP_CRASH_ROUNDS", "20"))
CONVERSATIONS = ("k-0", "k-1", "k-2")
HEADERS = {"X-User": "alice"}
#: The longest random delay before a kill, in seconds: about two turns.
MAX_DELAY = 0.15
WAIT = 60.0


def _settled(states: dict[str, State | None], sent: dict[str, list[str]]) -> bool:
    """Every acknowledged message is stored and the conversation's last turn ended."""
    for cid, wanted in sent.items():
        state = states.get(cid)
        if state is None:
            return False
        users = [m.id for m in state.messages if m.role == "user"]
        if len(users) < len(wanted) or state.queued or state.journal is not None:
            return False
        if state.messages[-1].role != "assistant":
            return False
    return True


@contextmanager
def _serving(store_url: str, port: int, cwd: Path) -> Iterator[Running]:
    args = ("serve", "steps_app:router", "--store", store_url, "--port", str(port))
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


def _kill(server: Running) -> None:
    server.proc.kill()  # SIGKILL
    server.proc.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_server_killed_inside_steps_never_repeats_a_completed_step(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    store_url, load = store_of(backend, tmp_path, CONVERSATIONS, request)
    seed = seed_from_env()
    replay = f"seed {seed} (STEP_CRASH_SEED={seed} STEP_CRASH_ROUNDS={ROUNDS} replays it)"
    print(f"step crash test on {backend}: {replay}")
    rng = random.Random(seed)
    write_app(tmp_path)
    port = free_port()
    # Each (step, phase) is cut once every ten held rounds, in a seeded order.
    cuts = [(name, phase) for name, _ in STEPS for phase in ("before", "after")]
    rng.shuffle(cuts)
    sent: dict[str, list[str]] = {}
    tally = Tally()
    cut_inside: list[tuple[str, str]] = []  # ("<cid> <turn> <step>", phase)

    def all_answered(server: Running) -> None:
        states: dict[str, State | None] = {}

        def settled() -> bool:
            nonlocal states
            states = load()
            return _settled(states, sent)

        wait_until_sync(
            settled,
            timeout=WAIT,
            interval=0.05,
            message=lambda: f"every message answered; {replay}\nstored: {states}\n{server.output}",
        )
        wrong = check(states, sent, effects(tmp_path), tally)
        assert not wrong, f"{replay}:\n" + "\n".join(wrong)

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=10) as http:
        for round_no in range(ROUNDS):
            with _serving(store_url, port, tmp_path) as server:
                all_answered(server)  # what the previous kill left, answered with no request
                targets = [rng.choice(CONVERSATIONS) for _ in range(rng.randint(1, 3))]
                ids = [f"{cid}-r{round_no}-{j}" for j, cid in enumerate(targets)]
                hold = None
                if round_no % 2 == 0:
                    # Every conversation is idle here, so the first message starts a turn
                    # named by its id.
                    step, phase = cuts[(round_no // 2) % len(cuts)]
                    hold = (f"{targets[0]} {ids[0]} {step}", phase)
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
                _kill(server)
        with _serving(store_url, port, tmp_path) as server:
            all_answered(server)
            server.stop()  # a clean exit after all that

    assert tally.turns >= ROUNDS  # every round's messages were answered and checked
    ran = effects(tmp_path)
    for key, phase in cut_inside:
        step = key.split()[-1]
        if step in IDEMPOTENT:
            # Called again by the rerun: twice when the kill came after its effect.
            assert ran[tuple(key.split())] == (2 if phase == "after" else 1), f"{key}; {replay}"
        else:
            # Never called again: the agent was told and its reply says so.
            assert key in tally.unknown, f"{key} was cut inside but not reported; {replay}"
            assert ran[tuple(key.split())] == (1 if phase == "after" else 0), f"{key}; {replay}"
