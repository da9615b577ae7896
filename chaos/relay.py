"""A TCP relay a test owns, to put network faults between a process and a server.

::

    with Relay(5432) as relay:                  # listens on 127.0.0.1:relay.port
        dsn = f"postgresql://root@127.0.0.1:{relay.port}/test"
        ...
        relay.blackhole()   # nothing passes any more; every connection stays open
        relay.forward()     # bytes flow again
        relay.reset()       # every open connection is cut (RST)

One thread serves every connection through a selector, so a pool of many
connections costs no more threads. The controls are plain methods that any
thread may call (a test, or the chaos runner's event loop: each returns within
milliseconds, once the relay's thread has applied it, so nothing passes after
``blackhole()`` returned). ``close()`` closes every socket and joins the
thread.

``blackhole()`` models a partition: the relay stops reading and writing on
every connection, old and new, and closes none, so each peer waits for an
answer that does not come until its own timeout gives up. New connections are
still accepted but reach the target only after ``forward()``. The bytes are
held, not lost, like the segments TCP retransmits once a partition heals: a
connection that neither side gave up on carries on after ``forward()``. The
relay's kernel still acknowledges what it receives, so TCP keepalives do not
notice a black hole; only the peers' own timeouts do.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["Relay"]

_CHUNK = 65536
_HIGH_WATER = 1 << 20  # bytes held for one side before the relay stops reading the other


class _End:
    """One socket of a relayed connection, with the bytes waiting to be written to it."""

    __slots__ = ("connected", "eof", "mask", "out", "shut", "sock")

    def __init__(self, sock: socket.socket, *, connected: bool) -> None:
        self.sock = sock
        self.connected = connected
        self.out = bytearray()
        self.eof = False  # this side sent FIN
        self.shut = False  # the relay passed a FIN on to this side
        self.mask = 0  # the events registered with the selector


class _Conn:
    __slots__ = ("client", "upstream")

    def __init__(self, client: socket.socket) -> None:
        self.client = _End(client, connected=True)
        self.upstream: _End | None = None

    def pairs(self) -> list[tuple[_End, _End]]:
        """(end, peer) for both directions; empty while the target is not reached yet."""
        if self.upstream is None:
            return []
        return [(self.client, self.upstream), (self.upstream, self.client)]


class Relay:
    """Forward connections on ``127.0.0.1:port`` (``host``) to ``target_host:target_port``.

    See the module docstring. Attributes: ``port`` (the port to connect to)
    and ``target`` (the address forwarded to).
    """

    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", *, host: str = "127.0.0.1"
    ) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(
            target_host, target_port, type=socket.SOCK_STREAM
        )[0]
        self._target = (family, kind, proto, address)
        self.target = (target_host, target_port)
        self._listener = socket.create_server((host, 0), backlog=512)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._conns: set[_Conn] = set()
        self._forwarding = True
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[[], None], threading.Event]] = []
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"relay-{self.port}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        mode = "forward" if self._forwarding else "blackhole"
        return f"Relay(port={self.port}, target={self.target!r}, {mode})"

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connections(self) -> int:
        """How many relayed connections are open now."""
        return len(self._conns)

    def forward(self) -> None:
        """Forward bytes both ways (the initial mode); held bytes are delivered now."""
        self._call(self._do_forward)

    def blackhole(self) -> None:
        """Stop passing bytes, in both directions, without closing any connection."""
        self._call(self._do_blackhole)

    def reset(self) -> None:
        """Cut every open connection abruptly (RST to both sides); the mode is kept."""
        self._call(self._do_reset)

    def close(self) -> None:
        """Cut every connection, stop listening and join the relay's thread. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake()
        self._thread.join()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    # -- the calling side ------------------------------------------------------

    def _call(self, fn: Callable[[], None]) -> None:
        done = threading.Event()
        with self._lock:
            if self._closing:
                raise RuntimeError(f"{self!r} is closed")
            self._calls.append((fn, done))
        self._wake()
        while not done.wait(0.1):
            if not self._thread.is_alive():
                raise RuntimeError(f"{self!r}: the relay's thread died")

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except BlockingIOError:
            pass  # a wake-up is pending already

    # -- the relay's thread ----------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                for key, mask in self._selector.select():
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        if self._run_calls():
                            return
                    else:
                        conn, end = key.data
                        self._event(conn, end, mask)
        finally:
            for conn in list(self._conns):
                self._abort(conn)
            self._selector.close()
            self._listener.close()
            with self._lock:
                calls, self._calls = self._calls, []
            for _, done in calls:
                done.set()

    def _run_calls(self) -> bool:
        """Apply the controls asked for; True when the relay must close."""
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            calls, self._calls = self._calls, []
            closing = self._closing
        for fn, done in calls:
            try:
                fn()
            finally:
                done.set()
        return closing

    def _do_forward(self) -> None:
        self._forwarding = True
        for conn in list(self._conns):
            if conn.upstream is None:
                self._connect(conn)
            if conn in self._conns:
                self._update(conn)

    def _do_blackhole(self) -> None:
        self._forwarding = False
        for conn in list(self._conns):
            self._update(conn)

    def _do_reset(self) -> None:
        for conn in list(self._conns):
            self._abort(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of descriptors, or the client gave up already
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock)
            self._conns.add(conn)
            if self._forwarding:
                self._connect(conn)

    def _connect(self, conn: _Conn) -> None:
        family, kind, proto, address = self._target
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            self._abort(conn)  # the target refused: so does the relay
            return
        conn.upstream = _End(sock, connected=err == 0)
        self._update(conn)

    def _event(self, conn: _Conn, end: _End, mask: int) -> None:
        if conn not in self._conns:
            return
        try:
            if not end.connected:
                err = end.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, "connect failed")
                end.connected = True
            else:
                peer = conn.client if end is conn.upstream else conn.upstream
                assert peer is not None
                if mask & selectors.EVENT_READ:
                    data = end.sock.recv(_CHUNK)
                    if data:
                        peer.out += data
                    else:
                        end.eof = True
                if mask & selectors.EVENT_WRITE and end.out:
                    sent = end.sock.send(end.out)
                    del end.out[:sent]
            for side, peer in conn.pairs():
                if peer.eof and not side.out and not side.shut:
                    side.sock.shutdown(socket.SHUT_WR)
                    side.shut = True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._abort(conn)
            return
        if conn.client.shut and conn.upstream is not None and conn.upstream.shut:
            self._drop(conn)
        else:
            self._update(conn)

    def _update(self, conn: _Conn) -> None:
        """Register the events each socket of ``conn`` waits for in the current mode."""
        up = conn.upstream
        if up is not None and not up.connected:
            self._register(conn, up, selectors.EVENT_WRITE if self._forwarding else 0)
            return
        for side, peer in conn.pairs():
            want = 0
            if self._forwarding:
                if not side.eof and len(peer.out) < _HIGH_WATER:
                    want |= selectors.EVENT_READ
                if side.out:
                    want |= selectors.EVENT_WRITE
            self._register(conn, side, want)

    def _register(self, conn: _Conn, end: _End, want: int) -> None:
        if want == end.mask:
            return
        if end.mask == 0:
            self._selector.register(end.sock, want, (conn, end))
        elif want == 0:
            self._selector.unregister(end.sock)
        else:
            self._selector.modify(end.sock, want, (conn, end))
        end.mask = want

    def _ends(self, conn: _Conn) -> list[_End]:
        return [conn.client] if conn.upstream is None else [conn.client, conn.upstream]

    def _abort(self, conn: _Conn) -> None:
        for end in self._ends(conn):
            try:
                end.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        for end in self._ends(conn):
            if end.mask:
                self._selector.unregister(end.sock)
                end.mask = 0
            end.sock.close()
