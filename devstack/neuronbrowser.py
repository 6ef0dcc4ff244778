"""A real GraphQL server on 127.0.0.1 standing in for the NeuronBrowser sample-api.

It executes the sample-api schema (``include/schema/neuronbrowser-sample-api.graphql``) with graphql-core over fixture
data (``{"injections": [...], "brainAreas": [...]}``) and behaves like Apollo 4 where it matters: POST only with
``Content-Type: application/json``, HTTP 400 for a query that does not parse or validate, HTTP 200 with ``errors``
for resolver errors.

Fault switches, changed at run time through ``POST /_control`` with a JSON object (``GET /_control`` shows the state
and counts the GraphQL requests):

- ``{"mode": "ok"}`` normal answers (the default)
- ``{"mode": "http500"}`` HTTP 500 on every query; ``{"fail_first": n}`` only on the next n queries
- ``{"mode": "slow", "delay": seconds}`` answer after a delay (for read timeouts)
- ``{"mode": "errors"}`` HTTP 200 with ``errors`` and null ``data``
- ``{"mode": "null_data"}`` HTTP 200 with ``{"data": null}``
- ``{"mode": "garbage"}`` HTTP 200 with an HTML body
- ``{"mode": "empty"}`` HTTP 200 with no injections
- ``{"only": ["inj-1", ...]}`` serve only these injections (worse data); ``{"only": null}`` all again

Run: ``python -m devstack.neuronbrowser --port N --fixture file.json``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from graphql import GraphQLSchema, build_schema, execute_sync, parse, validate
from graphql.error import GraphQLError

from devstack.procs import LOOPBACK, ManagedProcess, ServerHandle, free_port, http_answers

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "include" / "schema" / "neuronbrowser-sample-api.graphql"
MODES = ("ok", "http500", "slow", "errors", "null_data", "garbage", "empty")


@dataclass
class _State:
    mode: str = "ok"
    delay: float = 0.0
    fail_first: int = 0
    only: list[str] | None = None
    requests: int = 0
    authorization: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def public(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "delay": self.delay,
            "fail_first": self.fail_first,
            "only": self.only,
            "requests": self.requests,
            "authorization": list(self.authorization),
        }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet by default: test logs stay readable; the request count is in /_control.
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path == "/_control":
            with self.server.state.lock:
                self._json(200, self.server.state.public())
        else:
            self._json(400, {"errors": [{"message": "GET query missing."}]})

    def do_POST(self) -> None:
        if self.path == "/_control":
            self._control()
        elif self.path == "/graphql":
            self._graphql()
        else:
            self._send(404, b"Not Found", "text/plain")

    def _control(self) -> None:
        change = json.loads(self._body() or b"{}")
        state = self.server.state
        with state.lock:
            if "mode" in change:
                if change["mode"] not in MODES:
                    self._json(400, {"error": f"unknown mode {change['mode']!r}; expected one of {MODES}"})
                    return
                state.mode = change["mode"]
            state.delay = float(change.get("delay", state.delay))
            state.fail_first = int(change.get("fail_first", state.fail_first))
            if "only" in change:
                state.only = None if change["only"] is None else [str(i) for i in change["only"]]
            if change.get("reset_counts"):
                state.requests = 0
                state.authorization.clear()
            self._json(200, state.public())

    def _graphql(self) -> None:
        state = self.server.state
        raw = self._body()
        with state.lock:
            state.requests += 1
            state.authorization.append(self.headers.get("Authorization", ""))
            mode, delay, only = state.mode, state.delay, state.only
            failing = state.fail_first > 0
            if failing:
                state.fail_first -= 1
        if failing or mode == "http500":
            self._json(500, {"errors": [{"message": "Internal server error (fault switch)"}]})
            return
        if mode == "slow":
            time.sleep(delay)
        if mode == "garbage":
            self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            return
        if mode == "errors":
            self._json(200, {"errors": [{"message": "connect ECONNREFUSED 10.0.0.5:5432", "path": ["injections"]}]})
            return
        if mode == "null_data":
            self._json(200, {"data": None})
            return
        # Apollo 4 CSRF prevention: only JSON posts are executed.
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            self._json(400, {"errors": [{"message": "This operation has been blocked as a potential CSRF."}]})
            return
        try:
            request = json.loads(raw)
            query = request["query"]
        except (ValueError, KeyError, TypeError):
            self._json(400, {"errors": [{"message": "POST body must be JSON with a 'query' string."}]})
            return
        self._json(*self.server.run(query, request.get("variables"), empty=mode == "empty", only=only))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, schema: GraphQLSchema, data: dict[str, Any]) -> None:
        super().__init__((LOOPBACK, port), _Handler)
        self.schema = schema
        self.data = data
        self.state = _State()

    def run(
        self, query: str, variables: dict[str, Any] | None, *, empty: bool, only: list[str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Execute like Apollo: 400 for parse/validation errors, else 200 with data and any errors."""
        try:
            document = parse(query)
        except GraphQLError as err:
            return 400, {"errors": [err.formatted | {"extensions": {"code": "GRAPHQL_PARSE_FAILED"}}]}
        problems = validate(self.schema, document)
        if problems:
            errors = [p.formatted | {"extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}} for p in problems]
            return 400, {"errors": errors}
        root = dict(self.data)
        if empty:
            root["injections"] = []
        elif only is not None:
            root["injections"] = [i for i in root.get("injections", []) if i.get("id") in only]
        result = execute_sync(self.schema, document, root_value=root, variable_values=variables)
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [e.formatted for e in result.errors]
        return 200, body


def serve(port: int, fixture: Path, schema_path: Path = SCHEMA_PATH) -> None:
    """Serve until killed."""
    schema = build_schema(schema_path.read_text(encoding="utf-8"))
    data = json.loads(fixture.read_text(encoding="utf-8"))
    server = _Server(port, schema, data)
    server.serve_forever()


class NeuronBrowserServer(ServerHandle):
    """The server as a managed child process: ``start()``, ``set(mode=...)``, ``state()``, ``stop()``."""

    def __init__(self, workdir: Path, fixture: Path) -> None:
        self.workdir = Path(workdir)
        self.fixture = Path(fixture)
        self.port = 0
        self._process: ManagedProcess | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, the root the GraphQL and control endpoints hang off."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """The GraphQL endpoint, as an Airflow connection's host would give it."""
        return f"{self.base_url}/graphql"

    def connection_json(self, token: str | None = None) -> str:
        """An Airflow connection (conn_type http) for this server, as AIRFLOW_CONN_* JSON."""
        conn: dict[str, Any] = {"conn_type": "http", "host": self.url}
        if token:
            conn["password"] = token
        return json.dumps(conn)

    def start(self, timeout: float = 30.0) -> NeuronBrowserServer:
        """Start on a free port; returns once the control endpoint answers."""
        import sys

        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "devstack.neuronbrowser",
            "--port",
            str(self.port),
            "--fixture",
            str(self.fixture),
        ]
        self._process = ManagedProcess("neuronbrowser", argv, log_path=self.workdir / "neuronbrowser.log", cwd=ROOT)
        self._process.wait_until(lambda: http_answers(f"{self.base_url}/_control"), timeout, "GraphQL port")
        return self

    def _control(self, payload: dict[str, Any] | None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.base_url}/_control", data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def set(self, **change: Any) -> dict[str, Any]:
        """Switch faults, e.g. ``set(mode="slow", delay=3)``; ``set(mode="ok", fail_first=0, reset_counts=True)``."""
        return self._control(change)

    def state(self) -> dict[str, Any]:
        """The server's fault settings and what it has seen (request count, Authorization headers)."""
        return self._control(None)

    def __enter__(self) -> NeuronBrowserServer:
        return self.start()


def main(argv: list[str] | None = None) -> None:
    """Command line: serve the fixture on ``--port`` until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fixture", type=Path, required=True, help="JSON with injections (and brainAreas)")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH)
    args = parser.parse_args(argv)
    serve(args.port, args.fixture, args.schema)


if __name__ == "__main__":
    main()
