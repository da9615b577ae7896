"""A supervisor built with a wrong argument fails at once, naming the argument."""

from __future__ import annotations

from typing import Any

import pytest

from sessionvisor import MemoryStore, SessionSupervisor, SingleRouter, SQLiteStore, SupervisorOpts
from sessionvisor.testing import ManualClock, ScriptedAgent


def _router() -> SingleRouter:
    return SingleRouter(lambda agent_id, config: ScriptedAgent())


@pytest.mark.parametrize("router", [None, 42, "router"])
def test_a_router_that_is_not_a_router_is_a_type_error(router: Any) -> None:
    with pytest.raises(TypeError, match=r"router=.*got .*") as caught:
        SessionSupervisor(router)
    assert repr(router) in str(caught.value)


@pytest.mark.parametrize("store", ["chat.db", 42, object()])
def test_a_store_that_is_not_a_state_store_is_a_type_error(store: Any) -> None:
    with pytest.raises(TypeError, match=r"store=.*StateStore.*lacks load, save") as caught:
        SessionSupervisor(_router(), store=store)
    assert type(store).__name__ in str(caught.value)


@pytest.mark.parametrize("name", ["agent_id", "owner_of"])
def test_agent_id_and_owner_of_must_be_callable(name: str) -> None:
    with pytest.raises(TypeError, match=rf"{name}=.*must be callable.*'nope'"):
        SessionSupervisor(_router(), **{name: "nope"})


def test_a_clock_without_now_and_sleep_until_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"clock=.*lacks now, sleep_until"):
        SessionSupervisor(_router(), clock=object())  # type: ignore[arg-type]


def test_valid_arguments_are_accepted() -> None:
    sup = SessionSupervisor(
        _router(),
        store=MemoryStore(),
        agent_id=lambda cid: f"a-{cid}",
        owner_of=lambda scope: None,
        clock=ManualClock(),
    )
    assert sup.phase == "new"


def test_a_misspelt_supervisor_option_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="inactivity_timout") as caught:
        SupervisorOpts(inactivity_timout=1)
    assert "inactivity_timeout" in str(caught.value)  # the valid names are listed
    assert not isinstance(caught.value, TypeError)


def test_a_misspelt_option_in_a_mapping_is_a_value_error_too() -> None:
    with pytest.raises(ValueError, match=r"valid options are: .*max_restarts"):
        SessionSupervisor(_router(), supervisor_opts={"max_restart": 1})


def test_a_cluster_must_be_a_cluster_object() -> None:
    with pytest.raises(TypeError, match=r"cluster=.*sessionvisor\.cluster\.Cluster"):
        SessionSupervisor(_router(), cluster="redis://127.0.0.1:6379")


def test_a_cluster_needs_a_store_that_fences_stale_writers() -> None:
    from sessionvisor.cluster import Cluster

    cluster = Cluster("redis://127.0.0.1:6379", node_id="a")
    # A store that cannot fence is the wrong type of store for a cluster.
    with pytest.raises(TypeError, match=r"PostgresStore.*MemoryStore"):
        SessionSupervisor(_router(), cluster=cluster)
    with pytest.raises(TypeError, match=r"PostgresStore.*SQLiteStore"):
        SessionSupervisor(_router(), store=SQLiteStore(":memory:"), cluster=cluster)
