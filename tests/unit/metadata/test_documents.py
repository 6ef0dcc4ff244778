"""soma.txt, the documents HortaCloud reads (byte for byte), the guard and the report."""

from __future__ import annotations

import json

import pytest

from hortacloud.metadata.documents import (
    GuardRefusal,
    NeuronFolder,
    SomaFallback,
    build_document,
    check_guard,
    decode_soma,
    described_neurons,
    render,
)
from hortacloud.metadata.mapping import COMPLETE, FINISHED, MetadataError, build_mapping
from hortacloud.metadata.report import MetadataReport
from tests.fixtures.neuronbrowser_answer import NY, README_2014, injections

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
        "not_uri_safe": [],
        "empty_swcs": [],
        "legacy": {},
        "removed": [],
        "soma_fallbacks": {"AA0231": "neuron brain area"},
        "neurons_described": 0,
        "neurons_in_bucket": 0,
        "refusal": None,
    }
