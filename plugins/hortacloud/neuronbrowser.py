"""NeuronBrowser sample-api over GraphQL: a hook on an Airflow connection, built on ``requests``.

The connection (conn_type ``http``) gives the URL of the sample-api *including* ``/graphql``, either whole in
``host`` (``http://nb-host:9671/graphql``) or as host/port plus a path: the URI form
``http://nb-host:9671/graphql`` puts ``graphql`` in the connection's ``schema`` field, and ``extra.path`` may give it
explicitly. An optional bearer token goes in ``password``; it is sent, never logged.

Retries use urllib3's ``Retry`` on the session's adapter rather than tenacity: it retries exactly the transport-level
failures we want (connection errors, HTTP 5xx) with exponential backoff, honours ``Retry-After``, and hands back the
last response so the error names the status and the body. Read timeouts are not retried: a service that took the
whole read timeout once will take it again, and the task's own Airflow retries cover the rare slow night.
"""

from __future__ import annotations

import contextlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

QUERY_DIR = Path("include") / "queries"
RETRY_STATUSES = (500, 502, 503, 504)
_BODY_EXCERPT = 300


class NeuronBrowserError(RuntimeError):
    """NeuronBrowser did not give a usable answer; the message names the query and what came back."""


def queries_dir() -> Path:
    """``include/queries`` beside ``plugins/``, or under $AIRFLOW_HOME (as config.py finds include/)."""
    candidates = [Path(__file__).resolve().parents[2] / QUERY_DIR]
    if airflow_home := os.environ.get("AIRFLOW_HOME"):
        candidates.append(Path(airflow_home) / QUERY_DIR)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise NeuronBrowserError(f"GraphQL query folder not found; looked for {', '.join(map(str, candidates))}")


def load_query(name: str) -> str:
    """The text of ``include/queries/<name>.graphql``."""
    path = queries_dir() / f"{name}.graphql"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NeuronBrowserError(f"GraphQL query {name!r} not found (expected {path})") from None


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "..."


def _error_messages(errors: Any) -> str:
    if isinstance(errors, list):
        return "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
    return str(errors)


class NeuronBrowserHook(BaseHook):
    """POST GraphQL queries to the NeuronBrowser sample-api named by an Airflow connection.

    :param neuronbrowser_conn_id: Airflow connection id (conn_type ``http``).
    :param connect_timeout: seconds to open a TCP connection.
    :param read_timeout: seconds to wait for the answer; the sample-api is slow, keep it generous.
    :param retries: further attempts after an HTTP 5xx or a connection error.
    :param backoff: first backoff in seconds; doubles with every retry.
    """

    conn_name_attr = "neuronbrowser_conn_id"
    default_conn_name = "hortacloud_neuronbrowser"
    conn_type = "http"
    hook_name = "NeuronBrowser sample-api"

    def __init__(
        self,
        neuronbrowser_conn_id: str = default_conn_name,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 2.0,
    ) -> None:
        super().__init__()
        self.neuronbrowser_conn_id = neuronbrowser_conn_id
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.backoff = backoff

    @cached_property
    def _connection(self) -> Any:
        return self.get_connection(self.neuronbrowser_conn_id)

    @cached_property
    def url(self) -> str:
        """The GraphQL endpoint URL built from the connection."""
        return connection_url(self._connection, self.neuronbrowser_conn_id)

    def _session(self) -> requests.Session:
        retry = Retry(
            total=self.retries,
            connect=self.retries,
            read=False,  # re-raise read timeouts at once (see the module docstring)
            status=self.retries,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"POST"}),  # a GraphQL query changes nothing, so POST is safe to repeat
            backoff_factor=self.backoff,
            raise_on_status=False,
        )
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token := self._connection.password:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def execute(self, query_name: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the query in ``include/queries/<query_name>.graphql``; returns its ``data`` object.

        Raises :class:`NeuronBrowserError` for HTTP errors (after retries), timeouts, a body that is not JSON,
        ``errors`` in the answer and a null ``data``.
        """
        payload: dict[str, Any] = {"query": load_query(query_name)}
        if variables:
            payload["variables"] = variables
        where = f"NeuronBrowser query {query_name!r} at {self.url}"
        self.log.info(
            "Running %s (connect timeout %ss, read timeout %ss)", where, self.connect_timeout, self.read_timeout
        )
        try:
            with self._session() as session:
                response = session.post(
                    self.url,
                    data=json.dumps(payload),
                    headers=self._headers(),
                    timeout=(self.connect_timeout, self.read_timeout),
                )
        except requests.exceptions.ConnectTimeout as err:
            raise NeuronBrowserError(f"{where}: no connection within {self.connect_timeout}s ({err})") from None
        except requests.exceptions.ReadTimeout:
            raise NeuronBrowserError(
                f"{where}: no answer within the read timeout of {self.read_timeout}s "
                "(the sample-api is slow; raise [neuronbrowser] read_timeout_seconds if this persists)"
            ) from None
        except requests.exceptions.RetryError as err:
            raise NeuronBrowserError(f"{where}: gave up after {self.retries} retries ({err})") from None
        except requests.exceptions.ConnectionError as err:
            raise NeuronBrowserError(
                f"{where}: cannot connect after {self.retries} retries ({type(err).__name__}); "
                "check the connection's host and port"
            ) from None
        return self._parse(response, query_name, where)

    @staticmethod
    def _parse(response: requests.Response, query_name: str, where: str) -> dict[str, Any]:
        status = response.status_code
        if status == 400:
            detail = _excerpt(response.text)
            with contextlib.suppress(ValueError, AttributeError):
                detail = _error_messages(response.json().get("errors")) or detail
            raise NeuronBrowserError(
                f"{where}: HTTP 400, the query does not fit the service's schema "
                f"(is the URL the sample-api, not the public search-api?): {detail}"
            )
        if status != 200:
            raise NeuronBrowserError(
                f"{where}: HTTP {status} (expected 200; retried on 5xx): {_excerpt(response.text)}"
            )
        try:
            body = response.json()
        except ValueError:
            raise NeuronBrowserError(
                f"{where}: the answer is not JSON (Content-Type {response.headers.get('Content-Type')!r}): "
                f"{_excerpt(response.text)!r}"
            ) from None
        if not isinstance(body, dict):
            raise NeuronBrowserError(f"{where}: expected a JSON object, got {type(body).__name__}")
        if body.get("errors"):
            raise NeuronBrowserError(f"{where}: the service reported errors: {_error_messages(body['errors'])}")
        data = body.get("data")
        if not isinstance(data, dict):
            raise NeuronBrowserError(f"{where}: the answer has no data (got {data!r}, expected an object)")
        return data

    def injections(self) -> list[dict[str, Any]]:
        """Every injection from ``include/queries/injections.graphql``, as plain JSON objects."""
        data = self.execute("injections")
        injections = data.get("injections")
        if not isinstance(injections, list):
            raise NeuronBrowserError(
                f"NeuronBrowser query 'injections': expected a list under data.injections, got {injections!r:.100}"
            )
        self.log.info("NeuronBrowser returned %d injections", len(injections))
        return injections


def connection_url(conn: Any, conn_id: str) -> str:
    """The endpoint URL of a connection: ``host`` when it holds a whole URL, else scheme://host[:port]/path."""
    host = (conn.host or "").strip()
    if not host:
        raise NeuronBrowserError(
            f"Airflow connection {conn_id!r} has no host (expected e.g. http://nb-host:9671/graphql)"
        )
    if "://" in host:
        return host
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    schema = (conn.schema or "").strip().strip("/")
    if schema in ("http", "https"):
        scheme, path = schema, str(extra.get("path", "graphql"))
    else:
        scheme, path = str(extra.get("scheme", "http")), str(extra.get("path") or schema or "graphql")
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{host}{port}/{path.strip('/')}"
