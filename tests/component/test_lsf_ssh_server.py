"""LsfHook, LsfJobOperator and LsfJobTrigger over a real SSH link: the provider's SSHHook and paramiko talk to
``devstack.sshd`` on 127.0.0.1, which runs each command with ``bash -c`` in a login environment where the LSF
emulator is found only after sourcing ``profile.lsf``.

The test process itself has neither the emulator on PATH nor ``FAKE_LSF_DIR``: a command that ran here instead of
on the "login node" would fail.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from devstack.lsf import BIN_DIR, Emulator
from devstack.sshd import SshServer
from hortacloud.lsf.commands import transfer_command
from hortacloud.lsf.hook import LsfHook
from hortacloud.lsf.operator import LsfJobOperator
from hortacloud.lsf.parsers import LsfError, LsfTransientError
from tests.fixtures.lsf_task import context_for, logged, lsf_settings, make_op
from tests.fixtures.waiting import wait_until

CONN_ID = "lsf_login"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """One SSH server for the module; each test switches its faults off first (``login``)."""
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Login:
    """The login node of one test: its server, the profile.lsf, and what it ran since the test began."""

    server: SshServer
    profile: Path
    first_event: int

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.server.events()[self.first_event :] if kind is None or e["event"] == kind]

    def commands(self, word: str | None = None) -> list[str]:
        """Commands run over SSH in this test (optionally only those running LSF command ``word``)."""
        commands = [e["command"] for e in self.events("exec")]
        return [c for c in commands if word is None or re.search(rf"(^|\s){word}\s", shlex.split(c)[-1])]


def write_profile(path: Path, lsf: Emulator) -> Path:
    """A ``profile.lsf`` as a site has one: it puts the commands on PATH and points them at the cluster."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"export PATH={shlex.quote(str(BIN_DIR))}:$PATH\n"
        f"export FAKE_LSF_DIR={shlex.quote(str(lsf.state_dir))}\n"
        f"export HORTACLOUD_PYTHON={shlex.quote(sys.executable)}\n"
    )
    return path


def use_connection(monkeypatch: pytest.MonkeyPatch, server: SshServer, conn_id: str = CONN_ID, **extra: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", server.connection_json(**extra))


@pytest.fixture
def login(sshd: SshServer, lsf: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Login:
    sshd.reset()
    profile = write_profile(tmp_path / "lsf conf" / "profile.lsf", lsf)
    use_connection(monkeypatch, sshd, profile=str(profile))
    # Nothing of LSF is left in this process: only the login node can run the commands.
    path = [part for part in os.environ["PATH"].split(os.pathsep) if part != str(BIN_DIR)]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    monkeypatch.delenv("FAKE_LSF_DIR")
    return Login(sshd, profile, len(sshd.events()))


def ssh_op(**kwargs: Any) -> LsfJobOperator:
    return make_op(lsf_conn_id=CONN_ID, **kwargs)


# -- the happy paths ---------------------------------------------------------------------------------------------------


def test_job_is_submitted_and_followed_to_done_over_ssh(lsf: Emulator, login: Login) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="PEND:0.4,RUN:0.4,DONE")
    result = ssh_op().execute(context_for())
    assert result["stat"] == "DONE"
    (bsub,) = lsf.argvs("bsub")
    assert bsub[-1] == "true"
    commands = login.commands()
    assert all(c.startswith("bash -c ") and str(login.profile) in shlex.split(c)[-1] for c in commands)
    assert len(login.commands("bsub")) == 1
    assert len(login.commands("bjobs")) >= 3  # the lookup by name, then polls through PEND and RUN
    logins = login.events("auth")
    assert logins and all(e["ok"] and e["key"].startswith("ecdsa") for e in logins)  # public key, never a password


def test_trigger_follows_the_job_over_ssh_and_on_kill_is_fine_after_the_end(lsf: Emulator, login: Login) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.5,DONE")
    with pytest.raises(TaskDeferred) as info:
        ssh_op(deferrable=True).execute(context_for())
    trigger = info.value.trigger
    polls_before = len(login.commands("bjobs"))

    async def follow() -> list[Any]:
        return [event.payload async for event in trigger.run()]

    events = asyncio.run(asyncio.wait_for(follow(), 20))
    assert [event["status"] for event in events] == ["success"]
    assert len(login.commands("bjobs")) > polls_before  # the triggerer polled over SSH
    asyncio.run(trigger.on_kill())
    assert lsf.argvs("bkill") == [["bkill", trigger.job_id]]
    assert len(login.commands("bkill")) == 1


def test_hostile_folder_name_reaches_the_job_literally_over_ssh(lsf: Emulator, login: Login, tmp_path: Path) -> None:
    source = tmp_path / 'it\'s $HOME; rm -rf x "quoted"  `id`'
    source.mkdir()
    (source / "G-001.swc").write_text("1 1 0 0 0 1 -1\n")
    victim = tmp_path / "x"
    victim.mkdir()
    destination = tmp_path / "out dir"
    command = transfer_command(
        "mkdir -p {destination} && cp -R {source}/. {destination}/", source=str(source), destination=str(destination)
    )
    result = ssh_op(command=command, source=str(source)).execute(context_for())  # a real job, not a plan
    assert result["stat"] == "DONE"
    assert (destination / "G-001.swc").read_text() == "1 1 0 0 0 1 -1\n"
    assert victim.is_dir()
    (bsub,) = lsf.argvs("bsub")
    assert bsub[-1] == command  # one argument, intact after the SSH command line and the login shell


# -- permanent failures --------------------------------------------------------------------------------------------


def test_without_the_profile_bsub_is_not_found_and_fails_at_once(
    lsf: Emulator, login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, login.server)  # no profile: PATH of the login shell has no LSF
    started = time.monotonic()
    with pytest.raises(AirflowFailException, match="bsub: command not found"):
        ssh_op(reattach=False).execute(context_for())
    assert time.monotonic() - started < 5
    assert len(login.commands()) == 1  # no retry
    assert lsf.argvs() == []


# -- a broken link ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["refusing", "stopped"])
def test_refused_connection_is_retried_then_fails_with_a_clear_message(
    lsf: Emulator,
    login: Login,
    how: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if how == "refusing":
        login.server.set(refuse=True)
    else:
        gone = SshServer(tmp_path / "gone").start()
        use_connection(monkeypatch, gone, profile=str(login.profile))
        gone.stop()
    started = time.monotonic()
    with pytest.raises(AirflowException) as info:
        ssh_op(retries=2).execute(context_for())
    elapsed = time.monotonic() - started
    assert not isinstance(info.value, AirflowFailException)  # transient: Airflow's own retries may still help
    message = str(info.value)
    assert "Could not check LSF for an earlier job" in message
    assert "Connection refused" in message and "127.0.0.1" in message
    assert logged(capsys).count("retrying in") == 2  # submit_retries
    assert elapsed < 5  # the hook's retries only, none hidden in SSHHook (3-5 s each)
    assert login.commands() == [] and lsf.argvs() == []


def test_dropped_connections_are_retried_and_submit_one_job(lsf: Emulator, login: Login) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.3,DONE")
    # The lookup's connection dies before the banner; then the link drops as bsub is sent.
    login.server.set(drop=1, drop_exec=1, match=r"\bbsub\b")
    result = ssh_op().execute(context_for())
    assert result["stat"] == "DONE"
    assert len(login.events("dropped")) == 1 and len(login.events("dropped_exec")) == 1
    assert len(lsf.argvs("bsub")) == 1


def test_lost_bsub_answer_attaches_to_the_submitted_job(lsf: Emulator, login: Login) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN:0.3,DONE")
    # bsub runs and LSF accepts the job, then the link drops before its answer: no second job may be submitted.
    login.server.set(lose_answer=1, match=r"\bbsub\b")
    result = ssh_op().execute(context_for())
    assert result["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 1
    (job,) = lsf.jobs()
    assert result["job_id"] == str(job.id)
    assert len(login.events("lost_answer")) == 1


def test_hanging_bjobs_past_the_command_timeout_is_transient(lsf: Emulator, login: Login) -> None:
    # LSF prints "still trying" every second while mbatchd does not answer: the link is never idle.
    lsf.set_knobs(FAKE_LSF_HANG=1, FAKE_LSF_FAULTS_FOR="bjobs")
    hook = LsfHook(CONN_ID, settings=lsf_settings(command_timeout_seconds=1.5, retries=1, retry_delay_seconds=0.05))
    started = time.monotonic()
    with pytest.raises(LsfTransientError, match=r"bjobs did not answer within 1\.5s"):
        hook.run_command(["bjobs", "-a", "9148559"])
    assert 1.4 < time.monotonic() - started < 4
    # The server hung up the command once the client went away.
    wait_until(lambda: bool(login.events("hangup")), 5, "hang-up of the hung bjobs")
    lsf.set_knobs(FAKE_LSF_HANG=1)  # restarts the count: the next bjobs hangs again
    started = time.monotonic()
    assert hook.find_by_name("seg0510-1.none") == []  # the hung attempt is cut, the retry answers
    assert time.monotonic() - started > 1.4
    assert len(login.commands("bjobs")) == 3


# -- cancelling --------------------------------------------------------------------------------------------------------


def test_on_kill_bkills_the_running_job_over_ssh(lsf: Emulator, login: Login) -> None:
    op = ssh_op(command="sleep 60")  # a real job
    errors: list[BaseException] = []

    def target() -> None:
        try:
            op.execute(context_for())
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=target)
    worker.start()

    def running() -> bool:
        return op.lsf_job_id is not None and lsf.view(int(op.lsf_job_id)).stat == "RUN"

    wait_until(running, 15, "job running")
    op.on_kill()
    worker.join(15)
    assert not worker.is_alive()
    assert len(login.commands("bkill")) == 1
    assert lsf.argvs("bkill") == [["bkill", op.lsf_job_id]]
    assert errors and "TERM_OWNER" in str(errors[0])


def test_trigger_on_kill_bkills_the_running_job_over_ssh(lsf: Emulator, login: Login) -> None:
    with pytest.raises(TaskDeferred) as info:
        ssh_op(command="sleep 60", deferrable=True).execute(context_for())
    trigger = info.value.trigger
    wait_until(lambda: lsf.view(int(trigger.job_id)).stat == "RUN", 10, "job running")
    asyncio.run(trigger.on_kill())
    assert lsf.wait_finished(int(trigger.job_id)).exit_reason.startswith("TERM_OWNER")
    assert len(login.commands("bkill")) == 1


def test_the_host_key_is_checked(lsf: Emulator, login: Login, monkeypatch: pytest.MonkeyPatch) -> None:
    impostor = paramiko.ECDSAKey.generate()
    use_connection(monkeypatch, login.server, host_key=f"{impostor.get_name()} {impostor.get_base64()}")
    with pytest.raises(LsfError, match=r"Host key for server '127\.0\.0\.1' does not match"):
        LsfHook(CONN_ID, settings=lsf_settings(retries=0)).run_command(["bjobs", "-a"])
    assert login.commands() == []
    assert Path(login.server.key_file).stat().st_mode & 0o077 == 0  # the client key is its owner's only


def test_without_the_profile_a_reattaching_operator_fails_at_once(
    lsf: Emulator, login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, login.server)
    with pytest.raises(AirflowFailException, match="command not found"):
        ssh_op().execute(context_for())  # reattach=True: the first command is bjobs -J, not bsub
    assert len(login.commands()) == 1


# -- a login node that never answers, a profile that is not there, the triggerer's own SSH client -------------------


@pytest.mark.parametrize("side", ["worker", "triggerer"])
def test_a_silent_login_node_is_bounded_by_the_command_timeout_and_named(
    lsf: Emulator, login: Login, side: str
) -> None:
    login.server.set(mute=1)  # accepts the connection, never sends its banner
    hook = LsfHook(CONN_ID, settings=lsf_settings(command_timeout_seconds=2, retries=0))
    started = time.monotonic()
    node = rf"127\.0\.0\.1:{login.server.port} \(connection {CONN_ID}\)"
    expected = rf"bjobs: the LSF login node {node} did not answer within 2s"
    with pytest.raises(LsfTransientError, match=expected):
        if side == "worker":
            hook.run_command(["bjobs", "-a"])
        else:

            async def ask() -> None:
                await hook.aprepare()
                await hook.arun_command(["bjobs", "-a"])

            asyncio.run(ask())
    assert 1.9 < time.monotonic() - started < 5  # not paramiko's 30-s banner wait
    assert login.events("muted") and login.commands() == []


def test_the_triggerer_runs_commands_over_asyncssh_with_the_host_key_checked(
    lsf: Emulator, login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    lsf.set_knobs(FAKE_LSF_PLAN="RUN")
    job_id = LsfHook(CONN_ID, settings=lsf_settings()).submit(["bsub", "-J", "async-one", "true"], "async-one")

    async def statuses() -> Any:
        hook = LsfHook(CONN_ID, settings=lsf_settings(retries=0))
        await hook.aprepare()
        return await hook.astatuses([job_id])

    assert asyncio.run(statuses()).statuses[job_id].stat == "RUN"
    (exec_event,) = [e for e in login.events("exec") if " bjobs " in e["command"]]
    assert "AsyncSSH" in exec_event["client"]  # the triggerer's client, not paramiko in a thread
    impostor = paramiko.ECDSAKey.generate()
    use_connection(monkeypatch, login.server, host_key=f"{impostor.get_name()} {impostor.get_base64()}")
    before = len(login.commands())
    with pytest.raises(LsfError, match=r"(?i)host key"):
        asyncio.run(statuses())
    assert len(login.commands()) == before  # nothing ran on an impostor


def test_a_profile_that_does_not_exist_is_named_at_once(
    lsf: Emulator, login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, login.server, profile="/misc/lsf/conf/profile.lsf.gone")
    started = time.monotonic()
    with pytest.raises(AirflowFailException, match=r"LSF profile /misc/lsf/conf/profile\.lsf\.gone does not exist"):
        ssh_op().execute(context_for())
    assert time.monotonic() - started < 5
    assert len(login.commands()) == 1 and lsf.argvs() == []
