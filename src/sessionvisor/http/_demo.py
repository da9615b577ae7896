"""The offline demo agent behind ``python -m sessionvisor demo``.

It needs no model and no network, and shows what the runtime does: replies
stream word by word; a message that mentions "delete" or "dangerous" makes it
ask for approval (an interrupt) before running a pretend dangerous tool; the
word "crash" makes it raise, and since its sessions restart on error the
supervisor restarts it. Two personas, picked by ``request_opts["persona"]``
through a ``KeyedRouter``, show sticky routing. "remind me in N seconds to X"
schedules a durable timer (``turn.schedule``): it answers at once, and when the
timer fires (``on_timer``) it says "Reminder: X".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import anyio

from .._errors import StepOutcomeUnknown
from ..agents import Done, Interrupt, Outcome, Turn
from ..factories import SessionOpts
from ..routers import KeyedRouter
from ..state import Message, PendingInterrupt, State

__all__ = ["DANGEROUS_TOOL", "DemoAgent", "demo_router"]

#: The pretend tool the demo agent asks approval for.
DANGEROUS_TOOL = "delete_files"

_PERSONAS = {
    "helper": "Hello{name}! You said: “{text}”.",
    "pirate": "Arr{name}, matey! Ye said: “{text}”.",
}
_ABOUT = (
    "I am the offline demo agent of sessionvisor. I stream my replies word by word; "
    "mention delete or dangerous and I will ask before running a dangerous tool; "
    "say crash and I will crash, and the supervisor will restart me."
)
_CRASH_NOTE = "The demo agent crashed on purpose and was restarted."
_WORD = re.compile(r"[a-z]+")
_REMIND = re.compile(
    r"remind me in (\d+(?:\.\d+)?) ?(seconds?|secs?|s|minutes?|mins?|m|hours?|h)\b"
    r"\s*(?:to\s+)?(.*)",
    re.IGNORECASE | re.DOTALL,
)
_UNIT = {"s": 1, "m": 60, "h": 3600}


def _pending(state: State) -> list[Message]:
    """The user messages since the agent last spoke (or was restarted)."""
    found: list[Message] = []
    for message in reversed(state.messages):
        if message.role in ("assistant", "system"):
            break
        if message.role == "user" and not message.metadata.get("resume"):
            found.append(message)
    found.reverse()
    return found


def _words(messages: list[Message]) -> set[str]:
    return {w for m in messages for w in _WORD.findall(m.text().lower())}


def _caller(scope: Any) -> str | None:
    """The name to greet: the X-User name, or the owner of a verified token (``jwt_scope``)."""
    if isinstance(scope, str):
        return scope
    if isinstance(scope, Mapping) and isinstance(scope.get("owner"), str):
        return str(scope["owner"])
    return None


def _approved(answer: Any) -> bool:
    if isinstance(answer, Mapping):
        answer = answer.get("approved")
    if isinstance(answer, str):
        return answer.strip().lower() in ("yes", "y", "true", "approve", "approved", "ok")
    return answer is True


async def _dangerous_tool(path: str) -> str:
    """The pretend dangerous tool: it deletes nothing, and says what it would have done."""
    return f"{DANGEROUS_TOOL}(path={path!r}) -> deleted 3 files (pretend: this is a demo)"


class DemoAgent:
    """A scripted, offline chat agent (see the module docstring).

    Args:
        persona: ``"helper"`` or ``"pirate"``: how it greets.
        word_delay: seconds between streamed words.
    """

    def __init__(self, persona: str = "helper", *, word_delay: float = 0.06) -> None:
        self.persona = persona if persona in _PERSONAS else "helper"
        self.word_delay = word_delay

    def __repr__(self) -> str:
        return f"DemoAgent({self.persona!r})"

    async def _say(self, turn: Turn, text: str) -> None:
        for i, word in enumerate(text.split(" ")):
            turn.delta(word if i == 0 else " " + word)
            await anyio.sleep(self.word_delay)

    async def on_start(self, state: State) -> State:
        """After a crash, note it, so the message that caused it is not answered again."""
        pending = _pending(state)
        if pending and "crash" in _words(pending):
            state.messages.append(
                Message(role="system", content=_CRASH_NOTE, metadata={"demo": "restarted"})
            )
        return state

    async def run(self, turn: Turn) -> Outcome:
        """Answer the user messages since the last reply (several when they queued)."""
        pending = _pending(turn.state)
        words = _words(pending)
        if "crash" in words:
            raise RuntimeError("the demo agent crashed on purpose (the message said 'crash')")
        if words & {"delete", "dangerous"}:
            await self._say(
                turn,
                f"That needs the dangerous tool {DANGEROUS_TOOL}. "
                "I will not run it without your approval.",
            )
            return Interrupt(
                turn.state,
                {
                    "question": f"Allow the agent to run the dangerous tool {DANGEROUS_TOOL}?",
                    "tool_calls": [
                        {
                            "name": DANGEROUS_TOOL,
                            "args": {"path": "/tmp/sessionvisor-demo", "recursive": True},
                            "dangerous": True,
                        }
                    ],
                },
                reply=turn.streamed_text,
            )
        remind = _REMIND.search(pending[-1].text()) if pending else None
        if remind is not None:
            return await self._remind(turn, remind)
        text = " / ".join(m.text() for m in pending) or "(nothing)"
        user = _caller(turn.scope)
        greeting = _PERSONAS[self.persona].format(name=f" {user}" if user else "", text=text)
        if len(pending) > 1:
            greeting += f" ({len(pending)} messages arrived while I was busy; one reply for all.)"
        await self._say(turn, f"{greeting} {_ABOUT}")
        return Done(turn.state)

    async def _remind(self, turn: Turn, found: re.Match[str]) -> Outcome:
        amount, unit, what = found.groups()
        what = what.strip().rstrip(".!") or "do the thing"
        delay = float(amount) * _UNIT[unit[0].lower()]
        if delay > 365 * 24 * 3600:
            await self._say(turn, "That is more than a year away; I can remind you within a year.")
            return Done(turn.state)
        await turn.schedule({"reminder": what}, delay=delay)
        await self._say(turn, f"OK, I will remind you in {amount} {unit} to {what}.")
        return Done(turn.state)

    async def on_timer(self, turn: Turn, payload: Any) -> Outcome:
        """A reminder's timer fired: say it."""
        what = payload.get("reminder") if isinstance(payload, dict) else payload
        await self._say(turn, f"Reminder: {what}")
        return Done(turn.state)

    async def resume(self, turn: Turn, answer: Any) -> Outcome:
        """Run the dangerous tool when the answer approves it, else decline."""
        if _approved(answer):
            # A durable step, not idempotent: a rerun of this turn (after a crash or a
            # stop) gets the stored output instead of running the tool a second time.
            try:
                output = await turn.step(
                    "dangerous-tool", _dangerous_tool, "/tmp/sessionvisor-demo"
                )
            except StepOutcomeUnknown:
                await self._say(
                    turn,
                    f"I was cut off while {DANGEROUS_TOOL} ran and cannot tell whether it "
                    "finished, so I will not run it again.",
                )
                return Done(turn.state)
            turn.state.messages.append(
                Message(role="tool", content=output, metadata={"tool": DANGEROUS_TOOL})
            )
            await self._say(turn, f"Approved: I ran {DANGEROUS_TOOL}. Nothing was really deleted.")
        else:
            await self._say(turn, f"Denied: I did not run {DANGEROUS_TOOL}.")
        return Done(turn.state)

    def restorable(self, interrupt: PendingInterrupt) -> bool:
        """The approval question can be answered after a restart too."""
        return True


def demo_router(
    *, word_delay: float = 0.06, supervisor_opts: Mapping[str, Any] | None = None
) -> KeyedRouter:
    """Return the demo's router: ``request_opts["persona"]`` picks helper or pirate.

    Its sessions restart when a turn fails (``restart_on_error``), so "crash"
    shows a restart. ``supervisor_opts`` are merged over that.
    """
    opts = {"restart_on_error": True, "max_restarts": 3, "max_seconds": 30.0}
    opts.update(supervisor_opts or {})

    def factory(persona: str) -> Any:
        def create_agent(agent_id: str, config: Any) -> tuple[DemoAgent, SessionOpts]:
            return DemoAgent(persona, word_delay=word_delay), SessionOpts(supervisor_opts=opts)

        create_agent.__name__ = f"{persona}_factory"
        return create_agent

    def select(scope: Any, conversation_id: str, request_opts: Mapping[str, Any]) -> Any:
        return request_opts.get("persona", "helper")

    return KeyedRouter(select, {p: factory(p) for p in _PERSONAS}, default="helper")
