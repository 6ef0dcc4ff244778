"""LsfJobOperator through an ``ssh`` connection: the profile is sourced, quoting survives two shells, links drop.

There is no sshd here, so the provider's SSHHook is replaced by one that does what sshd does with a command: hand
the string to the login shell (``bash -c``) with the login environment, where the LSF commands are NOT on PATH until
``profile.lsf`` is sourced, as on a real login node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from hortacloud.lsf import LsfHook, transfer_command
from tests.component.conftest_lsf import *  # noqa: F403
from tests.component.conftest_lsf import EMULATOR_BIN, LsfCluster, context_for
from tests.component.test_lsf_operator import make_op


class LoginNode:
    """Stands in for SSHHook: runs each command string as sshd would, records it, can drop the link."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.drops = 0
        path = [part for part in os.environ["PATH"].split(os.pathsep) if part != str(EMULATOR_BIN)]
        self.environ = {**os.environ, "PATH": os.pathsep.join(path)}

    @contextlib.contextmanager
    def get_conn(self) -> Iterator[None]:
        if self.drops:
            self.drops -= 1
            raise OSError("Connection reset by peer")
        yield None

    def exec_ssh_client_command(
        self, client: Any, command: str, get_pty: bool, environment: Any, timeout: float
    ) -> tuple[int, bytes, bytes]:
        assert get_pty is False and environment is None
        self.commands.append(command)
        done = subprocess.run(["bash", "-c", command], capture_output=True, timeout=timeout, env=self.environ)
        return done.returncode, done.stdout, done.stderr


@pytest.fixture
def login_node(lsf: LsfCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoginNode:
    profile = tmp_path / "conf dir" / "profile.lsf"
    profile.parent.mkdir()
    profile.write_text(f'export PATH="{EMULATOR_BIN}:$PATH"\necho "sourced profile.lsf"\n')
    monkeypatch.setenv(
        "AIRFLOW_CONN_LSF_LOGIN",
        json.dumps(
            {"conn_type": "ssh", "host": "login1.example", "login": "mluser", "extra": {"profile": str(profile)}}
        ),
    )
    node = LoginNode()
    monkeypatch.setattr(LsfHook, "ssh_hook", property(lambda self: node))
    return node


def test_hostile_folder_over_ssh_reaches_the_job_literally(
    lsf: LsfCluster, login_node: LoginNode, tmp_path: Path
) -> None:
    source = tmp_path / 'it\'s $HOME; rm -rf x "quoted"'
    source.mkdir()
    (source / "G-001.swc").write_text("1 1 0 0 0 1 -1\n")
    destination = tmp_path / "out"
    command = transfer_command(
        "mkdir -p {destination} && cp -R {source}/. {destination}/", source=str(source), destination=str(destination)
    )
    result = make_op(lsf_conn_id="lsf_login", command=command, source=str(source)).execute(context_for())
    assert result["stat"] == "DONE"
    assert (destination / "G-001.swc").read_text() == "1 1 0 0 0 1 -1\n"
    (bsub,) = lsf.calls("bsub")
    assert bsub[-1] == command  # the job got exactly one argument, intact after the login shell
    assert all(line.startswith("bash -c ") for line in login_node.commands)
    assert "profile.lsf" in login_node.commands[0]


def test_without_the_profile_bsub_is_not_found_and_fails_at_once(
    lsf: LsfCluster, login_node: LoginNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_LSF_BARE", json.dumps({"conn_type": "ssh", "host": "login1.example"}))
    with pytest.raises(AirflowFailException, match="command not found"):
        make_op(lsf_conn_id="lsf_bare", reattach=False).execute(context_for())
    assert len(login_node.commands) == 1


def test_dropped_ssh_link_is_retried(lsf: LsfCluster, login_node: LoginNode) -> None:
    lsf.knobs(FAKE_LSF_PLAN="RUN:0.3,DONE")
    login_node.drops = 2  # the lookup by name, then the first bsub
    result = make_op(lsf_conn_id="lsf_login").execute(context_for())
    assert result["stat"] == "DONE"
    assert len(lsf.calls("bsub")) == 1


def test_trigger_over_ssh_and_its_on_kill(lsf: LsfCluster, login_node: LoginNode) -> None:
    lsf.knobs(FAKE_LSF_PLAN="RUN:0.5,DONE")
    with pytest.raises(TaskDeferred) as info:
        make_op(lsf_conn_id="lsf_login", deferrable=True).execute(context_for())
    trigger = info.value.trigger
    before = len(login_node.commands)

    async def follow() -> list[Any]:
        return [event.payload async for event in trigger.run()]

    events = asyncio.run(asyncio.wait_for(follow(), 20))
    assert [event["status"] for event in events] == ["success"]
    assert any("bjobs" in command for command in login_node.commands[before:])  # polled over SSH, not locally
    asyncio.run(trigger.on_kill())  # finished: "already finished" is fine
    assert lsf.calls("bkill") == [["bkill", trigger.job_id]]
