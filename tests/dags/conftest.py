"""DAG-level fixtures: one Airflow metadata database for ``dag.test()``, and one real Airflow for the session.

The real Airflow (api-server, scheduler, dag-processor, triggerer on 127.0.0.1, about 20-35 s to start on this
2-core machine) is started the first time a test asks for ``stack`` or ``api`` and stopped at the end of the
session. It serves the project's ``dags/``; its tasks reach SeaweedFS, the LSF emulator (cluster transfers defer,
as in production) and a local NeuronBrowser answering from the demo's fixture, and they write their run's notes
through the REST API. Everything is driven through the REST API, as an operator or the demo would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.airflow_stack import AirflowClient, AirflowStack
from devstack.localsite import cluster_roots, emulated_lsf, site_toml
from devstack.lsf import Emulator
from devstack.neuronbrowser import NeuronBrowserServer
from devstack.procs import running
from devstack.s3server import S3Endpoint
from devstack.sampletree import make_sample

ROOT = Path(__file__).resolve().parents[2]
E2E_BUCKET = "hortacloud-e2e-airflow"
E2E_SAMPLE = "2023-05-10"
# Maps 2023-05-10 (21:30 in New York, already the 11th in UTC) G-001..G-003 to AA9001..AA9003.
NB_FIXTURE = ROOT / "devstack" / "demo_neuronbrowser.json"


@pytest.fixture(scope="session")
def airflow_db() -> None:
    from airflow.utils import db

    db.resetdb()


@pytest.fixture(scope="session")
def e2e_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-airflow")


@pytest.fixture(scope="session")
def e2e_samples(e2e_workdir: Path) -> Path:
    """An images base holding one small sample (octree to depth 2 plus the top-level files)."""
    base = e2e_workdir / "samples"
    make_sample(base / E2E_SAMPLE, depth=2)
    return base


@pytest.fixture(scope="session")
def e2e_cluster(e2e_workdir: Path) -> Path:
    """The cluster roots: a segmentation folder, and tracing_complete alone among the tracings roots (one tracings
    transfer, so one asset event).

    G-003 has no soma.txt: its somaLocation falls back to the neuron's brain area in NeuronBrowser.
    """
    root = e2e_workdir / "cluster"
    roots = cluster_roots(root)
    for number in (1, 2, 3):
        folder = roots["tracing_complete"] / E2E_SAMPLE / f"G-{number:03}"
        folder.mkdir(parents=True)
        for name in ("consensus.swc", "dendrite.swc"):
            (folder / name).write_text(f"# G-{number:03} {name}\n1 1 0 0 0 1 -1\n")
        if number < 3:
            (folder / "soma.txt").write_text("Primary motor area, Layer 5\r\n")
    segmentation = roots["segmentation"] / E2E_SAMPLE / "stitching-output"
    segmentation.mkdir(parents=True)
    (segmentation / "tile-0001.tif").write_bytes(b"segmentation tile")
    (root / "lsf-output").mkdir()
    return root


@pytest.fixture(scope="session")
def e2e_neuronbrowser(e2e_workdir: Path) -> Iterator[NeuronBrowserServer]:
    server = NeuronBrowserServer(e2e_workdir / "neuronbrowser", NB_FIXTURE).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def e2e_lsf(e2e_workdir: Path) -> Iterator[Emulator]:
    emulator = Emulator(e2e_workdir / "lsf-state")
    try:
        yield emulator
    finally:
        emulator.cleanup()


@pytest.fixture(scope="session")
def stack(
    e2e_workdir: Path,
    e2e_samples: Path,
    e2e_cluster: Path,
    s3_server: S3Endpoint,
    e2e_neuronbrowser: NeuronBrowserServer,
    e2e_lsf: Emulator,
) -> Iterator[AirflowStack]:
    site = e2e_workdir / "hortacloud-e2e.toml"
    site.write_text(
        site_toml(
            {
                "s3": {"bucket": E2E_BUCKET},
                "images": {"bases": [e2e_samples], "shards": 3, "shard_lists_dir": e2e_workdir / "shard-lists"},
                "sync": {"workers": 8},
                "cluster": cluster_roots(e2e_cluster),
                "lsf": emulated_lsf(e2e_cluster / "lsf-output", 0.5),
            }
        )
    )
    s3_server.boto3_client().create_bucket(Bucket=E2E_BUCKET)
    env = {
        **e2e_lsf.env(base={}),
        # The LSF jobs inherit the submitter's environment (bsub -env all): their sync reaches the same server.
        **s3_server.client_env(),
        "AIRFLOW_CONN_HORTACLOUD_S3": s3_server.connection_json(),
        "AIRFLOW_CONN_HORTACLOUD_NEURONBROWSER": e2e_neuronbrowser.connection_json(),
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
        "HORTACLOUD_CONFIG": str(site),
    }
    airflow = AirflowStack(
        e2e_workdir / "airflow-home",
        ROOT / "dags",
        env,
        plugins_folder=ROOT / "plugins",
        api_conn_id="hortacloud_airflow_api",
    )
    airflow.start()
    pids = airflow.pids()
    try:
        yield airflow
    finally:
        airflow.stop()
    survivors = [pid for pid in pids if running(pid)]
    assert not survivors, f"Airflow processes left after stop(): {survivors}"


@pytest.fixture(scope="session")
def api(stack: AirflowStack) -> AirflowClient:
    assert stack.client is not None
    return stack.client
