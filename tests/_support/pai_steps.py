"""The pydantic-ai agent that the kill -9 test serves, and the checks that read its side effects.

``APP`` is the source of a module (``pai_app``) that a test writes into the
served process's working directory and serves with ``python -m sessionvisor
serve pai_app:router``. Its agent is a ``PydanticAIAgent`` (``stream=False``)
over a ``pydantic_ai.Agent`` on a ``FunctionModel``. Each turn answers one user
message whose text is its id, ``<conversation>-r<round>-<j>`` (the turn's id).
The model function reads the history: after ``n`` tool results since the
turn's prompt it calls the tool ``TOOLS[n]`` (one call per response, with the
tool call id ``c<n>-<nonce>``), and after three it answers ``answered <turn>
<nonce>: <result> | <result> | <result>``. Each call first appends the line
``<conversation> <turn> <n> <nonce>`` to ``calls.log`` with fsync, where
``<nonce>`` is ``<pid>.<count>`` (unique to the call), and every response
reports a usage that differs from call to call. Each tool appends ``<conversation>
<turn> <tool>`` to ``effects.log`` with fsync (the side effect) and returns
``<tool> done``. No tool is idempotent.

Model calls and tools sleep ``PAUSE`` seconds around their line, so that a
kill at a random time often lands inside one. A line ``<conversation> <turn>
<what> <phase>`` in ``holds.txt`` makes a model call (``model:<n> inside``,
after its line) or a tool (``<tool> before`` or ``<tool> after`` its side
effect) block until the process is killed; it first appends the line to
``held.log``. Each blocks once only, so the rerun after the kill goes through.

``check`` compares the store, what ``GET /conversations/{cid}/steps`` and
``.../usage`` answered, and the two log files.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart

from sessionvisor.agents.pydantic_ai import SKIPPED_MESSAGE, load_history
from sessionvisor.state import State
from tests._support.crash_rounds import APP_HELPERS, read_lines

__all__ = [
    "APP",
    "TOOLS",
    "Call",
    "Seen",
    "Served",
    "calls",
    "check",
    "effects",
    "held",
    "write_app",
]

#: The tools each turn calls, in order (none idempotent).
TOOLS = ("reserve", "charge", "notify")

APP = '''
"""A PydanticAIAgent on a FunctionModel whose three tools write side effects
(tests/_support/pai_steps.py)."""

import itertools
import os
from pathlib import Path

import anyio
from pydantic_ai import Agent
from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.messages import ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import FunctionModel
from pydantic_ai.usage import RequestUsage

from sessionvisor import SessionOpts, SingleRouter
from sessionvisor.agents.pydantic_ai import PydanticAIAgent

HERE = Path(__file__).resolve().parent
CALLS = HERE / "calls.log"
EFFECTS = HERE / "effects.log"
HOLDS = HERE / "holds.txt"
HELD = HERE / "held.log"
PAUSE = float(os.environ.get("STEP_APP_PAUSE", "0.004"))
TOOLS = TOOLS_HERE
COUNT = itertools.count(1)


APP_HELPERS_HERE


def _has_prompt(message):
    return isinstance(message, ModelRequest) and any(
        isinstance(part, UserPromptPart) for part in message.parts
    )


async def respond(messages, info):
    at = max(i for i, message in enumerate(messages) if _has_prompt(message))
    prompt = "".join(
        part.content
        for part in messages[at].parts
        if isinstance(part, UserPromptPart) and isinstance(part.content, str)
    )
    turn = prompt.split()[0]
    cid = turn.rsplit("-r", 1)[0]
    results = [
        part.content
        for message in messages[at + 1 :]
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]
    n = len(results)
    count = next(COUNT)
    nonce = f"{os.getpid()}.{count}"
    _append(CALLS, f"{cid} {turn} {n} {nonce}")
    await anyio.sleep(PAUSE)
    await _hold(f"{cid} {turn} model:{n}", "inside")
    await anyio.sleep(PAUSE)
    usage = RequestUsage(input_tokens=10 * len(messages) + n, output_tokens=1 + count % 97)
    if n < len(TOOLS):
        call = ToolCallPart(TOOLS[n], {"key": f"{cid} {turn}"}, tool_call_id=f"c{n}-{nonce}")
        return ModelResponse(parts=[call], usage=usage, model_name="pai-steps")
    text = f"answered {turn} {nonce}: " + " | ".join(str(r) for r in results)
    return ModelResponse(parts=[TextPart(text)], usage=usage, model_name="pai-steps")


def _tool(name):
    async def tool(key: str) -> str:
        await anyio.sleep(PAUSE)
        await _hold(f"{key} {name}", "before")
        _append(EFFECTS, f"{key} {name}")
        await _hold(f"{key} {name}", "after")
        await anyio.sleep(PAUSE)
        return f"{name} done"

    return tool


def create_agent(agent_id, config):
    agent = Agent(FunctionModel(function=respond, model_name="pai-steps"))
    for name in TOOLS:
        agent.tool_plain(name=name)(_tool(name))
    return PydanticAIAgent(agent, stream=False), SessionOpts()


router = SingleRouter(create_agent)
'''


def write_app(where: Path) -> None:
    """Write ``pai_app.py`` into ``where`` (the served process's working directory)."""
    (where / "pai_app.py").write_text(
        APP.replace("APP_HELPERS_HERE", APP_HELPERS).replace("TOOLS_HERE", repr(TOOLS))
    )


@dataclass(frozen=True)
class Call:
    """One model call, as ``calls.log`` has it."""

    cid: str
    turn: str
    n: int  # tool results the model had seen in this turn
    nonce: str

    @property
    def pid(self) -> int:
        return int(self.nonce.split(".")[0])


def calls(where: Path) -> list[Call]:
    """The model calls, in the order they were made."""
    out = []
    for line in read_lines(where / "calls.log"):
        cid, turn, n, nonce = line.split()
        out.append(Call(cid, turn, int(n), nonce))
    return out


def effects(where: Path) -> Counter[tuple[str, str, str]]:
    """How many times each ``(conversation, turn, tool)`` ran its side effect."""
    counted: Counter[tuple[str, str, str]] = Counter()
    for line in read_lines(where / "effects.log"):
        cid, turn, tool = line.split()
        counted[(cid, turn, tool)] += 1
    return counted


def held(where: Path) -> list[str]:
    """The ``<conversation> <turn> <what> <phase>`` lines of the calls that blocked."""
    return read_lines(where / "held.log")


@dataclass
class Served:
    """What the server answered for one conversation: ``GET .../steps`` and ``.../usage``."""

    steps: list[dict[str, Any]]
    usage: dict[str, Any]


@dataclass
class Seen:
    """Counts of what the check saw, for the test's own assertions."""

    turns: int = 0
    responses: int = 0
    recalled: list[Call] = field(default_factory=list)  # calls cut before their response was kept
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (cid, turn, tool)
    answered: list[tuple[str, str]] = field(default_factory=list)  # (cid, turn)


_NONCE = re.compile(r"^c(\d+)-(\d+\.\d+)$")


def _nonce_of(response: ModelResponse) -> str | None:
    for part in response.parts:
        if isinstance(part, ToolCallPart):
            found = _NONCE.match(part.tool_call_id)
            return found.group(2) if found else None
        if isinstance(part, TextPart) and part.content.startswith("answered "):
            return part.content.split()[2].rstrip(":")
    return None


def check(
    states: Mapping[str, State | None],
    served: Mapping[str, Served],
    sent: Mapping[str, Sequence[str]],
    made: Sequence[Call],
    ran: Counter[tuple[str, str, str]],
    killed: Collection[int],
    seen: Seen,
) -> list[str]:
    """What is wrong, once every conversation has settled after the last kill.

    ``states`` are the stored conversations and ``served`` what the server
    answered for them; ``sent`` has the acknowledged message ids in the order
    they were sent; ``made`` comes from ``calls``, ``ran`` from ``effects``;
    ``killed`` are the pids of the servers killed with SIGKILL.

    The stored responses (pydantic-ai's history in the store) are the model
    responses that count. Each model call either made one of them or was cut
    before its response was stored, by a kill (one such call per killed
    server and conversation at most), and is then asked again; no call comes
    after its response was stored. A tool whose step completed ran once; one
    left unknown (cut while it ran, then skipped) ran at most once; no tool ran
    twice or outside a stored step.
    """
    wrong: list[str] = []
    stored: dict[str, tuple[str, ModelResponse]] = {}  # nonce -> (cid, response)
    for cid, wanted in sent.items():
        state = states.get(cid)
        if state is None:
            wrong.append(f"{cid}: not stored")
            continue
        wrong.extend(_check_messages(cid, state, wanted, seen))
        responses = [m for m in load_history(state) if isinstance(m, ModelResponse)]
        for response in responses:
            nonce = _nonce_of(response)
            if nonce is None or nonce in stored:
                wrong.append(f"{cid}: a stored response without a distinct nonce: {response}")
                continue
            stored[nonce] = (cid, response)
        seen.responses += len(responses)
        wrong.extend(_check_usage(cid, responses, served.get(cid)))
    wrong.extend(_check_calls(made, stored, killed, seen))
    wrong.extend(_check_tools(served, made, ran, seen))
    return wrong


def _check_messages(cid: str, state: State, wanted: Sequence[str], seen: Seen) -> list[str]:
    wrong: list[str] = []
    users = [m.id for m in state.messages if m.role == "user"]
    if users != list(wanted):
        wrong.append(f"{cid}: user messages {users}, acknowledged {list(wanted)}")
    if state.queued or state.journal is not None or state.interrupt is not None:
        wrong.append(f"{cid}: not settled (queued, an open journal or an interrupt)")
    roles = [m.role for m in state.messages]
    if roles != ["user", "assistant"] * (len(roles) // 2) or len(roles) % 2:
        return [*wrong, f"{cid}: messages are not one reply per user message: {roles}"]
    for user, reply in zip(state.messages[::2], state.messages[1::2], strict=True):
        text = reply.text()
        if not text.startswith(f"answered {user.id} "):
            wrong.append(f"{cid}: the reply to {user.id} is {text!r}")
            continue
        results = text.split(": ", 1)[1].split(" | ")
        for tool, result in zip(TOOLS, results, strict=False):
            if result == SKIPPED_MESSAGE:
                seen.skipped.append((cid, user.id, tool))
            elif result != f"{tool} done":
                wrong.append(f"{cid}: the reply to {user.id} says {result!r} for {tool}")
        if len(results) != len(TOOLS):
            wrong.append(f"{cid}: the reply to {user.id} has {len(results)} tool results")
        seen.turns += 1
        seen.answered.append((cid, user.id))
    return wrong


def _check_usage(cid: str, responses: list[ModelResponse], served: Served | None) -> list[str]:
    if served is None:
        return [f"{cid}: no steps or usage served"]
    wrong = []
    kept = [(response.usage.input_tokens, response.usage.output_tokens) for response in responses]
    steps = [s for s in served.steps if s["name"].startswith("model:")]
    if any(s["status"] != "completed" for s in steps):
        wrong.append(f"{cid}: model steps not completed: {steps}")
    listed = [(s["usage"]["input_tokens"], s["usage"]["output_tokens"]) for s in steps]
    if listed != kept:
        wrong.append(f"{cid}: model step usage {listed}, stored responses {kept}")
    total = {
        "input_tokens": sum(i for i, _ in kept),
        "output_tokens": sum(o for _, o in kept),
        "requests": len(kept),
    }
    answered = {key: served.usage[key] for key in total}
    if answered != total:
        wrong.append(f"{cid}: GET usage {served.usage}, the stored responses sum to {total}")
    return wrong


def _check_calls(
    made: Sequence[Call],
    stored: Mapping[str, tuple[str, ModelResponse]],
    killed: Collection[int],
    seen: Seen,
) -> list[str]:
    wrong: list[str] = []
    by_key: dict[tuple[str, str, int], list[Call]] = {}
    for call in made:
        by_key.setdefault((call.cid, call.turn, call.n), []).append(call)
    nonces = {call.nonce for call in made}
    for nonce, (cid, _) in stored.items():
        if nonce not in nonces:
            wrong.append(f"{cid}: a stored response ({nonce}) that no model call made")
    cut_per_server: Counter[tuple[int, str]] = Counter()
    for key, tries in by_key.items():
        kept = [i for i, call in enumerate(tries) if call.nonce in stored]
        if len(kept) != 1:
            wrong.append(f"{key}: {len(kept)} stored responses among the calls {tries}")
            continue
        if kept[0] != len(tries) - 1:
            wrong.append(f"{key}: requested again after its response was stored: {tries}")
        for call in tries[: kept[0]]:
            seen.recalled.append(call)
            if call.pid not in killed:
                wrong.append(f"{key}: {call} lost its response in a server that was not killed")
            cut_per_server[(call.pid, call.cid)] += 1
    for (pid, cid), times in cut_per_server.items():
        if times > 1:
            wrong.append(f"{cid}: server {pid} lost {times} responses (a kill cuts one)")
    return wrong


def _check_tools(
    served: Mapping[str, Served],
    made: Sequence[Call],
    ran: Counter[tuple[str, str, str]],
    seen: Seen,
) -> list[str]:
    wrong: list[str] = []
    by_nonce = {call.nonce: call for call in made}
    stepped: dict[tuple[str, str, str], str] = {}
    for cid, answered in served.items():
        for step in answered.steps:
            if not step["name"].startswith("tool:"):
                continue
            _, tool, call_id = step["name"].split(":", 2)
            found = _NONCE.match(call_id)
            call = by_nonce.get(found.group(2)) if found else None
            if call is None or call.cid != cid or TOOLS[call.n] != tool:
                wrong.append(f"{cid}: tool step {step['name']} matches no model call")
                continue
            key = (cid, call.turn, tool)
            if key in stepped:
                wrong.append(f"{cid}: two steps for {key}")
            stepped[key] = step["status"]
    skipped = set(seen.skipped)
    for key, status in stepped.items():
        times = ran[key]
        if status == "completed" and times != 1:
            wrong.append(f"{key}: its step completed, its side effect ran {times} times")
        elif status == "unknown":
            if times > 1:
                wrong.append(f"{key}: left unknown, its side effect ran {times} times")
            if key not in skipped:
                wrong.append(f"{key}: left unknown but the reply does not say it was skipped")
        elif status not in ("completed", "unknown"):
            wrong.append(f"{key}: its step is {status}")
    for key, times in ran.items():
        if key not in stepped:
            wrong.append(f"{key}: the side effect ran {times} times outside any stored step")
        elif times > 1:
            wrong.append(f"{key}: the side effect ran {times} times")
    for cid, turn in seen.answered:
        for tool in TOOLS:
            if (cid, turn, tool) not in stepped:
                wrong.append(f"{cid}: no stored step for {tool} of {turn}")
    for key in skipped:
        if stepped.get(key) != "unknown":
            wrong.append(f"{key}: skipped, but its step is {stepped.get(key)}")
    return wrong
