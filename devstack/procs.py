"""Start and stop local server processes: own process group, killed with their parent, stopped by PID.

Standard library only (``/proc`` read directly where psutil would do): the LSF emulator imports ``running`` and
starts with ``python -S`` (no site-packages): measured here, a bare start takes 10 ms, one that imports
psutil 51 ms, on every bsub/bjobs call of the suite.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
LOOPBACK = "127.0.0.1"


def _die_with_parent() -> None:
    """Runs in the child before exec: new session (own process group), SIGTERM when the parent dies."""
    os.setsid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, ...), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a killed process whose parent has not reaped it yet is gone)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in {"Z", "X"}


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait up to ``timeout`` s for every process in ``pids`` to end; the ones still running."""
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if running(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {pid for pid in left if running(pid)}
    return left


def port_is_free(port: int) -> bool:
    """True if ``port`` on 127.0.0.1 can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def free_port_pair(offset: int = 10000) -> int:
    """A free port whose ``port + offset`` is free too (SeaweedFS puts gRPC there)."""
    for _ in range(200):
        port = free_port()
        if port + offset < 65536 and port_is_free(port + offset):
            return port
    raise RuntimeError("no free port pair on 127.0.0.1")


class ManagedProcess:
    """A server process in its own process group; ``stop()`` ends the whole group by PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        """The PID of the process (also its process group id)."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the process's log ("" if it cannot be read)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until true; fail with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name}: {what} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the process group, then SIGKILL after ``grace`` seconds."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Children that outlived the leader are still in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


class ServerHandle:
    """What every local server handle shares: its PID, ``stop()`` by PID, and stopping on ``with`` exit."""

    _process: ManagedProcess | None = None

    @property
    def pid(self) -> int | None:
        """The server's PID, or None when it is not running."""
        return self._process.pid if self._process else None

    def stop(self) -> None:
        """Stop the server's process group, if it was started."""
        if self._process:
            self._process.stop()
            self._process = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_answers(url: str, timeout: float = 1.0) -> bool:
    """True once anything answers HTTP at ``url`` (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
