"""The pure side of neuron metadata: dates, the mapping, soma.txt, the documents, the guard and the report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hortacloud.metadata import (
    COMPLETE,
    FINISHED,
    GuardRefusal,
    MetadataError,
    MetadataReport,
    NeuronFolder,
    SomaFallback,
    build_document,
    build_mapping,
    canonical_tag,
    check_guard,
    decode_soma,
    described_neurons,
    is_date,
    near_misses,
    render,
    sample_date,
)

NY = ZoneInfo("America/New_York")
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "neuronbrowser.json"
README_2014 = {
    "AA0230": "G-001", "AA0231": "G-002", "AA0232": "G-003", "AA0233": "G-004", "AA0234": "G-005",
    "AA0235": "G-006", "AA0236": "G-007", "AA0237": "G-009", "AA0238": "G-010", "AA0239": "G-011",
    "AA0243": "G-012", "AA0240": "G-013", "AA0241": "G-014", "AA0242": "G-015",
}  # fmt: skip


def injections() -> list[dict]:
    return json.loads(FIXTURE.read_text())["injections"]


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
    from hortacloud.metadata import NeuronMapping

    mapping = build_mapping(injections(), NY)
    assert NeuronMapping.from_json(json.loads(json.dumps(mapping.to_json()))) == mapping


def test_near_misses_name_the_neighbouring_date() -> None:
    found = near_misses(["2020-02-03", "2014-06-24", "2016-05-05"], ["2020-02-02", "2014-06-24"])
    assert found == ["S3 date 2020-02-03 has no mapping but NeuronBrowser has 2020-02-02 (one day off)"]
    # A neighbour that is itself in S3 is its own date, not a miss.
    assert near_misses(["2020-02-03", "2020-02-02"], ["2020-02-02"]) == []


# -- soma.txt ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"Primary motor area\n", "Primary motor area"),
        (b"\xef\xbb\xbfPrimary motor area, layer 5\r\n", "Primary motor area, layer 5"),
        (b"Caudoputamen\r\n\r\n", "Caudoputamen"),
        ("Área postrema\r\n".encode("cp1252"), "Área postrema"),
        ("Área postrema".encode(), "Área postrema"),
        ("Thalamus\r\n".encode("utf-16"), "Thalamus"),
        (b"Line one\r\nLine two\r\n", "Line one Line two"),
        (b"  \r\n", ""),
        (b"", ""),
    ],
)
def test_decode_soma(raw: bytes, text: str) -> None:
    assert decode_soma(raw) == text


# -- documents --------------------------------------------------------------------------------------------------


def readme_folders() -> list[NeuronFolder]:
    names = [f"G-{i:03d}" for i in range(1, 16)] + ["R-001", "G-016"]
    return [NeuronFolder(name) for name in names]


def test_finished_neurons_document_is_the_readme_example_byte_for_byte() -> None:
    mapping = build_mapping(injections(), NY)
    document = build_document(FINISHED, "2014-06-24", readme_folders(), mapping)
    assert document is not None
    expected = {
        "title": "2014-06-24 MouseLight published neurons",
        "neurons": {nid: {"originalName": tag} for nid, tag in README_2014.items()},
    }
    assert document.body() == (json.dumps(expected, sort_keys=True, indent=2) + "\n").encode()
    assert document.body().startswith(b'{\n  "neurons": {\n    "AA0230": {\n      "originalName": "G-001"\n')
    assert document.unmapped_folders == ["G-008", "G-016"]
    assert document.fallbacks == []


def test_tracing_complete_entries_and_soma_fallbacks() -> None:
    mapping = build_mapping(injections(), NY)
    folders = [
        NeuronFolder("G-001", "Primary motor area, layer 5", frozenset({"consensus", "dendrite"})),
        NeuronFolder("G-002", None, frozenset({"consensus"})),  # neuron brain area
        NeuronFolder("G-003", "", frozenset()),  # empty soma.txt: injection brain area
    ]
    document = build_document(COMPLETE, "2014-06-24", folders, mapping)
    assert document is not None
    assert document.document["neurons"] == {
        "AA0230": {
            "originalName": "G-001",
            "somaLocation": "Primary motor area, layer 5",
            "injectionLocation": "Primary motor area",
            "consensus": "../../tracings/tracing_complete/2014-06-24/G-001/consensus.swc",
            "dendrite": "../../tracings/tracing_complete/2014-06-24/G-001/dendrite.swc",
        },
        "AA0231": {
            "originalName": "G-002",
            "somaLocation": "Secondary motor area",
            "injectionLocation": "Primary motor area",
            "consensus": "../../tracings/tracing_complete/2014-06-24/G-002/consensus.swc",
        },
        "AA0232": {
            "originalName": "G-003",
            "somaLocation": "Primary motor area",
            "injectionLocation": "Primary motor area",
        },
    }
    assert document.fallbacks == [
        SomaFallback(COMPLETE, "2014-06-24", "AA0231", "G-002", "neuron brain area"),
        SomaFallback(COMPLETE, "2014-06-24", "AA0232", "G-003", "injection brain area"),
    ]


def test_soma_location_is_present_even_with_nothing_known() -> None:
    mapping = build_mapping(injections(), NY)
    document = build_document(COMPLETE, "2018-08-01", [NeuronFolder("G-001")], mapping)
    assert document is not None
    assert document.document["neurons"]["AA0600"] == {
        "originalName": "G-001",
        "somaLocation": "",
        "injectionLocation": "",
    }
    assert [f.source for f in document.fallbacks] == ["none"]


def test_folder_matches_padded_tag_and_keeps_the_folder_name() -> None:
    mapping = build_mapping(injections(), NY)
    document = build_document(FINISHED, "2017-01-15", [NeuronFolder("G-002")], mapping)
    assert document is not None and document.document["neurons"] == {"AA0501": {"originalName": "G-002"}}


def test_no_mapped_neuron_gives_no_document() -> None:
    mapping = build_mapping(injections(), NY)
    assert build_document(COMPLETE, "2014-06-24", [NeuronFolder("G-008"), NeuronFolder("R-001")], mapping) is None
    assert build_document(COMPLETE, "2016-05-05", [NeuronFolder("G-001")], mapping) is None


def test_prefix_filter_is_configurable() -> None:
    rows = [{"sample": {"sampleDate": 1403582400000}, "brainArea": None,
             "neurons": [{"idString": "AA1", "tag": "R-001"}, {"idString": "AA2", "tag": "G-001"}]}]  # fmt: skip
    mapping = build_mapping(rows, NY)
    folders = [NeuronFolder("R-001"), NeuronFolder("G-001")]
    assert list(build_document(FINISHED, "2014-06-24", folders, mapping).document["neurons"]) == ["AA2"]
    everything = build_document(FINISHED, "2014-06-24", folders, mapping, prefix="")
    assert sorted(everything.document["neurons"]) == ["AA1", "AA2"]


def test_unknown_location_is_named() -> None:
    with pytest.raises(MetadataError, match="'tracings' is not one of"):
        build_document("tracings", "2014-06-24", [], build_mapping([], NY))


def test_bytes_do_not_depend_on_listing_order() -> None:
    mapping = build_mapping(injections(), NY)
    one = build_document(COMPLETE, "2014-06-24", readme_folders(), mapping)
    two = build_document(COMPLETE, "2014-06-24", list(reversed(readme_folders())), mapping)
    assert one is not None and two is not None and one.body() == two.body()


def test_render_is_ascii_sorted_and_ends_with_one_newline() -> None:
    body = render({"title": "t", "neurons": {"B": {"somaLocation": "Área"}, "A": {}}})
    assert body == (
        b'{\n  "neurons": {\n    "A": {},\n    "B": {\n      "somaLocation": "\\u00c1rea"\n    }\n  },\n'
        b'  "title": "t"\n}\n'
    )


def test_described_neurons() -> None:
    assert described_neurons(render({"title": "t", "neurons": {"A": {}, "B": {}}})) == 2
    assert described_neurons(None) == 0
    assert described_neurons(b"not json") == 0
    assert described_neurons(b"[1, 2]") == 0


# -- guard and report -------------------------------------------------------------------------------------------


def test_guard_refuses_without_injections() -> None:
    with pytest.raises(GuardRefusal, match="no injections"):
        check_guard(0, 0, 0, 0.9)


def test_guard_refuses_too_few_neurons_with_the_numbers() -> None:
    with pytest.raises(GuardRefusal) as err:
        check_guard(10, 89, 100, 0.9)
    assert "89 neurons" in str(err.value) and "90% of the 100" in str(err.value) and "at least 90" in str(err.value)


@pytest.mark.parametrize(("new", "old"), [(90, 100), (100, 100), (5, 0), (200, 100)])
def test_guard_passes_at_or_above_the_share(new: int, old: int) -> None:
    check_guard(10, new, old, 0.9)


def test_report_lines_and_xcom() -> None:
    report = MetadataReport(
        dry_run=True,
        injections=3,
        mapped_neurons=5,
        dates_in_s3={FINISHED: ["2014-06-24", "2020-02-03"]},
        dates_without_mapping={FINISHED: ["2020-02-03"]},
        written=["neurons/Finished_Neurons/2014-06-24/metadata.json"],
        unchanged=["x", "y"],
        soma_fallbacks=[SomaFallback(COMPLETE, "2014-06-24", "AA0231", "G-002", "neuron brain area")],
    )
    text = "\n".join(report.lines())
    assert "dry run: nothing written" in text
    assert "Finished_Neurons: 2 dates in S3, 1 without neuron mappings" in text
    assert "would write: neurons/Finished_Neurons/2014-06-24/metadata.json" in text
    assert "AA0231 (2014-06-24/G-002): neuron brain area" in text
    assert report.to_xcom() == {
        "dry_run": True,
        "dates_in_s3": {FINISHED: 2},
        "dates_without_mapping": {FINISHED: ["2020-02-03"]},
        "written": ["neurons/Finished_Neurons/2014-06-24/metadata.json"],
        "unchanged": 2,
        "refused": [],
        "removals": {},
        "not_loadable": [],
        "soma_fallbacks": {"AA0231": "neuron brain area"},
        "refusal": None,
    }
