"""Every query the hook sends validates against the sample-api schema shipped in include/schema/."""

from __future__ import annotations

from pathlib import Path

import pytest
from graphql import build_schema, parse, validate

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "include" / "schema" / "neuronbrowser-sample-api.graphql"
QUERIES = sorted((ROOT / "include" / "queries").glob("*.graphql"))


def test_there_are_queries() -> None:
    assert [q.name for q in QUERIES] == ["injections.graphql"]


@pytest.mark.parametrize("path", QUERIES, ids=lambda p: p.stem)
def test_query_validates_against_the_sample_api_schema(path: Path) -> None:
    schema = build_schema(SCHEMA.read_text())
    assert validate(schema, parse(path.read_text())) == []


def test_a_query_the_sample_api_lacks_does_not_validate() -> None:
    # Guards the test above: the schema really rejects fields it does not have (the public search-api's shape).
    schema = build_schema(SCHEMA.read_text())
    errors = validate(schema, parse("{ injections { sample { date } } }"))
    assert errors and "Cannot query field 'date' on type 'Sample'" in errors[0].message


def test_injections_query_asks_for_what_the_mapping_reads() -> None:
    text = (ROOT / "include" / "queries" / "injections.graphql").read_text()
    for name in ("sampleDate", "idString", "tag", "brainArea", "name", "neurons"):
        assert name in text
