"""A real Airflow 3.3.2 on 127.0.0.1: api-server, scheduler, dag-processor and triggerer, plus a small REST client.

Follows docs/local-stack.md: the components are started one by one (never ``airflow
standalone``, whose log servers bind 0.0.0.0), scheduler and triggerer with ``--skip-serve-logs``, the api-server
with ``-H 127.0.0.1``. The simple auth manager reads a passwords file written here before start, so the password
is never printed and never on a command line. Each component is a :class:`~devstack.procs.ManagedProcess`: its own
process group, SIGTERM when this process dies, stopped by PID.

    with AirflowStack(home, dags_folder, env={"AIRFLOW_CONN_HORTACLOUD_S3": endpoint.connection_json()}) as api:
        api.wait_for_dag("hortacloud_upload_sample")
        run_id = api.trigger("hortacloud_upload_sample", {"sample": "2023-05-10"})
        assert api.wait_for_run("hortacloud_upload_sample", run_id, timeout=120) == "success"

Command line (for poking at it by hand; prints the URL and where the password file is, never the password)::

    python -m devstack.airflow_stack up --dags dags/ [--home .demo/airflow] [--env-file extra.env]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

from devstack.procs import LOOPBACK, ManagedProcess, free_port, wait_gone

log = logging.getLogger(__name__)

USERNAME = "admin"
PASSWORDS_FILE = "simple_auth_manager_passwords.json"
_SQLITE_MODULE = "hortacloud_stack_sqlite"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH_KEYS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
FINISHED_RUN_STATES = frozenset({"success", "failed"})
FINISHED_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})

# Variables of the calling process that would leak into the stack's Airflow (the test session's own AIRFLOW_HOME,
# unit-test mode, a site config) are not inherited; only these are, plus whatever ``env`` passes explicitly.
_INHERITED = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONDONTWRITEBYTECODE",
)


class AirflowApiError(RuntimeError):
    """A REST call answered with an error status; ``status`` and ``detail`` are the server's."""

    def __init__(self, method: str, path: str, status: int, detail: Any) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail
        super().__init__(f"{method} {path} answered {status}: {detail}")


def _venv_bin() -> Path:
    # Not resolve(): .venv/bin/python is a symlink to the base interpreter; its siblings are the venv's scripts.
    return Path(sys.executable).parent


def airflow_binary() -> str:
    """The ``airflow`` script next to this interpreter (the project venv), else the one on PATH."""
    beside = _venv_bin() / "airflow"
    found = str(beside) if beside.exists() else shutil.which("airflow")
    if not found:
        raise RuntimeError("airflow not found next to the interpreter nor on PATH: build the venv with `make venv`")
    return found


class AirflowStack:
    """An isolated Airflow home and the four Airflow components, all on 127.0.0.1.

    ``home`` becomes AIRFLOW_HOME (created; database, logs, config and the passwords file live there).
    ``dags_folder`` is the DAG bundle ``dags-folder``; ``extra_bundles`` (name -> folder) adds more local bundles,
    e.g. a test's own probe DAGs beside the project's. ``env`` is added to every component's environment (and so
    to every task): ``AIRFLOW_CONN_*`` connections, ``HORTACLOUD_CONFIG``, ``AIRFLOW__*`` overrides, ``PYTHONPATH``,
    ``PATH`` (prepended to the inherited one). ``start()`` returns an :class:`AirflowClient` logged in as
    ``admin``; ``stop()`` ends every process by PID. Also a context manager yielding the client.

    ``api_conn_id`` puts an ``http`` connection of that id into every component's environment that logs in as the
    stack's admin: the tasks' own way to the REST API (the upload DAG writes its run notes through it).

    DAGs start paused (``paused_at_creation``), as in production: a scheduled DAG in the folder would otherwise
    run at once. Unpause what you trigger (``client.unpause(dag_id)``); a run of a paused DAG stays queued.
    """

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        env: Mapping[str, str] | None = None,
        *,
        plugins_folder: Path | None = None,
        parallelism: int = 3,
        paused_at_creation: bool = True,
        refresh_interval: int = 5,
        extra_bundles: Mapping[str, Path] | None = None,
        port: int | None = None,
        api_conn_id: str | None = None,
        triggerers: int = 1,
    ) -> None:
        self.home = Path(home).resolve()
        self.dags_folder = Path(dags_folder).resolve()
        self.plugins_folder = Path(plugins_folder).resolve() if plugins_folder else self.home / "plugins"
        self.extra_env = dict(env or {})
        self.parallelism = parallelism
        self.paused_at_creation = paused_at_creation
        self.refresh_interval = refresh_interval
        self.extra_bundles = {name: Path(path).resolve() for name, path in (extra_bundles or {}).items()}
        self.requested_port = port
        self.api_conn_id = api_conn_id
        if triggerers < 1:
            raise ValueError(f"triggerers {triggerers!r} must be at least 1")
        #: Component names of the triggerers: ``triggerer``, then ``triggerer-2`` ...
        self.triggerer_names = ["triggerer", *(f"triggerer-{n}" for n in range(2, triggerers + 1))]
        #: Each running triggerer's job id (``TriggererJob``), by component name: which one holds a trigger.
        self.triggerer_jobs: dict[str, int] = {}
        self._seen_triggerer_jobs: set[int] = set()  # every job id seen, stopped ones too
        self._password: str | None = None
        self.port: int | None = None
        self.client: AirflowClient | None = None
        self.processes: dict[str, ManagedProcess] = {}
        self._argv: dict[str, list[str]] = {}
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}

    @property
    def url(self) -> str:
        """The api-server's base URL; RuntimeError before ``start()``."""
        if self.port is None:
            raise RuntimeError("AirflowStack is not started")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def passwords_file(self) -> Path:
        """The simple auth manager's generated passwords (JSON, user -> password), where the admin's is."""
        return self.home / PASSWORDS_FILE

    @property
    def logs_folder(self) -> Path:
        """Component stdout/stderr (``<component>.log``) and, under ``tasks/``, the task logs."""
        return self.home / "logs"

    def environment(self) -> dict[str, str]:
        """The environment every component runs with (no secrets in it except what ``env`` passed)."""
        if self.port is None:
            raise RuntimeError("AirflowStack is not started")
        inherited = {key: os.environ[key] for key in _INHERITED if key in os.environ}
        path = os.pathsep.join(p for p in (self.extra_env.get("PATH"), str(_venv_bin()), inherited.get("PATH")) if p)
        settings = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # Two cores: a handful of task processes at once is all the machine can run usefully.
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(self.paused_at_creation),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_folder / "tasks"),
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(self.home / "bundles"),
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(self._bundles()),
            # Default 300 s: a DAG file written after start would not be seen for minutes.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(self.refresh_interval),
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # Off by default; should it be switched on, its default host is 0.0.0.0.
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOOPBACK,
            "PYTHONWARNINGS": "ignore",
            "TMPDIR": str(self.home / "tmp"),
            # SQLite's default 5-s busy timeout turned a burst of REST calls during task writes into HTTP 500
            # "Database error"; production uses PostgreSQL, the stack waits longer instead.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{_SQLITE_MODULE}.CONNECT_ARGS",
        }
        if self.api_conn_id and self._password:
            # The tasks' own way to the REST API (run notes): a connection in the environment, as any other.
            connection = {"conn_type": "http", "host": self.url, "login": USERNAME, "password": self._password}
            settings[f"AIRFLOW_CONN_{self.api_conn_id.upper()}"] = json.dumps(connection)
        env = inherited | settings | self.extra_env
        env["PATH"] = path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self._pylib), env.get("PYTHONPATH")) if p)
        return env

    @property
    def _pylib(self) -> Path:
        return self.home / "pylib"

    def _write_pylib(self) -> None:
        self._pylib.mkdir(parents=True, exist_ok=True)
        (self._pylib / f"{_SQLITE_MODULE}.py").write_text(
            '"""SQLite connect arguments of the dev stack (AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS)."""\n\n'
            'CONNECT_ARGS = {"timeout": 30}\n'
        )

    def _bundles(self) -> list[dict[str, Any]]:
        local = "airflow.dag_processing.bundles.local.LocalDagBundle"
        bundles: list[dict[str, Any]] = [{"name": "dags-folder", "classpath": local, "kwargs": {}}]
        for name, path in self.extra_bundles.items():
            bundles.append({"name": name, "classpath": local, "kwargs": {"path": str(path)}})
        return bundles

    def start(self, timeout: float = 120.0) -> AirflowClient:
        """Write the home, migrate the database, start the components, wait until all report healthy."""
        if self.processes:
            raise RuntimeError("AirflowStack is already started")
        started = time.monotonic()
        self.timings = {}
        for folder in (self.home, self.logs_folder, self.plugins_folder, self.home / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.dags_folder, *self.extra_bundles.values()):
            if not folder.is_dir():
                raise RuntimeError(f"DAGs folder {folder} does not exist (pass an existing folder)")
        self.port = self.requested_port or free_port()
        self._write_pylib()
        password = self._write_password()
        env = self.environment()
        airflow = airflow_binary()
        self._migrate(airflow, env, timeout)
        self.timings["migrated"] = time.monotonic() - started
        self._argv = {
            "api-server": [airflow, "api-server", "-H", LOOPBACK, "-p", str(self.port)],
            "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
            "dag-processor": [airflow, "dag-processor"],
        }
        self._argv |= {name: [airflow, "triggerer", "--skip-serve-logs"] for name in self.triggerer_names}
        try:
            for name in COMPONENTS:
                self._launch(name, env)
            client = AirflowClient(self.url, USERNAME, password)
            deadline = time.monotonic() + timeout
            # The execution API builds its versioned routes on its first request (5-15 s here); a task's supervisor
            # times out at 5 s and retries, or fails the task. Warm it as soon as the api-server answers, while the
            # other components are still starting.
            warmed = threading.Event()
            threading.Thread(target=self._warm, args=(client, warmed, deadline), daemon=True).start()
            self._wait(client.is_healthy, deadline, "all components healthy")
            self.timings["healthy"] = time.monotonic() - started
            self._wait(warmed.is_set, deadline, "execution API ready")
            self.client = client
            # One triggerer at a time, so each job id is known to belong to its component.
            self.triggerer_jobs["triggerer"] = self._new_triggerer_job(deadline)
            for name in self.triggerer_names[1:]:
                self._launch(name, env)
                self.triggerer_jobs[name] = self._new_triggerer_job(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = self.timings["ready"] = time.monotonic() - started
        log.info(
            "Airflow at %s ready after %.1fs %s (home %s)", self.url, self.startup_seconds, self.timings, self.home
        )
        return client

    def _launch(self, name: str, env: dict[str, str]) -> None:
        self.processes[name] = ManagedProcess(
            name, self._argv[name], log_path=self.logs_folder / f"{name}.log", env=env, cwd=self.home
        )

    def restart(self, name: str, grace: float = 10.0) -> None:
        """Stop one component as a deployment would (SIGTERM, then SIGKILL after ``grace`` s) and start it again."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        process.stop(grace=1.0)
        log.info("Airflow %s stopped; starting it again", name)
        self._launch(name, self.environment())
        if name in self.triggerer_jobs:
            self.triggerer_jobs[name] = self._new_triggerer_job(time.monotonic() + 120)

    def _new_triggerer_job(self, deadline: float) -> int:
        """The id of the running TriggererJob never seen before (the one just launched).

        A stopped triggerer's job may still read "running" for a while, so every id ever seen is left out.
        """
        client = self.client
        assert client is not None
        known = self._seen_triggerer_jobs

        def fresh() -> list[int]:
            jobs = client.request(
                "GET", "/api/v2/jobs", params={"job_type": "TriggererJob", "job_state": "running", "limit": 100}
            )["jobs"]
            return [job["id"] for job in jobs if job["id"] not in known]

        ids: list[int] = []

        def appeared() -> bool:
            ids[:] = fresh()
            return bool(ids)

        self._wait(appeared, deadline, "a new triggerer job")
        if len(ids) != 1:
            raise RuntimeError(f"expected one new triggerer job, found {ids}")
        known.add(ids[0])
        return ids[0]

    def holder_of(self, triggerer_id: int) -> str:
        """The component name of the triggerer whose job id is ``triggerer_id`` (a trigger's ``triggerer_id``)."""
        for name, job_id in self.triggerer_jobs.items():
            if job_id == triggerer_id:
                return name
        raise KeyError(f"no running triggerer of this stack has job id {triggerer_id} ({self.triggerer_jobs})")

    def pause(self, name: str) -> None:
        """SIGSTOP a component's process group: it stops heartbeating, as in a long GC pause or a frozen container."""
        os.killpg(self.processes[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """SIGCONT a component paused with ``pause``."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.processes[name].pid, signal.SIGCONT)

    def _warm(self, client: AirflowClient, warmed: threading.Event, deadline: float) -> None:
        started = time.monotonic()
        while time.monotonic() < deadline and self.processes:
            if client.execution_api_ready():
                self.timings["execution_api_warm"] = time.monotonic() - started
                warmed.set()
                return
            time.sleep(0.5)

    def _write_password(self) -> str:
        password = self._password = secrets.token_urlsafe(24)
        fd = os.open(self.passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({USERNAME: password}, out)
        return password

    def _migrate(self, airflow: str, env: dict[str, str], timeout: float) -> None:
        migrate = ManagedProcess(
            "db-migrate",
            [airflow, "db", "migrate"],
            log_path=self.logs_folder / "db-migrate.log",
            env=env,
            cwd=self.home,
        )
        try:
            returncode = migrate.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            migrate.stop()
        if returncode != 0:
            raise RuntimeError(
                f"airflow db migrate {'timed out' if returncode is None else f'exited with {returncode}'} "
                f"(log {migrate.log_path}):\n{migrate.log_tail()}"
            )

    def _wait(self, ready: Any, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for process in self.processes.values():
                if not process.alive():
                    raise RuntimeError(
                        f"Airflow {process.name} exited with {process.proc.returncode} before {what} "
                        f"(log {process.log_path}):\n{process.log_tail()}"
                    )
            if ready():
                return
            time.sleep(0.5)
        tails = "\n".join(f"--- {p.name} ({p.log_path})\n{p.log_tail(15)}" for p in self.processes.values())
        raise RuntimeError(f"Airflow at {self.url}: {what} not reached in time:\n{tails}")

    def pids(self) -> set[int]:
        """Every live process of the stack: the components and all their descendants (task processes included)."""
        roots = {p.pid for p in self.processes.values() if p.alive()}
        return _descendants(roots) | roots if roots else set()

    def listeners(self) -> list[Listener]:
        """Every TCP/UDP socket a process of the stack listens on."""
        return listening_sockets(self.pids())

    def stop(self, grace: float = 10.0) -> None:
        """End every process of the stack; takes 3-6 s here.

        SIGTERM to each component's process group; after up to 3 s a second SIGTERM (the triggerer and scheduler
        then stop waiting for triggers and tasks); SIGKILL to the groups after about ``grace`` s in all; finally any
        descendant still alive (task processes run in process groups of their own) is killed by PID.
        """
        if not self.processes:
            return
        began = time.monotonic()
        strays = self.pids()
        self._signal_all(signal.SIGCONT)  # a paused component must run to exit
        self._signal_all(signal.SIGTERM)
        self._wait_exit(time.monotonic() + min(3.0, grace / 2))
        if lingering := [p.name for p in self.processes.values() if p.alive()]:
            log.info("Still stopping: %s; signalling again", ", ".join(lingering))
        self._signal_all(signal.SIGTERM)
        self._wait_exit(time.monotonic() + grace / 2)
        for process in self.processes.values():
            process.stop(grace=1.0)
        for pid in sorted(strays & _live_pids()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        # SIGKILL is asynchronous: return only once the killed processes are really gone.
        if left := wait_gone(strays, timeout=5.0):
            log.warning("Processes of the stack still running after SIGKILL: %s", sorted(left))
        self.processes.clear()
        self.client = None
        log.info("Airflow at %s stopped in %.1fs", self.url, time.monotonic() - began)

    def _signal_all(self, signum: int) -> None:
        for process in self.processes.values():
            if process.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signum)

    def _wait_exit(self, deadline: float) -> None:
        while any(p.alive() for p in self.processes.values()) and time.monotonic() < deadline:
            time.sleep(0.1)

    def pss_mib(self) -> float:
        """Proportional set size of all the stack's processes, in MiB (shared pages counted once)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_full_info().pss
        return total / 2**20

    def __enter__(self) -> AirflowClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Listener:
    """One listening socket: ``proto`` tcp/tcp6/udp/udp6, ``address`` as printed (``127.0.0.1``, ``::``)."""

    proto: str
    address: str
    port: int
    pid: int


def _live_pids() -> set[int]:
    return set(psutil.pids())


def _descendants(roots: set[int]) -> set[int]:
    found: set[int] = set()
    for root in roots:
        with contextlib.suppress(psutil.Error):
            found.update(child.pid for child in psutil.Process(root).children(recursive=True))
    return found


def listening_sockets(pids: Iterable[int]) -> list[Listener]:
    """Listening TCP sockets and bound UDP sockets owned by ``pids``."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                tcp = conn.type == socket.SOCK_STREAM
                if (conn.status == psutil.CONN_LISTEN if tcp else not conn.raddr) and conn.laddr and conn.laddr.port:
                    proto = ("tcp" if tcp else "udp") + ("6" if conn.family == socket.AF_INET6 else "")
                    found.append(Listener(proto, conn.laddr.ip, conn.laddr.port, pid))
    return found


class AirflowClient:
    """The Airflow REST API (v2) as the stack's admin; a JWT from ``POST /auth/token``, renewed on 401.

    Requests wait up to ``timeout`` (60 s), longer than the stack's 30-s SQLite busy timeout, so a call that waited
    on the database's lock gets its answer rather than a client-side read timeout.
    """

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self._token: str | None = None
        self.timeout = timeout
        # One pooled session: connections are reused and closed with it (no CLOSE-WAIT sockets while polling).
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"AirflowClient({self.base_url!r}, user={self.username!r})"

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _send(
        self, method: str, path: str, body: Any, headers: dict[str, str], timeout: float | None = None
    ) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"} | headers
        response = self._session.request(
            method, self.base_url + path, json=body, headers=headers, timeout=timeout or self.timeout
        )
        return response.status_code, response.content

    def token(self) -> str:
        """A fresh access token for the admin user."""
        status, payload = self._send("POST", "/auth/token", {"username": self.username, "password": self._password}, {})
        if status not in (200, 201):
            raise AirflowApiError("POST", "/auth/token", status, _detail(payload))
        self._token = json.loads(payload)["access_token"]
        return self._token

    def request(self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        """One authenticated call; returns the decoded JSON (None when empty), raises AirflowApiError on >= 400."""
        if params:
            path = f"{path}?{urllib.parse.urlencode(params, doseq=True)}"
        for attempt in range(2):
            token = self._token or self.token()
            status, payload = self._send(method, path, body, {"Authorization": f"Bearer {token}"})
            if status == 401 and attempt == 0:
                self._token = None
                continue
            if status >= 400:
                raise AirflowApiError(method, path, status, _detail(payload))
            return json.loads(payload) if payload else None
        raise AssertionError("unreachable")

    # -- monitor --------------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health`` (no login needed)."""
        status, payload = self._send("GET", "/api/v2/monitor/health", None, {})
        if status != 200:
            raise AirflowApiError("GET", "/api/v2/monitor/health", status, _detail(payload))
        return json.loads(payload)

    def is_healthy(self) -> bool:
        """True when the database, scheduler, triggerer and dag-processor all report healthy."""
        try:
            health = self.health()
        except (OSError, AirflowApiError, ValueError):
            return False
        return all((health.get(key) or {}).get("status") == "healthy" for key in HEALTH_KEYS)

    def execution_api_ready(self) -> bool:
        """True once the task execution API answers (``GET /execution/health``)."""
        try:
            status, _ = self._send("GET", "/execution/health", None, {}, timeout=60.0)
        except OSError:
            return False
        return status == 200

    # -- DAGs -----------------------------------------------------------------------------------------------------

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG as the API shows it, None while it is not serialized yet."""
        try:
            return self.request("GET", f"/api/v2/dags/{_q(dag_id)}")
        except AirflowApiError as error:
            if error.status == 404:
                return None
            raise

    def import_errors(self) -> list[dict[str, Any]]:
        """DAG files the dag-processor could not import (``filename``, ``stack_trace``)."""
        return self.request("GET", "/api/v2/importErrors", params={"limit": 100})["import_errors"]

    def wait_for_dag(self, dag_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the dag-processor has serialized ``dag_id``; on time-out the import errors are in the message."""
        deadline = time.monotonic() + timeout
        while (found := self.dag(dag_id)) is None:
            if time.monotonic() > deadline:
                errors = self.import_errors()
                detail = "\n".join(f"{e['filename']}:\n{e['stack_trace']}" for e in errors) or "no import errors"
                raise TimeoutError(f"DAG {dag_id!r} not visible in Airflow after {timeout:.0f}s; {detail}")
            time.sleep(0.5)
        return found

    def set_paused(self, dag_id: str, paused: bool) -> None:
        """Pause or unpause the DAG (``PATCH /api/v2/dags/<id>``)."""
        self.request("PATCH", f"/api/v2/dags/{_q(dag_id)}", {"is_paused": paused})

    def unpause(self, dag_id: str) -> None:
        """``PATCH /api/v2/dags/<id>`` with ``is_paused: false`` (DAGs start paused unless the stack says not)."""
        self.set_paused(dag_id, False)

    def pause(self, dag_id: str) -> None:
        """``PATCH /api/v2/dags/<id>`` with ``is_paused: true``: the scheduler creates no new run of it."""
        self.set_paused(dag_id, True)

    def ensure_pool(self, name: str, slots: int, description: str = "") -> None:
        """Create the pool, or set its slots when it exists (``POST``/``PATCH /api/v2/pools``)."""
        try:
            self.request("POST", "/api/v2/pools", {"name": name, "slots": slots, "description": description})
        except AirflowApiError as error:
            if error.status != 409:
                raise
            body = {"pool": name, "slots": slots, "include_deferred": False}
            self.request("PATCH", f"/api/v2/pools/{_q(name)}", body, params={"update_mask": "slots"})

    # -- runs -----------------------------------------------------------------------------------------------------

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, *, run_id: str | None = None) -> str:
        """Start a run with ``conf``; returns its run id. A conf the DAG's Params refuse raises AirflowApiError 400.

        The run stays queued while the DAG is paused (``unpause`` first).
        """
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/api/v2/dags/{_q(dag_id)}/dagRuns", body)["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The run as the REST API gives it (``state``, ``run_type``, ``conf``, ...)."""
        return self.request("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}")

    def dag_runs(self, dag_id: str, *, run_type: str | None = None, states: Iterable[str] = ()) -> list[dict[str, Any]]:
        """The DAG's runs, oldest first (paged through).

        ``run_type`` keeps one kind (``manual``, ``scheduled``, ``asset_triggered``, ``backfill``), ``states`` only
        runs in those states.
        """
        params: dict[str, Any] = {"limit": 100, "order_by": "id", "state": list(states)}
        if run_type:
            params["run_type"] = run_type
        found: list[dict[str, Any]] = []
        while True:
            page = self.request("GET", f"/api/v2/dags/{_q(dag_id)}/dagRuns", params=params | {"offset": len(found)})
            found.extend(page["dag_runs"])
            if not page["dag_runs"] or len(found) >= page["total_entries"]:
                return found

    def queued_asset_events(self, dag_id: str) -> list[dict[str, Any]]:
        """Asset events that will start a run of ``dag_id`` but have not yet (``asset_id``, ``created_at``)."""
        return self.request("GET", f"/api/v2/dags/{_q(dag_id)}/assets/queuedEvents")["queued_events"]

    def upstream_asset_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The asset events an asset-triggered run consumed.

        Each has ``name``, ``source_dag_id``, ``source_task_id``, ``source_map_index`` and ``timestamp``.
        """
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/upstreamAssetEvents"
        return self.request("GET", path)["asset_events"]

    def wait_until_idle(self, dag_id: str, timeout: float = 120.0, poll: float = 1.0) -> list[dict[str, Any]]:
        """Wait until ``dag_id`` has no queued asset event and no queued or running run; returns all its runs.

        Once an upstream run has finished, its asset events are queued (or have already started runs), so this
        returns when every run those events start has finished. The scheduler creates the run and drops the queued
        event in one transaction: there is no moment with neither.
        """
        deadline = time.monotonic() + timeout
        while True:
            queued = self.queued_asset_events(dag_id)
            active = self.dag_runs(dag_id, states=("queued", "running"))
            if not queued and not active:
                return self.dag_runs(dag_id)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{dag_id} still busy after {timeout:.0f}s: {len(queued)} queued asset events, "
                    f"runs {[(run['dag_run_id'], run['state']) for run in active]}"
                )
            time.sleep(poll)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 120.0, poll: float = 1.0) -> str:
        """Wait until the run is ``success`` or ``failed`` and return that state.

        TimeoutError, with the task states, if it is still going after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.dag_run(dag_id, run_id)["state"]
            if state in FINISHED_RUN_STATES:
                return state
            if time.monotonic() > deadline:
                states = {_ti_name(ti): ti["state"] for ti in self.task_instances(dag_id, run_id)}
                raise TimeoutError(f"Run {run_id} of {dag_id} still {state} after {timeout:.0f}s; tasks: {states}")
            time.sleep(poll)

    # -- task instances -------------------------------------------------------------------------------------------

    def task_instances(
        self, dag_id: str, run_id: str, *, task_id: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        """All task instances of the run, one per map index for mapped tasks (paged through)."""
        params: dict[str, Any] = {"limit": 100, "order_by": "map_index"}
        if task_id:
            params["task_id"] = task_id
        if state:
            params["state"] = state
        found: list[dict[str, Any]] = []
        while True:
            page = self.request(
                "GET",
                f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances",
                params=params | {"offset": len(found)},
            )
            found.extend(page["task_instances"])
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """One task instance as the REST API gives it (``map_index`` -1 for an unmapped task)."""
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}"
        return self.request("GET", path if map_index < 0 else f"{path}/{map_index}")

    def wait_for_task_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Iterable[str],
        *,
        map_index: int = -1,
        timeout: float = 60.0,
    ) -> str:
        """Wait until the task instance is in one of ``states`` (e.g. ``{"deferred"}``) and return that state.

        Fails fast if it finishes in another state.
        """
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while True:
            state = self.task_instance(dag_id, run_id, task_id, map_index)["state"]
            if state in wanted:
                return state
            if state in FINISHED_TI_STATES or time.monotonic() > deadline:
                raise TimeoutError(f"Task {task_id}[{map_index}] of {run_id} is {state}, never reached {wanted}")
            time.sleep(0.5)

    def wait_for_deferred(
        self, dag_id: str, run_id: str, task_id: str, *, map_index: int = -1, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Wait until the task is deferred and its trigger is assigned to the triggerer; returns the task instance.

        Marking a task failed before the triggerer has started its trigger can drop the trigger without its
        ``on_kill`` ever running (seen here); once it runs, mark-failed cancels it and ``on_kill`` is awaited. The
        triggerer starts an assigned trigger within about a second.
        """
        deadline = time.monotonic() + timeout
        self.wait_for_task_state(dag_id, run_id, task_id, {"deferred"}, map_index=map_index, timeout=timeout)
        while True:
            ti = self.task_instance(dag_id, run_id, task_id, map_index)
            if ti["state"] != "deferred":
                raise RuntimeError(f"Task {task_id}[{map_index}] of {run_id} left deferred: {ti['state']}")
            if (ti.get("trigger") or {}).get("triggerer_id") is not None:
                return ti
            if time.monotonic() > deadline:
                raise TimeoutError(f"Trigger of {task_id}[{map_index}] of {run_id} not picked up by the triggerer")
            time.sleep(0.3)

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str, map_index: int = -1) -> None:
        """``PATCH`` a task instance to ``success``, ``failed`` or ``skipped``, as "Mark failed" in the UI does.

        For a deferred task the triggerer cancels the trigger and awaits its async ``on_kill()`` (Airflow 3.3;
        the operator's ``on_kill`` is not called, no worker process exists), then its ``cleanup()``.
        """
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}"
        if map_index >= 0:
            path = f"{path}/{map_index}"
        self.request("PATCH", path, {"new_state": state})

    def mark_task_failed(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> None:
        """Mark the task instance failed, as "Mark failed" in the UI does (see ``set_task_state``)."""
        self.set_task_state(dag_id, run_id, task_id, "failed", map_index)

    def clear_tasks(
        self, dag_id: str, run_id: str, task_ids: Iterable[str | tuple[str, int]], *, only_failed: bool = False
    ) -> list[dict[str, Any]]:
        """Clear task instances (``task_id`` or ``(task_id, map_index)``) so the scheduler runs them again."""
        body = {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [list(t) if isinstance(t, tuple) else t for t in task_ids],
            "only_failed": only_failed,
            "reset_dag_runs": True,
        }
        return self.request("POST", f"/api/v2/dags/{_q(dag_id)}/clearTaskInstances", body)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        """A task's XCom value as JSON (a task's return value by default); AirflowApiError 404 when there is none."""
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/xcomEntries/{_q(key)}"
        return self.request("GET", path, params={"map_index": map_index})["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """The task's log for one try as text, one line per record (``<time> <level> <event> key=value...``)."""
        path = f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/logs/{try_number}"
        params = {"full_content": "true", "map_index": map_index}
        return "\n".join(_log_line(entry) for entry in self.request("GET", path, params=params)["content"])


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _ti_name(ti: Mapping[str, Any]) -> str:
    return ti["task_id"] if ti.get("map_index", -1) < 0 else f"{ti['task_id']}[{ti['map_index']}]"


def _detail(payload: bytes) -> Any:
    try:
        return json.loads(payload).get("detail", payload.decode(errors="replace"))
    except (ValueError, AttributeError):
        return payload.decode(errors="replace")


def _log_line(entry: Any) -> str:
    if not isinstance(entry, Mapping):
        return str(entry)
    rest = {k: v for k, v in entry.items() if k not in ("timestamp", "level", "event")}
    extra = " ".join(f"{k}={v}" for k, v in rest.items())
    parts = (entry.get("timestamp"), (entry.get("level") or "").upper() or None, entry.get("event"), extra or None)
    return " ".join(str(p) for p in parts if p)


def _read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def main(argv: list[str] | None = None) -> int:
    """``up``: start a stack on the given DAGs folder and keep it running until Ctrl-C / SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m devstack.airflow_stack", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Airflow on 127.0.0.1 and wait")
    up.add_argument("--dags", type=Path, default=Path("dags"), help="DAGs folder (default: dags)")
    up.add_argument("--home", type=Path, default=Path(".demo/airflow"), help="AIRFLOW_HOME (default: .demo/airflow)")
    up.add_argument("--plugins", type=Path, default=None, help="plugins folder (default: <home>/plugins)")
    up.add_argument("--env-file", type=Path, default=None, help="KEY=VALUE lines added to the components' env")
    up.add_argument("--parallelism", type=int, default=3)
    up.add_argument("--port", type=int, default=None, help="api-server port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = _read_env_file(args.env_file) if args.env_file else {}
    stack = AirflowStack(
        args.home, args.dags, env, plugins_folder=args.plugins, parallelism=args.parallelism, port=args.port
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with stack:
        log.info("Airflow UI/API: %s  user %s, password in %s", stack.url, USERNAME, stack.passwords_file)
        log.info("Component logs: %s  (Ctrl-C stops everything)", stack.logs_folder)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.alive() for p in stack.processes.values()):
                time.sleep(1)
            dead = [p for p in stack.processes.values() if not p.alive()]
            log.error("Airflow %s exited; stopping the rest (log %s)", dead[0].name, dead[0].log_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
