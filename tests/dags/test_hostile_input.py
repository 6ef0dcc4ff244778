"""Trigger values are data: the hostile-input corpus through the REST API of the session's real Airflow.

Each case is laid over a valid conf (the e2e sample exists; images and segmentation chosen; not a dry run), so a
value that slipped through would upload into the bucket or submit an LSF job. Every case must be refused with HTTP
400 (no run is created) or by the plan step (the run fails at its first task, its note says why), and afterwards
the bucket and the LSF emulator's call log must be exactly as before.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from devstack.airflow_stack import AirflowApiError, AirflowClient
from devstack.lsf import Emulator
from devstack.s3server import S3Endpoint
from tests.dags.conftest import E2E_BUCKET, E2E_SAMPLE
from tests.fixtures.hostile_inputs import hostile_cases

pytestmark = pytest.mark.airflow

UPLOAD_DAG = "hortacloud_upload_sample"
BASE = {"sample": E2E_SAMPLE, "products": ["images", "segmentation"], "dry_run": False}


def _bucket(client: Any) -> dict[str, tuple[int, str, str]]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=E2E_BUCKET):
        for item in page.get("Contents", []):
            found[item["Key"]] = (item["Size"], item["ETag"], str(item["LastModified"]))
    return found


def test_hostile_trigger_values_are_refused_and_nothing_runs(
    api: AirflowClient, e2e_lsf: Emulator, s3_server: S3Endpoint
) -> None:
    api.wait_for_dag(UPLOAD_DAG, timeout=60)
    api.ensure_pool("hortacloud_lsf", 4)
    api.unpause(UPLOAD_DAG)
    client = s3_server.boto3_client()
    bucket_before, calls_before = _bucket(client), e2e_lsf.calls()
    runs_before = {run["dag_run_id"] for run in api.dag_runs(UPLOAD_DAG)}

    refused_by: dict[str, str] = {}
    plan_runs: dict[str, str] = {}
    for case in hostile_cases():
        try:
            plan_runs[case.why] = api.trigger(UPLOAD_DAG, case.conf(BASE))
            refused_by[case.why] = "plan"
        except AirflowApiError as err:
            refused_by[case.why] = "schema"
            assert err.status == 400, (case.why, err)
            (param,) = case.overrides
            detail = err.detail
            assert isinstance(detail, str) and detail.startswith(f"Invalid input for param {param}: "), detail
            assert "\n" not in detail and "Failed validating" not in detail and len(detail) < 600, detail
    assert refused_by == {case.why: case.refused_by for case in hostile_cases()}

    secret = s3_server.secret_key
    for why, run_id in plan_runs.items():
        assert api.wait_for_run(UPLOAD_DAG, run_id, timeout=120, poll=0.5) == "failed", why
        instances = api.task_instances(UPLOAD_DAG, run_id)
        ran = {
            ti["task_id"]: ti["state"] for ti in instances if ti["state"] not in ("upstream_failed", "skipped", None)
        }
        # Only the plan ran, and the summary, which finds no plan and leaves the refusal as the run's note.
        assert ran == {"plan": "failed", "summary": "failed"}, (why, ran)
        log = api.task_log(UPLOAD_DAG, run_id, "plan")
        assert "Refused, nothing was uploaded or submitted: Unknown trigger value(s)" in log, log
        note = api.dag_run(UPLOAD_DAG, run_id)["note"] or ""
        assert note.startswith("Refused, nothing was uploaded or submitted: Unknown trigger value(s)"), note
        # Neither the template's result nor any connection field is anywhere a user can read.
        shown = json.dumps(instances) + log + note
        assert secret not in shown

    assert {run["dag_run_id"] for run in api.dag_runs(UPLOAD_DAG)} - runs_before == set(plan_runs.values())
    assert e2e_lsf.calls() == calls_before
    assert _bucket(client) == bucket_before
