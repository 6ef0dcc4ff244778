"""A DAG run's note, written by its own tasks, so the runs list says what a run publishes and why it was refused.

Airflow 3.3 gives a task no way to set its run's note (the execution API has none), so the note is written through
Airflow's public REST API (``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}``) as a user of the connection
``[airflow_api] conn_id``: conn_type ``http``, host the api-server's base URL, login and password of a user allowed
to edit runs (a token comes from ``POST /auth/token``). Without that connection notes are off, and the run says
nothing more than before. A note is a courtesy: a failure to write it is logged, never raised.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import Any

log = logging.getLogger(__name__)

#: Airflow refuses longer notes (``DAGRunPatchBody.note``).
NOTE_LIMIT = 1000
# Characters that make inline Markdown (GFM) anywhere, and those that do so only at the start of a line.
_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]<>!|~])")
_LINE_START_SPECIAL = re.compile(r"^(\s*)([#>+=-]|\d+(?=[.)]))", re.MULTILINE)


def markdown_text(text: str) -> str:
    """``text`` shown as it is in the UI's Markdown note: a value such as ``[x](javascript:...)`` stays text."""
    escaped = _INLINE_SPECIAL.sub(r"\\\1", text)
    # A heading, quote or list marker is escaped itself; an ordered-list number by the "." or ")" after it.
    return _LINE_START_SPECIAL.sub(lambda m: m[1] + (m[2] + "\\" if m[2][0].isdigit() else "\\" + m[2]), escaped)


def clip(note: str, limit: int = NOTE_LIMIT) -> str:
    """The note cut to what Airflow accepts, marked where it was cut."""
    return note if len(note) <= limit else note[: limit - 2] + " …"


class RunNotes:
    """Writes run notes through the REST API with the credentials of one Airflow connection.

    :param conn_id: an ``http`` connection: host (``http://airflow.int.janelia.org:8080`` or a bare host with
        schema and port), login, password. Missing: every ``set`` is a no-op, logged once.
    :param timeout: seconds for each request; a slow api-server must not hold a task long.
    """

    def __init__(self, conn_id: str, *, timeout: float = 10.0) -> None:
        self.conn_id = conn_id
        self.timeout = timeout
        self._session: Any = None
        self._base: str | None = None
        self._off = False

    def _connect(self) -> bool:
        if self._off:
            return False
        if self._session is not None:
            return True
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = BaseHook.get_connection(self.conn_id)
        except AirflowNotFoundException:
            log.info("Run notes are off: no Airflow connection %r", self.conn_id)
            self._off = True
            return False
        import requests

        host = (conn.host or "").rstrip("/")
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
        self._base = host
        session = requests.Session()
        response = session.post(
            f"{host}/auth/token", json={"username": conn.login, "password": conn.password}, timeout=self.timeout
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"POST {host}/auth/token answered HTTP {response.status_code}")
        session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        self._session = session
        return True

    def set(self, dag_id: str, run_id: str, note: str) -> bool:
        """Replace the run's note; True when it was written."""
        try:
            if not self._connect():
                return False
            path = f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
            response = self._session.patch(
                f"{self._base}{path}", params={"update_mask": "note"}, json={"note": clip(note)}, timeout=self.timeout
            )
            if response.status_code >= 400:
                raise RuntimeError(f"PATCH {path} answered HTTP {response.status_code}: {response.text[:200]}")
        except Exception as err:  # requests, JSON and HTTP errors alike: the note is not worth failing a task for
            log.warning("Could not set the note of run %s of %s: %s", run_id, dag_id, err)
            return False
        return True
