"""A durable timer survives a real server killed with SIGKILL and fires exactly once
after the restart (the demo agent on SQLite, its "remind me" timer)."""

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


def _timer_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM timers").fetchone()[0])


def _reminders(state: State) -> list[str]:
    return [m.text() for m in state.messages if m.text().startswith("Reminder:")]


def test_a_timer_fires_once_after_the_server_was_killed(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cid = "c-timer-crash"
    serve = ("demo", "--db", str(db), "--port", str(port), "--word-delay", "0")
    with run_cli(*serve, cwd=tmp_path) as (proc, _):
        with httpx.Client(base_url=base, headers=ALICE, timeout=10) as client:
            sent = client.post(
                f"/conversations/{cid}/messages",
                json={"content": "remind me in 4 seconds to stretch"},
            )
            assert sent.status_code == 202
            wait_until_sync(
                lambda: client.get(f"/conversations/{cid}/timers").json()["timers"],
                timeout=10,
                interval=0.05,
            )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    assert _timer_rows(db) == 1  # stored, not fired: the process died first
    left = _stored(db, cid)
    assert left is not None and _reminders(left) == []

    with run_cli(*serve, cwd=tmp_path):
        state = left

        def reminded() -> bool:
            nonlocal state
            state = _stored(db, cid) or left
            return bool(_reminders(state)) and _timer_rows(db) == 0

        # No request: the restarted server finds the timer in the store and fires it.
        wait_until_sync(reminded, timeout=30, interval=0.05, message=lambda: f"state: {state}")
        # Killed before the turn's end was saved, the "remind me" turn ran again after
        # the restart: it scheduled the same key (derived from the turn), so one timer.
        assert _reminders(state) == ["Reminder: stretch"]
        fired = [m for m in state.messages if "timer" in m.metadata]
        assert len(fired) == 1
    # After a clean stop too: still once.
    final = _stored(db, cid)
    assert final is not None and _reminders(final) == ["Reminder: stretch"]
    assert _timer_rows(db) == 0
