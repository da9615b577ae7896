"""Ownership: a conversation belongs to the owner of the scope that created it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sessionvisor import (
    AccessDenied,
    SessionSupervisor,
    SQLiteStore,
    Status,
)
from sessionvisor.testing import wait_for_status, wait_until_settled

from ._support import (
    Backend,
    stored_record,
    stored_state,
    supervisor,
    texts,
)

ALICE = {"owner": "alice"}
STRANGERS = [
    pytest.param({"owner": "bob"}, id="bob"),
    pytest.param(None, id="no-scope"),
    pytest.param({"user": "alice"}, id="scope-without-owner"),
    pytest.param("bob", id="str-scope"),
]


def _calls(sup: SessionSupervisor, scope: Any) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def subscribe() -> None:
        async with sup.subscribe("c-1", scope=scope):
            pass

    async def viewing() -> None:
        async with sup.viewing("c-1", scope=scope):
            pass

    async def get() -> Any:
        return sup.get("c-1", scope=scope)

    return {
        "start": lambda: sup.start("c-1", scope=scope),
        "send": lambda: sup.send("c-1", "hi", scope=scope),
        "resume": lambda: sup.resume("c-1", "yes", scope=scope),
        "dismiss": lambda: sup.dismiss("c-1", scope=scope),
        "cancel": lambda: sup.cancel("c-1", scope=scope),
        "stop": lambda: sup.stop("c-1", scope=scope),
        "running": lambda: sup.running("c-1", scope=scope),
        "status": lambda: sup.status("c-1", scope=scope),
        "get": get,
        "subscribe": subscribe,
        "viewing": viewing,
    }


LIVE_CALLS = list(_calls(SessionSupervisor(Backend()), None))
# With nothing live, these calls must read the store, and so must check the owner.
STORED_CALLS = ["start", "send", "resume", "dismiss", "subscribe"]


async def _alice_interrupted(sup: SessionSupervisor) -> None:
    await sup.send("c-1", "ask me", scope=ALICE)
    await wait_for_status(sup, "c-1", Status.INTERRUPTED, scope=ALICE)


@pytest.mark.anyio
@pytest.mark.parametrize("call", LIVE_CALLS)
@pytest.mark.parametrize("scope", STRANGERS)
async def test_live_owned_conversation_refuses_other_scopes_before_anything_happens(
    anyio_backend: str, call: str, scope: Any
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _alice_interrupted(sup)
        handle = sup.get("c-1", scope=ALICE)
        assert handle is not None
        record = await stored_record(sup.store, "c-1")

        with pytest.raises(AccessDenied) as caught:
            await _calls(sup, scope)[call]()

        assert isinstance(caught.value, PermissionError)
        assert "c-1" in str(caught.value)
        assert "alice" not in str(caught.value)  # who owns it is not told
        assert handle.status is Status.INTERRUPTED
        assert backend.agent.answers == []
        assert len(backend.router_calls) == 1
        after = await stored_record(sup.store, "c-1")
        assert record is not None and after is not None
        assert after.version == record.version


@pytest.mark.anyio
@pytest.mark.parametrize("call", STORED_CALLS)
@pytest.mark.parametrize("scope", STRANGERS)
async def test_stored_owned_conversation_refuses_other_scopes_without_waking(
    anyio_backend: str, call: str, scope: Any
) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _alice_interrupted(sup)
        await sup.stop("c-1", scope=ALICE)
        record = await stored_record(sup.store, "c-1")

        with pytest.raises(AccessDenied, match="c-1"):
            await _calls(sup, scope)[call]()

        assert await sup.running("c-1", scope=ALICE) is False
        assert len(backend.router_calls) == 1
        assert backend.agent.answers == []
        after = await stored_record(sup.store, "c-1")
        assert record is not None and after is not None
        assert after.version == record.version


@pytest.mark.anyio
async def test_owner_keeps_full_access(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await _alice_interrupted(sup)
        assert await sup.resume("c-1", "yes", scope=ALICE) is Status.RUNNING
        await wait_until_settled(sup, "c-1", scope=ALICE)
        await sup.stop("c-1", scope=ALICE)
        # Another scope object with the same owner key is the same owner.
        same_owner = SimpleNamespace(owner="alice", session="other-tab")
        delivery = await sup.send("c-1", "back", scope=same_owner)
        assert delivery.started is True
        assert await wait_until_settled(sup, "c-1", scope="alice") is Status.IDLE
        assert texts(await stored_state(sup.store, "c-1"))[-2:] == ["back", "re: back"]
        record = await stored_record(sup.store, "c-1")
        assert record is not None and record.owner == "alice"


@pytest.mark.anyio
@pytest.mark.parametrize("scope", [*STRANGERS, pytest.param(ALICE, id="alice")])
async def test_unowned_conversation_is_open_to_every_scope(anyio_backend: str, scope: Any) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "ask me")  # created without a scope: unowned
        await wait_for_status(sup, "c-1", Status.INTERRUPTED)

        assert await sup.status("c-1", scope=scope) is Status.INTERRUPTED
        assert await sup.resume("c-1", "yes", scope=scope) is Status.RUNNING
        await wait_until_settled(sup, "c-1", scope=scope)
        await sup.send("c-1", "more", scope=scope)
        await wait_until_settled(sup, "c-1", scope=scope)
        assert await sup.stop("c-1", scope=scope) == "stopped"
        record = await stored_record(sup.store, "c-1")
        assert record is not None and record.owner is None
        assert (await sup.start("c-1", scope=scope)).started is True


@pytest.mark.anyio
async def test_request_opts_cannot_claim_ownership(anyio_backend: str) -> None:
    backend = Backend()
    async with supervisor(backend) as sup:
        await sup.send("c-1", "hello", scope=ALICE)
        await wait_until_settled(sup, "c-1", scope=ALICE)
        with pytest.raises(AccessDenied, match="c-1"):
            await sup.send("c-1", "hi", request_opts={"owner": "alice"})
        with pytest.raises(AccessDenied, match="c-1"):
            await sup.send("c-1", "hi", scope={"owner": "bob"}, request_opts={"owner": "alice"})
        assert texts(await stored_state(sup.store, "c-1")) == ["hello", "re: hello"]

        await sup.send("c-2", "hello", request_opts={"owner": "alice"})
        await wait_until_settled(sup, "c-2")
        record = await stored_record(sup.store, "c-2")
        assert record is not None and record.owner is None


@pytest.mark.anyio
async def test_ownership_survives_a_new_process(anyio_backend: str, tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    async with SQLiteStore(path) as store, supervisor(Backend(), store=store) as sup:
        await sup.send("c-1", "hello", scope=ALICE)
        await wait_until_settled(sup, "c-1", scope=ALICE)

    backend = Backend()
    async with SQLiteStore(path) as store, supervisor(backend, store=store) as sup:
        with pytest.raises(AccessDenied, match="c-1"):
            await sup.send("c-1", "let me in", scope={"owner": "bob"})
        assert backend.router_calls == []
        assert await sup.running("c-1") is False
        assert (await sup.start("c-1", scope=ALICE)).started is True


@pytest.mark.anyio
async def test_list_running_with_a_scope_shows_only_its_own_sessions(anyio_backend: str) -> None:
    async with supervisor(Backend()) as sup:
        await sup.start("alice-1", scope=ALICE)
        await sup.start("bob-1", scope={"owner": "bob"})
        await sup.start("open-1")

        mine = await sup.list_running(scope=ALICE)
        assert [s.conversation_id for s in mine] == ["alice-1"]
        everyone = {s.conversation_id for s in await sup.list_running()}
        assert everyone == {"alice-1", "bob-1", "open-1"}


@pytest.mark.anyio
async def test_custom_owner_of_decides_who_owns(anyio_backend: str) -> None:
    def tenant(scope: Any) -> str | None:
        return None if scope is None else scope["tenant"]

    backend = Backend()
    async with supervisor(backend, owner_of=tenant) as sup:
        await sup.send("c-1", "hello", scope={"tenant": "acme", "user": "ann"})
        await wait_until_settled(sup, "c-1", scope={"tenant": "acme"})
        # Another user of the same tenant is the same owner.
        await sup.send("c-1", "hi", scope={"tenant": "acme", "user": "bea"})
        with pytest.raises(AccessDenied, match="c-1"):
            await sup.send("c-1", "hi", scope={"tenant": "globex", "user": "ann"})
        record = await stored_record(sup.store, "c-1")
        assert record is not None and record.owner == "acme"


@pytest.mark.anyio
async def test_handle_obtained_by_the_owner_checks_no_scope(anyio_backend: str) -> None:
    async with supervisor(Backend()) as sup:
        handle = (await sup.start("c-1", scope=ALICE)).handle
        delivery = await handle.send("from a trusted caller")
        assert delivery.queued is False
        assert await wait_until_settled(sup, "c-1", scope=ALICE) is Status.IDLE


@pytest.mark.anyio
@pytest.mark.parametrize("live", [True, False], ids=["live", "stored"])
@pytest.mark.parametrize("scope", STRANGERS)
async def test_load_delete_and_check_access_refuse_other_scopes(
    anyio_backend: str, live: bool, scope: Any
) -> None:
    async with supervisor(Backend()) as sup:
        await sup.send("c-1", "hello", scope=ALICE)
        await wait_until_settled(sup, "c-1", scope=ALICE)
        if not live:
            await sup.stop("c-1", scope=ALICE)

        for call in (sup.load, sup.delete, sup.check_access):
            with pytest.raises(AccessDenied, match="c-1"):
                await call("c-1", scope=scope)

        assert await sup.running("c-1", scope=ALICE) is live
        assert texts(await stored_state(sup.store, "c-1")) == ["hello", "re: hello"]
        assert await sup.check_access("c-1", scope=ALICE) is True
        loaded = await sup.load("c-1", scope=ALICE)
        assert loaded is not None and texts(loaded) == ["hello", "re: hello"]


@pytest.mark.anyio
@pytest.mark.parametrize("scope", STRANGERS)
async def test_viewing_a_stored_owned_conversation_is_refused(
    anyio_backend: str, scope: Any
) -> None:
    # A stranger's viewer would otherwise keep the owner's session from stopping.
    async with supervisor(Backend()) as sup:
        await sup.send("c-1", "hello", scope=ALICE)
        await wait_until_settled(sup, "c-1", scope=ALICE)
        await sup.stop("c-1", scope=ALICE)

        with pytest.raises(AccessDenied, match="c-1"):
            async with sup.viewing("c-1", scope=scope):
                pass
        assert await sup.running("c-1", scope=ALICE) is False
