"""The upload DAG's Params as the api-server sees them: the hostile-input corpus against the serialized schemas.

The DAG is serialized and read back as the api-server does (``SerializedParamsDict``), so these are the checks a
trigger from the form or the REST API meets before a run exists. The real stack's REST API is exercised in
``test_real_airflow.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.hostile_inputs import hostile_cases

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
BASE = {"sample": "2023-05-10", "products": ["images", "segmentation"]}
CASES = hostile_cases()
# What a schema without our formats (a process that did not load the hortacloud plugin) lets through: only what a
# regex cannot judge. The plan step still refuses it.
CALENDAR = {"2023-02-30", "2023-13-01", "2023-05-00", "2023-02-29", "1900-02-29", "0000-01-01", "9999-99-99"}


@pytest.fixture(scope="module")
def server_params():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagBag(dag_folder=str(ROOT / "dags" / "hortacloud_upload_sample.py")).dags["hortacloud_upload_sample"]
    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).params


def _refusal(params, conf: dict) -> str | None:  # type: ignore[no-untyped-def]
    from airflow.exceptions import ParamValidationError

    try:
        params.deep_merge(conf).validate()
    except ParamValidationError as err:
        return str(err)
    return None


@pytest.mark.parametrize("case", CASES, ids=[case.why for case in CASES])
def test_the_schema_refuses_in_one_sentence(server_params, case) -> None:  # type: ignore[no-untyped-def]
    refusal = _refusal(server_params, case.conf(BASE))
    if case.refused_by == "plan":
        assert refusal is None, "a value only the plan step can judge"
        return
    assert refusal is not None, f"{case.why}: accepted by the schema"
    (param,) = case.overrides
    assert refusal.startswith(f"Invalid input for param {param}: "), refusal
    assert "\n" not in refusal and "Failed validating" not in refusal and "^[" not in refusal, refusal
    assert len(refusal) < 600


def test_the_base_conf_and_good_values_pass_the_schema(server_params) -> None:  # type: ignore[no-untyped-def]
    assert _refusal(server_params, BASE) is None
    good = {
        "segmentation_dirs": ["stitching-output", "v2.0_final-run", "a" * 255],
        "image_base": "/nrs/mouselight/SAMPLES/2023-05-10",
        "dry_run": True,
        "products": ["images", "registration", "segmentation", "tracings", "carveouts"],
    }
    assert _refusal(server_params, BASE | good) is None
    assert _refusal(server_params, BASE | {"image_base": None}) is None


def test_without_our_formats_the_patterns_still_refuse_all_but_calendar_dates(server_params, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from jsonschema import FormatChecker

    from hortacloud.params import FORMATS

    for name in FORMATS:
        monkeypatch.delitem(FormatChecker.checkers, name)
    accepted = {
        case.why: case.overrides
        for case in CASES
        if case.refused_by == "schema" and _refusal(server_params, case.conf(BASE)) is None
    }
    assert accepted, "the formats were not removed"
    assert all(set(conf) == {"sample"} and conf["sample"] in CALENDAR for conf in accepted.values()), accepted
