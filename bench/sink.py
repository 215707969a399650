"""SMTP sinks for the benchmark, each in its own process: accept, count, discard.

Two kinds, one interface (:class:`Sink`):

* :class:`PostfixSink` runs Postfix's ``smtp-sink`` (Debian package
  ``postfix``), a C server that barely uses CPU (docs/DESIGN.md §8). It reports
  only counters, so it serves the throughput phases.
* :class:`PythonSink` runs :func:`serve` below in a child Python process: a
  minimal asyncio SMTP server that logs the arrival time and ``Message-ID``
  of every message, which the latency phase needs. It is deliberately not
  ``notifier.testing.SmtpSink``: aiosmtpd parses every line through
  coroutines and costs several times more CPU per message, CPU taken from
  the two cores the workers are measured on.

Both count connections, which is how the benchmark checks that each worker
process keeps one SMTP connection for the whole run.

Run the Python sink by hand with ``python -m bench.sink --port 2525 --log FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "PostfixSink",
    "PythonSink",
    "Received",
    "Sink",
    "find_smtp_sink",
    "serve",
]

# --------------------------------------------------------------------------- the server

_GREETING = b"220 bench-sink ESMTP\r\n"
_EHLO = (
    b"250-bench-sink\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n"
)
_MESSAGE_ID = re.compile(rb"\r\nMessage-ID:\s*(<[^>\r\n]*>)", re.IGNORECASE)
_FLUSH_EVERY = 0.005  # seconds: how stale the progress file may be


class _Log:
    """The sink's output: one line per connection and per message, flushed in batches.

    ``C <monotonic> <conn>`` when a connection opens, ``M <monotonic> <conn>
    <message-id>`` when a message is accepted. ``time.monotonic`` is
    CLOCK_MONOTONIC, the same clock in every process on Linux, so the
    benchmark can subtract its own publish times from these.
    """

    def __init__(self, stream: IO[str], loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop
        self._pending: list[str] = []
        self._scheduled = False

    def write(self, line: str) -> None:
        self._pending.append(line)
        if not self._scheduled:
            # Batched: a write per message would cost more than the SMTP itself.
            self._scheduled = True
            self._loop.call_later(_FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            self._stream.write("".join(self._pending))
            self._stream.flush()
            self._pending.clear()


class _SmtpSession(asyncio.Protocol):
    """One SMTP connection: enough of RFC 5321 for smtplib, every message accepted."""

    def __init__(self, log: _Log, number: int) -> None:
        self._log = log
        self._number = number
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._in_data = False
        self._quit = False
        # BDAT (RFC 3030): bytes of the current chunk still to come, the
        # message so far, and whether this chunk is the LAST.
        self._chunk_left = 0
        self._chunks = bytearray()
        self._last_chunk = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._log.write(f"C {time.monotonic():.6f} {self._number}\n")
        transport.write(_GREETING)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        transport = self._transport
        assert transport is not None
        # Replies to pipelined commands (RFC 2920) go out in one write, as
        # Postfix sends them: one system call, not one per command.
        replies: list[bytes] = []
        try:
            self._handle(replies)
        finally:
            if replies and not transport.is_closing():
                transport.write(b"".join(replies))
            if self._quit:
                transport.close()

    def _accepted(self, message: bytes, replies: list[bytes]) -> None:
        found = _MESSAGE_ID.search(b"\r\n" + message)
        message_id = found.group(1).decode("ascii", "replace") if found else "-"
        self._log.write(f"M {time.monotonic():.6f} {self._number} {message_id}\n")
        replies.append(b"250 2.0.0 OK\r\n")

    def _handle(self, replies: list[bytes]) -> None:
        while self._buffer and not self._quit:
            if self._chunk_left:
                taken = bytes(self._buffer[: self._chunk_left])
                del self._buffer[: len(taken)]
                self._chunks += taken
                self._chunk_left -= len(taken)
                if self._chunk_left:
                    return
                if self._last_chunk:
                    self._accepted(bytes(self._chunks), replies)
                    self._chunks.clear()
                else:
                    replies.append(b"250 2.0.0 chunk OK\r\n")
                continue
            if self._in_data:
                # The message ends at CRLF.CRLF; smtplib always sends headers
                # first, so the message never starts with the terminating dot.
                end = self._buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                message = bytes(self._buffer[: end + 2])
                del self._buffer[: end + 5]
                self._in_data = False
                self._accepted(message, replies)
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            verb = line[:4].upper()
            if verb == b"BDAT":
                words = line.split()
                self._chunk_left = int(words[1])
                self._last_chunk = len(words) > 2 and words[2].upper() == b"LAST"
                if not self._chunk_left and self._last_chunk:
                    self._accepted(bytes(self._chunks), replies)
                    self._chunks.clear()
            elif verb == b"DATA":
                self._in_data = True
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"EHLO":
                replies.append(_EHLO)
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP", b"HELO"):
                replies.append(b"250 2.0.0 OK\r\n")
            elif verb == b"QUIT":
                replies.append(b"221 2.0.0 Bye\r\n")
                self._quit = True
            else:
                replies.append(b"502 5.5.1 Command not implemented\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def serve(host: str, port: int, log_path: Path) -> None:
    """Run the sink until SIGTERM or SIGINT, logging connections and messages to ``log_path``."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _resolve, stop)
        with log_path.open("w", encoding="ascii") as stream:
            log = _Log(stream, loop)
            counter = iter(range(1, sys.maxsize))
            server = await loop.create_server(
                lambda: _SmtpSession(log, next(counter)), host, port, backlog=256
            )
            stream.write(f"R {time.monotonic():.6f} ready\n")
            stream.flush()
            async with server:
                await stop
            log.flush()

    asyncio.run(main())


# --------------------------------------------------------------------------- the handles


@dataclass
class Received:
    """What a sink has seen so far."""

    messages: int = 0
    connections: int = 0
    last_at: float | None = None
    """``time.monotonic()`` of the last accepted message (Python sink: exact)."""
    arrivals: dict[str, float] = field(default_factory=dict)
    """Message-ID -> acceptance time (Python sink only)."""


class Sink:
    """A sink process: start it, point SMTP at ``host:port``, poll :meth:`received`, stop it."""

    kind = "abstract"

    def __init__(self, workdir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        self._out_path = workdir / f"sink-{self.kind}-{port}.log"
        self._probes = 0  # connections made by start() itself, not by workers

    def _command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The sink's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start the process and wait until it answers on its port."""
        self._workdir.mkdir(parents=True, exist_ok=True)
        with self._out_path.open("wb") as out:
            self._process = subprocess.Popen(  # noqa: S603 - our own fixed command
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C to the benchmark is ours to handle
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} sink exited with {self._process.returncode}: {self._tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.kind} sink did not answer on port {self.port}")
            time.sleep(0.02)

    def _answers(self) -> bool:

        try:
            sock = socket.create_connection((self.host, self.port), timeout=0.2)
        except OSError:
            return False
        self._probes += 1
        with sock:
            try:
                return sock.recv(4).startswith(b"220")
            except OSError:
                return False

    def received(self) -> Received:
        """Counters (and, for the Python sink, arrival times) read from the sink's output."""
        raise NotImplementedError

    def wait_for(self, messages: int, timeout: float, poll: float = 0.005) -> Received:
        """Poll until ``messages`` arrived; raise TimeoutError with the count otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.received()
            if seen.messages >= messages:
                if seen.last_at is None:
                    seen.last_at = time.monotonic()  # counters only: as seen by this poll
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.kind} sink received {seen.messages} of {messages} messages "
                    f"in {timeout:g}s"
                )
            time.sleep(poll)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 5 s; always reaped."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _tail(self) -> str:
        try:
            return self._out_path.read_text(errors="replace")[-500:]
        except OSError:
            return "(no output)"


class PythonSink(Sink):
    """:func:`serve` in a child process: exact arrival times per Message-ID."""

    kind = "python"

    def __init__(self, workdir: Path, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(workdir, port, host)
        self._log_path = workdir / f"sink-python-{port}.records"
        self._offset = 0
        self._state = Received()
        self._partial = ""

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.sink",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--log",
            str(self._log_path),
        ]

    def start(self, timeout: float = 10.0) -> None:
        """Start the sink; its records file starts empty."""
        self._offset, self._state, self._partial, self._probes = 0, Received(), "", 0
        super().start(timeout)

    def received(self) -> Received:
        """Read the records written since the last call (incremental, cheap)."""
        try:
            with self._log_path.open("r", encoding="ascii") as stream:
                stream.seek(self._offset)
                chunk = stream.read()
                self._offset = stream.tell()
        except FileNotFoundError:
            return self._state
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished line waits for the next read
        state = self._state
        for line in lines:
            parts = line.split(" ")
            if parts[0] == "M":
                state.messages += 1
                state.last_at = float(parts[1])
                state.arrivals[parts[3]] = state.last_at
            elif parts[0] == "C":
                state.connections += 1
        # Connections opened by start()'s readiness probe are not the workers'.
        return Received(
            messages=state.messages,
            connections=state.connections - self._probes,
            last_at=state.last_at,
            arrivals=state.arrivals,
        )


_COUNTERS = re.compile(r"sess=(\d+) quit=(\d+) mesg=(\d+)")


def find_smtp_sink() -> str | None:
    """Path of Postfix's ``smtp-sink``, if installed (``/usr/sbin`` is not always on PATH)."""
    found = shutil.which("smtp-sink")
    if found:
        return found
    candidate = Path("/usr/sbin/smtp-sink")
    return str(candidate) if os.access(candidate, os.X_OK) else None


class PostfixSink(Sink):
    """Postfix's ``smtp-sink -c``: C, counters only (sessions ended, messages)."""

    kind = "smtp-sink"

    def __init__(self, workdir: Path, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(workdir, port, host)
        binary = find_smtp_sink()
        if binary is None:
            raise FileNotFoundError("smtp-sink not found (Debian package postfix)")
        self._binary = binary

    def _command(self) -> list[str]:
        command = [self._binary, "-c"]
        if os.geteuid() == 0:
            # smtp-sink refuses to run as root without dropping privileges.
            command += ["-u", "nobody"]
        return [*command, f"{self.host}:{self.port}", "256"]

    def received(self) -> Received:
        """The last counter line. ``sess`` counts *ended* sessions: final once workers stopped."""
        try:
            with self._out_path.open("rb") as stream:
                stream.seek(0, os.SEEK_END)
                stream.seek(max(0, stream.tell() - 200))
                tail = stream.read().decode("ascii", "replace")
        except FileNotFoundError:
            return Received()
        matches = _COUNTERS.findall(tail)
        if not matches:
            return Received()
        sessions, _, messages = (int(value) for value in matches[-1])
        # start()'s readiness probes are ended sessions too.
        return Received(messages=messages, connections=max(0, sessions - self._probes))


def _main() -> None:
    parser = argparse.ArgumentParser(description="A minimal SMTP sink for the benchmark.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True, help="records file to write")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.host, args.port, args.log)


if __name__ == "__main__":
    _main()
