"""Local TCP ports for the test doubles: a free one, and a check that one is free."""

from __future__ import annotations

import socket

__all__ = ["PortBusyError", "check_port_free", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is found by binding to port 0 and closing the socket again, so
    another process could take it before the caller binds it; for local tests
    that window is small enough.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.bind(address)
        return int(sock.getsockname()[1])


class PortBusyError(OSError):
    """Something already listens on the port a double was asked to use."""


def check_port_free(host: str, port: int, owner: str) -> None:
    """Raise :class:`PortBusyError` at once if nothing can listen on ``host:port``.

    Binds with ``SO_REUSEADDR`` like the servers do, so a port whose old
    connections linger in TIME_WAIT (a restart) counts as free.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as error:
            raise PortBusyError(
                error.errno, f"{owner} cannot listen on {host}:{port}: {error.strerror}"
            ) from error
