"""``python -m sessionvisor demo`` and ``python -m sessionvisor serve module:router``."""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from sessionvisor import MemoryStore, SQLiteStore
from sessionvisor.__main__ import load_object, main, open_store
from sessionvisor.testing import free_port, wait_until_sync

from ._cli import run_cli, stop


def test_open_store_understands_the_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory"), MemoryStore)
    relative = open_store("sqlite:///chat.db")
    assert isinstance(relative, SQLiteStore) and repr(relative) == "SQLiteStore('chat.db')"
    absolute = open_store(f"sqlite:///{tmp_path}/chat.db")
    assert repr(absolute) == f"SQLiteStore('{tmp_path}/chat.db')"
    with pytest.raises(ValueError, match="unknown store URL"):
        open_store("redis://localhost")
    with pytest.raises(ValueError, match="names no database"):
        open_store("sqlite:///")


def test_open_store_makes_a_postgres_store() -> None:
    pytest.importorskip("psycopg")
    store = open_store("postgresql://postgres@127.0.0.1:5432/test")
    assert type(store).__name__ == "PostgresStore"


def test_load_object_imports_module_attribute() -> None:
    assert load_object("sessionvisor.http:create_app").__name__ == "create_app"
    assert load_object("sessionvisor:SessionSupervisor.start").__name__ == "start"
    with pytest.raises(ValueError, match="module:attribute"):
        load_object("sessionvisor")
    with pytest.raises(AttributeError, match="no attribute"):
        load_object("sessionvisor:nothing_here")
    with pytest.raises(ImportError):
        load_object("no_such_module_here:router")


def test_bad_arguments_exit_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["demo", "--inactivity-timeout", "-4"])
    assert main(["serve", "no_such_module:router"]) == 2
    assert "no_such_module" in capsys.readouterr().err


def test_serve_runs_a_users_router_and_drains_on_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "mychat.py").write_text(
        textwrap.dedent(
            """
            from sessionvisor import SingleRouter
            from sessionvisor.testing import ScriptedAgent

            router = SingleRouter(lambda agent_id, config: ScriptedAgent())
            """
        )
    )
    port = free_port()
    db = tmp_path / "served.db"
    with run_cli(
        "serve",
        "mychat:router",
        "--port",
        str(port),
        "--store",
        f"sqlite:///{db}",
        "--inactivity-timeout",
        "none",
        cwd=tmp_path,
    ) as (proc, banner):
        assert f"http://127.0.0.1:{port}/" in banner
        base = f"http://127.0.0.1:{port}"
        headers = {"X-User": "alice"}
        sent = httpx.post(
            f"{base}/conversations/c-1/messages", json={"content": "hi"}, headers=headers
        )
        assert sent.status_code == 202
        body: dict[str, Any] = {}

        def idle() -> bool:
            body.update(httpx.get(f"{base}/conversations/c-1", headers=headers).json())
            return bool(body["status"] == "idle")

        wait_until_sync(idle, timeout=10, interval=0.02, message=lambda: f"idle: {body}")
        assert [m["content"] for m in body["messages"]] == ["hi", "echo: hi"]
        output = stop(proc)
    assert "supervisor_drained" in output

    async def stored() -> list[str]:
        async with SQLiteStore(db) as store:
            record = await store.load("c-1")
            assert record is not None
            return [m["content"] for m in record.state["messages"]]

    assert anyio.run(stored) == ["hi", "echo: hi"]


def test_demo_serves_the_page_and_stops_on_sigterm_with_an_open_stream(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    args = ("demo", "--port", str(port), "--db", str(tmp_path / "demo.db"))
    with run_cli(*args, cwd=tmp_path) as (proc, _banner):
        base = f"http://127.0.0.1:{port}"
        page = httpx.get(f"{base}/")
        first_page = time.monotonic() - started
        assert page.status_code == 200
        assert "sessionvisor" in page.text
        print(f"\npython -m sessionvisor demo: first page after {first_page:.2f} s")
        assert first_page < 30

        with (
            httpx.Client(base_url=base, timeout=10) as client,
            client.stream("GET", "/conversations/c-1/events?user=alice") as stream,
        ):
            assert stream.status_code == 200
            chunks = stream.iter_raw()
            next(chunks)
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            for _ in chunks:
                pass  # the server ends the stream as it shuts down
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert time.monotonic() - stopping < 10
    assert "supervisor_drained" in out
