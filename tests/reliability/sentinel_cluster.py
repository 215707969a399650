"""A Redis master, a replica and three Sentinels on loopback ports, for failover tests.

Real processes: Debian's ``redis-server`` for the two data nodes (AOF on,
``noeviction``, as in production) and ``redis-sentinel`` for the Sentinels,
each in a directory of its own under the test's tmp dir, on free ports (never
26379, where Debian's packaged Sentinel service may listen). The Sentinels
judge a master down after ``down_after_ms`` (1 s here, 30 s by default in
production), so a failover finishes within a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

from notifier.testing import free_port
from tests.conftest import ON_CI

__all__ = ["MASTER_NAME", "RedisNode", "SentinelCluster", "require_sentinel", "sentinel_binary"]

MASTER_NAME = "mymaster"
_PACKAGED_SENTINEL_PORT = 26379  # Debian's redis-sentinel service: never ours


def sentinel_binary() -> str | None:
    """``redis-sentinel`` (Debian's package), or None when it is not installed."""
    return shutil.which("redis-sentinel")


def require_sentinel() -> str:
    """The binary; skip without it, or fail on CI (``.ci/run`` installs it)."""
    binary = sentinel_binary()
    if binary is None or shutil.which("redis-server") is None:
        message = "redis-sentinel / redis-server are not installed (apt-get install redis-sentinel)"
        if ON_CI:
            pytest.fail(message + " (CI=true: the Sentinel tests must run)")
        pytest.skip(message)
    return binary


def _port() -> int:
    while True:
        port = free_port()
        if port != _PACKAGED_SENTINEL_PORT:
            return port


def _client(port: int) -> redis.Redis:
    return redis.Redis("127.0.0.1", port, socket_timeout=2, socket_connect_timeout=1)


def _master_port(sentinel: redis.Redis) -> int | None:
    address = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
    return int(address[1]) if isinstance(address, tuple) else None


class RedisNode:
    """One ``redis-server`` or ``redis-sentinel`` process with its config file and directory."""

    def __init__(self, binary: str, directory: Path, config: Sequence[str], port: int) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.config = list(config)
        self.process: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return _client(self.port)

    def start(self, timeout: float = 15) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "node.conf"
        if not conf.exists():  # a restart keeps what Sentinel rewrote into it
            common = [
                f"port {self.port}",
                "bind 127.0.0.1",
                f"dir {self.directory}",
                "daemonize no",
                f"logfile {self.directory / 'node.log'}",
            ]
            conf.write_text("\n".join([*common, *self.config]) + "\n")
        self.process = subprocess.Popen(  # the system's redis-server / redis-sentinel
            [self.binary, str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.closing(self.client()) as client,
                contextlib.suppress(redis.ConnectionError, redis.TimeoutError),
            ):
                if client.ping():
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.directory / "node.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.kill()
                pytest.fail(f"{self.binary} did not start on port {self.port}\n{tail}")
            time.sleep(0.05)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no AOF flush, no goodbye to replicas or Sentinels."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class SentinelCluster:
    """A master, one replica and three Sentinels monitoring them as ``mymaster``.

    ``master_config`` adds lines to the first master's config only (say,
    ``min-replicas-to-write 1``): a replica promoted later keeps its own.
    """

    def __init__(
        self,
        directory: Path,
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        master_config: Sequence[str] = (),
        db: int = 0,
    ) -> None:
        binary = require_sentinel()
        server = shutil.which("redis-server") or "redis-server"
        self.db = db
        data = ["appendonly yes", 'save ""', "maxmemory-policy noeviction"]
        master_port, replica_port = _port(), _port()
        self.master = RedisNode(server, directory / "master", [*data, *master_config], master_port)
        self.replica = RedisNode(
            server,
            directory / "replica",
            [*data, f"replicaof 127.0.0.1 {master_port}"],
            replica_port,
        )
        self.sentinels = [
            RedisNode(
                binary,
                directory / f"sentinel-{index}",
                [
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
                    f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                ],
                _port(),
            )
            for index in range(3)
        ]

    @property
    def nodes(self) -> list[RedisNode]:
        """The two data nodes."""
        return [self.master, self.replica]

    def url(self, *, userinfo: str = "") -> str:
        """``sentinel://127.0.0.1:p1;sentinel://127.0.0.1:p2;sentinel://127.0.0.1:p3/db``."""
        parts = [f"sentinel://{userinfo}127.0.0.1:{node.port}" for node in self.sentinels]
        return ";".join(parts) + f"/{self.db}"

    def start(self, timeout: float = 30) -> None:
        for node in [self.master, self.replica, *self.sentinels]:
            node.start()
        self.wait_until(self._settled, timeout, "the replica in sync and the Sentinels agreed")

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.stop()

    def __enter__(self) -> SentinelCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the Sentinels say

    def master_port(self) -> int | None:
        """The master's port, as the first Sentinel that answers names it."""
        for sentinel in self.sentinels:
            if not sentinel.running():
                continue
            with (
                contextlib.closing(sentinel.client()) as client,
                contextlib.suppress(redis.ConnectionError, redis.TimeoutError),
            ):
                port = _master_port(client)
                if port is not None:
                    return port
        return None

    def agreed_master(self) -> int | None:
        """The master's port when all three Sentinels name the same, running one."""
        ports = set()
        for sentinel in self.sentinels:
            with contextlib.closing(sentinel.client()) as client:
                try:
                    ports.add(_master_port(client))
                except (redis.ConnectionError, redis.TimeoutError):
                    return None
        if len(ports) != 1:
            return None
        port = ports.pop()
        node = next((n for n in self.nodes if n.port == port), None)
        return port if node is not None and node.running() else None

    def _settled(self) -> bool:
        with contextlib.closing(self.master.client()) as client:
            info = client.info("replication")
        if info.get("connected_slaves", 0) < 1 or info.get("slave0", {}).get("state") != "online":
            return False
        for sentinel in self.sentinels:
            with contextlib.closing(sentinel.client()) as client:
                state = client.sentinel_master(MASTER_NAME)
                assert isinstance(state, dict)
                if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                    return False
        return True

    @staticmethod
    def wait_until(probe: object, timeout: float, what: str) -> None:
        assert callable(probe)
        deadline = time.monotonic() + timeout
        while not probe():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.1)

    def logs(self) -> Iterator[str]:
        for node in [*self.nodes, *self.sentinels]:
            log = node.directory / "node.log"
            if log.exists():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                yield f"--- {node.directory.name}\n{tail}"
