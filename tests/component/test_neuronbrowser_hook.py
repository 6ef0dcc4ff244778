"""NeuronBrowserHook against a real GraphQL server on 127.0.0.1 executing the sample-api schema over fixtures."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from devstack.neuronbrowser import NeuronBrowserServer
from devstack.procs import free_port
from hortacloud.neuronbrowser import NeuronBrowserError, NeuronBrowserHook

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "neuronbrowser.json"
TOKEN = "nb-test-token-8f1c"  # a made-up bearer token: it must reach the server and never the log


@pytest.fixture
def nb(nb_server: NeuronBrowserServer, monkeypatch: pytest.MonkeyPatch) -> NeuronBrowserServer:
    """The server back in normal mode with fresh counts, and connection ``nb_test`` pointing at it."""
    nb_server.set(mode="ok", delay=0, fail_first=0, reset_counts=True)
    monkeypatch.setenv("AIRFLOW_CONN_NB_TEST", nb_server.connection_json(token=TOKEN))
    return nb_server


def hook(**kwargs: float) -> NeuronBrowserHook:
    options = {"retries": 2, "backoff": 0.05, "read_timeout": 5.0, "connect_timeout": 2.0} | kwargs
    return NeuronBrowserHook("nb_test", **options)  # type: ignore[arg-type]


def test_injections_come_back_with_the_token_sent_and_never_logged(nb, caplog, capfd) -> None:
    caplog.set_level(logging.DEBUG)
    injections = hook().injections()
    assert len(injections) == 10
    first = injections[0]
    assert first["sample"] == {"sampleDate": 1403659800000}
    assert first["brainArea"] == {"name": "Primary motor area"}
    assert first["neurons"][0] == {"idString": "AA0230", "tag": "G-001", "brainArea": None}
    assert nb.state()["authorization"] == [f"Bearer {TOKEN}"]
    out, err = capfd.readouterr()
    assert TOKEN not in caplog.text + out + err
    assert "Running NeuronBrowser query 'injections'" in caplog.text + out + err  # it logs, but not the token


def test_no_token_sends_no_authorization(nb, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NB_TEST", nb.connection_json())
    hook().injections()
    assert nb.state()["authorization"] == [""]


@pytest.mark.parametrize(
    "conn",
    [
        lambda port: f"http://127.0.0.1:{port}/graphql",  # URI form: the path lands in the schema field
        lambda port: json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "graphql"}),
        lambda port: json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "extra": {"path": "/graphql"}}
        ),
    ],
    ids=["uri", "json-schema-path", "json-extra-path"],
)
def test_connection_forms_reach_graphql(nb, monkeypatch, conn) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NB_TEST", conn(nb.port))
    h = hook()
    assert h.url == nb.url
    assert len(h.injections()) == 10


def test_http_500_is_retried_then_fails_with_the_status(nb) -> None:
    nb.set(mode="http500")
    with pytest.raises(NeuronBrowserError, match=r"query 'injections' .*HTTP 500") as err:
        hook(retries=2).injections()
    assert "Internal server error" in str(err.value)
    assert nb.state()["requests"] == 3  # one try and two retries


def test_transient_500s_are_retried_until_success(nb) -> None:
    nb.set(fail_first=2)
    assert len(hook(retries=3).injections()) == 10
    assert nb.state()["requests"] == 3


def test_slow_answer_hits_the_read_timeout_and_is_not_retried(nb) -> None:
    nb.set(mode="slow", delay=3)
    started = time.monotonic()
    with pytest.raises(NeuronBrowserError, match=r"no answer within the read timeout of 0.5s"):
        hook(read_timeout=0.5).injections()
    assert time.monotonic() - started < 2.5
    assert nb.state()["requests"] == 1


def test_errors_in_a_200_answer_are_named(nb) -> None:
    nb.set(mode="errors")
    with pytest.raises(NeuronBrowserError, match=r"query 'injections'.*reported errors: connect ECONNREFUSED"):
        hook().injections()


def test_null_data_is_an_error(nb) -> None:
    nb.set(mode="null_data")
    with pytest.raises(NeuronBrowserError, match=r"has no data \(got None"):
        hook().injections()


def test_garbage_body_is_an_error(nb) -> None:
    nb.set(mode="garbage")
    with pytest.raises(NeuronBrowserError, match=r"not JSON \(Content-Type 'text/html'\).*502 Bad Gateway"):
        hook().injections()


def test_empty_result_is_an_empty_list(nb) -> None:
    # Not an error for the hook; the metadata guard refuses to write from it.
    nb.set(mode="empty")
    assert hook().injections() == []


def test_invalid_query_gets_400_naming_the_query(nb, monkeypatch, tmp_path) -> None:
    (tmp_path / "old_shape.graphql").write_text("{ injections { sample { date } } }")
    monkeypatch.setattr("hortacloud.neuronbrowser.queries_dir", lambda: tmp_path)
    with pytest.raises(NeuronBrowserError) as err:
        hook().execute("old_shape")
    message = str(err.value)
    assert "query 'old_shape'" in message and "HTTP 400" in message
    assert "Cannot query field 'date' on type 'Sample'" in message
    assert nb.state()["requests"] == 1  # a 400 is final


def test_unknown_query_name_is_named() -> None:
    with pytest.raises(NeuronBrowserError, match=r"query 'nope' not found \(expected .*include/queries/nope.graphql"):
        NeuronBrowserHook("unused").execute("nope")


def test_nothing_listening_fails_after_retries(monkeypatch) -> None:
    port = free_port()
    monkeypatch.setenv(
        "AIRFLOW_CONN_NB_TEST", json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{port}/graphql"})
    )
    with pytest.raises(NeuronBrowserError, match=r"cannot connect after 2 retries"):
        hook().injections()


def test_connection_without_host_is_named(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NB_TEST", json.dumps({"conn_type": "http"}))
    with pytest.raises(NeuronBrowserError, match=r"connection 'nb_test' has no host"):
        hook().injections()
