"""LsfJobOperator in a real Airflow 3.3 (scheduler, triggerer, worker, API on 127.0.0.1), LSF emulated.

Proves what only a real Airflow can: the triggerer imports the trigger from the installed package by its class
path, the task log shows the job's states, marking the task failed kills the job, both while deferred (the
trigger's ``on_kill``) and while running in a worker (the operator's ``on_kill``), also while bkill is slow or LSF
is down; a triggerer restart neither kills nor loses a job; and with two triggerers, one that stops heartbeating
loses its trigger to the other and, when it recovers, leaves the job of the still-deferred task running.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.airflow_stack import AirflowClient, AirflowStack
from devstack.localsite import emulated_lsf, image_bases, site_toml
from devstack.lsf import Emulator
from devstack.lsf.state import Job
from devstack.s3server import S3Endpoint
from devstack.sampletree import make_sample
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
UPLOAD_DAG = "hortacloud_upload_sample"
SAMPLE = "2023-05-10"
BUCKET = "hortacloud-lsf-shards"
HEALTH_THRESHOLD = 15  # seconds without a heartbeat before another triggerer takes a trigger over

PROBE_DAG = """
import pendulum
from airflow.sdk import dag

from hortacloud.lsf.operator import LsfJobOperator
from hortacloud.lsf.settings import LsfSettings

SETTINGS = LsfSettings.site().replaced(poll_interval_seconds=0.5, not_found_grace_seconds=5, command_timeout_seconds=20)


def transfer(deferrable):
    return LsfJobOperator(
        task_id="transfer",
        command="true",
        job_name="seg0510-1",
        source="/data/seg/1",
        lsf_conn_id=None,
        slots=4,
        project="mouselight",
        settings=SETTINGS.model_dump(),
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """The stack's LSF; knobs.json is read by every command, so each test sets its own plan (``reset``)."""
    emulator = Emulator(tmp_path_factory.mktemp("lsf-state"))
    yield emulator
    emulator.cleanup()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cluster site whose images go up as LSF shard jobs: one sample, shards and job output on shared folders."""
    root = tmp_path_factory.mktemp("lsf-site")
    make_sample(image_bases(root)[0] / SAMPLE, depth=2)
    (root / "lsf-output").mkdir()
    images = {
        "bases": image_bases(root),
        "mechanism": "lsf",
        "shards": 3,
        "shard_lists_dir": root / "shard-lists",
        # The cluster's install of the engine: this venv's, with the job's own (inherited) AWS environment.
        "shard_command": f"{sys.executable} -m hortacloud.s3sync --workers 4 --progress-interval 1 --file-list "
        "{file_list} {prefixes} --results {results} {source}/ {destination}/",
    }
    # first_poll_seconds stays the production 10 s: a shard job that ends within 2 s of its deferral raced the
    # deferring worker's exit report here (README, Known Airflow issues), more often with two triggerers.
    lsf = emulated_lsf(root / "lsf-output", 0.5)
    (root / "site.toml").write_text(site_toml({"s3": {"bucket": BUCKET}, "images": images, "lsf": lsf}))
    return root


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, cluster: Emulator, site: Path, s3_server: S3Endpoint
) -> Iterator[AirflowStack]:
    work = tmp_path_factory.mktemp("lsf-airflow")
    dags = work / "probe_dags"
    dags.mkdir()
    (dags / "probe_lsf.py").write_text(PROBE_DAG)
    s3_server.boto3_client().create_bucket(Bucket=BUCKET)
    env = cluster.env(base={}) | s3_server.client_env()
    env |= {"AIRFLOW_CONN_HORTACLOUD_S3": s3_server.connection_json(), "HORTACLOUD_CONFIG": str(site / "site.toml")}
    # Two triggerers, and a short health threshold, so one that stops heartbeating loses its triggers quickly.
    env["AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD"] = str(HEALTH_THRESHOLD)
    stack = AirflowStack(
        work / "home",
        ROOT / "dags",
        env,
        plugins_folder=ROOT / "plugins",
        extra_bundles={"probe": dags},
        triggerers=2,
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


def _only_job(cluster: Emulator) -> Job:
    (job,) = cluster.jobs()
    return job


def test_deferred_job_runs_to_success_with_states_in_the_task_log(api: AirflowClient, cluster: Emulator) -> None:
    # The trigger's first poll waits first_poll_seconds (10 s, against an Airflow 3.3 race with the deferring
    # worker's exit report): the job still runs then, and ends a few seconds later.
    cluster.reset(FAKE_LSF_PLAN="PEND:2,RUN:14,DONE")
    run_id = api.trigger("probe_lsf")
    state = api.wait_for_run("probe_lsf", run_id, timeout=90, poll=0.5)
    log = api.task_log("probe_lsf", run_id, "transfer")
    assert state == "success", log
    job_id = str(_only_job(cluster).id)
    assert f"Submitted LSF job {job_id}" in log
    assert "-> RUN" in log and "RUN -> DONE" in log
    assert len(cluster.argvs("bsub")) == 1


def test_mark_failed_while_deferred_bkills_the_job(api: AirflowClient, cluster: Emulator) -> None:
    cluster.reset(FAKE_LSF_PLAN="RUN")
    run_id = api.trigger("probe_lsf")
    api.wait_for_deferred("probe_lsf", run_id, "transfer", timeout=90)
    # on_kill only reaches a trigger the triggerer is running: wait for its first poll.
    wait_until(lambda: len(cluster.argvs("bjobs")) >= 2, 60, "the trigger's first poll", poll=0.3)
    api.mark_task_failed("probe_lsf", run_id, "transfer")
    assert api.wait_for_run("probe_lsf", run_id, timeout=60, poll=0.5) == "failed"
    job_id = str(_only_job(cluster).id)
    wait_until(lambda: cluster.argvs("bkill") == [["bkill", job_id]], 30, "bkill from the trigger's on_kill", poll=0.3)


def test_mark_failed_while_running_in_a_worker_bkills_the_job(api: AirflowClient, cluster: Emulator) -> None:
    cluster.reset(FAKE_LSF_PLAN="RUN")
    run_id = api.trigger("probe_lsf_blocking")
    wait_until(lambda: len(cluster.argvs("bjobs")) >= 3, 90, "the worker's polls", poll=0.3)
    api.mark_task_failed("probe_lsf_blocking", run_id, "transfer")
    assert api.wait_for_run("probe_lsf_blocking", run_id, timeout=60, poll=0.5) == "failed"
    job_id = str(_only_job(cluster).id)
    wait_until(lambda: cluster.argvs("bkill") == [["bkill", job_id]], 30, "bkill from the operator's on_kill", poll=0.3)


def test_triggerer_restart_neither_kills_nor_loses_the_job(stack: AirflowStack, cluster: Emulator) -> None:
    api = stack.client
    assert api is not None
    cluster.reset(FAKE_LSF_PLAN="RUN:45,DONE")
    run_id = api.trigger("probe_lsf")
    api.wait_for_deferred("probe_lsf", run_id, "transfer", timeout=90)
    wait_until(lambda: len(cluster.argvs("bjobs")) >= 2, 60, "the trigger's first poll", poll=0.3)
    old = api.task_instance("probe_lsf", run_id, "transfer")["trigger"]["triggerer_id"]
    # A deployment restarts the triggerer (SIGTERM): its triggers are cancelled, never killed, and a new triggerer
    # takes them over and follows the same job to its end.
    holder = stack.holder_of(old)
    old_pid = stack.processes[holder].pid
    stack.restart(holder)
    assert stack.processes[holder].pid != old_pid
    polls_before = len(cluster.argvs("bjobs"))

    def taken_over() -> bool:
        ti = api.task_instance("probe_lsf", run_id, "transfer")
        return ti["state"] == "deferred" and (ti.get("trigger") or {}).get("triggerer_id") not in (None, old)

    wait_until(taken_over, 90, "the new triggerer taking the trigger over while the job still runs", poll=0.3)
    assert api.wait_for_run("probe_lsf", run_id, timeout=150, poll=1.0) == "success"
    ti = api.task_instance("probe_lsf", run_id, "transfer")
    assert cluster.argvs("bkill") == []
    assert len(cluster.argvs("bsub")) == 1
    assert len(cluster.argvs("bjobs")) > polls_before  # the new triggerer polled the same job
    assert _only_job(cluster).kill_time is None
    assert ti["state"] == "success"


def _deferred_and_polled(api: AirflowClient, cluster: Emulator, dag_id: str = "probe_lsf") -> tuple[str, int]:
    """Trigger ``dag_id``; once its trigger has polled, the run id and the triggerer job that holds it."""
    run_id = api.trigger(dag_id)
    api.wait_for_deferred(dag_id, run_id, "transfer", timeout=90)
    wait_until(lambda: len(cluster.argvs("bjobs")) >= 2, 60, "the trigger's first poll", poll=0.3)
    return run_id, int(api.task_instance(dag_id, run_id, "transfer")["trigger"]["triggerer_id"])


def test_a_trigger_taken_over_by_another_triggerer_does_not_kill_its_job(
    stack: AirflowStack, cluster: Emulator
) -> None:
    """apache/airflow#73454: the recovered triggerer gets on_kill for a trigger it lost; the task is still deferred."""
    api = stack.client
    assert api is not None
    cluster.reset(FAKE_LSF_PLAN="RUN:55,DONE")  # long enough to outlive the take-over (about 30 s)
    run_id, old = _deferred_and_polled(api, cluster)
    holder = stack.holder_of(old)
    stack.pause(holder)  # a frozen container, a long GC pause: no heartbeat past the health threshold

    def taken_over() -> bool:
        trigger = api.task_instance("probe_lsf", run_id, "transfer").get("trigger") or {}
        return trigger.get("triggerer_id") not in (None, old)

    try:
        wait_until(taken_over, HEALTH_THRESHOLD + 60, "the other triggerer taking the trigger over", poll=1.0)
    finally:
        stack.resume(holder)
    assert api.wait_for_run("probe_lsf", run_id, timeout=180, poll=1.0) == "success"
    log = api.task_log("probe_lsf", run_id, "transfer")
    assert "Trigger moved away while the task is deferred" in log  # on_kill came, and left the job alone
    assert cluster.argvs("bkill") == []
    assert len(cluster.argvs("bsub")) == 1
    assert _only_job(cluster).kill_time is None


@pytest.mark.parametrize(
    "lsf_fault",
    [{"FAKE_LSF_BKILL_DELAY": 4}, {"FAKE_LSF_DOWN": 3, "FAKE_LSF_FAULTS_FOR": "bkill"}],
    ids=["bkill takes 4 s", "LSF down for 3 bkills"],
)
def test_a_cancel_reaches_lsf_when_bkill_is_slow_or_lsf_is_down(
    stack: AirflowStack, api: AirflowClient, cluster: Emulator, lsf_fault: dict[str, Any]
) -> None:
    """Airflow closes the trigger about a second into on_kill; the shielded kill goes on to the end."""
    cluster.reset(FAKE_LSF_PLAN="RUN")
    run_id, _ = _deferred_and_polled(api, cluster)
    cluster.set_knobs(**lsf_fault)
    api.mark_task_failed("probe_lsf", run_id, "transfer")
    assert api.wait_for_run("probe_lsf", run_id, timeout=60, poll=0.5) == "failed"
    job = _only_job(cluster)
    wait_until(lambda: cluster.view(job.id).stat == "EXIT", 60, "the job killed", poll=0.5)
    assert f"Cancelling LSF job {job.id}: the task is failed" in api.task_log("probe_lsf", run_id, "transfer")

    def outcome_logged() -> bool:
        # Airflow has closed the trigger's own log by then: the outcome is in the triggerer's log.
        logs = (stack.logs_folder / f"{name}.log" for name in stack.triggerer_names)
        return any(f"Task cancelled: bkill {job.id} -> terminated" in path.read_text() for path in logs)

    wait_until(outcome_logged, 30, "the kill's outcome in the triggerer log", poll=0.5)


def _keys(s3_server: S3Endpoint, prefix: str) -> dict[str, int]:
    client = s3_server.boto3_client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def test_images_in_lsf_shards_are_published_discovery_files_last(
    api: AirflowClient, cluster: Emulator, site: Path, s3_server: S3Endpoint
) -> None:
    """[images] mechanism "lsf": each shard is a job whose command really runs the engine into SeaweedFS."""
    cluster.reset()
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    api.ensure_pool("hortacloud_lsf", 4)
    api.unpause(UPLOAD_DAG)
    run_id = api.trigger(UPLOAD_DAG, {"sample": SAMPLE, "products": ["images"]})
    state = api.wait_for_run(UPLOAD_DAG, run_id, timeout=180, poll=1.0)
    instances = api.task_instances(UPLOAD_DAG, run_id)
    assert state == "success", {(ti["task_id"], ti["map_index"]): ti["state"] for ti in instances}
    shards = {ti["rendered_map_index"] for ti in instances if ti["task_id"] == "images.upload"}
    assert len(shards) == 4 and "top-level files" in shards
    submitted = cluster.argvs("bsub")
    assert len(submitted) == 4 and all("--file-list" in argv[-1] and "--results" in argv[-1] for argv in submitted)
    sample = image_bases(site)[0] / SAMPLE
    expected = {
        f"images/{SAMPLE}/{path.relative_to(sample).as_posix()}": path.stat().st_size
        for path in sample.rglob("*")
        if path.is_file()
    }
    assert _keys(s3_server, f"images/{SAMPLE}/") == expected
    assert list(_keys(s3_server, f"manifests/{SAMPLE}/")) == [f"manifests/{SAMPLE}/images.json"]


def test_a_publish_killed_mid_way_leaves_a_new_sample_undiscoverable(
    api: AirflowClient, cluster: Emulator, site: Path, s3_server: S3Endpoint
) -> None:
    """The shard jobs are held pending; the user marks the run's shard tasks failed: the jobs are killed, and
    neither transform.txt nor the root block is in the bucket."""
    sample = "2023-06-01"
    make_sample(image_bases(site)[0] / sample, depth=1, odd_names=False)
    cluster.reset(FAKE_LSF_PEND_SECONDS=600)
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    api.ensure_pool("hortacloud_lsf", 4)
    api.unpause(UPLOAD_DAG)
    run_id = api.trigger(UPLOAD_DAG, {"sample": sample, "products": ["images"]})
    wait_until(lambda: len(cluster.argvs("bsub")) >= 2, 90, "shard jobs submitted", poll=0.5)
    for ti in api.task_instances(UPLOAD_DAG, run_id, task_id="images.upload"):
        api.wait_for_deferred(UPLOAD_DAG, run_id, "images.upload", map_index=ti["map_index"], timeout=90)
        api.mark_task_failed(UPLOAD_DAG, run_id, "images.upload", map_index=ti["map_index"])
    assert api.wait_for_run(UPLOAD_DAG, run_id, timeout=120, poll=1.0) == "failed"
    assert api.task_instance(UPLOAD_DAG, run_id, "images.publish")["state"] == "upstream_failed"
    landed = _keys(s3_server, f"images/{sample}/")
    assert f"images/{sample}/transform.txt" not in landed and f"images/{sample}/ktx/block_8_xy_.ktx" not in landed
    wait_until(
        lambda: len(cluster.argvs("bkill")) >= len(cluster.argvs("bsub")), 60, "every shard job killed", poll=0.5
    )
