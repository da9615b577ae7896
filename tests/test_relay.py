"""The TCP relay the fault tests put between a process and its server (chaos/relay.py)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from chaos.relay import Relay
from sessionvisor.testing import wait_until_sync


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:
            pass  # the relay's reset, as a test asked


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _connect(relay: Relay) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_forwards_many_connections_both_ways(echo_port: int) -> None:
    with Relay(echo_port) as relay:
        socks = [_connect(relay) for _ in range(40)]
        try:
            for i, sock in enumerate(socks):
                assert _echo(sock, f"hello {i}".encode()) == f"hello {i}".encode()
            big = bytes(range(256)) * 8192  # 2 MiB: more than the relay holds per side
            assert _echo(socks[0], big) == big
            wait_until_sync(lambda: relay.connections == 40, timeout=5.0)
        finally:
            for sock in socks:
                sock.close()
        # Closed by the client: the relay closes both of its sockets.
        wait_until_sync(lambda: relay.connections == 0, timeout=5.0)


def test_blackhole_keeps_connections_open_and_passes_nothing(echo_port: int) -> None:
    with Relay(echo_port) as relay:
        old = _connect(relay)
        assert _echo(old, b"before") == b"before"
        relay.blackhole()
        old.sendall(b"held")
        old.settimeout(0.5)
        with pytest.raises(TimeoutError):
            old.recv(100)  # no answer, and no EOF or reset either
        # A new connection is accepted, and gets nothing through either.
        new = _connect(relay)
        new.sendall(b"new")
        new.settimeout(0.5)
        with pytest.raises(TimeoutError):
            new.recv(100)
        assert relay.connections == 2

        relay.forward()
        # Both connections were kept: what they sent arrives now.
        old.settimeout(5.0)
        new.settimeout(5.0)
        assert old.recv(100) == b"held"
        assert new.recv(100) == b"new"
        fresh = _connect(relay)
        assert _echo(fresh, b"after") == b"after"
        for sock in (old, new, fresh):
            sock.close()


def test_reset_cuts_every_open_connection(echo_port: int) -> None:
    with Relay(echo_port) as relay:
        socks = [_connect(relay) for _ in range(3)]
        for sock in socks:
            assert _echo(sock, b"ping") == b"ping"
        relay.reset()
        for sock in socks:
            try:
                data = sock.recv(100)
            except ConnectionResetError:
                data = b""
            assert data == b""  # a reset, or at least the end of the stream
            sock.close()
        assert relay.connections == 0
        # The relay still accepts and forwards new connections.
        again = _connect(relay)
        assert _echo(again, b"again") == b"again"
        again.close()


def test_reset_during_a_blackhole_cuts_the_held_connections(echo_port: int) -> None:
    with Relay(echo_port) as relay:
        sock = _connect(relay)
        assert _echo(sock, b"one") == b"one"
        relay.blackhole()
        relay.reset()
        try:
            data = sock.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b""
        sock.close()


def test_close_joins_its_thread_and_stops_listening(echo_port: int) -> None:
    relay = Relay(echo_port)
    assert any(t.name == f"relay-{relay.port}" for t in threading.enumerate())
    sock = _connect(relay)
    assert _echo(sock, b"x") == b"x"
    relay.close()
    relay.close()  # idempotent
    assert not any(t.name == f"relay-{relay.port}" for t in threading.enumerate())
    try:
        assert sock.recv(10) == b""
    except ConnectionResetError:
        pass
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=2.0).close()
    with pytest.raises(RuntimeError):
        relay.blackhole()
