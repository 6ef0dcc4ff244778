"""A real SSH server on 127.0.0.1 standing in for an LSF login node, built on paramiko's server API.

- Public-key authentication only, for one user. The keys live in the work folder and are generated on the first
  start (kept across restarts, like a real host's): the client's private key ``id_ecdsa``, the host key
  ``ssh_host_ecdsa_key`` (``.pub`` beside each), and ``known_hosts`` with the ``[127.0.0.1]:port`` entry.
- ``exec`` requests run ``bash -c <command>`` in a login-like environment (HOME, USER, LOGNAME, SHELL and a PATH
  of system folders only), so the LSF commands are found only after sourcing ``profile.lsf``, as on a real login
  node. Shell, pty, env and port-forwarding requests are refused.
- stdout and stderr stream back as the command writes them; the exit status follows. A command killed by a signal
  sends none (OpenSSH sends exit-signal instead), so the client reads -1.
- A client that goes away before its command ends gets the command's process group hung up (SIGHUP, then SIGKILL),
  so nothing lingers; bsub's job runner has a session of its own and keeps running.

Fault switches, written by ``SshServer.set()`` to ``control.json`` in the work folder (the server applies them
within 50 ms and acknowledges in ``control.applied``; ``set()`` waits for that):

- ``{"refuse": true}`` close the listening socket: connections are refused until ``{"refuse": false}``
- ``{"drop": n}`` close the next n connections at once, before the SSH banner
- ``{"mute": n}`` accept the next n connections and never say a word (a hung login node: no banner, no close)
- ``{"drop_exec": n}`` cut the link instead of running the next n commands
- ``{"lose_answer": n}`` run the next n commands, then cut the link before their output and exit status
- ``{"match": "regex"}`` ``drop_exec`` and ``lose_answer`` count only commands matching it (``null``: any)
- ``{"exec_delay": seconds}`` wait before running each command (a slow login node)

Every connection, login, command (with the client's SSH version) and exit is appended to ``events.jsonl`` in the
work folder.

Run: ``python -m devstack.sshd --port N --workdir DIR [--user NAME]``.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import paramiko

from devstack.procs import LOOPBACK, ManagedProcess, ServerHandle, free_port

ROOT = Path(__file__).resolve().parents[1]
LOGIN_PATH = "/usr/local/bin:/usr/bin:/bin"
CLIENT_KEY = "id_ecdsa"
HOST_KEY = "ssh_host_ecdsa_key"
CONTROL = "control.json"
APPLIED = "control.applied"
EVENTS = "events.jsonl"
_POLL = 0.05

# -- keys --------------------------------------------------------------------------------------------------------------


def _key(path: Path) -> paramiko.ECDSAKey:
    """The ECDSA key at ``path``, generated (with ``path.pub``) when missing."""
    if path.exists():
        return paramiko.ECDSAKey.from_private_key_file(str(path))
    key = paramiko.ECDSAKey.generate()
    key.write_private_key_file(str(path))  # mode 0600
    path.with_name(path.name + ".pub").write_text(f"{key.get_name()} {key.get_base64()} hortacloud-devstack\n")
    return key


# -- fault switches ----------------------------------------------------------------------------------------------------


@dataclass
class _Control:
    """The switches in force; ``refresh`` applies a new ``control.json`` (its keys only) and acknowledges it."""

    workdir: Path
    refuse: bool = False
    drop: int = 0
    mute: int = 0
    drop_exec: int = 0
    lose_answer: int = 0
    match: re.Pattern[str] | None = None
    exec_delay: float = 0.0
    serial: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self) -> None:
        try:
            change = json.loads((self.workdir / CONTROL).read_text())
        except (OSError, ValueError):
            return
        serial = int(change.get("serial", 0))
        if serial == self.serial:
            return
        with self.lock:
            self.refuse = bool(change.get("refuse", self.refuse))
            self.drop = int(change.get("drop", self.drop))
            self.mute = int(change.get("mute", self.mute))
            self.drop_exec = int(change.get("drop_exec", self.drop_exec))
            self.lose_answer = int(change.get("lose_answer", self.lose_answer))
            self.exec_delay = float(change.get("exec_delay", self.exec_delay))
            if "match" in change:
                self.match = re.compile(change["match"]) if change["match"] else None
            self.serial = serial
        applied = self.workdir / APPLIED
        applied.with_suffix(".tmp").write_text(str(serial))
        os.replace(applied.with_suffix(".tmp"), applied)

    def take(self, name: str, command: str | None = None) -> bool:
        """Consume one count of ``name`` (for ``command`` if ``match`` is set); True if this one misbehaves."""
        with self.lock:
            if command is not None and self.match is not None and not self.match.search(command):
                return False
            left = getattr(self, name)
            if left <= 0:
                return False
            setattr(self, name, left - 1)
            return True


# -- the server --------------------------------------------------------------------------------------------------------


class _Server:
    """Listens, hands each connection to a thread, runs commands; ``shutdown`` ends every command still running."""

    def __init__(self, port: int, workdir: Path, user: str, login_path: str) -> None:
        self.port = port
        self.workdir = workdir
        self.user = user
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.host_key = _key(workdir / HOST_KEY)
        self.client_key = _key(workdir / CLIENT_KEY)
        (workdir / "known_hosts").write_text(
            f"[{LOOPBACK}]:{port} {self.host_key.get_name()} {self.host_key.get_base64()}\n"
        )
        self.login_env = {
            "HOME": str(self.home),
            "USER": user,
            "LOGNAME": user,
            "SHELL": "/bin/bash",
            "PATH": login_path,
            "LANG": "C.UTF-8",
        }
        self.control = _Control(workdir)
        self.stopping = threading.Event()
        self.children: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def event(self, kind: str, **details: Any) -> None:
        line = json.dumps({"event": kind, "time": time.time(), **details})
        with self._lock, (self.workdir / EVENTS).open("a") as handle:
            handle.write(line + "\n")

    def _listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        sock.listen(16)
        sock.settimeout(_POLL)
        return sock

    def serve(self) -> None:
        """Accept until ``stopping``; the listening socket is closed while ``refuse`` is on."""
        listener: socket.socket | None = None
        self.event("started", port=self.port, pid=os.getpid())
        try:
            while not self.stopping.is_set():
                self.control.refresh()
                if self.control.refuse and listener is not None:
                    listener.close()
                    listener = None
                    self.event("refusing")
                elif not self.control.refuse and listener is None:
                    listener = self._listen()
                    self.event("listening", port=self.port, pid=os.getpid())
                if listener is None:
                    self.stopping.wait(_POLL)
                    continue
                try:
                    sock, peer = listener.accept()
                except TimeoutError:
                    continue
                if self.control.take("drop"):
                    self.event("dropped", peer=list(peer))
                    sock.close()
                    continue
                if self.control.take("mute"):
                    self.event("muted", peer=list(peer))
                    threading.Thread(target=self._silence, args=(sock,), daemon=True).start()
                    continue
                threading.Thread(target=self._connection, args=(sock, peer), daemon=True).start()
        finally:
            if listener is not None:
                listener.close()
            self.shutdown()

    def _silence(self, sock: socket.socket) -> None:
        """Hold a muted connection open, reading and answering nothing, until the client leaves or the server stops."""
        sock.settimeout(_POLL)
        with sock:
            while not self.stopping.is_set():
                try:
                    if not sock.recv(4096):
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    def _connection(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        self.event("connected", peer=list(peer))
        transport = paramiko.Transport(sock)
        transport.add_server_key(self.host_key)
        try:
            transport.start_server(server=_LoginNode(self, transport, sock, peer))
            # Channels are never accept()ed: the transport keeps them (a dropped Channel closes itself on GC);
            # commands start from the exec request.
            while transport.is_active() and not self.stopping.is_set():
                transport.join(0.5)
        except (paramiko.SSHException, EOFError, OSError) as err:
            self.event("connection_failed", peer=list(peer), error=str(err))
        finally:
            transport.close()
            self.event("disconnected", peer=list(peer))

    def run(self, channel: paramiko.Channel, command: str, sock: socket.socket, peer: tuple[str, int]) -> None:
        """Run one exec request: ``bash -c`` in the login environment, output streamed, exit status at the end."""
        if self.control.exec_delay:
            time.sleep(self.control.exec_delay)
        lose_answer = self.control.take("lose_answer", command)
        env = self.login_env | {
            "SSH_CONNECTION": f"{peer[0]} {peer[1]} {LOOPBACK} {self.port}",
            "SSH_CLIENT": f"{peer[0]} {peer[1]} {self.port}",
        }
        proc = subprocess.Popen(
            ["/bin/bash", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.home,
            start_new_session=True,  # its own group, so a hang-up reaches everything it started
        )
        with self._lock:
            self.children.add(proc)
        self.event("exec", command=command, pid=proc.pid, client=channel.get_transport().remote_version)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        held: list[bytes] = []
        send_out = held.append if lose_answer else channel.sendall
        send_err = held.append if lose_answer else channel.sendall_stderr
        pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, send_out), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, send_err), daemon=True),
            threading.Thread(target=_feed, args=(channel, proc.stdin), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        hung_up = False
        while proc.poll() is None:
            if not hung_up and (channel.closed or self.stopping.is_set()):
                hung_up = True
                self.event("hangup", pid=proc.pid, command=command)
                _signal_group(proc.pid, signal.SIGHUP)
                threading.Timer(2.0, _signal_group, (proc.pid, signal.SIGKILL)).start()
            time.sleep(_POLL)
        for pump in pumps[:2]:
            pump.join(5)
        with self._lock:
            self.children.discard(proc)
        self.event("exit", pid=proc.pid, returncode=proc.returncode, command=command)
        if lose_answer:
            self.event("lost_answer", pid=proc.pid, command=command)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            return
        if channel.closed:
            return
        with contextlib.suppress(OSError, EOFError):
            if proc.returncode >= 0:
                channel.send_exit_status(proc.returncode)
            channel.shutdown_write()
            channel.close()

    def shutdown(self) -> None:
        self.stopping.set()
        with self._lock:
            children = list(self.children)
        for proc in children:
            _signal_group(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 2.0
        for proc in children:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)


class _LoginNode(paramiko.ServerInterface):
    """One connection's view of the server: who may log in, which requests are allowed."""

    def __init__(self, server: _Server, transport: paramiko.Transport, sock: socket.socket, peer: Any) -> None:
        self.server = server
        self.transport = transport
        self.sock = sock
        self.peer = tuple(peer)

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == self.server.user and key == self.server.client_key
        self.server.event("auth", user=username, key=key.get_name(), ok=ok)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        self.server.event("auth", user=username, key="password", ok=False)
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode("utf-8", "surrogateescape")
        if self.server.control.take("drop_exec", text):
            self.server.event("dropped_exec", command=text)
            # The link goes before the request is answered: the client sees the connection die mid-command.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            return False
        threading.Thread(target=self.server.run, args=(channel, text, self.sock, self.peer), daemon=True).start()
        return True


def _pump(stream: IO[bytes], send: Any) -> None:
    """Copy a command's output to the channel as it comes; if the client is gone, close the pipe (SIGPIPE)."""
    try:
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            send(chunk)
    except (OSError, EOFError):
        pass
    finally:
        stream.close()


def _feed(channel: paramiko.Channel, stdin: IO[bytes]) -> None:
    """Copy the client's stdin to the command until EOF."""
    try:
        while data := channel.recv(65536):
            stdin.write(data)
            stdin.flush()
    except (OSError, EOFError):
        pass
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def serve(port: int, workdir: Path, user: str, login_path: str = LOGIN_PATH) -> None:
    """Serve until SIGTERM (sent by ``ManagedProcess.stop`` or, through PDEATHSIG, by the parent's death)."""
    server = _Server(port, workdir, user, login_path)
    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: server.stopping.set())
    server.serve()


# -- the handle --------------------------------------------------------------------------------------------------------


class SshServer(ServerHandle):
    """The server as a managed child process: ``start()``, ``connection()``, ``set(refuse=True)``, ``stop()``."""

    def __init__(self, workdir: Path, *, user: str | None = None, login_path: str = LOGIN_PATH) -> None:
        self.workdir = Path(workdir)
        self.user = user or getpass.getuser()
        self.login_path = login_path
        self.port = 0
        self._serial = 0
        self._process: ManagedProcess | None = None

    @property
    def key_file(self) -> Path:
        """The client's private key (the one key the server accepts)."""
        return self.workdir / CLIENT_KEY

    @property
    def known_hosts(self) -> Path:
        """The known_hosts file with the server's ``[127.0.0.1]:port`` entry."""
        return self.workdir / "known_hosts"

    @property
    def host_key(self) -> str:
        """The host's public key as ``<type> <base64>``, for the ssh connection's ``host_key`` extra."""
        return " ".join((self.workdir / f"{HOST_KEY}.pub").read_text().split()[:2])

    def start(self, timeout: float = 30.0, port: int | None = None) -> SshServer:
        """Start on ``port`` (default: a free one); returns when the server sends its SSH banner."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / CONTROL).unlink(missing_ok=True)
        self.port = port or free_port()
        argv = [sys.executable, "-m", "devstack.sshd", "--port", str(self.port), "--workdir", str(self.workdir)]
        argv += ["--user", self.user, "--login-path", self.login_path]
        self._process = ManagedProcess("sshd", argv, log_path=self.workdir / "sshd.log", cwd=ROOT)
        self._process.wait_until(self._listening, timeout, "SSH port")
        return self

    def _listening(self) -> bool:
        # Not a probe connection: the server would log a failed handshake for it.
        pid = self.pid
        return any(event.get("pid") == pid for event in self.events("listening"))

    def connection(self, **extra: Any) -> dict[str, Any]:
        """An Airflow connection (conn_type ssh) for this server: key file, host key checked, no other keys tried."""
        return {
            "conn_type": "ssh",
            "host": LOOPBACK,
            "port": self.port,
            "login": self.user,
            "extra": {"key_file": str(self.key_file), "host_key": self.host_key, "look_for_keys": "false"} | extra,
        }

    def connection_json(self, **extra: Any) -> str:
        """The Airflow ssh connection as AIRFLOW_CONN_* JSON; ``extra`` adds to its extras."""
        return json.dumps(self.connection(**extra))

    def set(self, timeout: float = 5.0, **change: Any) -> None:
        """Switch faults, e.g. ``set(refuse=True)``, ``set(drop=2)``; returns once the server applied them."""
        self._serial += 1
        path = self.workdir / CONTROL
        path.with_suffix(".tmp").write_text(json.dumps({"serial": self._serial, **change}))
        os.replace(path.with_suffix(".tmp"), path)
        deadline = time.monotonic() + timeout
        applied = self.workdir / APPLIED
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if int(applied.read_text()) >= self._serial:
                    return
            if self._process is None or not self._process.alive():
                raise RuntimeError(f"sshd is not running; cannot set {change}")
            time.sleep(0.02)
        raise RuntimeError(f"sshd did not apply {change} within {timeout:.0f}s")

    def reset(self) -> None:
        """Every fault switch off."""
        self.set(refuse=False, drop=0, mute=0, drop_exec=0, lose_answer=0, match=None, exec_delay=0)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """What the server saw (``{"event": "exec", "command": ..., ...}``), optionally one kind only."""
        try:
            lines = (self.workdir / EVENTS).read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = [json.loads(line) for line in lines if line.strip()]
        return [entry for entry in entries if kind is None or entry["event"] == kind]

    def commands(self) -> list[str]:
        """Every command string the server ran, in order."""
        return [entry["command"] for entry in self.events("exec")]

    def __enter__(self) -> SshServer:
        return self.start()


def main(argv: list[str] | None = None) -> None:
    """Command line: serve SSH on ``--port`` for the one ``--user`` until killed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--workdir", type=Path, required=True, help="keys, known_hosts, control.json, events.jsonl")
    parser.add_argument("--user", default=getpass.getuser(), help="the one user allowed to log in")
    parser.add_argument("--login-path", default=LOGIN_PATH, help="PATH of the login environment")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    serve(args.port, args.workdir.resolve(), args.user, args.login_path)


if __name__ == "__main__":
    main()
