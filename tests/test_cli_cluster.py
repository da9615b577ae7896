"""The command line's store and cluster options: ``demo --store``, ``--cluster``,
``--node-id`` and ``--lease-ttl`` on ``demo`` and ``serve``.

The refusals are checked through ``main([...])``: each one exits with status 2
and says why before anything connects to PostgreSQL or Redis, so those tests
need no server. The others run the real command line: the demo on the store
``--store`` names, and two demo nodes of one cluster (a fresh PostgreSQL
database and a redis-server of their own: the fixtures ``pg_dsn`` and
``redis_server``).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from sessionvisor import SQLiteStore
from sessionvisor.__main__ import main, redact_url
from sessionvisor.testing import free_port, wait_until_sync
from tests._support.servers import RedisServer
from tests.http._cli import run_cli, stop

PG = "postgresql://root@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``main(argv)``, expect exit status 2 and return what it printed on stderr."""
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert "open http://" not in captured.out  # it never started serving
    return captured.err


def test_demo_refuses_db_and_store_together(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--db", "a.db", "--store", "memory"])
    assert exc.value.code == 2
    assert "--store: not allowed with argument --db" in capsys.readouterr().err


def test_demo_refuses_a_store_url_it_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, "demo", "--store", "mysql://localhost/chat")
    assert err.startswith("python -m sessionvisor demo: unknown store URL 'mysql://localhost/chat'")


@pytest.mark.parametrize("command", [["demo"], ["serve", "sessionvisor.http._demo:demo_router"]])
def test_a_cluster_needs_a_postgres_store(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    default = refused(capsys, *command, "--cluster", REDIS)
    assert (
        f"python -m sessionvisor {command[0]}: --cluster needs a postgresql:// --store" in default
    )
    sqlite = refused(capsys, *command, "--store", "sqlite:///chat.db", "--cluster", REDIS)
    assert "--cluster needs a postgresql:// --store" in sqlite
    assert "sqlite:///chat.db" in sqlite
    memory = refused(capsys, *command, "--store", "memory", "--cluster", REDIS)
    assert "--cluster needs a postgresql:// --store" in memory


def test_the_store_url_in_a_refusal_hides_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = refused(capsys, "demo", "--store", "mysql://chat:s3cret@db/chat", "--cluster", REDIS)
    assert "s3cret" not in err
    assert "mysql://chat:***@db/chat" in err


@pytest.mark.parametrize("command", [["demo"], ["serve", "sessionvisor.http._demo:demo_router"]])
def test_node_id_and_lease_ttl_need_cluster(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    err = refused(capsys, *command, "--store", PG, "--node-id", "a")
    assert err == f"python -m sessionvisor {command[0]}: --node-id needs --cluster redis://...\n"
    err = refused(capsys, *command, "--store", PG, "--lease-ttl", "3")
    assert ": --lease-ttl needs --cluster redis://" in err
    err = refused(capsys, *command, "--node-id", "a", "--lease-ttl", "3")
    assert ": --node-id and --lease-ttl need --cluster redis://" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--lease-ttl", "0"], "Cluster lease_ttl must be a positive number of seconds, got 0"),
        (["--lease-ttl", "-2.5"], "Cluster lease_ttl must be a positive number of seconds"),
        (["--lease-ttl", "nan"], "Cluster lease_ttl must be a positive number of seconds"),
        (["--node-id", "node a"], "Cluster node_id must hold no spaces or control characters"),
        (["--node-id", ""], "Cluster node_id must be 1 to 128 characters"),
        (["--node-id", "n" * 129], "Cluster node_id must be 1 to 128 characters, got 129"),
    ],
)
def test_values_the_cluster_refuses_exit_2_with_its_message(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    err = refused(capsys, "demo", "--store", PG, "--cluster", REDIS, *options)
    assert err.startswith("python -m sessionvisor demo: ")
    assert message in err


def test_a_cluster_url_that_is_not_redis_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, "serve", "m:r", "--store", PG, "--cluster", "http://127.0.0.1:6379")
    assert "python -m sessionvisor serve: Cluster redis_url must be a redis://" in err


def test_a_lease_ttl_that_is_not_a_number_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--store", PG, "--cluster", REDIS, "--lease-ttl", "ten"])
    assert exc.value.code == 2
    assert "--lease-ttl: invalid float value: 'ten'" in capsys.readouterr().err


def test_help_lists_the_cluster_options(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["demo"], ["serve"]):
        with pytest.raises(SystemExit) as exc:
            main([*command, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for option in ("--cluster REDIS_URL", "--node-id NAME", "--lease-ttl S", "--store"):
            assert option in text, (command, option)


def test_redact_url_hides_passwords_only() -> None:
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("sqlite:///chat.db") == "sqlite:///chat.db"
    assert redact_url("redis://:pw@cache:6379/1") == "redis://:***@cache:6379/1"
    assert redact_url("rediss://app:pw@cache:6380") == "rediss://app:***@cache:6380"
    assert redact_url("postgresql://chat@db/chat") == "postgresql://chat@db/chat"
    assert (
        redact_url("postgresql://chat:p%40ss@db:5432/chat") == "postgresql://chat:***@db:5432/chat"
    )
    assert (
        redact_url("postgresql://db/chat?user=chat&password=pw&sslmode=require")
        == "postgresql://db/chat?user=chat&password=***&sslmode=require"
    )
    assert redact_url("unix://:pw@/run/redis.sock?db=0") == "unix://:***@/run/redis.sock?db=0"


def wait_for_reply(client: httpx.Client, cid: str, user: str) -> list[dict[str, str]]:
    """Poll ``GET /conversations/{cid}`` until it holds an assistant message."""
    body: dict[str, Any] = {}

    def replied() -> bool:
        body.clear()
        body.update(client.get(f"/conversations/{cid}", headers={"X-User": user}).json())
        return any(m["role"] == "assistant" for m in body.get("messages", []))

    wait_until_sync(replied, timeout=20, interval=0.05, message=lambda: f"a reply: {body}")
    return [{"role": m["role"], "content": m["content"]} for m in body["messages"]]


def test_demo_serves_from_the_store_it_is_given(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "chosen.db"
    args = ("demo", "--store", f"sqlite:///{db}", "--port", str(port), "--word-delay", "0")
    with run_cli(*args, cwd=tmp_path) as (proc, banner):
        assert f"(store sqlite:///{db})" in banner
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            sent = client.post(
                "/conversations/c-1/messages", json={"content": "hello"}, headers={"X-User": "a"}
            )
            assert sent.status_code == 202
            messages = wait_for_reply(client, "c-1", "a")
        assert messages[0] == {"role": "user", "content": "hello"}
        stop(proc, signal.SIGTERM)
    assert not (tmp_path / "sessionvisor-demo.db").exists()  # not the default file

    async def stored() -> object:
        async with SQLiteStore(db) as store:
            return await store.load("c-1")

    record = anyio.run(stored)
    assert record is not None


def test_demo_on_postgres_never_prints_the_password(tmp_path: Path, pg_dsn: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(pg_dsn)
    url = (
        f"postgresql://{info.get('user', 'root')}:hunter2@{info.get('host', '127.0.0.1')}:"
        f"{info.get('port', 5432)}/{info['dbname']}"
    )
    port = free_port()
    args = ("demo", "--store", url, "--port", str(port), "--word-delay", "0")
    with run_cli(*args, cwd=tmp_path) as (proc, banner):
        assert f"(store {url.replace(':hunter2@', ':***@')})" in banner
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            sent = client.post(
                "/conversations/c-1/messages", json={"content": "hi"}, headers={"X-User": "a"}
            )
            assert sent.status_code == 202
            assert wait_for_reply(client, "c-1", "a")[0]["content"] == "hi"
        out = stop(proc, signal.SIGTERM)
    assert "hunter2" not in banner + out


def test_two_demo_nodes_share_a_conversation_and_drain_on_sigterm(
    tmp_path: Path,
    pg_dsn: str,
    redis_server: RedisServer,
) -> None:
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(pg_dsn)
    store = (
        f"postgresql://{info.get('user', 'root')}@{info.get('host', '127.0.0.1')}:"
        f"{info.get('port', 5432)}/{info['dbname']}"
    )
    ports = {"a": free_port(), "b": free_port()}

    def node(name: str) -> Any:
        return run_cli(
            "demo",
            "--store",
            store,
            "--cluster",
            redis_server.url,
            "--node-id",
            name,
            "--lease-ttl",
            "3",
            "--port",
            str(ports[name]),
            "--word-delay",
            "0",
            cwd=tmp_path,
        )

    with node("a") as (proc_a, banner_a), node("b") as (proc_b, banner_b):
        assert f"; node a of the cluster at {redis_server.url})" in banner_a
        assert f"; node b of the cluster at {redis_server.url})" in banner_b
        a = httpx.Client(base_url=f"http://127.0.0.1:{ports['a']}", timeout=10)
        b = httpx.Client(base_url=f"http://127.0.0.1:{ports['b']}", timeout=10)
        with a, b:
            sent = a.post(
                "/conversations/shared-1/messages",
                json={"content": "hello"},
                headers={"X-User": "u"},
            )
            assert sent.status_code == 202
            # Node b sees the conversation node a answered, and takes a message for it.
            assert wait_for_reply(b, "shared-1", "u")[0] == {"role": "user", "content": "hello"}
            again = b.post(
                "/conversations/shared-1/messages",
                json={"content": "again"},
                headers={"X-User": "u"},
            )
            assert again.status_code == 202
            messages: list[dict[str, Any]] = []

            def both_answered() -> bool:
                got = a.get("/conversations/shared-1", headers={"X-User": "u"}).json()
                messages[:] = got["messages"]
                return [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]

            wait_until_sync(
                both_answered, timeout=20, interval=0.05, message=lambda: f"two replies: {messages}"
            )
        stop(proc_a, signal.SIGTERM)
        stop(proc_b, signal.SIGTERM)
