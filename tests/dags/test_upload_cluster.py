"""The upload DAG's cluster products through ``dag.test()``: LSF jobs (the emulator) really copy into the S3 server.

The emulator runs each job's command with bash, as LSF would. The transfer template is the project's own uploader
(``python -m hortacloud.s3sync``) instead of ``aws s3 sync``; the S3 credentials reach the job only through the
environment that bsub passes on (``-env all``), never through its command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.localsite import cluster_roots, emulated_lsf, site_toml
from devstack.lsf import Emulator
from tests.conftest import BUCKET
from tests.fixtures.dag_runs import bucket_keys, run_dag

UPLOAD_DAG = "hortacloud_upload_sample"

pytestmark = pytest.mark.airflow

SAMPLE = "2023-05-10"


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def cluster_site(tmp_path: Path, site_config, s3_server, lsf: Emulator, monkeypatch):  # type: ignore[no-untyped-def]
    """Registration, segmentation and tracings folders of one sample, and a config pointing the DAG at them."""
    roots = cluster_roots(tmp_path)
    _tree(roots["registration"] / SAMPLE, {"transform.h5": "reg", "sub/points.csv": "1,2,3\n"})
    _tree(roots["segmentation"] / SAMPLE / "stitching-output", {"tile-0001.tif": "seg"})
    _tree(roots["finished_neurons"] / SAMPLE, {"it's $HOME; rm -rf x/G-001.swc": "1 1 0 0 0 1 -1\n"})
    logs = tmp_path / "logs"
    logs.mkdir()
    # dag.test() runs a deferred task's trigger in-process: no executor report to race, so no first-poll wait.
    lsf_section = emulated_lsf(logs, 0.2, "--workers", "4", "--progress-interval", "1") | {"first_poll_seconds": 0}
    site_config(site_toml({"cluster": roots, "lsf": lsf_section}))
    monkeypatch.setenv("AIRFLOW_CONN_HORTACLOUD_S3", s3_server.connection_json())
    for name, value in s3_server.client_env().items():
        monkeypatch.setenv(name, value)  # what the cluster user's environment would hold
    return tmp_path


def test_cluster_products_land_through_lsf_jobs(airflow_db, cluster_site, lsf, s3_client):  # type: ignore[no-untyped-def]
    run = run_dag(UPLOAD_DAG, {"sample": SAMPLE, "products": ["registration", "segmentation", "tracings"]})
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states
    assert states[("registration.transfer", 0)] == "success"
    assert states[("segmentation.transfer", 0)] == "success"
    assert states[("tracings.transfer", 0)] == "success"
    # Each group checks S3 against the sources after its jobs, then (tracings) emits one asset event for the whole
    # group: the metadata rebuild runs once per upload.
    assert {states[(f"{group}.verify", -1)] for group in ("registration", "segmentation", "tracings")} == {"success"}
    assert states[("tracings.announce", -1)] == "success"
    (announce,) = [task for task in run.dag.tasks if task.task_id == "tracings.announce"]
    assert [asset.name for asset in announce.outlets] == ["hortacloud_tracings"]
    assert not any(task.outlets for task in run.dag.tasks if task.task_id != "tracings.announce")
    assert {state for (task, _), state in states.items() if task.startswith(("carveouts.", "images."))} == {"skipped"}
    shown = {ti.task_id: ti.rendered_map_index for ti in run.get_task_instances() if ti.map_index >= 0}
    assert shown == {
        "registration.transfer": "reg0510",
        "segmentation.transfer": "seg0510-1",
        "tracings.transfer": "tra0510-1",
    }

    assert bucket_keys(s3_client, BUCKET, bodies=True, prefix=f"registration/{SAMPLE}/") == {
        f"registration/{SAMPLE}/transform.h5": "reg",
        f"registration/{SAMPLE}/sub/points.csv": "1,2,3\n",
    }
    assert bucket_keys(s3_client, BUCKET, bodies=True, prefix=f"segmentation/{SAMPLE}/") == {
        f"segmentation/{SAMPLE}/tile-0001.tif": "seg"
    }
    assert bucket_keys(s3_client, BUCKET, bodies=True, prefix=f"tracings/Finished_Neurons/{SAMPLE}/") == {
        f"tracings/Finished_Neurons/{SAMPLE}/it's $HOME; rm -rf x/G-001.swc": "1 1 0 0 0 1 -1\n"
    }

    submitted = lsf.argvs("bsub")
    assert len(submitted) == 3
    names = sorted(argv[argv.index("-J") + 1] for argv in submitted)
    assert [name.split(".")[0] for name in names] == ["reg0510", "seg0510-1", "tra0510-1"]
    for argv in submitted:
        assert argv[argv.index("-P") + 1] == "mouselight" and argv[argv.index("-n") + 1] == "4"
        assert argv[argv.index("-o") + 1] == str(cluster_site / "logs" / "%J.out")
        secret = s3_client._request_signer._credentials.secret_key
        assert all(secret not in word for word in argv)


def test_dry_run_submits_nothing(airflow_db, cluster_site, lsf):  # type: ignore[no-untyped-def]
    run = run_dag(UPLOAD_DAG, {"sample": SAMPLE, "products": ["segmentation", "tracings"], "dry_run": True})
    assert str(run.state) == "success"
    assert lsf.argvs() == []  # not even a lookup: nothing reaches LSF
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["tracings.verify"] == "skipped"
    assert states["tracings.announce"] == "skipped"  # nothing uploaded, so no metadata rebuild is started


def test_a_done_job_that_left_files_behind_fails_the_verification(
    airflow_db, cluster_site, lsf, s3_client, fresh_bucket, site_config, capfd, caplog
):  # type: ignore[no-untyped-def]
    # A transfer command that exits 0 having copied nothing: LSF says DONE, S3 says otherwise.
    lsf_section = emulated_lsf(cluster_site / "logs", 0.2) | {"transfer_command": "echo {source} {destination}"}
    sections = {"s3": {"bucket": fresh_bucket}, "cluster": cluster_roots(cluster_site), "lsf": lsf_section}
    site_config(site_toml(sections))
    run = run_dag(UPLOAD_DAG, {"sample": SAMPLE, "products": ["tracings"]})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "failed", states
    assert states["tracings.transfer"] == "success" and states["tracings.verify"] == "failed"
    assert states["tracings.announce"] == "upstream_failed"  # no metadata rebuild from a partial upload
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "the LSF jobs ended DONE, but S3 does not hold every source file" in logged
    assert f"tracings/Finished_Neurons/{SAMPLE}/it's $HOME; rm -rf x/G-001.swc: 15 bytes locally, missing" in logged
    assert s3_client.list_objects_v2(Bucket=fresh_bucket).get("KeyCount") == 0


def test_deferred_jobs_are_followed_by_the_trigger(airflow_db, cluster_site, lsf, s3_client):  # type: ignore[no-untyped-def]
    # The upload DAG's transfers defer (a multi-hour job must not hold a worker slot): dag.test() runs the trigger.
    # Scripted job (a failure would be retried after the DAG's retry_delay of minutes): the point is the path
    # execute -> defer -> LsfJobTrigger run by Airflow -> execute_complete.
    lsf.set_knobs(FAKE_LSF_PLAN="PEND:0.5,RUN:0.5,DONE")
    run = run_dag(UPLOAD_DAG, {"sample": SAMPLE, "products": ["segmentation"]}, retries=0)
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id == "segmentation.transfer"]
    assert str(ti.state) == "success"
    assert ti.xcom_pull(task_ids="segmentation.transfer", map_indexes=0)["stat"] == "DONE"
    assert len(lsf.argvs("bsub")) == 1
    assert len(lsf.argvs("bjobs")) >= 2  # the lookup by name, then the trigger's polls


PROBE_DAG = """
import pendulum
from airflow.sdk import DAG, task

from hortacloud.lsf.operator import LsfJobOperator, LsfTransferOperator
from hortacloud.lsf.settings import LsfSettings

SETTINGS = LsfSettings.site().replaced(poll_interval_seconds=0.2, first_poll_seconds=0.0).model_dump()

for operator_class in (LsfJobOperator, LsfTransferOperator):
    with DAG(f"probe_{operator_class.__name__}", schedule=None, start_date=pendulum.datetime(2024, 1, 1)):

        @task
        def kwargs() -> list[dict]:
            return [{"command": COMMAND, "job_name": "seg0510-1", "source": SOURCE}]

        operator_class.partial(task_id="transfer", settings=SETTINGS).expand_kwargs(kwargs())
"""


def _probe_dags(folder: Path, command: str, source: str, monkeypatch):  # type: ignore[no-untyped-def]
    """Both operators mapped over kwargs that a task returns (data, as the upload DAG's jobs step returns them),
    in a DAG bundle of their own (dag.test() runs only DAGs it finds in a bundle)."""
    import json

    from airflow.dag_processing.dagbag import DagBag

    folder.mkdir()
    (folder / "probe_transfer.py").write_text(f"COMMAND = {command!r}\nSOURCE = {source!r}\n" + PROBE_DAG)
    bundles = [
        {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
        {
            "name": "probe",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(folder)},
        },
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    return DagBag(dag_folder=str(folder)).dags


@pytest.mark.parametrize(
    "payload", ["{{ 7*7 }}", "{{ conn.hortacloud_s3.password }}", "{% if true %}x{% endif %}", "{# c #}y"]
)
def test_transfer_kwargs_are_data_never_templates(airflow_db, lsf, tmp_path, monkeypatch, payload):  # type: ignore[no-untyped-def]
    from airflow.models.renderedtifields import RenderedTaskInstanceFields

    secret = "s3cr3t-" + tmp_path.name
    monkeypatch.setenv("AIRFLOW_CONN_HORTACLOUD_S3", f'{{"conn_type": "aws", "login": "key", "password": "{secret}"}}')
    command = f"echo {payload}"
    dags = _probe_dags(tmp_path / "probe", command, f"/data/{payload}", monkeypatch)
    run = dags["probe_LsfTransferOperator"].test()
    assert str(run.state) == "success"
    (argv,) = lsf.argvs("bsub")
    assert argv[-1] == command  # used exactly as built: not rendered
    assert not any(secret in word for word in argv)
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id == "transfer"]
    assert RenderedTaskInstanceFields.get_templated_fields(ti) in (None, {})

    # The same kwargs through the templated LsfJobOperator are rendered: the guard above is what makes the difference.
    if payload in ("{{ 7*7 }}", "{{ conn.hortacloud_s3.password }}"):
        dags["probe_LsfJobOperator"].test()
        assert lsf.argvs("bsub")[-1][-1] == {"{{ 7*7 }}": "echo 49"}.get(payload, f"echo {secret}")


def test_carveouts_two_roots_go_up_in_order_so_v2_wins_and_verify_expects_it(  # type: ignore[no-untyped-def]
    airflow_db, cluster_site, lsf, s3_client, fresh_bucket, site_config
):
    roots = cluster_roots(cluster_site)
    v1, v2 = (Path(root) / SAMPLE for root in roots["carveouts"])
    _tree(v1, {"shared/block.h5": "from mouselight, longer", "only-v1.txt": "v1"})
    _tree(v2, {"shared/block.h5": "from v2", "only-v2.txt": "v2"})
    lsf_section = emulated_lsf(cluster_site / "logs", 0.2, "--workers", "4") | {"first_poll_seconds": 0}
    site_config(site_toml({"s3": {"bucket": fresh_bucket}, "cluster": roots, "lsf": lsf_section}))
    run = run_dag(UPLOAD_DAG, {"sample": SAMPLE, "products": ["carveouts"]}, retries=0)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states
    (bsub,) = lsf.argvs("bsub")  # one job, the two syncs in order
    assert bsub[-1].index(str(v1)) < bsub[-1].index(str(v2)) and " && " in bsub[-1]
    assert bucket_keys(s3_client, fresh_bucket, f"carveouts/{SAMPLE}/", bodies=True) == {
        f"carveouts/{SAMPLE}/shared/block.h5": "from v2",
        f"carveouts/{SAMPLE}/only-v1.txt": "v1",
        f"carveouts/{SAMPLE}/only-v2.txt": "v2",
    }
    manifest = s3_client.get_object(Bucket=fresh_bucket, Key=f"manifests/{SAMPLE}/carveouts.json")["Body"].read()
    assert f"carveouts/{SAMPLE}/shared/block.h5".encode() in manifest


def test_a_manifest_proves_the_bucket_later_and_catches_a_changed_object(  # type: ignore[no-untyped-def]
    airflow_db, cluster_site, lsf, s3_server, s3_client, fresh_bucket, site_config
):
    import subprocess
    import sys

    lsf_section = emulated_lsf(cluster_site / "logs", 0.2, "--workers", "4") | {"first_poll_seconds": 0}
    site_config(site_toml({"s3": {"bucket": fresh_bucket}, "cluster": cluster_roots(cluster_site), "lsf": lsf_section}))
    assert str(run_dag(UPLOAD_DAG, {"sample": SAMPLE, "products": ["registration"]}, retries=0).state) == "success"
    manifest = f"s3://{fresh_bucket}/manifests/{SAMPLE}/registration.json"

    def check() -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "hortacloud.s3sync", "verify", "--manifest", manifest]
        return subprocess.run(
            argv, env=s3_server.client_env() | {"PATH": "/usr/bin:/bin"}, capture_output=True, text=True
        )

    proved = check()
    assert proved.returncode == 0, proved.stderr
    assert "holds all 2 objects" in proved.stderr
    s3_client.put_object(Bucket=fresh_bucket, Key=f"registration/{SAMPLE}/transform.h5", Body=b"REG")  # same size
    changed = check()
    assert changed.returncode == 1
    assert f"registration/{SAMPLE}/transform.h5: the manifest has 3 bytes" in changed.stderr
