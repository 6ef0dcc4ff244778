"""The neuron metadata DAG through ``dag.test()``: NeuronBrowser is the local GraphQL server, S3 is SeaweedFS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.dag_runs import run_dag, task_states
from tests.fixtures.mouselight_bucket import EXPECTED_WRITES, seed, snapshot

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "neuronbrowser.json"
DAG_ID = "hortacloud_neuron_metadata"


@pytest.fixture
def site(airflow_db, s3_server, nb_server, s3_client, fresh_bucket, site_config, monkeypatch) -> str:  # type: ignore[no-untyped-def]
    """A seeded bucket of this test's own, both connections as AIRFLOW_CONN_* env vars, fast NeuronBrowser retries."""
    seed(s3_client, fresh_bucket)
    site_config(
        f'[s3]\nbucket = "{fresh_bucket}"\n'
        "[neuronbrowser]\nretries = 1\nbackoff_seconds = 0.05\nread_timeout_seconds = 2\n"
    )
    monkeypatch.setenv("AIRFLOW_CONN_HORTACLOUD_S3", s3_server.connection_json())
    monkeypatch.setenv("AIRFLOW_CONN_HORTACLOUD_NEURONBROWSER", nb_server.connection_json(token="dag-test-token"))
    nb_server.set(mode="ok", delay=0, fail_first=0, only=None, reset_counts=True)
    return fresh_bucket


def _report(run) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    ti = next(ti for ti in run.get_task_instances() if ti.task_id == "report")
    report: dict[str, Any] = ti.xcom_pull(task_ids="report")
    return report


def test_dag_shape_schedule_and_params() -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import AssetOrTimeSchedule

    dag = DagBag(dag_folder=str(ROOT / "dags" / f"{DAG_ID}.py")).dags[DAG_ID]
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    schedule = repr(dag.timetable)
    assert "name='hortacloud_tracings'" in schedule
    assert "expression='0 2 * * *', timezone='America/New_York'" in schedule
    assert dag.max_active_runs == 1 and dag.catchup is False
    # With a start_date, unpausing would run last night's tick at once (tests/dags/test_real_airflow.py checks none).
    assert dag.start_date is None
    assert dag.params.get_param("locations").value == ["Finished_Neurons", "tracing_complete"]
    assert dag.params.get_param("dry_run").value is False
    assert dag.params.get_param("allow_removals").value is False
    assert dag.params.get_param("remove_legacy").value is False
    assert set(dag.task_ids) == {"fetch_mapping", "scan", "build_and_write", "report"}
    assert dag.get_task("build_and_write").upstream_task_ids == {"fetch_mapping", "scan"}


@pytest.mark.parametrize("minutes_after", [1, 20, 140, 600])
def test_unpausing_after_a_nightly_tick_waits_for_the_next_one(monkeypatch, minutes_after: int) -> None:
    """The scheduler's own timetable (serialized and decoded as it holds it), unpaused some time after 02:00 EST."""
    import pendulum
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables import trigger
    from airflow.timetables.base import TimeRestriction

    dag = DagBag(dag_folder=str(ROOT / "dags" / f"{DAG_ID}.py")).dags[DAG_ID]
    timetable = decode_timetable(encode_timetable(dag.timetable))
    tick = pendulum.datetime(2026, 12, 2, 2, 0, tz="America/New_York")
    monkeypatch.setattr(trigger, "utcnow", lambda: tick.add(minutes=minutes_after).in_tz("UTC"))
    first = timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=None, latest=None, catchup=False)
    )
    assert first is not None and first.run_after == tick.add(days=1)


def test_nightly_run_writes_then_nothing_then_refuses_worse_data(site, s3_client, nb_server, capfd, caplog) -> None:
    run = run_dag(DAG_ID, {}, retries=0)
    assert str(run.state) == "success", task_states(run)
    report = _report(run)
    assert sorted(report["written"]) == EXPECTED_WRITES
    assert report["dates_in_s3"] == {"Finished_Neurons": 2, "tracing_complete": 6}
    assert report["dates_without_mapping"] == {
        "Finished_Neurons": [],
        "tracing_complete": ["2016-05-05", "2020-02-03"],
    }
    assert report["soma_fallbacks"]["AA0231"] == "neuron brain area"
    assert report["not_loadable"] == ["2017-01-15", "2018-08-01"]
    assert report["refused"] == [] and report["unchanged"] == 0

    before = snapshot(s3_client, site)
    again = run_dag(DAG_ID, retries=0, conf={"locations": ["tracing_complete"]})
    assert str(again.state) == "success", task_states(again)
    second = _report(again)
    assert second["written"] == [] and second["unchanged"] == 6
    assert second["dates_in_s3"] == {"tracing_complete": 6}
    assert snapshot(s3_client, site) == before

    # NeuronBrowser now knows only one sample: the guard refuses, the run fails, the report still says why.
    nb_server.set(only=["inj-2017"])
    refused = run_dag(DAG_ID, {}, retries=0)
    states = task_states(refused)
    assert str(refused.state) == "failed", states
    assert states["build_and_write"] == "failed" and states["report"] == "failed"
    out, err = capfd.readouterr()
    assert "fewer than 90% of the 35 the bucket already describes" in out + err
    assert "REFUSED:" in caplog.text + out + err  # the report task logged the report
    assert snapshot(s3_client, site) == before


def test_a_neuron_gone_from_neuronbrowser_keeps_its_files_until_removals_are_allowed(
    site, s3_client, nb_server, capfd, caplog
) -> None:
    assert str(run_dag(DAG_ID, {}, retries=0).state) == "success"
    before = snapshot(s3_client, site)
    # One of the two injections of 2019-03-10 disappears: AA0701 (G-002) is no longer mapped.
    everything_else = [i["id"] for i in json.loads(FIXTURE.read_text())["injections"] if i["id"] != "inj-2019-b"]
    nb_server.set(only=everything_else)
    kept = run_dag(DAG_ID, {}, retries=0)
    states = task_states(kept)
    assert str(kept.state) == "failed", states
    assert states["build_and_write"] == "success" and states["report"] == "failed"
    removals = kept.get_task_instance("build_and_write").xcom_pull(task_ids="build_and_write", key="report")["xcom"][
        "removals"
    ]
    assert removals == {
        "images/2019-03-10/neurons.json": ["AA0701"],
        "neurons/tracing_complete/2019-03-10/metadata.json": ["AA0701"],
    }
    assert snapshot(s3_client, site) == before  # nothing else changed, and the two files were kept
    out, err = capfd.readouterr()
    assert "2 file(s) kept as they are because NeuronBrowser no longer maps neurons" in out + err + caplog.text

    allowed = run_dag(DAG_ID, retries=0, conf={"allow_removals": True})
    assert str(allowed.state) == "success", task_states(allowed)
    assert sorted(_report(allowed)["written"]) == sorted(removals)
    document = json.loads(s3_client.get_object(Bucket=site, Key="images/2019-03-10/neurons.json")["Body"].read())
    assert sorted(document["neurons"]) == ["AA0700", "AA0702"]


def test_what_the_old_scripts_left_is_listed_and_removed_only_on_request(site, s3_client) -> None:
    empty = "neurons/tracing_complete/2016-05-05/metadata.json"  # 2016-05-05 has no neuron folders
    unready = "images/2018-08-01/neurons.json"  # images/2018-08-01/ does not exist
    for key in (empty, unready):
        s3_client.put_object(Bucket=site, Key=key, Body=b'{"neurons": {}}')
    listed = run_dag(DAG_ID, {}, retries=0)
    assert str(listed.state) == "success", task_states(listed)
    assert sorted(_report(listed)["legacy"]) == [unready, empty] and _report(listed)["removed"] == []
    assert {empty, unready} <= set(snapshot(s3_client, site))

    before = snapshot(s3_client, site)
    removed = run_dag(DAG_ID, retries=0, conf={"remove_legacy": True})
    assert str(removed.state) == "success", task_states(removed)
    assert sorted(_report(removed)["removed"]) == [unready, empty]
    assert snapshot(s3_client, site) == {k: v for k, v in before.items() if k not in (empty, unready)}


@pytest.mark.parametrize(
    ("fault", "message"),
    # Every failure the hook knows (tests/component has their details), each through a whole run: nothing written.
    [
        ({"mode": "http500"}, "HTTP 500"),
        ({"mode": "slow", "delay": 3}, "no answer within the read timeout of 2"),
        ({"mode": "errors"}, "the service reported errors"),
        ({"mode": "null_data"}, "the answer has no data"),
        ({"mode": "garbage"}, "the answer is not JSON"),
        ({"mode": "empty"}, "no injections"),
    ],
    ids=["http500", "timeout", "errors", "null_data", "garbage", "empty"],
)
def test_neuronbrowser_failure_fails_the_run_and_writes_nothing(
    site, s3_client, nb_server, fault, message, capfd
) -> None:
    nb_server.set(**fault)
    before = snapshot(s3_client, site)
    run = run_dag(DAG_ID, {}, retries=0)
    states = task_states(run)
    assert str(run.state) == "failed", states
    assert states["fetch_mapping"] == "failed"
    assert states["build_and_write"] == "upstream_failed"
    assert states["report"] == "failed"
    assert snapshot(s3_client, site) == before
    assert not any(key.startswith("neurons/") for key in before)
    out, err = capfd.readouterr()
    assert message in out + err  # the task log says why
    assert "No neuron metadata report: an earlier task failed" in out + err
    assert "dag-test-token" not in out + err


def test_bad_locations_param_is_refused(site) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        run_dag(DAG_ID, retries=0, conf={"locations": ["Finished_Neurons", "carveouts"]})
