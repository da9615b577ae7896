"""The step agent that the kill -9 tests serve, and the checks that read its side effects.

``APP`` is the source of a module (``steps_app``) that a test writes into the
served process's working directory and serves with ``python -m sessionvisor
serve steps_app:router``. Its agent (a ``FunctionAgent``) runs five steps per
turn. Each step appends one line ``<conversation> <turn> <step>`` to
``effects.log`` with fsync (the side effect), where ``<turn>`` is the id of the
first user message that the turn answers. Two steps are idempotent; three are not.

When the agent's policy meets ``StepOutcomeUnknown``, it does not call the
step again. It goes on with the next step and writes ``unknown:<step>`` in its
reply, which is ``answered <turn>: ok:<step> ... unknown:<step> ...`` in step order.

Before and after its side effect each step sleeps ``PAUSE`` seconds, so that a
kill at a random time often lands inside a step. A test can also make a
step block until it is killed: a line ``<conversation> <turn> <step>
<before|after>`` in ``holds.txt`` makes that step block before or after its side
effect. The step first appends the line to ``held.log``, so a test can wait
for it. A step blocks only once per turn, so the rerun after the kill goes
through.

``check`` compares what a store holds with what was acknowledged and what
``effects.log`` says happened.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sessionvisor.state import State, StepRecord
from tests._support.crash_rounds import APP_HELPERS, read_lines

__all__ = ["APP", "IDEMPOTENT", "STEPS", "Tally", "check", "effects", "held", "write_app"]

#: The steps of every turn, in order, and whether each is idempotent.
STEPS: tuple[tuple[str, bool], ...] = (
    ("reserve", False),
    ("quote", True),
    ("charge", False),
    ("render", True),
    ("notify", False),
)
IDEMPOTENT = {name for name, idempotent in STEPS if idempotent}

APP = '''
"""A FunctionAgent of five durable steps that each write a side effect (tests/_support/steps.py)."""

import os
from pathlib import Path

import anyio

from sessionvisor import Done, FunctionAgent, SessionOpts, SingleRouter, StepOutcomeUnknown

HERE = Path(__file__).resolve().parent
EFFECTS = HERE / "effects.log"
HOLDS = HERE / "holds.txt"
HELD = HERE / "held.log"
PAUSE = float(os.environ.get("STEP_APP_PAUSE", "0.004"))
STEPS = STEPS_HERE


APP_HELPERS_HERE


async def _effect(key):
    await anyio.sleep(PAUSE)
    await _hold(key, "before")
    _append(EFFECTS, key)
    await _hold(key, "after")
    await anyio.sleep(PAUSE)
    return key


def _turn_id(state):
    first = None
    for message in reversed(state.messages):
        if message.role != "user":
            break
        first = message.id
    return first


async def run(turn):
    turn_id = _turn_id(turn.state)
    done = []
    for name, idempotent in STEPS:
        key = f"{turn.conversation_id} {turn_id} {name}"
        try:
            await turn.step(name, _effect, key, idempotent=idempotent)
        except StepOutcomeUnknown:
            done.append(f"unknown:{name}")  # the policy: never call it again
        else:
            done.append(f"ok:{name}")
    return Done(turn.state, reply=f"answered {turn_id}: " + " ".join(done))


def create_agent(agent_id, config):
    return FunctionAgent(run), SessionOpts()


router = SingleRouter(create_agent)
'''


def write_app(where: Path) -> None:
    """Write ``steps_app.py`` into ``where`` (the served process's working directory)."""
    (where / "steps_app.py").write_text(
        APP.replace("APP_HELPERS_HERE", APP_HELPERS).replace("STEPS_HERE", repr(STEPS))
    )


def effects(where: Path) -> Counter[tuple[str, str, str]]:
    """How many times each ``(conversation, turn, step)`` ran its side effect."""
    counted: Counter[tuple[str, str, str]] = Counter()
    for line in read_lines(where / "effects.log"):
        cid, turn, step = line.split()
        counted[(cid, turn, step)] += 1
    return counted


def held(where: Path) -> list[str]:
    """The ``<conversation> <turn> <step> <phase>`` lines of the steps that blocked."""
    return read_lines(where / "held.log")


@dataclass
class Tally:
    """What the checks saw, over every check so far."""

    turns: int = 0
    unknown: list[str] = field(default_factory=list)  # "<cid> <turn> <step>" reported unknown
    repeated: list[str] = field(default_factory=list)  # idempotent steps whose effect ran twice+
    checked: set[tuple[str, str]] = field(default_factory=set)  # (cid, turn) already checked


def check(
    states: Mapping[str, State | None],
    sent: Mapping[str, Sequence[str]],
    ran: Counter[tuple[str, str, str]],
    tally: Tally,
) -> list[str]:
    """What is wrong, once every acknowledged message should be answered.

    ``states`` has the stored conversations, and ``sent`` has the acknowledged
    message ids of each conversation in the order they were sent. ``ran`` comes
    from ``effects``. Turns that an earlier call already checked are not
    checked again, because the audit trail is bounded. The stored steps are the
    truth about what completed: a step counts as completed once the store has
    its result.
    """
    wrong: list[str] = []
    answered_turns: set[tuple[str, str]] = set()
    for cid, wanted in sent.items():
        state = states.get(cid)
        if state is None:
            wrong.append(f"{cid}: not stored")
            continue
        users = [m.id for m in state.messages if m.role == "user"]
        if users != list(wanted):
            wrong.append(f"{cid}: user messages {users}, acknowledged {list(wanted)}")
        if state.queued:
            wrong.append(f"{cid}: still queued {[m.id for m in state.queued]}")
        if state.journal is not None:
            wrong.append(f"{cid}: a turn's journal is still open: {state.journal.turn}")
        trail: dict[str, dict[int, StepRecord]] = {}
        for record in state.steps:
            trail.setdefault(record.turn, {})[record.index] = record
        block: list[str] = []
        for i, message in enumerate(state.messages):
            if message.role == "user":
                block.append(message.id)
                continue
            if message.role != "assistant" or not block:
                wrong.append(f"{cid}: {message.role} message at {i} answers nothing")
                continue
            turn_id = block[0]
            block = []
            answered_turns.add((cid, turn_id))
            text = message.text()
            head = f"answered {turn_id}: "
            if not text.startswith(head):
                wrong.append(f"{cid}: reply at {i} does not answer {turn_id}: {text!r}")
                continue
            if (cid, turn_id) in tally.checked:
                continue
            tally.checked.add((cid, turn_id))
            tally.turns += 1
            wrong.extend(_check_turn(cid, turn_id, text[len(head) :].split(), trail, ran, tally))
        if block:
            wrong.append(f"{cid}: unanswered {block}")
    for (cid, turn_id, step), times in sorted(ran.items()):
        if step not in IDEMPOTENT and times > 1:
            wrong.append(f"{cid}: non-idempotent step {step} of {turn_id} ran {times} times")
        if cid in sent and (cid, turn_id) not in answered_turns:
            wrong.append(f"{cid}: step {step} ran for {turn_id}, which no reply answers")
    return wrong


def _check_turn(
    cid: str,
    turn_id: str,
    said: list[str],
    trail: Mapping[str, Mapping[int, StepRecord]],
    ran: Counter[tuple[str, str, str]],
    tally: Tally,
) -> list[str]:
    wrong: list[str] = []
    records = trail.get("m-" + turn_id, {})
    expected = [f"ok:{name}" for name, _ in STEPS]
    if len(said) != len(STEPS):
        return [f"{cid}: reply to {turn_id} names {said}, not the five steps"]
    for index, (name, idempotent) in enumerate(STEPS):
        record = records.get(index)
        times = ran[(cid, turn_id, name)]
        where = f"{cid}: step {index} {name} of {turn_id}"
        if record is None:
            wrong.append(f"{where}: not in the stored steps")
            continue
        status = record.status
        if record.name != name or record.idempotent != idempotent:
            wrong.append(f"{where}: stored as {record.name} (idempotent={record.idempotent})")
        if status == "completed":
            if said[index] != expected[index]:
                wrong.append(f"{where}: completed, but the reply says {said[index]}")
            if idempotent:
                if times < 1:
                    wrong.append(f"{where}: completed without its side effect")
                elif times > 1:
                    tally.repeated.append(f"{cid} {turn_id} {name}")
            elif times != 1:
                wrong.append(f"{where}: completed, side effect ran {times} times")
        elif status == "unknown":
            tally.unknown.append(f"{cid} {turn_id} {name}")
            if idempotent:
                wrong.append(f"{where}: idempotent but left unknown (it runs again)")
            if said[index] != f"unknown:{name}":
                wrong.append(f"{where}: unknown, but the reply says {said[index]}")
            if times > 1:
                wrong.append(f"{where}: unknown, side effect ran {times} times")
        else:
            wrong.append(f"{where}: stored as {status}")
    return wrong
