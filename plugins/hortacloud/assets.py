"""Assets shared between DAGs: the upload DAG's tracings group emits, the neuron metadata DAG listens."""

from __future__ import annotations

from airflow.sdk import Asset

# Emitted when the tracings of a sample have been (re)uploaded; schedules a neuron metadata rebuild.
TRACINGS_UPDATED = Asset(name="hortacloud_tracings", uri="hortacloud://janelia-mouselight-imagery/tracings/")

# The asset a product's group announces once all its transfers succeeded: one event per upload, not per folder.
PRODUCT_ASSETS: dict[str, Asset] = {"tracings": TRACINGS_UPDATED}
