"""``LsfHook``: run bsub, bjobs, bkill and bhist locally or on a login node over SSH, and read their answers.

Each command has its own timeout (LSF retries for ever while mbatchd is down); transient failures are retried with
backoff, and a ``bsub`` whose answer was lost is looked up by name before it is ever sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from airflow.sdk import BaseHook

from hortacloud.lsf.commands import PROFILE_MISSING, PROFILE_MISSING_CODE, bjobs_argv, shell_line
from hortacloud.lsf.parsers import (
    NOTHING_FOUND,
    PERMANENT_SIGNS,
    TRANSIENT_SIGNS,
    BjobsResult,
    JobStatus,
    KillOutcome,
    LsfError,
    LsfRejected,
    LsfTransientError,
    Rejected,
    Submitted,
    Transient,
    job_output,
    lsf_words,
    parse_bhist_long,
    parse_bjobs_json,
    parse_bjobs_text,
    parse_bkill,
    parse_bsub,
)
from hortacloud.lsf.settings import LsfSettings

T = TypeVar("T")

#: How much of a job's output file the failure message reads (from its end).
_TAIL_BYTES = 256 * 1024


@dataclass(frozen=True)
class CommandResult:
    """What one LSF command returned: exit code and both streams, as text."""

    returncode: int
    stdout: str
    stderr: str


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _hang_up(client: Any, timed_out: threading.Event) -> None:
    """Close an SSH client whose command ran out of time (the exec loop then ends; the command gets SIGPIPE)."""
    timed_out.set()
    with contextlib.suppress(Exception):
        client.close()


def _link_error(exc: BaseException) -> str:
    """Paramiko's words for a failed link, completed: "Unable to connect" hides the reason, EOFError has none."""
    text = str(exc).removeprefix("[Errno None] ") or f"{type(exc).__name__} (the connection was closed)"
    reasons = sorted({getattr(err, "strerror", None) or str(err) for err in getattr(exc, "errors", {}).values()})
    return f"{text}: {', '.join(reasons)}" if reasons else text


class LsfHook(BaseHook):
    """Run LSF commands locally or over SSH, each with its own timeout, and read their answers.

    :param lsf_conn_id: Airflow connection; conn_type ``ssh`` runs the commands on that login node through the
        ssh provider's SSHHook; any other type, or None, or a connection that does not exist, runs them here.
        Its extra may set the cluster's settings (``hortacloud.lsf.settings.CONNECTION_KEYS``, e.g. ``profile``).
    :param settings: profile, timeouts, retries, output format (``LsfSettings``); None: the site configuration's.
    """

    conn_name_attr = "lsf_conn_id"
    default_conn_name = "hortacloud_lsf"
    conn_type = "lsf"
    hook_name = "IBM Spectrum LSF"

    def __init__(
        self,
        lsf_conn_id: str | None = default_conn_name,
        *,
        settings: LsfSettings | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.lsf_conn_id = lsf_conn_id
        self.base_settings = LsfSettings.of(settings)

    # -- where commands run

    def _connection(self) -> Any | None:
        if not self.lsf_conn_id:
            return None
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.lsf_conn_id)
        except AirflowNotFoundException:
            self.log.debug("No connection %r: running LSF commands locally", self.lsf_conn_id)
            return None

    def _resolve(self, conn: Any | None) -> tuple[str, LsfSettings, str]:
        if conn is None:
            return "local", self.base_settings, "this host"
        extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
        settings = self.base_settings.with_connection_extra(extra, str(self.lsf_conn_id))
        if (conn.conn_type or "").lower() != "ssh":
            return "local", settings, "this host"
        port = f":{conn.port}" if conn.port else ""
        return "ssh", settings, f"{conn.host}{port} (connection {self.lsf_conn_id})"

    @cached_property
    def _resolved(self) -> tuple[str, LsfSettings, str]:
        """(``local`` or ``ssh``, the settings with the connection's extra, the login node), resolved once."""
        return self._resolve(self._connection())

    async def aprepare(self) -> None:
        """Resolve the connection with the async API, so the triggerer's event loop never waits on it."""
        if "_resolved" in self.__dict__:
            return
        conn = None
        if self.lsf_conn_id:
            from airflow.sdk.exceptions import AirflowNotFoundException

            try:
                conn = await self.aget_connection(self.lsf_conn_id)
            except AirflowNotFoundException:
                conn = None
        self.__dict__["_resolved"] = self._resolve(conn)

    @property
    def settings(self) -> LsfSettings:
        """The settings in force: the ones given, with the connection's extra laid over them."""
        return self._resolved[1]

    @property
    def mode(self) -> str:
        """``ssh`` (commands run on the connection's login node) or ``local``."""
        return self._resolved[0]

    @property
    def login_node(self) -> str:
        """``host:port (connection id)`` of the login node, for messages (``this host`` when commands run here)."""
        return self._resolved[2]

    @cached_property
    def ssh_hook(self) -> Any:
        """The ssh provider's SSHHook for the connection (imported only when SSH is used)."""
        ssh_hook_class = self._ssh_provider("SSHHook")
        # One connection attempt: this hook retries with its own backoff (and looks a job up before resubmitting);
        # SSHHook's default 3 attempts would hide 3-5 s sleeps inside each of those retries. Connecting, the banner
        # and the login each get the command timeout (paramiko's 30-s banner wait would ignore it).
        timeout = self.settings.command_timeout_seconds
        return ssh_hook_class(
            ssh_conn_id=self.lsf_conn_id,
            cmd_timeout=timeout,
            conn_timeout=math.ceil(timeout),
            banner_timeout=timeout,
            auth_timeout=math.ceil(timeout),
            conn_retry_attempts=1,
        )

    @cached_property
    def ssh_hook_async(self) -> Any:
        """The ssh provider's SSHHookAsync (asyncssh) for the triggerer: same connection, same host-key rules."""
        return self._ssh_provider("SSHHookAsync")(ssh_conn_id=str(self.lsf_conn_id))

    def _ssh_provider(self, name: str) -> Any:
        """A hook class of the ssh provider, imported only when SSH is used."""
        try:
            from airflow.providers.ssh.hooks import ssh
        except ImportError as err:
            raise LsfError(
                f"Connection {self.lsf_conn_id!r} is of type ssh but apache-airflow-providers-ssh is not installed"
            ) from err
        return getattr(ssh, name)

    @cached_property
    def _ssh_lock(self) -> threading.RLock:
        # SSHHook hands every caller its one cached client, which each command closes after use: a poll and on_kill
        # in two threads would cut each other's link. Re-entrant for on_kill run by a signal handler mid-command.
        return threading.RLock()

    def _local_argv(self, argv: Sequence[str]) -> list[str]:
        profile = self.settings.profile
        if profile:
            return ["bash", "-c", shell_line(argv, profile)]
        return list(argv)

    def _ssh_command(self, argv: Sequence[str]) -> str:
        # bash -c whatever the login shell is (csh at some sites); the inner line is quoted once more.
        return "bash -c " + shlex.quote(shell_line(argv, self.settings.profile))

    def run_command(self, argv: Sequence[str]) -> CommandResult:
        """Run one LSF command once; raise ``LsfTransientError`` on timeout or a broken SSH link."""
        if self.mode == "ssh":
            return self._run_ssh(argv)
        return self._run_local(argv)

    def _run_local(self, argv: Sequence[str]) -> CommandResult:
        try:
            proc = subprocess.Popen(
                self._local_argv(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                text=True,
            )
        except FileNotFoundError as err:
            return CommandResult(127, "", f"{argv[0]}: command not found ({err})")
        try:
            stdout, stderr = proc.communicate(timeout=self.settings.command_timeout_seconds)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.communicate()
            raise LsfTransientError(
                f"{argv[0]} did not answer within {self.settings.command_timeout_seconds:g}s"
            ) from None
        return CommandResult(proc.returncode, stdout, stderr)

    def _silent(self, argv: Sequence[str], connected: bool) -> LsfTransientError:
        """The timeout error: the command hung on the login node, or the node itself never answered."""
        timeout = self.settings.command_timeout_seconds
        if connected:
            return LsfTransientError(f"{argv[0]} did not answer within {timeout:g}s on {self.login_node}")
        return LsfTransientError(f"{argv[0]}: the LSF login node {self.login_node} did not answer within {timeout:g}s")

    def _run_ssh(self, argv: Sequence[str]) -> CommandResult:
        timed_out = threading.Event()
        began = time.monotonic()
        connected = False
        try:
            with self._ssh_lock, self.ssh_hook.get_conn() as client:
                connected = True
                # SSHHook's timeout counts idle time only, and a hung LSF command prints "still trying" every
                # second: the link is closed at the deadline instead.
                timer = threading.Timer(self.settings.command_timeout_seconds, _hang_up, (client, timed_out))
                timer.daemon = True
                timer.start()
                try:
                    rc, raw_out, raw_err = self.ssh_hook.exec_ssh_client_command(
                        client,
                        self._ssh_command(argv),
                        get_pty=False,
                        environment=None,
                        timeout=self.settings.command_timeout_seconds,
                    )
                finally:
                    timer.cancel()
        except LsfError:
            raise
        except Exception as exc:  # paramiko, socket and SSHHook errors alike: the link failed, not LSF
            # A login node that accepts but never answers ends in a banner or auth timeout, or "No existing session".
            if timed_out.is_set() or time.monotonic() - began >= 0.9 * self.settings.command_timeout_seconds:
                raise self._silent(argv, connected) from exc
            raise LsfTransientError(f"{argv[0]} over SSH ({self.login_node}) failed: {_link_error(exc)}") from exc
        if timed_out.is_set():
            raise self._silent(argv, connected=True)
        return self._ssh_result(argv, rc, raw_out.decode(errors="replace"), raw_err.decode(errors="replace"))

    @staticmethod
    def _ssh_result(argv: Sequence[str], rc: int, stdout: str, stderr: str) -> CommandResult:
        if rc in (-1, 255) and not stdout.strip() and "Job <" not in stderr and not PERMANENT_SIGNS.search(stderr):
            # 255 is also ssh's own failure code; only words LSF wrote tell an LSF answer apart from a dropped link.
            raise LsfTransientError(f"{argv[0]} over SSH exited {rc}: {stderr.strip() or 'no message'}")
        return CommandResult(rc, stdout, stderr)

    async def _arun_ssh(self, argv: Sequence[str]) -> CommandResult:
        """One command over asyncssh: connecting, the login and the command all within the command timeout."""
        timeout = self.settings.command_timeout_seconds
        connected = False

        async def call() -> tuple[int, str, str]:
            nonlocal connected
            async with await self.ssh_hook_async.get_conn() as connection:
                connected = True
                result = await connection.run(self._ssh_command(argv), check=False)
                status = -1 if result.exit_status is None else int(result.exit_status)  # None: killed by a signal
                return status, str(result.stdout or ""), str(result.stderr or "")

        try:
            rc, stdout, stderr = await asyncio.wait_for(call(), timeout)
        except TimeoutError:
            raise self._silent(argv, connected) from None
        except LsfError:
            raise
        except Exception as exc:  # asyncssh and socket errors: the link failed, not LSF
            raise LsfTransientError(f"{argv[0]} over SSH ({self.login_node}) failed: {_link_error(exc)}") from exc
        return self._ssh_result(argv, rc, stdout, stderr)

    async def arun_command(self, argv: Sequence[str]) -> CommandResult:
        """The async twin of ``run_command`` for the triggerer: never blocks the event loop."""
        if self.mode == "ssh":
            return await self._arun_ssh(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._local_argv(argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError as err:
            return CommandResult(127, "", f"{argv[0]}: command not found ({err})")
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), self.settings.command_timeout_seconds)
        except (TimeoutError, asyncio.CancelledError) as err:
            _kill_group(proc.pid)
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
            if isinstance(err, asyncio.CancelledError):
                raise
            raise LsfTransientError(
                f"{argv[0]} did not answer within {self.settings.command_timeout_seconds:g}s"
            ) from None
        return CommandResult(proc.returncode or 0, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    # -- retries

    def _delays(self) -> list[float]:
        return [self.settings.retry_delay_seconds * 2**attempt for attempt in range(self.settings.retries)]

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        delays = self._delays()
        while True:
            try:
                return call()
            except LsfTransientError as err:
                if not delays:
                    raise
                delay = delays.pop(0)
                self.log.warning("%s failed (%s); retrying in %.1fs", what, err, delay)
                time.sleep(delay)

    async def _aretrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        delays = self._delays()
        while True:
            try:
                return await call()
            except LsfTransientError as err:
                if not delays:
                    raise
                delay = delays.pop(0)
                self.log.warning("%s failed (%s); retrying in %.1fs", what, err, delay)
                await asyncio.sleep(delay)

    # -- LSF operations

    @staticmethod
    def _found(command: str, result: CommandResult) -> None:
        """A missing profile or LSF command (profile not sourced, not an LSF client) cannot come right by retrying."""
        if result.returncode == PROFILE_MISSING_CODE and PROFILE_MISSING in result.stderr:
            line = next(line for line in result.stderr.splitlines() if PROFILE_MISSING in line)
            raise LsfRejected(
                f"{line.strip()}: set [lsf] profile (or the LSF connection's extra 'profile') to the cluster's "
                "profile.lsf, or empty when the LSF commands are on PATH"
            )
        if result.returncode == 127 or "command not found" in result.stderr:
            words = lsf_words(result.stdout, result.stderr) or f"{command} exited {result.returncode}"
            raise LsfRejected(f"{words} (is [lsf] profile, or the connection's extra 'profile', right?)")

    def _read_bjobs(self, result: CommandResult) -> BjobsResult:
        self._found("bjobs", result)
        # A non-zero exit with good output still carries valid data (docs/lsf-behaviour.md, A.2): parse first, judge
        # the exit code never.
        if self.settings.output_format == "json":
            return parse_bjobs_json(result.stdout, result.stderr)
        return parse_bjobs_text(result.stdout, result.stderr)

    def statuses(self, job_ids: Sequence[str]) -> BjobsResult:
        """One bjobs call for any number of ids (batching-ready); raises ``LsfTransientError`` on failure."""
        return self._read_bjobs(self.run_command(bjobs_argv(job_ids, output_format=self.settings.output_format)))

    async def astatuses(self, job_ids: Sequence[str]) -> BjobsResult:
        """Async ``statuses``."""
        return self._read_bjobs(await self.arun_command(bjobs_argv(job_ids, output_format=self.settings.output_format)))

    def find_by_name(self, job_name: str) -> list[JobStatus]:
        """Jobs named exactly ``job_name`` that LSF still knows (``bjobs -a -J``), newest first; retried."""

        def call() -> list[JobStatus]:
            result = self._read_bjobs(
                self.run_command(bjobs_argv(name=job_name, output_format=self.settings.output_format))
            )
            jobs = [job for job in result.statuses.values() if job.job_name == job_name]
            return sorted(jobs, key=lambda job: int(job.job_id), reverse=True)

        return self._retrying(f"bjobs -J {job_name}", call)

    def _read_history(self, result: CommandResult) -> JobStatus | None:
        self._found("bhist", result)
        status = parse_bhist_long(result.stdout)
        if status is None and result.returncode not in (0, 255):
            raise LsfTransientError(f"bhist exited {result.returncode}: {lsf_words(result.stdout, result.stderr)}")
        if status is None and TRANSIENT_SIGNS.search(result.stderr) and not NOTHING_FOUND.search(result.stdout):
            raise LsfTransientError(f"bhist: {lsf_words(result.stdout, result.stderr)}")
        return status

    def _bhist_argv(self, job_id: str) -> list[str]:
        return ["bhist", "-l", "-n", str(self.settings.bhist_files), job_id]

    def history(self, job_id: str) -> JobStatus | None:
        """The job's end from ``bhist -l`` (after bjobs forgot it), or None if bhist does not know it; retried."""
        return self._retrying("bhist", lambda: self._read_history(self.run_command(self._bhist_argv(job_id))))

    async def ahistory(self, job_id: str) -> JobStatus | None:
        """Async ``history``."""

        async def call() -> JobStatus | None:
            return self._read_history(await self.arun_command(self._bhist_argv(job_id)))

        return await self._aretrying("bhist", call)

    def submit(self, argv: Sequence[str], job_name: str, *, ignore: Collection[str] = ()) -> str:
        """Run bsub; return the job id. Permanent refusals raise ``LsfRejected`` at once, with LSF's words.

        After a transient failure (timeout, SSH drop, empty output) mbatchd may have accepted the job anyway, so
        before each retry the job is looked up by its name: a second bsub would start a second transfer. Jobs in
        ``ignore`` (an earlier, failed job of the same name) do not count.
        """
        delays = self._delays()
        while True:
            sent = time.monotonic()
            try:
                result = self.run_command(argv)
                self._found("bsub", result)
                outcome = parse_bsub(result.stdout, result.stderr, result.returncode)
            except LsfTransientError as err:
                outcome = Transient(str(err))
            if isinstance(outcome, Submitted):
                return outcome.job_id
            if isinstance(outcome, Rejected):
                raise LsfRejected(f"LSF refused job {job_name}: {outcome.message}")
            existing = self._lookup_after_failure(job_name, ignore, sent)
            if existing:
                self.log.warning(
                    "bsub failed (%s) but LSF has job %s named %s; using it", outcome.message, existing, job_name
                )
                return existing
            if not delays:
                raise LsfTransientError(f"Could not submit job {job_name}: {outcome.message}")
            delay = delays.pop(0)
            self.log.warning("bsub failed (%s); retrying in %.1fs", outcome.message, delay)
            time.sleep(delay)

    def _lookup_after_failure(self, job_name: str, ignore: Collection[str], sent: float) -> str | None:
        """The job a failed bsub may have submitted all the same, looked for by name.

        mbatchd can accept a job and show it to bjobs only seconds later, so a miss is looked at again until
        ``not_found_grace_seconds`` after the bsub was sent; only then may it be sent again.
        """
        grace = self.settings.not_found_grace_seconds
        pause = min(2.0, max(grace / 10, 0.05))
        while True:
            try:
                found = [job for job in self.find_by_name(job_name) if job.job_id not in ignore]
            except LsfTransientError as err:
                raise LsfTransientError(
                    f"bsub failed and LSF could not be asked whether job {job_name} exists ({err}); "
                    "not submitting again"
                ) from err
            if found:
                return found[0].job_id
            waited = time.monotonic() - sent
            if waited + pause > grace:
                return None
            self.log.info(
                "LSF shows no job %s %.0fs after the failed bsub; looking again (mbatchd may not show it yet)",
                job_name,
                waited,
            )
            time.sleep(pause)

    def _read_kill(self, result: CommandResult) -> KillOutcome:
        self._found("bkill", result)
        return parse_bkill(result.stdout, result.stderr, result.returncode)

    def kill(self, job_id: str) -> KillOutcome:
        """``bkill <id>``; "already finished" and "No matching job found" are success; retried when transient."""
        return self._retrying("bkill", lambda: self._read_kill(self.run_command(["bkill", job_id])))

    async def akill(self, job_id: str) -> KillOutcome:
        """Async ``kill``."""

        async def call() -> KillOutcome:
            return self._read_kill(await self.arun_command(["bkill", job_id]))

        return await self._aretrying("bkill", call)

    def tail(self, path: str, lines: int = 20) -> str:
        """The job's own last lines in its output file (LSF's report left out), or '' when it cannot be read.

        Only the file's last 256 KiB are read. When the job printed nothing, the last lines of LSF's report stand in.
        """
        if not path:
            return ""
        try:
            if self.mode == "ssh":
                result = self._run_ssh(["tail", "-c", str(_TAIL_BYTES), "--", path])
                if result.returncode != 0:
                    return ""
                text = result.stdout
            else:
                with open(path, "rb") as handle:
                    handle.seek(max(0, os.fstat(handle.fileno()).st_size - _TAIL_BYTES))
                    text = handle.read().decode(errors="replace")
        except (OSError, LsfError):
            return ""
        own = job_output(text)
        chosen = own if own else text.splitlines()
        return "".join(f"{line}\n" for line in chosen[-lines:])
