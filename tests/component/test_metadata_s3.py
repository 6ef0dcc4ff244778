"""Scan and writes against SeaweedFS: exact files, idempotent second run, refusal of worse data, neurons.json gating."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hortacloud.metadata.bucket import BucketScan, apply, scan_bucket
from hortacloud.metadata.documents import GuardRefusal
from hortacloud.metadata.mapping import LOCATIONS, build_mapping
from tests.fixtures.mouselight_bucket import (
    EXPECTED_METADATA,
    EXPECTED_NEURONS_JSON,
    EXPECTED_WRITES,
    SWC,
    seed,
    snapshot,
)

NY = ZoneInfo("America/New_York")
INJECTIONS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "neuronbrowser.json").read_text())[
    "injections"
]


class RecordingClient:
    """The real boto3 client, recording every get_object key (SWCs must never be downloaded)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.got: list[str] = []

    def get_object(self, **kwargs: Any) -> Any:
        self.got.append(kwargs["Key"])
        return self._client.get_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture
def bucket(s3_client, fresh_bucket: str) -> str:
    seed(s3_client, fresh_bucket)
    return fresh_bucket


def run(client: Any, bucket: str, injections: list[dict[str, Any]] = INJECTIONS, **kwargs: Any):  # type: ignore[no-untyped-def]
    scan = scan_bucket(client, bucket, LOCATIONS)
    return apply(client, bucket, build_mapping(injections, NY), scan, LOCATIONS, **kwargs)


def test_scan_lists_folders_soma_and_swcs_without_downloading_swcs(s3_client, bucket) -> None:
    client = RecordingClient(s3_client)
    scan = scan_bucket(client, bucket, LOCATIONS)
    complete = scan.locations["tracing_complete"]
    assert sorted(complete) == ["2014-06-24", "2016-05-05", "2017-01-15", "2018-08-01", "2019-03-10", "2020-02-03"]
    folders = {f.name: f for f in complete["2014-06-24"]}
    assert sorted(folders) == [f"G-{i:03d}" for i in range(1, 16)]  # R-001 and Thumbs.db left out
    assert folders["G-001"].soma == "Primary motor area, layer 5"
    assert folders["G-001"].swcs == {"consensus", "dendrite"}
    assert folders["G-002"].soma is None and folders["G-002"].swcs == {"consensus"}
    assert folders["G-003"].soma == "Área postrema"
    assert folders["G-004"].soma == ""
    assert complete["2016-05-05"] == []
    finished = scan.locations["Finished_Neurons"]
    assert sorted(f.name for f in finished["2014-06-24"]) == [f"G-{i:03d}" for i in range(1, 16)]  # no consensus/
    assert scan.images_ready == {
        "2014-06-24": True,
        "2016-05-05": False,
        "2017-01-15": False,
        "2018-08-01": False,
        "2019-03-10": True,
        "2020-02-03": False,
    }
    assert client.got and all(key.endswith("/soma.txt") for key in client.got)
    assert BucketScan.from_json(json.loads(json.dumps(scan.to_json()))) == scan


def test_first_run_writes_exact_files_and_second_run_writes_nothing(s3_client, bucket) -> None:
    report = run(s3_client, bucket)
    assert sorted(report.written) == EXPECTED_WRITES
    assert report.unchanged == [] and report.refused == []
    assert report.dates_without_mapping == {"Finished_Neurons": [], "tracing_complete": ["2016-05-05", "2020-02-03"]}
    assert report.not_loadable == ["2017-01-15", "2018-08-01"]
    assert report.near_misses == [
        "tracing_complete: S3 date 2020-02-03 has no mapping but NeuronBrowser has 2020-02-02 (one day off)"
    ]
    assert {f.neuron_id: f.source for f in report.soma_fallbacks} == {
        "AA0231": "neuron brain area",
        "AA0233": "injection brain area",
        "AA0501": "injection brain area",
        "AA0600": "none",
        "AA0700": "injection brain area",
        "AA0701": "injection brain area",
        "AA0702": "injection brain area",
    }
    for key, count in EXPECTED_METADATA.items():
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "application/json"
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert len(json.loads(body)["neurons"]) == count
        assert body.endswith(b"}\n")
    complete = s3_client.get_object(Bucket=bucket, Key="neurons/tracing_complete/2014-06-24/metadata.json")
    body = complete["Body"].read()
    assert s3_client.get_object(Bucket=bucket, Key="images/2014-06-24/neurons.json")["Body"].read() == body
    doc = json.loads(body)
    assert doc["title"] == "2014-06-24 MouseLight published neurons"
    assert doc["neurons"]["AA0230"] == {
        "originalName": "G-001",
        "somaLocation": "Primary motor area, layer 5",
        "injectionLocation": "Primary motor area",
        "consensus": "../../tracings/tracing_complete/2014-06-24/G-001/consensus.swc",
        "dendrite": "../../tracings/tracing_complete/2014-06-24/G-001/dendrite.swc",
    }
    assert doc["neurons"]["AA0232"]["somaLocation"] == "Área postrema"
    assert "G-008" not in {n["originalName"] for n in doc["neurons"].values()}
    finished = json.loads(
        s3_client.get_object(Bucket=bucket, Key="neurons/Finished_Neurons/2014-06-24/metadata.json")["Body"].read()
    )
    assert finished["neurons"]["AA0240"] == {"originalName": "G-013"}
    assert "images/2017-01-15/neurons.json" not in snapshot(s3_client, bucket)

    before = snapshot(s3_client, bucket)
    again = run(s3_client, bucket)
    assert again.written == []
    assert sorted(again.unchanged) == EXPECTED_WRITES
    assert snapshot(s3_client, bucket) == before


def test_a_changed_file_is_rewritten_and_only_it(s3_client, bucket) -> None:
    run(s3_client, bucket)
    stale = "neurons/Finished_Neurons/2017-01-15/metadata.json"
    s3_client.put_object(Bucket=bucket, Key=stale, Body=b'{"AA0500": {"originalName": "G-001"}}')
    report = run(s3_client, bucket)
    assert report.written == [stale]
    assert json.loads(s3_client.get_object(Bucket=bucket, Key=stale)["Body"].read())["title"].startswith("2017-01-15")


def test_neurons_json_waits_for_the_images(s3_client, bucket) -> None:
    run(s3_client, bucket)
    s3_client.put_object(Bucket=bucket, Key="images/2017-01-15/ktx/block_8_xy_.ktx", Body=b"ktx")
    report = run(s3_client, bucket)
    assert report.written == []  # default.0.tif is still missing: JACS could not import the SWCs
    assert report.not_loadable == ["2017-01-15", "2018-08-01"]
    s3_client.put_object(Bucket=bucket, Key="images/2017-01-15/default.0.tif", Body=b"II*\x00")
    report = run(s3_client, bucket)
    assert report.written == ["images/2017-01-15/neurons.json"]
    assert report.not_loadable == ["2018-08-01"]


def test_worse_data_is_refused_with_the_numbers_and_nothing_written(s3_client, bucket) -> None:
    run(s3_client, bucket)
    # Add a neuron folder so the worse run would have something to write if the guard let it through.
    s3_client.put_object(Bucket=bucket, Key="tracings/tracing_complete/2017-01-15/G-003/consensus.swc", Body=SWC)
    before = snapshot(s3_client, bucket)
    only_2017 = [i for i in INJECTIONS if i["id"] == "inj-2017"]
    only_2017[0] = only_2017[0] | {"neurons": [*only_2017[0]["neurons"], {"idString": "AA0502", "tag": "G-003"}]}
    with pytest.raises(GuardRefusal) as err:
        run(s3_client, bucket, only_2017)
    assert "describes 4 neurons, fewer than 90% of the 35 the bucket already describes" in str(err.value)
    report = err.value.report  # type: ignore[attr-defined]
    assert report.refused == ["neurons/tracing_complete/2017-01-15/metadata.json"]  # the one file that would change
    assert report.written == []
    assert snapshot(s3_client, bucket) == before


def _without(injections: list[dict[str, Any]], neuron_id: str) -> list[dict[str, Any]]:
    return [i | {"neurons": [n for n in i["neurons"] or [] if n.get("idString") != neuron_id]} for i in injections]


def test_a_file_that_would_lose_neurons_is_kept_and_the_rest_written(s3_client, bucket) -> None:
    run(s3_client, bucket)
    key = "neurons/tracing_complete/2014-06-24/metadata.json"
    kept = {k: v for k, v in snapshot(s3_client, bucket).items() if k.endswith("2014-06-24/neurons.json") or k == key}
    # NeuronBrowser loses AA0230 (G-001 of 2014-06-24), and a new tracing appears elsewhere.
    s3_client.put_object(Bucket=bucket, Key="tracings/tracing_complete/2017-01-15/G-003/consensus.swc", Body=SWC)
    injections = _without(INJECTIONS, "AA0230")
    for injection in injections:
        if injection["id"] == "inj-2017":
            injection["neurons"] = [*injection["neurons"], {"id": "n-AA0502", "idString": "AA0502", "tag": "G-003"}]
    report = run(s3_client, bucket, injections)
    assert set(report.removals) == {
        key,
        "images/2014-06-24/neurons.json",
        "neurons/Finished_Neurons/2014-06-24/metadata.json",
    }
    assert all(ids == ["AA0230"] for ids in report.removals.values())
    assert report.written == ["neurons/tracing_complete/2017-01-15/metadata.json"]
    after = snapshot(s3_client, bucket)
    assert {k: after[k] for k in kept} == kept  # the kept files are byte for byte what they were
    assert "AA0502" in json.loads(after["neurons/tracing_complete/2017-01-15/metadata.json"][2])["neurons"]
    assert "kept, would drop AA0230: " + key in "\n".join(report.lines())

    allowed = run(s3_client, bucket, injections, allow_removals=True)
    assert set(allowed.written) == set(report.removals) and not allowed.removals
    assert "AA0230" not in json.loads(snapshot(s3_client, bucket)[key][2])["neurons"]


def test_no_injections_is_refused_even_on_an_empty_bucket(s3_client, fresh_bucket) -> None:
    with pytest.raises(GuardRefusal, match="no injections"):
        run(s3_client, fresh_bucket, [])
    assert snapshot(s3_client, fresh_bucket) == {}


def test_dry_run_reports_but_writes_nothing(s3_client, bucket) -> None:
    before = snapshot(s3_client, bucket)
    report = run(s3_client, bucket, dry_run=True)
    assert sorted(report.written) == EXPECTED_WRITES
    assert snapshot(s3_client, bucket) == before
    assert "would write: images/2014-06-24/neurons.json" in "\n".join(report.lines())


def test_neuron_json_on_disk_is_what_hortacloud_needs(s3_client, bucket) -> None:
    # Every tracing_complete entry has originalName and somaLocation (a missing one rolls back the import).
    run(s3_client, bucket)
    for key in EXPECTED_NEURONS_JSON:
        doc = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert doc["neurons"]
        for entry in doc["neurons"].values():
            assert isinstance(entry["originalName"], str) and isinstance(entry["somaLocation"], str)
            assert "consensus" in entry or "dendrite" in entry


def test_an_empty_swc_is_not_referenced(s3_client, bucket) -> None:
    # The old script skipped 0-byte files: HortaCloud's SWC import fails on an empty one.
    base = "tracings/tracing_complete/2014-06-24/G-005"
    s3_client.put_object(Bucket=bucket, Key=f"{base}/dendrite.swc", Body=b"")
    report = run(s3_client, bucket)
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key="images/2014-06-24/neurons.json")["Body"].read())
    entry = doc["neurons"]["AA0234"]
    assert entry["originalName"] == "G-005" and "dendrite" not in entry
    assert entry["consensus"] == "../../tracings/tracing_complete/2014-06-24/G-005/consensus.swc"
    assert report.empty_swcs == [f"{base}/dendrite.swc"]
    assert f"empty SWC, not referenced: {base}/dendrite.swc" in "\n".join(report.lines())
    s3_client.put_object(Bucket=bucket, Key=f"{base}/consensus.swc", Body=b"")
    s3_client.put_object(Bucket=bucket, Key=f"{base}/dendrite.swc", Body=SWC)
    run(s3_client, bucket)
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key="images/2014-06-24/neurons.json")["Body"].read())
    assert "consensus" not in doc["neurons"]["AA0234"] and "dendrite" in doc["neurons"]["AA0234"]


def test_a_folder_name_hortacloud_cannot_load_is_reported_not_dropped_silently(s3_client, bucket, caplog) -> None:
    # JACS turns "../../tracings/.../<folder>/consensus.swc" into a java.net.URI: a space would fail the import.
    s3_client.put_object(Bucket=bucket, Key="tracings/tracing_complete/2014-06-24/G-011 (2)/consensus.swc", Body=SWC)
    s3_client.put_object(Bucket=bucket, Key="tracings/Finished_Neurons/2014-06-24/G-012%/somaLoc.png", Body=b"")
    with caplog.at_level("WARNING", logger="hortacloud.metadata"):
        report = run(s3_client, bucket)
    assert report.not_uri_safe == [
        "tracings/Finished_Neurons/2014-06-24/G-012%",
        "tracings/tracing_complete/2014-06-24/G-011 (2)",
    ]
    assert "G-011 (2)" in caplog.text and "URI" in caplog.text
    assert "not URI-safe, left out: tracings/tracing_complete/2014-06-24/G-011 (2)" in "\n".join(report.lines())
    assert report.to_xcom()["not_uri_safe"] == report.not_uri_safe
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key="images/2014-06-24/neurons.json")["Body"].read())
    assert {e["originalName"] for e in doc["neurons"].values()} == {f"G-{i:03d}" for i in range(1, 16)} - {"G-008"}
    for entry in doc["neurons"].values():
        assert entry["originalName"] and isinstance(entry["somaLocation"], str)


def _legacy_objects(client: Any, bucket: str) -> dict[str, bytes]:
    """What the old scripts left: empty documents for dates without neuron folders, neurons.json of unready images."""
    empty = b'{"title": "2016-05-05 MouseLight published neurons", "neurons": {}}'
    objects = {
        "neurons/tracing_complete/2016-05-05/metadata.json": empty,  # tracings date without G- folders
        "neurons/Finished_Neurons/2013-01-01/metadata.json": b"",  # no tracings date at all, 0 bytes
        "images/2017-01-15/neurons.json": b'{"title": "x", "neurons": {"AA0500": {"originalName": "G-001"}}}',
        "images/2030-01-01/neurons.json": b'{"neurons": {}}',  # no images at all
    }
    keep = {
        # not legacy: a document that describes a neuron, a file that is not metadata.json, a date with folders
        "neurons/tracing_complete/2016-06-06/metadata.json": b'{"neurons": {"AA9": {"originalName": "G-001"}}}',
        "neurons/tracing_complete/2016-05-05/notes.json": b"{}",
        "neurons/tracing_complete/2020-02-03/metadata.json": b'{"neurons": {}}',
    }
    for key, body in (objects | keep).items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return objects


def test_objects_the_old_scripts_left_are_reported_and_removed_only_when_asked(s3_client, bucket) -> None:
    legacy = _legacy_objects(s3_client, bucket)
    report = run(s3_client, bucket)
    assert sorted(report.legacy) == sorted(legacy)
    assert report.removed == []
    assert set(legacy) <= set(snapshot(s3_client, bucket))  # reported, never deleted by default
    assert "left by the old scripts: images/2017-01-15/neurons.json (images/2017-01-15/ is not loadable" in "\n".join(
        report.lines()
    )

    before = snapshot(s3_client, bucket)
    dry = run(s3_client, bucket, dry_run=True, remove_legacy=True)
    assert sorted(dry.removed) == sorted(legacy) and snapshot(s3_client, bucket) == before

    removed = run(s3_client, bucket, remove_legacy=True)
    assert sorted(removed.removed) == sorted(legacy)
    after = snapshot(s3_client, bucket)
    assert {k: v for k, v in before.items() if k not in legacy} == after  # exactly those, nothing else
    assert not run(s3_client, bucket, remove_legacy=True).legacy


def test_a_refused_run_removes_nothing(s3_client, bucket) -> None:
    legacy = _legacy_objects(s3_client, bucket)
    run(s3_client, bucket)
    with pytest.raises(GuardRefusal):
        run(s3_client, bucket, [i for i in INJECTIONS if i["id"] == "inj-2017"], remove_legacy=True)
    assert set(legacy) <= set(snapshot(s3_client, bucket))
