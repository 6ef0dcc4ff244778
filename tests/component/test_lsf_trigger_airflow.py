"""LsfJobOperator in a real Airflow 3.3 (scheduler, triggerer, worker, API on 127.0.0.1), LSF emulated.

Proves what only a real Airflow can: the triggerer imports the trigger from the installed package by its class
path, the task log shows the job's states, marking the task failed kills the job, both while deferred (the
trigger's ``on_kill``) and while running in a worker (the operator's ``on_kill``), and a triggerer restart neither
kills nor loses a job: the new triggerer takes the trigger over and follows the same job to its end.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.airflow_stack import AirflowClient, AirflowStack
from tests.component.conftest_lsf import EMULATOR_BIN

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]

PROBE_DAG = """
import pendulum
from airflow.sdk import dag

from hortacloud.lsf_operator import LsfJobOperator


def transfer(deferrable):
    return LsfJobOperator(
        task_id="transfer",
        command="true",
        job_name="seg0510-1",
        source="/data/seg/1",
        lsf_conn_id=None,
        slots=4,
        project="mouselight",
        poll_interval=0.5,
        not_found_grace=5,
        command_timeout=20,
        deferrable=deferrable,
        retries=0,
    )


@dag(dag_id="probe_lsf", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"))
def probe_lsf():
    transfer(True)


@dag(dag_id="probe_lsf_blocking", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"))
def probe_lsf_blocking():
    transfer(False)


probe_lsf()
probe_lsf_blocking()
"""


def _calls(state: Path, command: str) -> list[list[str]]:
    path = state / "calls.log"
    if not path.exists():
        return []
    entries = [json.loads(line)["argv"] for line in path.read_text().splitlines() if line.strip()]
    return [argv for argv in entries if argv[0] == command]


def _job(state: Path) -> dict[str, object]:
    (path,) = (state / "jobs").glob("*.json")
    return json.loads(path.read_text())


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout:.0f}s"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def lsf_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("lsf-state")
    # Knobs in knobs.json are read by every command, so each test sets its own plan while Airflow keeps running.
    return state


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, lsf_state: Path) -> Iterator[AirflowStack]:
    if not (EMULATOR_BIN / "bsub").exists():
        pytest.skip("LSF emulator not found")
    work = tmp_path_factory.mktemp("lsf-airflow")
    dags = work / "probe_dags"
    dags.mkdir()
    (dags / "probe_lsf.py").write_text(PROBE_DAG)
    env = {
        "PATH": str(EMULATOR_BIN),
        "FAKE_LSF_DIR": str(lsf_state),
        "HORTACLOUD_PYTHON": str(ROOT / ".venv/bin/python"),
    }
    stack = AirflowStack(
        work / "home", ROOT / "dags", env, plugins_folder=ROOT / "plugins", extra_bundles={"probe": dags}
    )
    client = stack.start()
    pids = stack.pids()
    try:
        for dag_id in ("probe_lsf", "probe_lsf_blocking"):
            client.wait_for_dag(dag_id)
            client.unpause(dag_id)
        yield stack
    finally:
        pids |= stack.pids()  # a restarted component has a new pid
        stack.stop()
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


@pytest.fixture(scope="module")
def api(stack: AirflowStack) -> AirflowClient:
    assert stack.client is not None
    return stack.client


def _fresh(state: Path, **knobs: object) -> None:
    for name in ("calls.log", "knobs.json"):
        (state / name).unlink(missing_ok=True)
    for path in (state / "jobs").glob("*.json") if (state / "jobs").exists() else []:
        path.unlink()
    (state / "knobs.json").write_text(json.dumps(knobs))


def test_deferred_job_runs_to_success_with_states_in_the_task_log(api: AirflowClient, lsf_state: Path) -> None:
    # The trigger's first poll waits first_poll_after (10 s, against an Airflow 3.3 race with the deferring
    # worker's exit report): the job still runs then, and ends a few seconds later.
    _fresh(lsf_state, FAKE_LSF_PLAN="PEND:2,RUN:14,DONE")
    run_id = api.trigger("probe_lsf")
    state = api.wait_for_run("probe_lsf", run_id, timeout=90, poll=0.5)
    log = api.task_log("probe_lsf", run_id, "transfer")
    assert state == "success", log
    job_id = str(_job(lsf_state)["id"])
    assert f"Submitted LSF job {job_id}" in log
    assert "-> RUN" in log and "RUN -> DONE" in log
    assert len(_calls(lsf_state, "bsub")) == 1


def test_mark_failed_while_deferred_bkills_the_job(api: AirflowClient, lsf_state: Path) -> None:
    _fresh(lsf_state, FAKE_LSF_PLAN="RUN")
    run_id = api.trigger("probe_lsf")
    api.wait_for_deferred("probe_lsf", run_id, "transfer", timeout=90)
    # on_kill only reaches a trigger the triggerer is running: wait for its first poll.
    _wait(lambda: len(_calls(lsf_state, "bjobs")) >= 2, 60, "the trigger's first poll")
    api.mark_task_failed("probe_lsf", run_id, "transfer")
    assert api.wait_for_run("probe_lsf", run_id, timeout=60, poll=0.5) == "failed"
    job_id = str(_job(lsf_state)["id"])
    _wait(lambda: _calls(lsf_state, "bkill") == [["bkill", job_id]], 30, "bkill from the trigger's on_kill")


def test_mark_failed_while_running_in_a_worker_bkills_the_job(api: AirflowClient, lsf_state: Path) -> None:
    _fresh(lsf_state, FAKE_LSF_PLAN="RUN")
    run_id = api.trigger("probe_lsf_blocking")
    _wait(lambda: len(_calls(lsf_state, "bjobs")) >= 3, 90, "the worker's polls")
    api.mark_task_failed("probe_lsf_blocking", run_id, "transfer")
    assert api.wait_for_run("probe_lsf_blocking", run_id, timeout=60, poll=0.5) == "failed"
    job_id = str(_job(lsf_state)["id"])
    _wait(lambda: _calls(lsf_state, "bkill") == [["bkill", job_id]], 30, "bkill from the operator's on_kill")


def test_triggerer_restart_neither_kills_nor_loses_the_job(stack: AirflowStack, lsf_state: Path) -> None:
    api = stack.client
    assert api is not None
    _fresh(lsf_state, FAKE_LSF_PLAN="RUN:45,DONE")
    run_id = api.trigger("probe_lsf")
    api.wait_for_deferred("probe_lsf", run_id, "transfer", timeout=90)
    _wait(lambda: len(_calls(lsf_state, "bjobs")) >= 2, 60, "the trigger's first poll")
    old = api.task_instance("probe_lsf", run_id, "transfer")["trigger"]["triggerer_id"]
    # A deployment restarts the triggerer (SIGTERM): its triggers are cancelled, never killed, and a new triggerer
    # takes them over and follows the same job to its end.
    old_pid = stack.processes["triggerer"].pid
    stack.restart("triggerer")
    assert stack.processes["triggerer"].pid != old_pid
    polls_before = len(_calls(lsf_state, "bjobs"))

    def taken_over() -> bool:
        ti = api.task_instance("probe_lsf", run_id, "transfer")
        return ti["state"] == "deferred" and (ti.get("trigger") or {}).get("triggerer_id") not in (None, old)

    _wait(taken_over, 90, "the new triggerer taking the trigger over while the job still runs")
    assert api.wait_for_run("probe_lsf", run_id, timeout=150, poll=1.0) == "success"
    ti = api.task_instance("probe_lsf", run_id, "transfer")
    assert _calls(lsf_state, "bkill") == []
    assert len(_calls(lsf_state, "bsub")) == 1
    assert len(_calls(lsf_state, "bjobs")) > polls_before  # the new triggerer polled the same job
    assert _job(lsf_state)["kill_time"] is None
    assert ti["state"] == "success"
