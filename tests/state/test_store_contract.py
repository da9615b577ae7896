"""The ``StateStore`` contract, proven the same way on every store.

Each test runs against MemoryStore, SQLiteStore (a file in tmp_path) and
PostgresStore (a fresh table on the local server), on asyncio and on trio.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from sessionvisor._errors import CorruptStateError, NothingStored, StaleWriteError
from sessionvisor.state import (
    SCHEMA_VERSION,
    Message,
    MigrationRegistry,
    PendingInterrupt,
    State,
    StateStore,
    StepRecord,
    StoredConversation,
    dump_state,
    load_state,
)

from ._backends import Backend

pytestmark = pytest.mark.anyio


def make_state(*texts: str) -> State:
    return State(
        messages=[
            Message(role="user" if i % 2 == 0 else "assistant", content=text)
            for i, text in enumerate(texts)
        ],
        metadata={"topic": "billing"},
    )


def record_of(state: State, **fields: Any) -> StoredConversation:
    return StoredConversation(state=dump_state(state), **fields)


async def test_store_satisfies_the_protocol(backend: Backend) -> None:
    store = await backend.open()

    assert isinstance(store, StateStore)


async def test_load_of_an_unknown_conversation_is_none(backend: Backend) -> None:
    store = await backend.open()

    assert await store.load("c-unknown") is None


async def test_round_trip_keeps_messages_interrupt_and_record_fields(backend: Backend) -> None:
    store = await backend.open()
    state = State(
        messages=[
            Message(role="system", content="be brief"),
            Message(role="user", content="refund order 42?", metadata={"display": "refund?"}),
            Message(role="assistant", content=[{"type": "text", "text": "Approve it?"}]),
        ],
        queued=[Message(role="user", content="also order 43")],
        metadata={"customer": {"id": 7, "tags": ["vip"]}},
        interrupt=PendingInterrupt(kind="question", data={"tool": "refund", "amount": 12.5}),
    )
    before = datetime.now(UTC)

    version = await store.save(
        "c-1",
        record_of(
            state,
            owner="tenant-a",
            route_key="support",
            request_opts={"model": "small", "temperature": 0.2},
            last_seq=17,
        ),
        expected_version=None,
        lifecycle="interrupt",
    )
    loaded = await store.load("c-1")

    assert version == 1
    assert loaded is not None
    assert load_state(loaded.state, "c-1") == state
    assert loaded.state == dump_state(state)
    assert loaded.version == 1
    assert loaded.owner == "tenant-a"
    assert loaded.route_key == "support"
    assert loaded.request_opts == {"model": "small", "temperature": 0.2}
    assert loaded.last_seq == 17
    assert loaded.lifecycle == "interrupt"
    assert loaded.updated_at.tzinfo is not None
    # Postgres stamps with its own clock; allow it a little skew.
    assert (
        before - timedelta(seconds=5)
        <= loaded.updated_at
        <= datetime.now(UTC) + timedelta(seconds=5)
    )


async def test_each_save_adds_one_to_the_version(backend: Backend) -> None:
    store = await backend.open()
    versions = []
    expected: int | None = None
    for i in range(3):
        # The record's own version is ignored: the store owns the counter.
        record = record_of(make_state(f"m{i}"), version=99, last_seq=i)
        expected = await store.save(
            "c-1", record, expected_version=expected, lifecycle="completion"
        )
        versions.append(expected)

    loaded = await store.load("c-1")

    assert versions == [1, 2, 3]
    assert loaded is not None
    assert loaded.version == 3
    assert loaded.last_seq == 2
    assert [m.text() for m in load_state(loaded.state).messages] == ["m2"]


async def test_save_with_a_wrong_expected_version_is_stale_and_writes_nothing(
    backend: Backend,
) -> None:
    store = await backend.open()
    await store.save("c-7", record_of(make_state("a")), expected_version=None, lifecycle="queued")
    await store.save("c-7", record_of(make_state("b")), expected_version=1, lifecycle="completion")
    before = backend.raw_row("c-7")

    with pytest.raises(StaleWriteError) as caught:
        await store.save(
            "c-7", record_of(make_state("c")), expected_version=1, lifecycle="completion"
        )

    message = str(caught.value)
    assert "'c-7'" in message
    assert "expected stored version 1" in message
    assert "it is 2" in message
    assert backend.raw_row("c-7") == before


async def test_creating_a_conversation_that_exists_is_stale(backend: Backend) -> None:
    store = await backend.open()
    await store.save("c-2", record_of(make_state("a")), expected_version=None, lifecycle="queued")

    with pytest.raises(StaleWriteError, match=r"'c-2'.*already exists at version 1"):
        await store.save(
            "c-2", record_of(make_state("b")), expected_version=None, lifecycle="queued"
        )

    loaded = await store.load("c-2")
    assert loaded is not None
    assert loaded.state["messages"][0]["content"] == "a"


async def test_saving_a_missing_conversation_with_a_version_is_stale(backend: Backend) -> None:
    store = await backend.open()

    with pytest.raises(
        StaleWriteError, match=r"'c-3'.*expected stored version 4.*no longer exists"
    ):
        await store.save("c-3", record_of(make_state("a")), expected_version=4, lifecycle="queued")

    assert await store.load("c-3") is None


async def test_two_writers_racing_on_one_version_cannot_both_win(backend: Backend) -> None:
    first = await backend.open()
    second = await backend.open()
    await first.save(
        "c-race", record_of(make_state("start")), expected_version=None, lifecycle="queued"
    )
    rounds = 10

    async def write(
        name: str, store: Any, expected: int, outcomes: dict[str, int | StaleWriteError]
    ) -> None:
        try:
            outcomes[name] = await store.save(
                "c-race",
                record_of(make_state(name)),
                expected_version=expected,
                lifecycle="completion",
            )
        except StaleWriteError as exc:
            outcomes[name] = exc

    for round_no in range(rounds):
        expected = round_no + 1
        outcomes: dict[str, int | StaleWriteError] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(write, "first", first, expected, outcomes)
            tg.start_soon(write, "second", second, expected, outcomes)

        winners = [name for name, result in outcomes.items() if isinstance(result, int)]
        losers = [r for r in outcomes.values() if isinstance(r, StaleWriteError)]
        assert len(winners) == 1, outcomes
        assert len(losers) == 1, outcomes
        assert outcomes[winners[0]] == expected + 1
        loaded = await first.load("c-race")
        assert loaded is not None
        assert loaded.version == expected + 1
        # The stored state is the winner's, not a mix or the loser's.
        assert loaded.state["messages"][0]["content"] == winners[0]


async def test_many_writers_never_lose_an_update(backend: Backend) -> None:
    stores = [await backend.open() for _ in range(4)]
    await stores[0].save(
        "c-busy", record_of(make_state("0")), expected_version=None, lifecycle="queued"
    )
    wins: list[int] = []
    lost: list[int] = []

    async def writer(store: Any) -> None:
        for _ in range(15):
            current = await store.load("c-busy")
            try:
                wins.append(
                    await store.save(
                        "c-busy",
                        record_of(make_state(str(current.version))),
                        expected_version=current.version,
                        lifecycle="completion",
                    )
                )
            except StaleWriteError:
                lost.append(current.version)

    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(writer, store)

    final = await stores[0].load("c-busy")
    assert final is not None
    # Every version from 2 to the last was won by exactly one writer.
    assert sorted(wins) == list(range(2, final.version + 1))
    # The writers really overlapped (otherwise nothing was proven), and
    # every attempt either won a version or was told it lost.
    assert lost
    assert len(wins) + len(lost) == 4 * 15


async def test_garbled_row_raises_corrupt_and_is_left_untouched(backend: Backend) -> None:
    store = await backend.open()
    await store.save(
        "c-bad", record_of(make_state("hi")), expected_version=None, lifecycle="queued"
    )
    backend.garble("c-bad")
    before = backend.raw_row("c-bad")

    with pytest.raises(CorruptStateError, match="'c-bad'"):
        await store.load("c-bad")
    with pytest.raises(CorruptStateError):
        await store.load("c-bad")

    assert before is not None
    assert backend.raw_row("c-bad") == before


async def test_quarantine_moves_the_row_aside_and_a_fresh_start_is_possible(
    backend: Backend,
) -> None:
    store = await backend.open()
    await store.save(
        "c-bad", record_of(make_state("hi")), expected_version=None, lifecycle="queued"
    )
    backend.garble("c-bad")
    garbled = backend.raw_row("c-bad")

    key = await store.quarantine("c-bad")

    assert key == "c-bad#quarantine-1"
    assert await store.load("c-bad") is None
    assert backend.raw_row("c-bad") is None
    assert backend.raw_quarantined(key) == garbled
    # The conversation starts over from nothing, and a second quarantine of
    # it gets its own key instead of overwriting the first.
    version = await store.save(
        "c-bad", record_of(make_state("fresh")), expected_version=None, lifecycle="turn_start"
    )
    assert version == 1
    assert await store.quarantine("c-bad") == "c-bad#quarantine-2"
    assert backend.raw_quarantined(key) == garbled


async def test_quarantine_of_a_missing_conversation_raises_lookup_error(backend: Backend) -> None:
    store = await backend.open()

    with pytest.raises(LookupError, match="'c-none'"):
        await store.quarantine("c-none")


def _rename_history(data: dict[str, Any]) -> dict[str, Any]:
    # Version 0 called the history "history" and had no queue.
    data["messages"] = data.pop("history")
    data["queued"] = []
    return data


OLD_ROW = {
    "version": 0,
    "history": [{"role": "user", "content": "hello from v0", "created_at": "2024-01-02T03:04:05Z"}],
    "metadata": {},
}


async def test_old_schema_row_is_upgraded_by_a_registered_migration(backend: Backend) -> None:
    migrations = MigrationRegistry()
    migrations.register(0)(_rename_history)
    store = await backend.open(migrations=migrations)
    await store.save(
        "c-old", StoredConversation(state=OLD_ROW), expected_version=None, lifecycle="completion"
    )
    before = backend.raw_row("c-old")

    loaded = await store.load("c-old")

    assert loaded is not None
    assert loaded.state["version"] == SCHEMA_VERSION
    state = load_state(loaded.state, "c-old")
    assert [m.text() for m in state.messages] == ["hello from v0"]
    assert state.messages[0].created_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    # Reading upgrades in memory; the row is rewritten only by the next save.
    assert backend.raw_row("c-old") == before


async def test_old_schema_row_without_its_migration_is_corrupt(backend: Backend) -> None:
    store = await backend.open(migrations=MigrationRegistry())
    await store.save(
        "c-old", StoredConversation(state=OLD_ROW), expected_version=None, lifecycle="completion"
    )

    with pytest.raises(CorruptStateError, match=r"'c-old'.*no migration from version 0 to 1"):
        await store.load("c-old")


async def test_row_from_a_newer_release_is_corrupt(backend: Backend) -> None:
    store = await backend.open()
    newer = {**dump_state(make_state("hi")), "version": SCHEMA_VERSION + 1}
    await store.save(
        "c-new", StoredConversation(state=newer), expected_version=None, lifecycle="completion"
    )
    before = backend.raw_row("c-new")

    with pytest.raises(CorruptStateError, match=r"'c-new'.*newer than this release"):
        await store.load("c-new")

    assert backend.raw_row("c-new") == before


async def test_delete_removes_the_conversation(backend: Backend) -> None:
    store = await backend.open()
    await store.save(
        "c-del", record_of(make_state("hi")), expected_version=None, lifecycle="queued"
    )

    await store.delete("c-del")
    await store.delete("c-del")  # a missing conversation is not an error

    assert await store.load("c-del") is None
    assert backend.raw_row("c-del") is None
    version = await store.save(
        "c-del", record_of(make_state("again")), expected_version=None, lifecycle="queued"
    )
    assert version == 1


async def test_an_unknown_lifecycle_is_refused(backend: Backend) -> None:
    store = await backend.open()

    with pytest.raises(ValueError, match=r"'c-1'.*unknown lifecycle 'finished'"):
        await store.save(
            "c-1",
            record_of(make_state("hi")),
            expected_version=None,
            lifecycle="finished",
        )

    assert await store.load("c-1") is None


async def test_a_reopened_store_sees_what_an_earlier_one_saved(backend: Backend) -> None:
    if not backend.shared_across_instances:
        pytest.skip("a MemoryStore keeps nothing beyond its own instance")
    writer = await backend.open()
    await writer.save(
        "c-keep",
        record_of(make_state("kept"), last_seq=3),
        expected_version=None,
        lifecycle="pause",
    )
    await writer.aclose()

    reader = await backend.open()
    loaded = await reader.load("c-keep")

    assert loaded is not None
    assert loaded.version == 1
    assert loaded.last_seq == 3
    assert [m.text() for m in load_state(loaded.state).messages] == ["kept"]


async def test_a_loaded_state_is_validated_once_yet_never_shared(backend: Backend) -> None:
    store = await backend.open()
    await store.save(
        "c-1", record_of(make_state("a", "b")), expected_version=None, lifecycle="queued"
    )
    loaded = await store.load("c-1")
    assert loaded is not None

    first = load_state(loaded.state, "c-1")
    first.messages.append(Message(role="user", content="only in first"))
    second = load_state(loaded.state, "c-1")

    # The first call got the State the store validated; the second validated
    # again and so is not affected by what the first caller did to its copy.
    assert [m.text() for m in second.messages] == ["a", "b"]
    assert second is not first
    assert loaded.state == dump_state(second)


async def test_unanswered_lists_the_conversations_with_work_left(backend: Backend) -> None:
    store = await backend.open()
    pending = State(queued=[Message(role="user", content="still waiting")])
    saves: list[tuple[str, State, str]] = [
        ("c-turn", make_state("mid-turn"), "turn_start"),
        ("c-queued", make_state("hi"), "queued"),
        ("c-held", pending, "completion"),
        ("c-done", make_state("hi", "hello"), "completion"),
        ("c-asked", make_state("refund?"), "interrupt"),
        # Queued, but held (the user's turn): a start would run none of it.
        ("c-cancelled", pending, "cancel"),
        ("c-stopped", pending, "shutdown"),
    ]
    for cid, state, lifecycle in saves:
        await store.save(cid, record_of(state), expected_version=None, lifecycle=lifecycle)

    assert sorted(await store.unanswered()) == ["c-held", "c-queued", "c-turn"]
    assert len(await store.unanswered(limit=2)) == 2
    assert await store.unanswered(limit=0) == []


async def test_unanswered_follows_each_save_delete_and_quarantine(backend: Backend) -> None:
    store = await backend.open()
    for cid in ("c-a", "c-b", "c-c"):
        await store.save(
            cid, record_of(make_state("hi")), expected_version=None, lifecycle="turn_start"
        )

    # Answered: leaves the index; a new message: back in it.
    await store.save(
        "c-a", record_of(make_state("hi", "ok")), expected_version=1, lifecycle="completion"
    )
    assert sorted(await store.unanswered()) == ["c-b", "c-c"]
    await store.save(
        "c-a", record_of(make_state("hi", "ok")), expected_version=2, lifecycle="queued"
    )
    await store.delete("c-b")
    await store.quarantine("c-c")

    assert await store.unanswered() == ["c-a"]
    # A stale write changes nothing, the index included.
    with pytest.raises(StaleWriteError):
        await store.save(
            "c-a", record_of(make_state("x")), expected_version=1, lifecycle="completion"
        )
    assert await store.unanswered() == ["c-a"]


@pytest.mark.parametrize("limit", [-1, 1.5, True])
async def test_unanswered_refuses_a_bad_limit(backend: Backend, limit: Any) -> None:
    store = await backend.open()

    with pytest.raises(ValueError, match="limit"):
        await store.unanswered(limit=limit)


async def test_quarantine_of_nothing_is_a_typed_lookup_error(backend: Backend) -> None:
    store = await backend.open()

    with pytest.raises(NothingStored, match=r"'c-none'.*nothing is stored") as caught:
        await store.quarantine("c-none")

    assert isinstance(caught.value, LookupError)


# -- the audit trail (``state["steps"]``): one row per step in the SQL stores ------------


class Trail(list):  # type: ignore[type-arg]
    """What the runtime's encoder hands over for the audit trail: append-only,
    extended in place, weakly referenceable."""

    __slots__ = ("__weakref__",)


def step_dict(turn: str, index: int, result: Any = None) -> dict[str, Any]:
    return StepRecord(
        turn=turn, index=index, name=f"s{index}", status="completed", result=result
    ).model_dump(mode="json")


def with_trail(state: State, trail: list[dict[str, Any]]) -> StoredConversation:
    return StoredConversation(state={**dump_state(state), "steps": trail})


def trail_of(loaded: StoredConversation | None) -> list[tuple[str, int, Any]]:
    assert loaded is not None
    return [(s["turn"], s["index"], s["result"]) for s in loaded.state["steps"]]


async def test_the_audit_trail_round_trips_in_order_outside_the_head(backend: Backend) -> None:
    store = await backend.open()
    trail = Trail(step_dict("t1", i, {"n": i}) for i in range(3))

    await store.save(
        "c-1", with_trail(make_state("hi"), trail), expected_version=None, lifecycle="completion"
    )

    loaded = await store.load("c-1")
    assert trail_of(loaded) == [("t1", 0, {"n": 0}), ("t1", 1, {"n": 1}), ("t1", 2, {"n": 2})]
    assert load_state(loaded.state).steps[2].result == {"n": 2}  # type: ignore[union-attr]
    rows = backend.step_rows("c-1")
    if rows is not None:
        assert [position for position, _ in rows] == [0, 1, 2]
        head = backend.head("c-1")
        assert head is not None and "steps" not in head
    reopened = await backend.open()
    assert trail_of(await reopened.load("c-1")) == trail_of(loaded)


async def test_a_save_after_steps_were_appended_writes_only_the_new_step_rows(
    backend: Backend,
) -> None:
    store = await backend.open()
    state = make_state("hi")
    trail = Trail(step_dict("t1", i) for i in range(4))
    version = await store.save(
        "c-1", with_trail(state, trail), expected_version=None, lifecycle="completion"
    )
    backend.watch_step_rows("c-1")

    trail.extend(step_dict("t2", i) for i in range(2))
    version = await store.save(
        "c-1", with_trail(state, trail), expected_version=version, lifecycle="completion"
    )

    if backend.step_rows("c-1") is not None:
        assert backend.step_writes("c-1") == ([4, 5], [])
    assert [turn for turn, _, _ in trail_of(await store.load("c-1"))] == ["t1"] * 4 + ["t2"] * 2

    # A save that leaves the trail as it was writes no step row at all.
    backend.watch_step_rows("c-1")
    await store.save(
        "c-1",
        with_trail(make_state("hi", "there"), trail),
        expected_version=version,
        lifecycle="completion",
    )
    if backend.step_rows("c-1") is not None:
        assert backend.step_writes("c-1") == ([], [])


async def test_a_trimmed_or_foreign_trail_is_rewritten_whole(backend: Backend) -> None:
    store = await backend.open()
    state = make_state("hi")
    trail = Trail(step_dict("t1", i) for i in range(5))
    version = await store.save(
        "c-1", with_trail(state, trail), expected_version=None, lifecycle="completion"
    )

    # The runtime trims the trail by replacing the list with its newest steps.
    trimmed = Trail([*trail[3:], step_dict("t2", 0)])
    version = await store.save(
        "c-1", with_trail(state, trimmed), expected_version=version, lifecycle="completion"
    )
    assert trail_of(await store.load("c-1")) == [("t1", 3, None), ("t1", 4, None), ("t2", 0, None)]
    rows = backend.step_rows("c-1")
    if rows is not None:
        assert [position for position, _ in rows] == [0, 1, 2]

    # A plain list cannot be recognised again: it is written whole, every time.
    plain = [step_dict("t3", 0)]
    version = await store.save(
        "c-1", with_trail(state, plain), expected_version=version, lifecycle="completion"
    )
    plain.append(step_dict("t3", 1))
    version = await store.save(
        "c-1", with_trail(state, plain), expected_version=version, lifecycle="completion"
    )
    assert trail_of(await store.load("c-1")) == [("t3", 0, None), ("t3", 1, None)]
    # And an empty trail leaves no row behind.
    await store.save(
        "c-1", with_trail(state, Trail()), expected_version=version, lifecycle="completion"
    )
    assert trail_of(await store.load("c-1")) == []
    assert backend.step_rows("c-1") in (None, [])


async def test_quarantine_and_delete_take_the_step_rows_too(backend: Backend) -> None:
    store = await backend.open()
    trail = Trail(step_dict("t1", i, "r") for i in range(3))
    await store.save(
        "c-q", with_trail(make_state("hi"), trail), expected_version=None, lifecycle="completion"
    )
    await store.save(
        "c-d", with_trail(make_state("hi"), trail), expected_version=None, lifecycle="completion"
    )
    rows = backend.step_rows("c-q")

    key = await store.quarantine("c-q")
    await store.delete("c-d")

    assert await store.load("c-q") is None and await store.load("c-d") is None
    if rows is not None:
        assert len(rows) == 3
        assert backend.quarantined_step_rows(key) == rows
        assert backend.step_rows("c-q") == [] and backend.step_rows("c-d") == []
    else:
        assert [s["turn"] for s in store.quarantined[key].state["steps"]] == ["t1"] * 3
    # Starting over: the new conversation's trail is its own, not the old rows.
    await store.save(
        "c-q",
        with_trail(make_state("new"), Trail([step_dict("n", 0)])),
        expected_version=None,
        lifecycle="completion",
    )
    assert trail_of(await store.load("c-q")) == [("n", 0, None)]


async def test_a_head_that_still_holds_the_trail_loads_and_is_moved_to_rows(
    backend: Backend,
) -> None:
    if backend.kind == "memory":
        pytest.skip("MemoryStore keeps no rows: nothing was ever stored in an older shape")
    store = await backend.open()
    trail = Trail(step_dict("t1", i, i) for i in range(3))
    await store.save(
        "c-old",
        with_trail(make_state("hi"), trail),
        expected_version=None,
        lifecycle="completion",
    )
    backend.inline_steps("c-old")  # as a release that kept the trail in the head wrote it
    assert backend.step_rows("c-old") == []

    reader = await backend.open()  # a store that never wrote it
    loaded = await reader.load("c-old")
    assert trail_of(loaded) == [("t1", 0, 0), ("t1", 1, 1), ("t1", 2, 2)]

    # The next save (a list the store did not write) writes the trail as rows.
    assert loaded is not None
    grown = Trail([*loaded.state["steps"], step_dict("t2", 0, 9)])
    await reader.save(
        "c-old",
        StoredConversation(state={**loaded.state, "steps": grown}),
        expected_version=loaded.version,
        lifecycle="completion",
    )
    assert [p for p, _ in backend.step_rows("c-old") or []] == [0, 1, 2, 3]
    head = backend.head("c-old")
    assert head is not None and "steps" not in head
    assert trail_of(await store.load("c-old"))[-1] == ("t2", 0, 9)
