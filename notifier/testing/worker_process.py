"""``celery -A worker worker`` started as operators start it, in a child process.

The benchmark, ``notifier demo`` and the reliability tests run real workers
through this one harness: the documented command line (prefork pool),
configured through the environment only, its output appended to a log file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from notifier import keys

__all__ = ["WorkerExitedError", "WorkerProcess"]

# Celery logs "celery@host ready." (at INFO) once the worker consumes.
_READY_MARK = b" ready."


class WorkerExitedError(RuntimeError):
    """The worker process exited while it was expected to run."""


class WorkerProcess:
    """One ``celery -A <app> worker -Q <queues> -c <concurrency>`` process.

    ``own_process_group`` (the default) starts it in a session of its own, so
    :meth:`kill` takes the parent and every pool process at once and
    :meth:`stop` can sweep up pool processes a killed parent left behind;
    Ctrl-C at a terminal then reaches only the caller, which stops the
    worker itself. Without it, the worker shares the caller's process group
    and terminal, like a command started from a shell.

    :meth:`wait_ready` needs a log level of INFO or lower (Celery's "ready."
    line); ``loglevel=None`` leaves Celery's default (WARNING).
    """

    def __init__(
        self,
        environment: Mapping[str, str],
        log_path: Path,
        *,
        app: str = "worker",
        queues: Sequence[str] = keys.QUEUES,
        concurrency: int = 2,
        loglevel: str | None = "INFO",
        options: Sequence[str] = (),
        cwd: Path | None = None,
        own_process_group: bool = True,
    ) -> None:
        self.environment = environment
        self.log_path = log_path
        self.arguments: list[str] = [
            "-A", app, "worker", "-Q", ",".join(queues), "-c", str(concurrency),
            *(("--loglevel", loglevel) if loglevel is not None else ()),
            *options,
        ]  # fmt: skip
        """What follows ``celery`` on the command line."""
        self.started_at = 0.0
        """``time.monotonic()`` just before the process was spawned."""
        self._cwd = cwd
        self._own_process_group = own_process_group
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this run's output starts in an appended log

    @property
    def command(self) -> list[str]:
        """The command run: ``celery`` of this interpreter, then :attr:`arguments`."""
        return [sys.executable, "-m", "celery", *self.arguments]

    @property
    def command_line(self) -> str:
        """The command as an operator would type it (``celery -A worker worker ...``)."""
        return " ".join(["celery", *self.arguments])

    # -- lifecycle

    def start(self) -> Self:
        """Spawn the worker (not yet consuming: see :meth:`wait_ready`)."""
        if self.running():
            raise RuntimeError("the worker is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self.started_at = time.monotonic()
            self._process = subprocess.Popen(  # noqa: S603 - our interpreter, our arguments
                self.command,
                cwd=self._cwd,
                env=dict(self.environment),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self._own_process_group,
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Self:
        """Block until the worker consumes (Celery logs "ready.").

        Raises :class:`WorkerExitedError` if it exits first and
        :class:`TimeoutError` after ``timeout`` seconds, both with the log's tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise WorkerExitedError(f"the worker exited early\n{self.log_tail()}")
            if _READY_MARK in self._log_since_start():
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout:g}s waiting for the worker to be ready\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the worker (its whole process group when it has one), and reap it."""
        process = self._process
        if process is None:
            return
        if self._own_process_group:
            # The group outlives a dead parent while pool processes remain in it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        elif process.poll() is None:
            process.kill()
        process.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (Celery's warm shutdown: finish the tasks in hand); the exit code.

        A worker that outlives ``timeout`` is killed, and :class:`TimeoutError`
        raised with the log's tail.
        """
        process = self._started()
        process.send_signal(signal.SIGTERM)  # a no-op once it has exited
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(
                f"the worker ignored SIGTERM for {timeout:g}s\n{self.log_tail()}"
            ) from None
        self._sweep()
        return code

    def stop(self, timeout: float = 30.0) -> None:
        """For teardown: :meth:`terminate`, killing after ``timeout``; a no-op if never started."""
        if self._process is not None:
            with contextlib.suppress(TimeoutError):  # killed: all that teardown needs
                self.terminate(timeout)

    # -- state

    @property
    def pid(self) -> int:
        """The worker's (parent) process id; also after it exited."""
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """The exit code once it exited (negative: killed by that signal), else ``None``."""
        process = self._process
        return process.poll() if process is not None else None

    def running(self) -> bool:
        """Whether the worker was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def check_alive(self) -> None:
        """Raise :class:`WorkerExitedError` (with the log's tail) if the worker exited."""
        code = self.returncode
        if code is not None:
            raise WorkerExitedError(f"the worker exited with {code}:\n{self.log_tail()}")

    def child_pids(self) -> list[int]:
        """Process ids of the prefork pool (Linux; empty where /proc cannot tell)."""
        if not self.running():
            return []
        pids: list[int] = []
        # Every thread's list: the pool's supervisor thread forks replacements.
        for listing in Path(f"/proc/{self.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids.extend(int(pid) for pid in listing.read_text().split())
        return pids

    def log(self) -> str:
        """The whole log file ("" before there is one)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The log's last ``lines`` lines, under a header naming the file."""
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"--- {self.log_path.name} (last {lines} lines)\n{tail}"

    # -- inside

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the worker was not started")
        return self._process

    def _log_since_start(self) -> bytes:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read()
        except FileNotFoundError:
            return b""

    def _sweep(self) -> None:
        """SIGKILL pool processes that outlived their parent (only in a group of our own)."""
        process = self._process
        if process is not None and self._own_process_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
