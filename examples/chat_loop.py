"""A complete chat loop: start, subscribe, send, interrupt, resume, idle shutdown, wake.

Run it with ``.venv/bin/python examples/chat_loop.py`` (offline, ~1 s).
"""

import anyio

from sessionvisor import (
    Delta,
    FunctionAgent,
    Interrupt,
    MessageAppended,
    SessionSupervisor,
    Shutdown,
    SingleRouter,
    StatusChanged,
    Subscription,
    Turn,
)


async def assistant(turn: Turn) -> Interrupt | None:
    text = turn.state.messages[-1].text()
    if text.startswith("delete"):
        return Interrupt(turn.state, {"question": f"Really {text}?"})  # waits for resume
    for word in f"You said {text!r} (history: {len(turn.state.messages)} messages)".split():
        turn.delta(word + " ")  # streamed; the streamed text becomes the reply
    return None


async def answered(turn: Turn, answer: str) -> str:
    return "Deleted." if answer == "yes" else "Kept them."


router = SingleRouter(lambda agent_id, config: FunctionAgent(assistant, resume=answered))


async def follow(events: Subscription, until: str) -> None:
    """Print the conversation until a turn ends in status ``until`` (or it shuts down)."""
    streaming = ran = False
    async for event in events:
        match event:
            case MessageAppended(message=m) if m.role == "user":
                print(f"user> {m.text()}")
            case Delta(text=text):
                print(text if streaming else f"agent> {text}", end="", flush=True)
                streaming = True
            case MessageAppended(message=m):
                print("" if streaming else f"agent> {m.text()}")
                streaming = False
            case StatusChanged(status="running"):
                ran = True
            case StatusChanged(status=status, interrupt=asked) if ran and status == until:
                print(f"[{status}: {asked.data['question']}]" if asked else f"[{status}]")
                return
            case Shutdown(reason=reason) if until == "shutdown":
                print(f"[shutdown: {reason}]")
                return


async def main() -> None:
    opts = {"inactivity_timeout": 0.5}  # seconds idle before a session stops
    async with SessionSupervisor(router, supervisor_opts=opts) as sup:
        info = await sup.start("c-42")
        print(f"started {info.agent_id}")
        async with sup.subscribe("c-42") as events:  # lives across shutdown and wake
            await sup.send("c-42", "Hello")
            await follow(events, "idle")
            await sup.send("c-42", "delete my notes")
            await follow(events, "interrupted")
            await sup.resume("c-42", "yes")
            await follow(events, "idle")
            await follow(events, "shutdown")  # nothing happens for 0.5 s: it stops
            print(f"running: {await sup.running('c-42')}")
            delivery = await sup.send("c-42", "Are you back?")  # wakes it, history and all
            print(f"woke: {delivery.started}")
            await follow(events, "idle")


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
