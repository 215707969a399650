"""A raw-socket SMTP server that misbehaves on cue, for the send path's fault tests.

aiosmtpd (``notifier.testing.SmtpSink``) is a well-behaved server; the faults
here happen between its callbacks: a greeting that comes late, a connection
closed once the whole message arrived (before the reply), or when MAIL FROM
arrives, or right after a transaction. It answers each command as it reads
it, which a pipelining client (RFC 2920) accepts as well as any other.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from typing import BinaryIO

__all__ = ["FaultySmtpServer"]


class FaultySmtpServer:
    """One connection at a time; transactions are numbered from 1 across connections.

    ``greet_after``: seconds before the 220 greeting. ``drop_after_body``:
    transactions whose message is read whole (the final dot, or the BDAT
    chunk), then the connection is closed without a reply: the message
    counts as received. ``silent_after_body``: the same, but the connection
    stays open and the reply never comes (a server stuck after the message).
    ``drop_at_mail``, ``drop_at_rcpt``: transactions whose MAIL FROM, or
    RCPT TO (MAIL was accepted), closes the connection unanswered (nothing
    received). ``close_after``: transactions after whose 250 the server
    closes the connection, as an idle timeout does. ``on_command`` is called
    with each verb before the server answers it (a test moves its clock
    there).
    """

    def __init__(
        self,
        *,
        pipelining: bool = False,
        chunking: bool = False,
        greet_after: float = 0.0,
        drop_after_body: Iterable[int] = (),
        drop_at_mail: Iterable[int] = (),
        drop_at_rcpt: Iterable[int] = (),
        close_after: Iterable[int] = (),
        silent_after_body: Iterable[int] = (),
        on_command: Callable[[bytes], None] = lambda verb: None,
    ) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = "127.0.0.1"
        self.port = int(self._listener.getsockname()[1])
        self._extensions = [b"SIZE 10240000", b"8BITMIME", b"SMTPUTF8"]
        if pipelining:
            self._extensions.append(b"PIPELINING")
        if chunking:
            self._extensions.append(b"CHUNKING")
        self._greet_after = greet_after
        self._drop_after_body = set(drop_after_body)
        self._drop_at_mail = set(drop_at_mail)
        self._drop_at_rcpt = set(drop_at_rcpt)
        self._close_after = set(close_after)
        self._silent_after_body = set(silent_after_body)
        self._on_command = on_command
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.messages: list[bytes] = []
        """Every message received whole, an unanswered one included."""
        self.commands: list[bytes] = []
        """Each command's verb, in the order received."""
        self.connections = 0
        self.closed = 0
        """Connections the server has closed (or seen closed)."""
        self.transactions = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FaultySmtpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        # Closing the listener does not wake a thread blocked in accept(): a connection does.
        with contextlib.suppress(OSError):
            socket.create_connection((self.host, self.port), timeout=1).close()
        self._thread.join(10)
        self._listener.close()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed: we are done
            while not self._stopping.is_set():
                conn, _ = self._listener.accept()
                if self._stopping.is_set():  # the wake-up call of __exit__
                    conn.close()
                    return
                with self._lock:
                    self.connections += 1
                with conn, contextlib.suppress(OSError), conn.makefile("rb") as lines:
                    self._converse(conn, lines)
                with self._lock:
                    self.closed += 1

    def _converse(self, conn: socket.socket, lines: BinaryIO) -> None:
        if self._stopping.wait(self._greet_after):
            return
        conn.sendall(b"220 faulty ESMTP\r\n")
        number = 0
        while line := lines.readline():
            verb = line[:4].upper()
            with self._lock:
                self.commands.append(verb)
            self._on_command(verb)
            if verb == b"EHLO":
                replies = [b"faulty", *self._extensions]
                conn.sendall(
                    b"".join(b"250-" + reply + b"\r\n" for reply in replies[:-1])
                    + b"250 "
                    + replies[-1]
                    + b"\r\n"
                )
            elif verb == b"HELO":
                conn.sendall(b"250 faulty\r\n")
            elif verb == b"MAIL":
                with self._lock:
                    self.transactions += 1
                    number = self.transactions
                if number in self._drop_at_mail:
                    return
                conn.sendall(b"250 sender ok\r\n")
            elif verb == b"RCPT":
                if number in self._drop_at_rcpt:
                    return
                conn.sendall(b"250 recipient ok\r\n")
            elif verb in (b"DATA", b"BDAT"):
                if verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    message = b""
                    while not message.endswith(b"\r\n.\r\n"):
                        chunk = lines.readline()
                        if not chunk:
                            return
                        message += chunk
                else:  # BDAT <size> LAST: the client sends exactly <size> bytes
                    message = lines.read(int(line.split()[1]))
                with self._lock:
                    self.messages.append(message)
                if number in self._drop_after_body:
                    return  # received whole; the reply never leaves
                if number in self._silent_after_body:
                    self._stopping.wait()  # received whole; the reply never comes
                    return
                conn.sendall(b"250 queued\r\n")
                if number in self._close_after:
                    return
            elif verb == b"RSET" or verb == b"NOOP":
                conn.sendall(b"250 ok\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"502 not implemented\r\n")
