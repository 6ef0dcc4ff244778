"""End to end through a real Airflow: api-server, scheduler, dag-processor and triggerer on 127.0.0.1.

The stack is the session's (``tests/dags/conftest.py``). The upload DAG publishes a sample into SeaweedFS, the
tracings upload starts the neuron metadata DAG through its asset, and two runs for one sample share one live LSF
transfer. Everything goes through the REST API, as an operator or the demo would.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from devstack.airflow_stack import AirflowClient, AirflowStack
from devstack.lsf import Emulator
from devstack.s3server import S3Endpoint
from tests.dags.conftest import E2E_BUCKET, E2E_SAMPLE

pytestmark = pytest.mark.airflow

UPLOAD_DAG = "hortacloud_upload_sample"
METADATA_DAG = "hortacloud_neuron_metadata"
SAMPLE = E2E_SAMPLE
NEURON_IDS = ["AA9001", "AA9002", "AA9003"]


def test_healthy_and_the_nightly_dag_paused_at_creation(stack: AirflowStack, api: AirflowClient) -> None:
    assert api.is_healthy()
    assert stack.startup_seconds is not None and stack.startup_seconds < 120, stack.timings
    # A scheduled DAG in dags/ would otherwise start a run as soon as it is parsed (no test unpauses it earlier).
    assert api.wait_for_dag(METADATA_DAG)["is_paused"] is True


def test_upload_dag_end_to_end_against_seaweedfs(api: AirflowClient, e2e_samples: Path, s3_server: S3Endpoint) -> None:
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    api.ensure_pool("hortacloud_lsf", 2)
    api.ensure_pool("hortacloud_lsf", 4)  # exists: updated
    assert api.request("GET", "/api/v2/pools/hortacloud_lsf")["slots"] == 4
    api.unpause(UPLOAD_DAG)
    run_id = api.trigger(UPLOAD_DAG, {"sample": SAMPLE, "products": ["images"]})

    state = api.wait_for_run(UPLOAD_DAG, run_id, timeout=120, poll=1.0)

    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in api.task_instances(UPLOAD_DAG, run_id)}
    assert state == "success", states
    assert states[("plan", -1)] == "success" and states[("images.publish", -1)] == "success"
    shards = {
        ti["rendered_map_index"]: ti["state"]
        for ti in api.task_instances(UPLOAD_DAG, run_id)
        if ti["task_id"] == "images.upload"
    }
    assert len(shards) == 4 and set(shards.values()) == {"success"}, shards  # three of ktx/, the top-level files
    expected = {
        f"images/{SAMPLE}/{path.relative_to(e2e_samples / SAMPLE).as_posix()}": path.stat().st_size
        for path in (e2e_samples / SAMPLE).rglob("*")
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
    # The run's note says what it published, at a glance: the summary task's table.
    note = api.dag_run(UPLOAD_DAG, run_id)["note"]
    assert note.splitlines()[0] == f"{SAMPLE}: images (done)", note
    assert f"| images | published | {len(expected) - 2:,} (" in note  # the two discovery files go up in publish
    assert (
        f"[images/{SAMPLE}/](https://{E2E_BUCKET}.s3.amazonaws.com/?list-type=2&delimiter=/&prefix=images/{SAMPLE}/)"
        in note
    )
    assert "| registration | not chosen |" in note


def test_tracings_upload_starts_the_neuron_metadata_dag_through_its_asset(
    api: AirflowClient, e2e_samples: Path, s3_server: S3Endpoint
) -> None:
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    api.wait_for_dag(METADATA_DAG, timeout=60)
    client = s3_server.boto3_client()
    # The sample's images went up long before its tracings, as in production; neurons.json is written only then.
    for name in ("transform.txt", "ktx/block_8_xy_.ktx", "default.0.tif"):
        client.upload_file(str(e2e_samples / SAMPLE / name), E2E_BUCKET, f"images/{SAMPLE}/{name}")
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
    note = api.dag_run(METADATA_DAG, run_id)["note"]
    assert note.startswith("neuron metadata of Finished\\_Neurons, tracing\\_complete: 2 file(s) written"), note
    upload_note = api.dag_run(UPLOAD_DAG, upload)["note"]
    assert upload_note.startswith(f"{SAMPLE}: tracings (done)") and "| tracings | published |" in upload_note
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


def test_only_loopback_listeners(stack: AirflowStack) -> None:
    listeners = stack.listeners()

    assert stack.port in {listener.port for listener in listeners}
    assert all(listener.address == "127.0.0.1" for listener in listeners), listeners


def test_no_secret_in_logs_or_command_lines(
    stack: AirflowStack, api: AirflowClient, s3_server: S3Endpoint, e2e_lsf: Emulator
) -> None:
    """Whatever the confs of this session's runs said (the hostile corpus included), no secret is in a task log, on
    an Airflow command line, or in any argument of any LSF command (a job's command line, -J name, -o path)."""
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
    submitted = [call["argv"] for call in e2e_lsf.calls()]
    assert any(argv[0] == "bsub" for argv in submitted), "no LSF job was submitted in this session"
    for argv in submitted:
        assert not any(secret in word for secret in secrets for word in argv), argv


def test_two_runs_for_one_sample_share_the_live_transfer(api: AirflowClient, e2e_lsf: Emulator) -> None:
    """Two people trigger the same sample: the second run follows the first run's LSF job, no second transfer."""
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    api.ensure_pool("hortacloud_lsf", 4)
    api.unpause(UPLOAD_DAG)
    e2e_lsf.set_knobs(FAKE_LSF_PEND_SECONDS=12)  # the job waits in PEND long enough for the second run to find it
    try:
        before = len(e2e_lsf.calls("bsub"))
        conf = {"sample": SAMPLE, "products": ["tracings"]}
        first = api.trigger(UPLOAD_DAG, conf)
        deadline = time.monotonic() + 60
        while len(e2e_lsf.calls("bsub")) == before:
            assert time.monotonic() < deadline, "the first run never submitted"
            time.sleep(0.3)
        second = api.trigger(UPLOAD_DAG, conf)
        assert api.wait_for_run(UPLOAD_DAG, first, timeout=120, poll=0.5) == "success"
        assert api.wait_for_run(UPLOAD_DAG, second, timeout=120, poll=0.5) == "success"
    finally:
        e2e_lsf.set_knobs(FAKE_LSF_PEND_SECONDS=None)
    assert len(e2e_lsf.calls("bsub")) == before + 1
    ids = {
        api.xcom(UPLOAD_DAG, run, "tracings.transfer", key="lsf_job", map_index=0)["job_id"] for run in (first, second)
    }
    assert len(ids) == 1
    assert "is already transferring" in api.task_log(UPLOAD_DAG, second, "tracings.transfer", map_index=0)
