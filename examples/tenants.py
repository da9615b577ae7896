"""Tools per verified role, persona per request, and tenants kept apart.

The trusted/untrusted split: the *scope* comes from your authentication
middleware (who the user is, their tenant and role) and decides which tools
the agent gets; the *request_opts* come from the client and may only choose
harmless things (a persona). A client that claims ``"role": "admin"`` in its
request changes nothing, a role with no tools is refused by the factory, and
a user of another tenant cannot touch the conversation at all.

Run it with ``.venv/bin/python examples/tenants.py`` (offline; a scripted
pydantic-ai ``FunctionModel`` plays the LLM; asyncio only, as pydantic-ai).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import pydantic_ai.models
from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from sessionvisor import (
    AccessDenied,
    FactoryPermissionError,
    MessageAppended,
    SessionSupervisor,
    SingleRouter,
)
from sessionvisor.agents.pydantic_ai import PydanticAIAgent

pydantic_ai.models.ALLOW_MODEL_REQUESTS = False  # offline: nothing leaves this machine

# -- who is asking: set by trusted middleware, never by the client ------------------------


@dataclass(frozen=True)
class Identity:
    owner: str  # the owner key: a conversation belongs to the identity that created it
    tenant: str
    role: str


INVOICES = {"acme": {"INV-1": 120, "INV-2": 80}, "globex": {"INV-9": 999}}


def list_invoices(ctx: RunContext[Identity]) -> dict[str, int]:
    """List the invoices of the user's tenant."""
    return INVOICES[ctx.deps.tenant]


def refund_invoice(ctx: RunContext[Identity], invoice: str) -> str:
    """Refund one invoice of the user's tenant."""
    if invoice not in INVOICES[ctx.deps.tenant]:
        return f"{invoice} is not an invoice of {ctx.deps.tenant}"
    return f"refunded {invoice} ({INVOICES[ctx.deps.tenant][invoice]} EUR)"


TOOLS_BY_ROLE: dict[str, list[Callable[..., Any]]] = {
    "viewer": [list_invoices],
    "admin": [list_invoices, refund_invoice],
}

# -- the offline "LLM": uses whatever tools it was given ------------------------------------


async def scripted_model(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | dict[int, DeltaToolCall]]:
    formal = "formal" in (info.instructions or "")
    opener = "Dear customer, " if formal else "Sure! "
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    results = [p for p in last.parts if isinstance(p, ToolReturnPart)]
    if results:
        yield f"{opener}{results[0].content}"
        return
    prompt = " ".join(str(p.content) for p in last.parts if isinstance(p, UserPromptPart))
    tools = [t.name for t in info.function_tools]
    words = prompt.split()
    if words[0] == "refund" and "refund_invoice" in tools:
        args = f'{{"invoice": "{words[1]}"}}'
        yield {0: DeltaToolCall("refund_invoice", args, tool_call_id="call-refund")}
    elif words[0] == "refund":
        yield f"{opener}I cannot refund invoices for you (my tools: {', '.join(tools)})."
    else:
        yield {0: DeltaToolCall("list_invoices", "{}", tool_call_id="call-list")}


# -- the route and the factory --------------------------------------------------------------


class TenantConfig(BaseModel):
    """What the factory gets: the trusted scope, and the options a client may choose."""

    scope: Identity  # SingleRouter puts the real scope here, over anything the client sent
    persona: Literal["formal", "casual"] = "casual"  # untrusted, so only harmless choices
    # No "role" field: a client's "role" in request_opts is ignored, never trusted.


def factory(agent_id: str, config: TenantConfig) -> PydanticAIAgent:
    role = config.scope.role
    if role not in TOOLS_BY_ROLE:
        raise FactoryPermissionError(f"role {role!r} may not use the assistant")
    agent: Agent[Identity, str] = Agent(
        FunctionModel(stream_function=scripted_model, model_name="scripted"),
        deps_type=Identity,
        tools=TOOLS_BY_ROLE[role],
        instructions=f"You help with invoices. Persona: {config.persona}.",
    )
    # The tools get the verified identity of the request as their dependencies.
    return PydanticAIAgent(agent, deps=lambda turn: turn.scope)


router = SingleRouter(factory, config=TenantConfig)

# -- a few users ----------------------------------------------------------------------------

ALICE = Identity(owner="acme:alice", tenant="acme", role="admin")
VICTOR = Identity(owner="acme:victor", tenant="acme", role="viewer")
GUEST = Identity(owner="acme:guest", tenant="acme", role="guest")
MALLORY = Identity(owner="globex:mallory", tenant="globex", role="admin")


async def chat(
    sup: SessionSupervisor, cid: str, who: Identity, text: str, **request_opts: Any
) -> None:
    """Send as ``who`` and print the reply, or why the request was refused."""
    print(f"[{cid}] {who.owner} ({who.role}) {request_opts or ''}> {text}")
    try:
        async with sup.subscribe(cid, scope=who) as events:
            await sup.send(cid, text, scope=who, request_opts=request_opts)
            async for event in events:
                if isinstance(event, MessageAppended) and event.message.role == "assistant":
                    print(f"  agent> {event.message.text()}")
                    return
    except (AccessDenied, FactoryPermissionError) as exc:
        print(f"  refused: {type(exc).__name__}: {exc}")


async def main() -> None:
    async with SessionSupervisor(router) as sup:
        await chat(sup, "c-alice", ALICE, "refund INV-1", persona="formal")
        await chat(sup, "c-victor", VICTOR, "refund INV-1", persona="casual", role="admin")
        await chat(sup, "c-victor", VICTOR, "show my invoices")
        await chat(sup, "c-guest", GUEST, "show my invoices")
        await chat(sup, "c-alice", MALLORY, "refund INV-2")
        await chat(sup, "c-mallory", MALLORY, "refund INV-2")


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
