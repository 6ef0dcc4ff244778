"""End to end through a real Airflow: api-server, scheduler, dag-processor and triggerer on 127.0.0.1.

One stack for the module (about 20-35 s to start on this 2-core machine). It serves two DAG bundles: the project's
``dags/`` and a probe bundle written here (a plain run with a mapped task, and a deferred task to mark failed).
Everything goes through the REST API, as an operator or the demo would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.airflow_stack import AirflowApiError, AirflowClient, AirflowStack
from devstack.s3server import S3Endpoint
from devstack.sampletree import make_sample

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
UPLOAD_DAG = "hortacloud_upload_sample"
E2E_BUCKET = "hortacloud-e2e-airflow"
SAMPLE = "2023-05-10"

PROBE_DAG = '''
"""Probe DAG for tests/dags/test_real_airflow.py."""
import pendulum
from airflow.sdk import Param, dag, task

from probe_support import ProbeDeferOperator


@dag(
    dag_id="probe",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    params={"sample": Param("2023-01-01", type="string", pattern=r"^\\d{4}-\\d{2}-\\d{2}$")},
)
def probe():
    @task
    def hello(**context):
        print("probe says", context["params"]["sample"])
        return [1, 2, 3]

    @task
    def square(x):
        print(f"square {x} -> {x * x}")
        return x * x

    @task
    def total(values):
        print("total", sum(values))

    total(square.expand(x=hello()))


@dag(dag_id="probe_deferred", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"))
def probe_deferred():
    ProbeDeferOperator(task_id="wait", marker=MARKER)


probe()
probe_deferred()
'''

# Outside the DAG folder, on the components' PYTHONPATH: the triggerer imports the trigger by its class path.
PROBE_SUPPORT = '''
"""An operator that defers for an hour on a trigger whose on_kill leaves a marker file."""
import asyncio
from pathlib import Path

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent


class ProbeWaitTrigger(BaseTrigger):
    def __init__(self, marker: str, seconds: float = 3600.0):
        super().__init__()
        self.marker = marker
        self.seconds = seconds

    def serialize(self):
        return ("probe_support.ProbeWaitTrigger", {"marker": self.marker, "seconds": self.seconds})

    async def run(self):
        Path(self.marker + ".started").write_text("run started")
        await asyncio.sleep(self.seconds)
        yield TriggerEvent({"status": "done"})

    async def on_kill(self):
        Path(self.marker).write_text("on_kill called")


class ProbeDeferOperator(BaseOperator):
    def __init__(self, *, marker: str, **kwargs):
        super().__init__(**kwargs)
        self.marker = marker

    def execute(self, context):
        self.defer(trigger=ProbeWaitTrigger(self.marker), method_name="execute_complete")

    def execute_complete(self, context, event=None):
        return event
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-airflow")


@pytest.fixture(scope="module")
def samples(workdir: Path) -> Path:
    """An images base holding one small sample (octree to depth 2 plus the top-level files)."""
    base = workdir / "samples"
    make_sample(base / SAMPLE, depth=2)
    return base


@pytest.fixture(scope="module")
def stack(workdir: Path, samples: Path, s3_server: S3Endpoint) -> Iterator[AirflowStack]:
    probe_dags = workdir / "probe_dags"
    probe_lib = workdir / "probe_lib"
    probe_dags.mkdir()
    probe_lib.mkdir()
    (probe_lib / "probe_support.py").write_text(PROBE_SUPPORT)
    (probe_dags / "probe_dags.py").write_text(f"MARKER = {str(workdir / 'on_kill.marker')!r}\n" + PROBE_DAG)
    site = workdir / "hortacloud-e2e.toml"
    site.write_text(f'[s3]\nbucket = "{E2E_BUCKET}"\n\n[images]\nbases = ["{samples}"]\n\n[sync]\nworkers = 8\n')
    s3_server.boto3_client().create_bucket(Bucket=E2E_BUCKET)
    env = {
        "AIRFLOW_CONN_HORTACLOUD_S3": s3_server.connection_json(),
        "HORTACLOUD_CONFIG": str(site),
        "PYTHONPATH": str(probe_lib),
    }
    airflow = AirflowStack(
        workdir / "airflow-home",
        ROOT / "dags",
        env,
        plugins_folder=ROOT / "plugins",
        extra_bundles={"probe": probe_dags},
    )
    airflow.start()
    pids = airflow.pids()
    try:
        yield airflow
    finally:
        airflow.stop()
    survivors = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    assert not survivors, f"Airflow processes left after stop(): {survivors}"


@pytest.fixture(scope="module")
def api(stack: AirflowStack) -> AirflowClient:
    assert stack.client is not None
    return stack.client


def test_healthy_and_every_dag_paused_at_creation(stack: AirflowStack, api: AirflowClient) -> None:
    assert api.is_healthy()
    assert stack.startup_seconds is not None and stack.startup_seconds < 120, stack.timings
    # A scheduled DAG in dags/ would otherwise start a run as soon as it is parsed.
    assert api.wait_for_dag(UPLOAD_DAG)["is_paused"] is True


def test_probe_run_through_rest(api: AirflowClient) -> None:
    api.wait_for_dag("probe")
    api.unpause("probe")
    run_id = api.trigger("probe", {"sample": SAMPLE})

    assert api.wait_for_run("probe", run_id, timeout=60, poll=0.5) == "success"

    instances = api.task_instances("probe", run_id)
    assert sorted((ti["task_id"], ti["map_index"], ti["state"]) for ti in instances) == [
        ("hello", -1, "success"),
        ("square", 0, "success"),
        ("square", 1, "success"),
        ("square", 2, "success"),
        ("total", -1, "success"),
    ]
    assert f"probe says {SAMPLE}" in api.task_log("probe", run_id, "hello")
    assert "square 3 -> 9" in api.task_log("probe", run_id, "square", map_index=2)
    assert "total 14" in api.task_log("probe", run_id, "total")

    api.clear_tasks("probe", run_id, [("square", 1), "total"])
    assert api.wait_for_run("probe", run_id, timeout=60, poll=0.5) == "success"
    again = api.task_instance("probe", run_id, "square", map_index=1)
    assert again["state"] == "success" and again["try_number"] == 2
    assert "square 2 -> 4" in api.task_log("probe", run_id, "square", try_number=2, map_index=1)


def test_bad_conf_is_refused_with_400(api: AirflowClient) -> None:
    api.wait_for_dag("probe")
    with pytest.raises(AirflowApiError) as refused:
        api.trigger("probe", {"sample": "not-a-date"})

    assert refused.value.status == 400
    assert "not-a-date" in str(refused.value.detail)


def test_mark_failed_while_deferred_runs_trigger_on_kill(api: AirflowClient, workdir: Path) -> None:
    marker = workdir / "on_kill.marker"
    started = workdir / "on_kill.marker.started"
    api.wait_for_dag("probe_deferred")
    api.unpause("probe_deferred")
    run_id = api.trigger("probe_deferred")
    api.wait_for_deferred("probe_deferred", run_id, "wait", timeout=60)
    # Cancelled before the triggerer starts it, a trigger is dropped without on_kill: wait until it runs.
    _wait_for_file(started, 20)

    api.mark_task_failed("probe_deferred", run_id, "wait")

    assert api.wait_for_run("probe_deferred", run_id, timeout=30, poll=0.5) == "failed"
    _wait_for_file(marker, 20)
    assert marker.read_text() == "on_kill called"


def _wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout:.0f}s"
        time.sleep(0.2)


def test_upload_dag_end_to_end_against_seaweedfs(api: AirflowClient, samples: Path, s3_server: S3Endpoint) -> None:
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    api.ensure_pool("hortacloud_lsf", 2)
    api.ensure_pool("hortacloud_lsf", 4)  # exists: updated
    assert api.request("GET", "/api/v2/pools/hortacloud_lsf")["slots"] == 4
    api.unpause(UPLOAD_DAG)
    run_id = api.trigger(UPLOAD_DAG, {"sample": SAMPLE, "products": ["images"]})

    state = api.wait_for_run(UPLOAD_DAG, run_id, timeout=120, poll=1.0)

    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in api.task_instances(UPLOAD_DAG, run_id)}
    assert state == "success", states
    assert states[("plan", -1)] == "success"
    assert states[("images.upload", -1)] == "success"
    expected = {
        f"images/{SAMPLE}/{path.relative_to(samples / SAMPLE).as_posix()}": path.stat().st_size
        for path in (samples / SAMPLE).rglob("*")
        if path.is_file()
    }
    client = s3_server.boto3_client()
    found = {
        item["Key"]: item["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=E2E_BUCKET, Prefix=f"images/{SAMPLE}/")
        for item in page.get("Contents", [])
    }
    assert found == expected
    assert f"images/{SAMPLE}/ktx/" in api.task_log(UPLOAD_DAG, run_id, "plan")


def test_upload_dag_refuses_bad_sample_with_400(api: AirflowClient) -> None:
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    with pytest.raises(AirflowApiError) as refused:
        api.trigger(UPLOAD_DAG, {"sample": "2023-5-10", "products": ["images"]})

    assert refused.value.status == 400


def test_only_loopback_listeners(stack: AirflowStack) -> None:
    listeners = stack.listeners()

    assert stack.port in {listener.port for listener in listeners}
    assert all(listener.address == "127.0.0.1" for listener in listeners), listeners


def test_no_secret_in_logs_or_command_lines(stack: AirflowStack, api: AirflowClient, s3_server: S3Endpoint) -> None:
    secrets = [api._password, s3_server.secret_key]
    for path in stack.logs_folder.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not any(secret in text for secret in secrets), f"a secret is written in {path}"
    for pid in stack.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not any(secret in cmdline for secret in secrets), f"a secret is on the command line of {pid}"
