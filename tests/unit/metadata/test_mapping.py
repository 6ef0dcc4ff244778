"""Sample dates read in New York, neuron tags, and NeuronBrowser's injections as a mapping."""

from __future__ import annotations

import json
import time
from zoneinfo import ZoneInfo

import pytest

from hortacloud.metadata.mapping import (
    MetadataError,
    NeuronMapping,
    build_mapping,
    canonical_tag,
    is_date,
    near_misses,
    sample_date,
)
from tests.fixtures.neuronbrowser_answer import NY, README_2014, injections


@pytest.fixture
def worker_zone(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Set the process's local zone (as a worker's would be) and restore it afterwards."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


# -- dates ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("worker", ["UTC", "Asia/Tokyo", "America/Los_Angeles"])
@pytest.mark.parametrize(
    ("epoch_ms", "expected"),
    [
        (1403582400000, "2014-06-24"),  # 00:00 EDT
        (1403659800000, "2014-06-24"),  # 21:30 EDT; the UTC date is 2014-06-25
        (1484526600000, "2017-01-15"),  # 19:30 EST; the UTC date is 2017-01-16
    ],
)
def test_sample_date_is_read_in_new_york_whatever_the_worker_zone(worker_zone, worker, epoch_ms, expected) -> None:
    worker_zone(worker)
    assert sample_date(epoch_ms, NY) == expected


def test_sample_date_zone_is_configurable() -> None:
    assert sample_date(1403659800000, ZoneInfo("UTC")) == "2014-06-25"


@pytest.mark.parametrize("value", ["2014-06-24", None, True, [1]])
def test_sample_date_that_is_not_a_number_is_named(value) -> None:
    with pytest.raises(MetadataError, match="is not epoch milliseconds"):
        sample_date(value, NY)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("2014-06-24", True), ("2014-06-24-old", False), ("2023-02-30", False), ("20140624", False), ("x", False)],
)
def test_is_date_is_strict(name: str, ok: bool) -> None:
    assert is_date(name) is ok


@pytest.mark.parametrize(("tag", "canonical"), [("G-001", "G-001"), (" g-1 ", "G-001"), ("G-12", "G-012"), ("X", "X")])
def test_canonical_tag(tag: str, canonical: str) -> None:
    assert canonical_tag(tag) == canonical


# -- the mapping ------------------------------------------------------------------------------------------------


def test_readme_example_maps_2014_06_24() -> None:
    mapping = build_mapping(injections(), NY)
    got = {n.neuron_id: n.tag for n in mapping.dates["2014-06-24"].values()}
    assert got == README_2014
    assert mapping.lookup("2014-06-24", "G-008") is None
    assert mapping.lookup("2014-06-24", "G-013").neuron_id == "AA0240"  # not monotone
    assert mapping.dates["2014-06-24"]["G-002"].brain_area == "Secondary motor area"
    assert mapping.dates["2014-06-24"]["G-001"].injection_area == "Primary motor area"


def test_time_zone_cases_land_on_new_york_dates() -> None:
    mapping = build_mapping(injections(), NY)
    assert sorted(mapping.dates) == ["2014-06-24", "2017-01-15", "2018-08-01", "2019-03-10", "2020-02-02"]
    assert "2014-06-25" not in mapping.dates and "2017-01-16" not in mapping.dates


def test_null_and_empty_inputs_are_skipped_with_counts() -> None:
    mapping = build_mapping(injections(), NY)
    assert mapping.injections == 10
    assert mapping.skipped == {
        "injections without brain area (neurons kept)": 1,
        "injections without neurons": 2,
        "injections without sample": 1,
        "injections without sampleDate": 1,
        "neurons without idString": 1,
        "neurons without tag": 1,
        "tag collisions": 1,
    }
    # The injection without a brain area keeps its neuron.
    assert mapping.dates["2018-08-01"]["G-001"].neuron_id == "AA0600"
    assert mapping.dates["2018-08-01"]["G-001"].injection_area is None


def test_injections_on_one_date_merge_and_collisions_keep_the_same_winner_in_any_order() -> None:
    forward = build_mapping(injections(), NY)
    backward = build_mapping(list(reversed(injections())), NY)
    assert forward.to_json() == backward.to_json()
    day = forward.dates["2019-03-10"]
    assert {t: n.neuron_id for t, n in day.items()} == {"G-001": "AA0700", "G-002": "AA0701", "G-003": "AA0702"}
    assert day["G-002"].injection_area == "Anterior cingulate area"
    assert forward.collisions == ["2019-03-10 tag G-001: AA0799 and AA0700 both claim it; kept AA0700"]


def test_one_id_on_two_tags_is_a_collision() -> None:
    rows = [{"sample": {"sampleDate": 1403582400000}, "brainArea": None,
             "neurons": [{"idString": "AA1", "tag": "G-002"}, {"idString": "AA1", "tag": "G-001"}]}]  # fmt: skip
    mapping = build_mapping(rows, NY)
    assert list(mapping.dates["2014-06-24"]) == ["G-001"]
    assert mapping.skipped["id collisions"] == 1


def test_padded_or_lower_case_tags_match_folders() -> None:
    mapping = build_mapping(injections(), NY)
    assert mapping.lookup("2017-01-15", "G-002").neuron_id == "AA0501"  # NeuronBrowser says " g-2 "


def test_mapping_round_trips_through_json() -> None:
    mapping = build_mapping(injections(), NY)
    assert NeuronMapping.from_json(json.loads(json.dumps(mapping.to_json()))) == mapping


def test_near_misses_name_the_neighbouring_date() -> None:
    found = near_misses(["2020-02-03", "2014-06-24", "2016-05-05"], ["2020-02-02", "2014-06-24"])
    assert found == ["S3 date 2020-02-03 has no mapping but NeuronBrowser has 2020-02-02 (one day off)"]
    # A neighbour that is itself in S3 is its own date, not a miss.
    assert near_misses(["2020-02-03", "2020-02-02"], ["2020-02-02"]) == []
