"""The upload DAG end to end through ``dag.test()``: images land in the local S3 server; bad confs write nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack.sampletree import make_sample
from tests.conftest import BUCKET
from tests.fixtures.dag_runs import bucket_keys, run_dag, task_states

UPLOAD_DAG = "hortacloud_upload_sample"

pytestmark = pytest.mark.airflow


@pytest.fixture
def upload_site(tmp_path: Path, site_config, s3_server, monkeypatch):  # type: ignore[no-untyped-def]
    """A sample tree in a temporary 'nrs' base, the DAG configured for it, the S3 connection from the env."""
    nrs = tmp_path / "nrs"
    sample = make_sample(nrs / "2023-05-10", depth=2)
    site_config(
        f"""
[images]
bases = ["{nrs}", "{tmp_path / "nearline"}"]
[sync]
workers = 8
progress_interval_seconds = 1
"""
    )
    monkeypatch.setenv("AIRFLOW_CONN_HORTACLOUD_S3", s3_server.connection_json())
    return sample


def test_images_run_lands_the_sample_and_skips_unchosen_products(airflow_db, upload_site, s3_client):
    run = run_dag(UPLOAD_DAG, {"sample": "2023-05-10"})
    states = task_states(run)
    assert str(run.state) == "success", states
    assert states["plan"] == "success" and states["images.upload"] == "success"
    for name in ("registration", "segmentation", "tracings", "carveouts"):
        group = {task: state for task, state in states.items() if task.startswith(f"{name}.")}
        assert group and set(group.values()) == {"skipped"}, group
    landed = bucket_keys(s3_client, BUCKET, "images/2023-05-10/")
    expected = {}
    for directory, _, names in os.walk(upload_site):
        for name in names:
            path = Path(directory) / name
            expected["images/2023-05-10/" + path.relative_to(upload_site).as_posix()] = path.stat().st_size
    assert landed == expected
    summary = next(ti for ti in run.get_task_instances() if ti.task_id == "images.upload").xcom_pull(
        task_ids="images.upload"
    )
    assert summary["files_uploaded"] == len(expected) and summary["verified"] is True


@pytest.mark.parametrize("sample", ["2023-02-30", "../x", "2023-05-10; rm -rf ~"])
def test_bad_samples_are_refused_before_anything_runs(airflow_db, upload_site, s3_client, sample):
    from airflow.sdk.exceptions import ParamValidationError

    before = bucket_keys(s3_client, BUCKET, "images/")
    try:
        run = run_dag(UPLOAD_DAG, {"sample": sample})
    except ParamValidationError as err:  # refused by the Param's pattern/format before the run exists
        assert repr(sample).strip("'") in str(err) or sample in str(err)
    else:
        states = task_states(run)
        assert str(run.state) == "failed"
        assert states["plan"] == "failed"
        assert states["images.upload"] in ("upstream_failed", "skipped")
    assert bucket_keys(s3_client, BUCKET, "images/") == before
