"""The trigger-value rules, one at a time, and the whole hostile-input corpus against the run-time checks."""

from __future__ import annotations

import re

import pytest

from hortacloud.products import parse_request
from hortacloud.sample import (
    ABSOLUTE_FOLDER_PATTERN,
    FOLDER_NAME_PATTERN,
    SAMPLE_PATTERN,
    InvalidRequest,
    check_absolute_dir,
    check_folder_name,
)
from tests.fixtures.hostile_inputs import hostile_cases

BASE = {"sample": "2023-05-10", "products": ["images", "segmentation"]}
GOOD_NAMES = ["stitching-output", "a", "Z", "9", "a.b", "a_b", "a-b", "v2.0_final-run", "a" * 255, "2023-05-10"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_folder_names_by_the_rule_pass_both_checks(name: str) -> None:
    assert check_folder_name(name, "entry") == name
    assert re.search(FOLDER_NAME_PATTERN, name)


@pytest.mark.parametrize(
    "name", [".", "..", ".x", "-x", "_x", "a/b", "a b", "a\n", "\n", "é", "a" * 256, "", "{{x}}", "a;b", "*"]
)
def test_folder_names_against_the_rule_fail_both_checks(name: str) -> None:
    with pytest.raises(InvalidRequest, match="is not a folder name: expected one folder name"):
        check_folder_name(name, "entry")
    assert not re.search(FOLDER_NAME_PATTERN, name)


def test_the_schema_patterns_refuse_a_trailing_newline_as_the_checks_do() -> None:
    # Python's "$" (jsonschema's) also matches before a final newline; the patterns must not.
    assert re.search(SAMPLE_PATTERN, "2023-05-10") and not re.search(SAMPLE_PATTERN, "2023-05-10\n")
    assert not re.search(FOLDER_NAME_PATTERN, "stitching-output\n")
    assert re.search(ABSOLUTE_FOLDER_PATTERN, "/nrs/mouselight/SAMPLES/")
    assert not re.search(ABSOLUTE_FOLDER_PATTERN, "/nrs/mouselight\n")


@pytest.mark.parametrize(
    ("path", "normal"),
    [("/nrs/mouselight/SAMPLES", "/nrs/mouselight/SAMPLES"), ("//nrs///x/", "/nrs/x"), ("/a", "/a")],
)
def test_absolute_folders_are_normalised(path: str, normal: str) -> None:
    assert check_absolute_dir(path, "image_base") == normal
    assert re.search(ABSOLUTE_FOLDER_PATTERN, path)


def test_a_look_alike_is_named_by_its_code_point() -> None:
    with pytest.raises(InvalidRequest, match=r"'\u0455titching-output' \(non-ASCII: U\+0455\) is not a folder name"):
        check_folder_name("\u0455titching-output", "segmentation_dirs entry")


def test_an_oversized_value_is_cut_in_the_message() -> None:
    with pytest.raises(InvalidRequest) as err:
        check_folder_name("a" * 100_000, "entry")
    assert "(100000 characters)" in str(err.value) and len(str(err.value)) < 400


CASES = hostile_cases()


@pytest.mark.parametrize("case", CASES, ids=[case.why for case in CASES])
def test_every_hostile_conf_is_refused_at_run_time(case) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest) as err:
        parse_request(case.conf(BASE))
    message = str(err.value)
    assert "\n" not in message and len(message) < 600, message


def test_the_base_conf_of_the_corpus_is_valid() -> None:
    request = parse_request(BASE)
    assert request.products == ["images", "segmentation"]
