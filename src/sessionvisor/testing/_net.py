from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is found by binding to port 0 and closing the socket again, so
    another process may take it before the caller binds it: use it for a
    server the test starts at once (a subprocess given ``--port``), and
    prefer a socket bound by the server itself where it accepts one.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
