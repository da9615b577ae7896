"""A real server killed with SIGKILL mid-turn answers the work it left once it is back.

The demo runs on SQLite; one message is mid-turn and two wait behind it when the
process is killed. Started again, the server answers all three without any new
request: the interrupted turn runs again, then one turn answers both queued
messages, and no message is stored or answered twice.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import httpx

from sessionvisor import SQLiteStore
from sessionvisor.state import State
from sessionvisor.testing import free_port, wait_until_sync

from ._cli import run_cli

ALICE = {"X-User": "alice"}


def _stored(path: Path, cid: str) -> State | None:
    import anyio

    async def read() -> State | None:
        async with SQLiteStore(path) as store:
            record = await store.load(cid)
        return None if record is None else State.model_validate(record.state)

    return anyio.run(read)


def _user_and_replies(state: State) -> tuple[list[str], int]:
    users = [m.text() for m in state.messages if m.role == "user"]
    replies = sum(1 for m in state.messages if m.role == "assistant")
    return users, replies


def test_work_left_by_a_killed_server_is_answered_when_it_starts_again(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cid = "c-crash"
    # A long word delay keeps the first turn running until the kill.
    slow = ("demo", "--db", str(db), "--port", str(port), "--word-delay", "30")
    with run_cli(*slow, cwd=tmp_path) as (proc, _):
        with httpx.Client(base_url=base, headers=ALICE, timeout=10) as client:
            first = client.post(f"/conversations/{cid}/messages", json={"content": "first"})
            assert first.status_code == 202 and first.json()["queued"] is False
            for text in ("second", "third"):
                answer = client.post(f"/conversations/{cid}/messages", json={"content": text})
                assert answer.status_code == 202 and answer.json()["queued"] is True
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    left = _stored(db, cid)
    assert left is not None
    assert _user_and_replies(left) == (["first"], 0)  # mid-turn: no answer yet
    assert [m.text() for m in left.queued] == ["second", "third"]

    with run_cli("demo", "--db", str(db), "--port", str(port), "--word-delay", "0", cwd=tmp_path):
        state = left

        def answered() -> bool:
            nonlocal state
            state = _stored(db, cid) or left
            return _user_and_replies(state)[1] >= 2 and not state.queued

        # No request at all: only the store is read until everything is answered.
        wait_until_sync(answered, timeout=30, interval=0.05, message=lambda: f"answered: {state}")
        users, replies = _user_and_replies(state)
        assert users == ["first", "second", "third"]  # each stored once, in order
        assert replies == 2  # the rerun turn, then one turn for both queued messages
        assert state.messages[-1].role == "assistant" and state.queued == []
        assert [m.role for m in state.messages] == [
            "user",
            "assistant",
            "user",
            "user",
            "assistant",
        ]


def test_an_accepted_message_is_in_the_sqlite_file_when_the_server_is_killed(
    tmp_path: Path,
) -> None:
    # The recovery test above reads the file through SQLiteStore; here the demo is
    # killed right after a 202: the file is intact and already holds the message.
    db = tmp_path / "chat.db"
    port = free_port()
    with run_cli("demo", "--db", str(db), "--port", str(port), cwd=tmp_path) as (proc, _):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ALICE) as client:
            answer = client.post("/conversations/x/messages", json={"content": "hi"})
            assert answer.status_code == 202
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    state = _stored(db, "x")
    assert state is not None
    users = [m.text() for m in (*state.messages, *state.queued) if m.role == "user"]
    assert users == ["hi"]


def test_an_acknowledged_answer_is_carried_out_after_the_server_is_killed(
    tmp_path: Path,
) -> None:
    # The approval question is asked and stored; the answer is accepted (202) and the
    # server is killed while the approved turn runs. Started again, with no request,
    # the server carries the answer out once: the question is not asked again.
    db = tmp_path / "chat.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cid = "c-approve"

    def demo(word_delay: str) -> tuple[str, ...]:
        return ("demo", "--db", str(db), "--port", str(port), "--word-delay", word_delay)

    def status(client: httpx.Client) -> str:
        return str(client.get(f"/conversations/{cid}").json()["status"])

    with run_cli(*demo("0"), cwd=tmp_path) as (proc, _):
        with httpx.Client(base_url=base, headers=ALICE, timeout=10) as client:
            sent = client.post(
                f"/conversations/{cid}/messages", json={"content": "please delete my files"}
            )
            assert sent.status_code == 202
            wait_until_sync(lambda: status(client) == "interrupted", timeout=30, interval=0.05)

            def question_stored() -> bool:
                stored = _stored(db, cid)
                return stored is not None and stored.interrupt is not None

            wait_until_sync(question_stored, timeout=30, interval=0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    # A long word delay keeps the approved turn running until the kill.
    with run_cli(*demo("30"), cwd=tmp_path) as (proc, _):
        with httpx.Client(base_url=base, headers=ALICE, timeout=10) as client:
            assert client.get(f"/conversations/{cid}").json()["interrupt"] is not None
            answer = client.post(
                f"/conversations/{cid}/resume", json={"answer": {"approved": True}}
            )
            assert answer.status_code == 202
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    with run_cli(*demo("0"), cwd=tmp_path):
        state = _stored(db, cid)

        def carried_out() -> bool:
            nonlocal state
            state = _stored(db, cid)
            return state is not None and state.interrupt is None and bool(state.messages)

        # No request: the restarted server finds the answer in the store.
        wait_until_sync(carried_out, timeout=30, interval=0.05, message=lambda: f"left: {state}")
        assert state is not None
        # The tool is a durable step: never run twice. Killed before it started or after
        # its result was stored, the rerun runs it once (or replays it); killed inside
        # it, the rerun says it cannot tell and does not run it again.
        ran = [m.text() for m in state.messages if m.role == "tool"]
        reply = state.messages[-1]
        assert reply.role == "assistant"
        if ran:
            assert len(ran) == 1 and "deleted 3 files" in ran[0], ran
            assert reply.text().startswith("Approved")
        else:
            assert "cannot tell whether it finished" in reply.text(), reply.text()
