"""Test environment: an Airflow home of its own (set before anything imports airflow) and the local servers.

Layers: tests/unit (pure), tests/component (real local servers), tests/dags (dag.test()
and a real Airflow).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="hortacloud-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.pop("HORTACLOUD_CONFIG", None)

import pytest  # noqa: E402

from devstack.lsf import Emulator  # noqa: E402
from devstack.neuronbrowser import NeuronBrowserServer  # noqa: E402
from devstack.s3server import S3Endpoint, SeaweedS3  # noqa: E402

BUCKET = "janelia-mouselight-imagery"
NB_FIXTURE = ROOT / "tests" / "fixtures" / "neuronbrowser.json"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """One SeaweedFS for the whole session, bucket pre-created; tests use distinct key prefixes or buckets."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), buckets=(BUCKET,))
    endpoint = server.start()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronBrowserServer]:
    """One local NeuronBrowser sample-api for the session; each user resets its fault switches first."""
    server = NeuronBrowserServer(tmp_path_factory.mktemp("neuronbrowser"), NB_FIXTURE).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def lsf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """The LSF emulator on PATH with a state folder of its own, as a client host would have LSF; its jobs are
    killed by PID at the end. The code under test finds ``bsub``, ``bjobs``, ``bkill`` and ``bhist`` on PATH and
    knows nothing of the emulator."""
    emulator = Emulator(tmp_path / "lsf-state")
    for name in list(os.environ):
        if name.startswith("FAKE_LSF_") or name in ("BSUB_STDERR", "LSB_SUBK_SHOW_EXEC_HOST"):
            monkeypatch.delenv(name)
    for name, value in emulator.env().items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    # Short defaults so hangs end quickly even if a test forgets a timeout.
    emulator.set_knobs(FAKE_LSF_HANG_SECONDS=20, FAKE_LSF_TERMINATE_INTERVAL=0.2)
    yield emulator
    emulator.cleanup()


@pytest.fixture
def s3_client(s3_server: S3Endpoint):  # type: ignore[no-untyped-def]
    return s3_server.boto3_client()


@pytest.fixture
def fresh_bucket(s3_client, request: pytest.FixtureRequest) -> str:  # type: ignore[no-untyped-def]
    """An empty bucket of this test's own (names from the test id, S3-legal)."""
    import hashlib

    name = "t-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:20]
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def site_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Write an override TOML under tmp_path and point HORTACLOUD_CONFIG at it; returns a writer."""
    from hortacloud.config import _load

    def write(text: str) -> Path:
        path = tmp_path / "hortacloud-test.toml"
        path.write_text(text)
        monkeypatch.setenv("HORTACLOUD_CONFIG", str(path))
        _load.cache_clear()
        return path

    yield write
    _load.cache_clear()
