"""The real processes under test: demo servers, their store, and a private Redis.

In cluster mode on PostgreSQL each node reaches the database through a relay of
its own (:class:`chaos.relay.Relay`), so the nemesis can black-hole or reset
one node's connections without touching the others'.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import httpx

from .relay import Relay

__all__ = ["Node", "Postgres", "Redis", "free_port", "snapshot"]

PG_ADMIN = os.environ.get("CHAOS_PG_ADMIN", "postgresql://root@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    """One ``python -m sessionvisor demo`` process, restartable on the same store and port."""

    name: str
    store: str
    workdir: Path
    word_delay: float = 0.03
    inactivity_timeout: float = 3.0
    cluster: str | None = None
    lease_ttl: float = 3.0
    src: Path | None = None  # a source tree to run instead of the installed package
    relay: Relay | None = None  # the relay its PostgreSQL connections go through, if any
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "sessionvisor",
            "demo",
            "--port",
            str(self.port),
            "--store",
            self.store,
            "--word-delay",
            str(self.word_delay),
            "--inactivity-timeout",
            str(self.inactivity_timeout),
            "--log-level",
            "warning",
        ]
        if self.cluster:
            cmd += ["--cluster", self.cluster, "--node-id", self.name]
            cmd += ["--lease-ttl", str(self.lease_ttl)]
        return cmd

    def start(self) -> None:
        """Start the process (it opens the store and recovers in the background)."""
        if self._log is None:
            self._log = (self.workdir / f"{self.name}.log").open("ab")
        self.starts += 1
        self._log.write(f"\n=== start #{self.starts} at {time.time():.3f} ===\n".encode())
        self._log.flush()
        env = dict(os.environ)
        if self.src is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.src), env.get("PYTHONPATH", "")) if p
            )
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Poll ``/readyz`` until it answers 200 (False: it did not, or the process died)."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc is None or self.proc.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return True
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """``kill -9`` of the server process (it is its own process group's leader)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def pause(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def unpause(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def terminate(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def snapshot(rev: str, into: Path) -> tuple[Path, str]:
    """Extract ``src/`` of a git revision (``git archive``) and return it with the commit.

    Servers run from it do not change when someone edits the working tree
    during a run (a restarted node would otherwise run other code).
    """
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "rev-parse", rev], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "src"], cwd=root, check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src", commit


class Postgres:
    """A fresh database for one run, dropped at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        base = PG_ADMIN.rsplit("/", 1)[0]
        self.url = f"{base}/{name}"
        parts = urlsplit(self.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432

    def relay(self) -> tuple[Relay, str]:
        """A relay to the server, and this database's URL through it."""
        relay = Relay(self.port, self.host)
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{relay.port}" if userinfo else f"127.0.0.1:{relay.port}"
        return relay, urlunsplit(parts._replace(netloc=netloc))

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(sql)

    def create(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with contextlib.suppress(Exception):
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Redis:
    """A private ``redis-server`` (no persistence) the nemesis may kill and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        until = time.monotonic() + 10
        while time.monotonic() < until:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
