"""The versioned JSON form of State: round trips, refusals and migrations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from sessionvisor._errors import CorruptStateError
from sessionvisor.state import (
    SCHEMA_VERSION,
    Message,
    MigrationRegistry,
    PendingInterrupt,
    State,
    _serializer,
    dump_state,
    load_state,
    register_migration,
)


def full_state() -> State:
    return State(
        messages=[
            Message(role="system", content="be brief"),
            Message(role="user", content="refund?", metadata={"display": {"text": "refund"}}),
            Message(
                role="assistant",
                content=[{"type": "text", "text": "Sure"}, {"type": "image", "url": "x.png"}],
                created_at=datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
            ),
            Message(role="tool", content="42", metadata={"tool_call_id": "t1"}),
        ],
        queued=[Message(role="user", content="and another")],
        metadata={"n": 1, "nested": {"list": [1, 2.5, None, True]}},
        interrupt=PendingInterrupt(kind="notice", data=["read", "this"]),
    )


def test_dump_then_load_gives_an_equal_state() -> None:
    state = full_state()

    assert load_state(dump_state(state)) == state


def test_the_dump_is_plain_json_with_the_schema_version() -> None:
    dumped = dump_state(full_state())

    assert dumped["version"] == SCHEMA_VERSION
    assert json.loads(json.dumps(dumped)) == dumped
    assert dumped["messages"][2]["created_at"] == "2025-05-06T07:08:09.123456Z"


@pytest.mark.parametrize("encode", [json.dumps, lambda d: json.dumps(d).encode()])
def test_json_text_and_bytes_load_like_the_dict(encode: Any) -> None:
    state = full_state()

    assert load_state(encode(dump_state(state))) == state


def test_each_dump_is_a_fresh_dict() -> None:
    state = full_state()
    dumped = dump_state(state)

    dumped["messages"][1]["metadata"]["display"]["text"] = "changed"
    dumped["metadata"]["n"] = 2

    assert state.messages[1].metadata["display"] == {"text": "refund"}
    assert dump_state(state)["metadata"]["n"] == 1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ('{"version": 1, "messages": [', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        ("[1, 2, 3]", "JSON list, not an object"),
        ('"a string"', "JSON str, not an object"),
        ({"messages": []}, "schema version is None, not an integer"),
        ({"version": "1"}, "schema version is '1', not an integer"),
        ({"version": True}, "schema version is True, not an integer"),
        ({"version": 1, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"version": 1, "unknown_field": 1}, "unknown_field"),
        ({"version": SCHEMA_VERSION + 1}, f"schema version {SCHEMA_VERSION + 1}, newer"),
        ({"version": 0}, "no migration from version 0 to 1"),
    ],
)
def test_unreadable_data_raises_corrupt_state_naming_the_conversation(
    data: Any, problem: str
) -> None:
    with pytest.raises(CorruptStateError) as caught:
        load_state(data, "c-42", migrations=MigrationRegistry())

    message = str(caught.value)
    assert "conversation 'c-42'" in message
    assert problem in message


def test_without_a_conversation_id_the_message_says_the_stored_state() -> None:
    with pytest.raises(CorruptStateError, match="cannot read the stored state: it is not valid"):
        load_state("{")


def test_a_long_list_of_validation_errors_is_cut_short() -> None:
    data = {"version": 1, "messages": [{"role": "robot"}] * 5}

    with pytest.raises(CorruptStateError, match=r"\.\.\. \(\d+ more\)"):
        load_state(data, "c-1")


def _v0_to_v1(data: dict[str, Any]) -> dict[str, Any]:
    data["messages"] = data.pop("history")
    for message in data["messages"]:
        message["role"] = {"human": "user", "ai": "assistant"}[message.pop("speaker")]
    return data


V0 = {
    "version": 0,
    "history": [{"speaker": "human", "content": "hi"}, {"speaker": "ai", "content": "hello"}],
}


def test_an_old_version_is_upgraded_by_its_migration() -> None:
    migrations = MigrationRegistry()
    migrations.register(0)(_v0_to_v1)
    original = json.loads(json.dumps(V0))

    state = load_state(V0, "c-1", migrations=migrations)

    assert [(m.role, m.text()) for m in state.messages] == [("user", "hi"), ("assistant", "hello")]
    assert state.version == SCHEMA_VERSION
    # The caller's dict (say, a record a store still holds) is not changed.
    assert original == V0


def test_migrations_run_in_order_up_to_the_target() -> None:
    migrations = MigrationRegistry()
    ran: list[int] = []

    def step(n: int) -> Any:
        def migrate(data: dict[str, Any]) -> dict[str, Any]:
            ran.append(data["version"])
            return {**data, "trail": [*data.get("trail", []), n]}

        return migrate

    # Registered out of order on purpose: order comes from the versions.
    for n in (2, 0, 1):
        migrations.register(n)(step(n))

    upgraded = migrations.upgrade({"version": 0}, conversation_id="c-1", target=3)

    assert ran == [0, 1, 2]
    assert upgraded == {"version": 3, "trail": [0, 1, 2]}


def test_a_data_at_the_target_version_is_returned_as_is() -> None:
    data = dump_state(full_state())

    assert MigrationRegistry().upgrade(data) is data


def test_a_failing_migration_is_corrupt_state_with_its_cause() -> None:
    migrations = MigrationRegistry()

    @migrations.register(0)
    def needs_history(data: dict[str, Any]) -> dict[str, Any]:
        data["messages"] = data.pop("history")
        return data

    with pytest.raises(CorruptStateError, match=r"'c-1'.*needs_history.*failed") as caught:
        load_state({"version": 0}, "c-1", migrations=migrations)

    assert isinstance(caught.value.__cause__, KeyError)


def test_a_migration_returning_no_dict_is_corrupt_state() -> None:
    migrations = MigrationRegistry()
    migrations.register(0)(lambda data: None)  # type: ignore[arg-type,return-value]

    with pytest.raises(CorruptStateError, match="returned NoneType, not a dict"):
        load_state({"version": 0}, "c-1", migrations=migrations)


def test_registering_a_second_migration_from_one_version_is_refused() -> None:
    migrations = MigrationRegistry()
    migrations.register(0)(_v0_to_v1)

    with pytest.raises(ValueError, match="from schema version 0 is already registered"):
        migrations.register(0)(lambda data: data)


@pytest.mark.parametrize(("version", "error"), [(-1, ValueError), ("0", TypeError)])
def test_a_bad_source_version_is_refused(version: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        MigrationRegistry().register(version)


def test_register_migration_uses_the_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh default, so this test leaves the real one as it found it.
    monkeypatch.setattr(_serializer, "_default_registry", MigrationRegistry())

    returned = register_migration(0)(_v0_to_v1)
    state = load_state(V0, "c-1")

    assert returned is _v0_to_v1
    assert [m.text() for m in state.messages] == ["hi", "hello"]
    with pytest.raises(ValueError, match="already registered"):
        register_migration(0)(_v0_to_v1)
