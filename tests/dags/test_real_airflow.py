"""End to end through a real Airflow: api-server, scheduler, dag-processor and triggerer on 127.0.0.1.

One stack for the module (about 20-35 s to start on this 2-core machine). It serves two DAG bundles: the project's
``dags/`` and a probe bundle written here (a plain run with a mapped task, and a deferred task to mark failed).
Its tasks reach SeaweedFS, the LSF emulator (the tracings transfers; they defer, as in production) and a local
NeuronBrowser answering from the demo's fixture (``devstack/demo_neuronbrowser.json``), so the tracings upload
starts the neuron metadata DAG through its asset, and two runs for one sample share one live LSF transfer.
Everything goes through the REST API, as an operator or the demo would.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.airflow_stack import AirflowApiError, AirflowClient, AirflowStack
from devstack.localsite import cluster_roots, emulated_lsf, site_toml
from devstack.lsf import Emulator
from devstack.neuronbrowser import NeuronBrowserServer
from devstack.procs import running
from devstack.s3server import S3Endpoint
from devstack.sampletree import make_sample

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
UPLOAD_DAG = "hortacloud_upload_sample"
METADATA_DAG = "hortacloud_neuron_metadata"
E2E_BUCKET = "hortacloud-e2e-airflow"
SAMPLE = "2023-05-10"
# Maps 2023-05-10 (21:30 in New York, already the 11th in UTC) G-001..G-003 to AA9001..AA9003.
NB_FIXTURE = ROOT / "devstack" / "demo_neuronbrowser.json"
NEURON_IDS = ["AA9001", "AA9002", "AA9003"]

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
def cluster(workdir: Path) -> Path:
    """The cluster roots; only tracing_complete holds the sample: one tracings transfer, so one asset event.

    G-003 has no soma.txt: its somaLocation falls back to the neuron's brain area in NeuronBrowser.
    """
    root = workdir / "cluster"
    for number in (1, 2, 3):
        folder = cluster_roots(root)["tracing_complete"] / SAMPLE / f"G-{number:03}"
        folder.mkdir(parents=True)
        for name in ("consensus.swc", "dendrite.swc"):
            (folder / name).write_text(f"# G-{number:03} {name}\n1 1 0 0 0 1 -1\n")
        if number < 3:
            (folder / "soma.txt").write_text("Primary motor area, Layer 5\r\n")
    (root / "lsf-output").mkdir()
    return root


@pytest.fixture(scope="module")
def neuronbrowser(workdir: Path) -> Iterator[NeuronBrowserServer]:
    server = NeuronBrowserServer(workdir / "neuronbrowser", NB_FIXTURE).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lsf(workdir: Path) -> Iterator[Emulator]:
    emulator = Emulator(workdir / "lsf-state")
    try:
        yield emulator
    finally:
        emulator.cleanup()


@pytest.fixture(scope="module")
def stack(
    workdir: Path,
    samples: Path,
    cluster: Path,
    s3_server: S3Endpoint,
    neuronbrowser: NeuronBrowserServer,
    lsf: Emulator,
) -> Iterator[AirflowStack]:
    probe_dags = workdir / "probe_dags"
    probe_lib = workdir / "probe_lib"
    probe_dags.mkdir()
    probe_lib.mkdir()
    (probe_lib / "probe_support.py").write_text(PROBE_SUPPORT)
    (probe_dags / "probe_dags.py").write_text(f"MARKER = {str(workdir / 'on_kill.marker')!r}\n" + PROBE_DAG)
    site = workdir / "hortacloud-e2e.toml"
    site.write_text(
        site_toml(
            {
                "s3": {"bucket": E2E_BUCKET},
                "images": {"bases": [samples]},
                "sync": {"workers": 8},
                "cluster": cluster_roots(cluster),
                "lsf": emulated_lsf(cluster / "lsf-output", 0.5),
            }
        )
    )
    s3_server.boto3_client().create_bucket(Bucket=E2E_BUCKET)
    env = {
        **lsf.env(base={}),
        # The LSF jobs inherit the submitter's environment (bsub -env all): their sync reaches the same server.
        **s3_server.client_env(),
        "AIRFLOW_CONN_HORTACLOUD_S3": s3_server.connection_json(),
        "AIRFLOW_CONN_HORTACLOUD_NEURONBROWSER": neuronbrowser.connection_json(),
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
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
    survivors = [pid for pid in pids if running(pid)]
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


def test_tracings_upload_starts_the_neuron_metadata_dag_through_its_asset(
    api: AirflowClient, samples: Path, s3_server: S3Endpoint
) -> None:
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    api.wait_for_dag(METADATA_DAG, timeout=60)
    client = s3_server.boto3_client()
    # The sample's images went up long before its tracings, as in production; neurons.json is written only then.
    for name in ("transform.txt", "ktx/block_8_xy_.ktx", "default.0.tif"):
        client.upload_file(str(samples / SAMPLE / name), E2E_BUCKET, f"images/{SAMPLE}/{name}")
    api.ensure_pool("hortacloud_lsf", 4)
    api.unpause(METADATA_DAG)
    api.unpause(UPLOAD_DAG)
    upload = api.trigger(UPLOAD_DAG, {"sample": SAMPLE, "products": ["tracings"]})
    upload_state = api.wait_for_run(UPLOAD_DAG, upload, timeout=120, poll=0.5)
    assert upload_state == "success", {ti["task_id"]: ti["state"] for ti in api.task_instances(UPLOAD_DAG, upload)}

    runs = api.wait_until_idle(METADATA_DAG, timeout=120, poll=0.5)

    # Only the asset started a run: unpausing did not fire the nightly cron for last night.
    assert [run["run_type"] for run in runs] == ["asset_triggered"], runs
    run_id = runs[0]["dag_run_id"]
    tasks = {ti["task_id"]: ti["state"] for ti in api.task_instances(METADATA_DAG, run_id)}
    assert runs[0]["state"] == "success", tasks
    events = api.upstream_asset_events(METADATA_DAG, run_id)
    assert [(e["name"], e["source_dag_id"], e["source_run_id"], e["source_task_id"]) for e in events] == [
        ("hortacloud_tracings", UPLOAD_DAG, upload, "tracings.announce")
    ]
    dag = api.dag(METADATA_DAG)
    assert dag is not None and dt.datetime.fromisoformat(dag["next_dagrun_run_after"]) > dt.datetime.now(dt.UTC)
    report = api.xcom(METADATA_DAG, run_id, "report")
    neurons_json, metadata_json = f"images/{SAMPLE}/neurons.json", f"neurons/tracing_complete/{SAMPLE}/metadata.json"
    assert sorted(report["written"]) == [neurons_json, metadata_json]
    assert report["soma_fallbacks"] == {"AA9003": "neuron brain area"}
    documents = {
        key: json.loads(client.get_object(Bucket=E2E_BUCKET, Key=key)["Body"].read()) for key in report["written"]
    }
    for document in documents.values():
        assert document["title"] == f"{SAMPLE} MouseLight published neurons"
        assert sorted(document["neurons"]) == NEURON_IDS
    assert documents[neurons_json]["neurons"]["AA9001"] == {
        "originalName": "G-001",
        "somaLocation": "Primary motor area, Layer 5",
        "injectionLocation": "Primary motor area",
        "consensus": f"../../tracings/tracing_complete/{SAMPLE}/G-001/consensus.swc",
        "dendrite": f"../../tracings/tracing_complete/{SAMPLE}/G-001/dendrite.swc",
    }

    again = api.trigger(METADATA_DAG)
    assert api.wait_for_run(METADATA_DAG, again, timeout=120, poll=0.5) == "success"
    second = api.xcom(METADATA_DAG, again, "report")
    assert second["written"] == [] and second["unchanged"] == 2


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


def test_two_runs_for_one_sample_share_the_live_transfer(api: AirflowClient, lsf: Emulator) -> None:
    """Two people trigger the same sample: the second run follows the first run's LSF job, no second transfer."""
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    api.ensure_pool("hortacloud_lsf", 4)
    api.unpause(UPLOAD_DAG)
    lsf.set_knobs(FAKE_LSF_PEND_SECONDS=12)  # the job waits in PEND long enough for the second run to find it
    try:
        before = len(lsf.calls("bsub"))
        conf = {"sample": SAMPLE, "products": ["tracings"]}
        first = api.trigger(UPLOAD_DAG, conf)
        deadline = time.monotonic() + 60
        while len(lsf.calls("bsub")) == before:
            assert time.monotonic() < deadline, "the first run never submitted"
            time.sleep(0.3)
        second = api.trigger(UPLOAD_DAG, conf)
        assert api.wait_for_run(UPLOAD_DAG, first, timeout=120, poll=0.5) == "success"
        assert api.wait_for_run(UPLOAD_DAG, second, timeout=120, poll=0.5) == "success"
    finally:
        lsf.set_knobs(FAKE_LSF_PEND_SECONDS=None)
    assert len(lsf.calls("bsub")) == before + 1
    ids = {
        api.xcom(UPLOAD_DAG, run, "tracings.transfer", key="lsf_job", map_index=0)["job_id"] for run in (first, second)
    }
    assert len(ids) == 1
    assert "is already transferring" in api.task_log(UPLOAD_DAG, second, "tracings.transfer", map_index=0)
