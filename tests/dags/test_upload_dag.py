"""The upload DAG end to end through ``dag.test()``: images land in the local S3 server; bad confs write nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devstack.sampletree import make_sample
from tests.fixtures.dag_runs import bucket_keys, run_dag, task_states

UPLOAD_DAG = "hortacloud_upload_sample"

pytestmark = pytest.mark.airflow


@pytest.fixture
def upload_site(tmp_path: Path, site_config, s3_server, fresh_bucket, monkeypatch):  # type: ignore[no-untyped-def]
    """A sample tree in a temporary 'nrs' base, the DAG configured for it and a bucket of its own."""
    nrs = tmp_path / "nrs"
    sample = make_sample(nrs / "2023-05-10", depth=2)
    site_config(
        f"""
[s3]
bucket = "{fresh_bucket}"
[images]
bases = ["{nrs}", "{tmp_path / "nearline"}"]
shards = 3
shard_lists_dir = "{tmp_path / "shard-lists"}"
[sync]
workers = 8
progress_interval_seconds = 1
"""
    )
    monkeypatch.setenv("AIRFLOW_CONN_HORTACLOUD_S3", s3_server.connection_json())
    return sample


def _expected(sample: Path) -> dict[str, int]:
    expected = {}
    for directory, _, names in os.walk(sample):
        for name in names:
            path = Path(directory) / name
            expected["images/2023-05-10/" + path.relative_to(sample).as_posix()] = path.stat().st_size
    return expected


def test_images_go_up_in_shards_then_the_discovery_files_then_the_manifest(
    airflow_db, upload_site, s3_client, fresh_bucket
):
    bucket = fresh_bucket
    run = run_dag(UPLOAD_DAG, {"sample": "2023-05-10"})
    states = task_states(run)
    assert str(run.state) == "success", states
    assert states["plan"] == "success" and states["images.publish"] == "success"
    for name in ("registration", "segmentation", "tracings", "carveouts"):
        group = {task: state for task, state in states.items() if task.startswith(f"{name}.")}
        assert group and set(group.values()) == {"skipped"}, group
    shards = {ti.rendered_map_index: str(ti.state) for ti in run.get_task_instances() if ti.task_id == "images.upload"}
    assert len(shards) == 4 and set(shards.values()) == {"success"}, shards  # three of ktx/, the top-level files
    assert "top-level files" in shards and all(
        " .. " in name or name.startswith("ktx/") for name in shards if name != "top-level files"
    )
    expected = _expected(upload_site)
    landed = bucket_keys(s3_client, bucket, "images/2023-05-10/")
    assert landed == expected
    published = next(ti for ti in run.get_task_instances() if ti.task_id == "images.publish").xcom_pull(
        task_ids="images.publish"
    )
    assert published["discovery"] == ["images/2023-05-10/transform.txt", "images/2023-05-10/ktx/block_8_xy_.ktx"]
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key="manifests/2023-05-10/images.json")["Body"].read())
    assert {entry["key"]: entry["size"] for entry in manifest["objects"]} == expected
    assert manifest["digest"]["count"] == len(expected) and manifest["provenance"]["run_id"] == run.run_id
    assert states["summary"] == "success", states
    summary = next(ti for ti in run.get_task_instances() if ti.task_id == "summary").xcom_pull(task_ids="summary")
    assert summary["title"] == "2023-05-10: images (done)"
    assert summary["products"] == {
        "images": "published",
        **{name: "not chosen" for name in ("registration", "segmentation", "tracings", "carveouts")},
    }
    # Nothing changed: the manifest is left exactly as it was.
    before = s3_client.get_object(Bucket=bucket, Key="manifests/2023-05-10/images.json")
    again = run_dag(UPLOAD_DAG, {"sample": "2023-05-10"})
    assert str(again.state) == "success"
    after = s3_client.get_object(Bucket=bucket, Key="manifests/2023-05-10/images.json")
    assert after["ETag"] == before["ETag"] and after["LastModified"] == before["LastModified"]


def test_a_failed_shard_leaves_a_new_sample_undiscoverable_and_a_rerun_uploads_only_the_rest(
    airflow_db, upload_site, s3_client, fresh_bucket, monkeypatch
):
    bucket = fresh_bucket
    import hortacloud.tasks.upload

    victim = "5/"
    real = hortacloud.tasks.upload.upload_shard

    def failing(config, shard, **kwargs):  # type: ignore[no-untyped-def]
        if victim in shard["prefixes"] or any(p.startswith(victim) for p in shard["prefixes"]):
            raise RuntimeError("node lost mid-shard")
        return real(config, shard, **kwargs)

    monkeypatch.setattr(hortacloud.tasks.upload, "upload_shard", failing)
    failed = run_dag(UPLOAD_DAG, {"sample": "2023-05-10"}, retries=0)
    assert str(failed.state) == "failed"
    assert task_states(failed)["images.publish"] == "upstream_failed"
    assert task_states(failed)["summary"] == "failed"  # it ran, wrote its table, and keeps the run failed
    landed = bucket_keys(s3_client, bucket, "images/2023-05-10/")
    assert landed and "images/2023-05-10/transform.txt" not in landed
    assert "images/2023-05-10/ktx/block_8_xy_.ktx" not in landed  # JACS would not discover this sample
    monkeypatch.setattr(hortacloud.tasks.upload, "upload_shard", real)
    rerun = run_dag(UPLOAD_DAG, {"sample": "2023-05-10"})
    assert str(rerun.state) == "success"
    uploaded = sum(
        ti.xcom_pull(task_ids="images.upload", map_indexes=ti.map_index)["files_uploaded"]
        for ti in rerun.get_task_instances()
        if ti.task_id == "images.upload"
    )
    assert uploaded == len(_expected(upload_site)) - len(landed) - 2  # the two discovery files go up in publish
    assert bucket_keys(s3_client, bucket, "images/2023-05-10/") == _expected(upload_site)


@pytest.mark.parametrize("sample", ["2023-02-30", "../x", "2023-05-10; rm -rf ~"])
def test_bad_samples_are_refused_before_anything_runs(airflow_db, upload_site, s3_client, fresh_bucket, sample):
    bucket = fresh_bucket
    from airflow.sdk.exceptions import ParamValidationError

    before = bucket_keys(s3_client, bucket, "images/")
    try:
        run = run_dag(UPLOAD_DAG, {"sample": sample})
    except ParamValidationError as err:  # refused by the Param's pattern/format before the run exists
        assert repr(sample).strip("'") in str(err) or sample in str(err)
    else:
        states = task_states(run)
        assert str(run.state) == "failed"
        assert states["plan"] == "failed"
        assert states["images.upload"] in ("upstream_failed", "skipped")
    assert bucket_keys(s3_client, bucket, "images/") == before
