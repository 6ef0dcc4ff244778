"""The local NeuronBrowser stand-in behaves like the sample-api where the hook depends on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devstack.neuronbrowser import NeuronBrowserServer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "neuronbrowser.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronBrowserServer]:
    nb = NeuronBrowserServer(tmp_path_factory.mktemp("nb-server"), FIXTURE).start()
    try:
        yield nb
    finally:
        nb.stop()


def post(server: NeuronBrowserServer, query: str, content_type: str = "application/json") -> requests.Response:
    return requests.post(
        server.url, data=json.dumps({"query": query}), headers={"Content-Type": content_type}, timeout=5
    )


def test_executes_the_schema_over_the_fixture(server) -> None:
    answer = post(server, "{ injections { sample { sampleDate } neurons { idString } } brainAreas { name } }")
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert data["injections"][0] == {
        "sample": {"sampleDate": 1403659800000},
        "neurons": [
            {"idString": f"AA02{i}"}
            for i in ("30", "31", "32", "33", "34", "35", "36", "37", "38", "39", "43", "40", "41", "42", "99")
        ]
        + [{"idString": ""}],
    }
    assert data["injections"][2]["sample"] is None
    assert [a["name"] for a in data["brainAreas"]] == ["Whole Brain", "Primary motor area"]


def test_invalid_query_is_400_like_apollo(server) -> None:
    answer = post(server, "{ injections { sample { date } } }")
    assert answer.status_code == 400
    error = answer.json()["errors"][0]
    assert "Cannot query field 'date' on type 'Sample'" in error["message"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert post(server, "{ injections {").status_code == 400


def test_resolver_error_is_200_with_errors(server) -> None:
    # A non-null root field the fixture does not provide: a real execution error, as Apollo reports it.
    answer = post(server, "{ brainAreaItems { totalCount } }")
    assert answer.status_code == 200
    body = answer.json()
    assert body["data"] is None
    assert "Cannot return null for non-nullable field Query.brainAreaItems" in body["errors"][0]["message"]


def test_non_json_posts_are_blocked(server) -> None:
    answer = post(server, "{ injections { id } }", content_type="text/plain")
    assert answer.status_code == 400 and "CSRF" in answer.text


def test_control_rejects_unknown_modes(server) -> None:
    answer = requests.post(f"{server.base_url}/_control", json={"mode": "on-fire"}, timeout=5)
    assert answer.status_code == 400 and "unknown mode 'on-fire'" in answer.text
    assert server.state()["mode"] == "ok"
