"""
### Publish a MouseLight sample to `s3://janelia-mouselight-imagery`

Trigger with a **sample date** (the folder name, `YYYY-MM-DD`; the field suggests the dates found under the image
bases) and the **products** to publish. The run's note says what it publishes, and at its end what it published.

| product | from | to |
|---|---|---|
| images | `/nrs/mouselight/SAMPLES/<date>` (else `/nearline/.../RENDER_archive/<date>`) | `images/<date>/` |
| registration | `.../registration/Database/<date>/` | `registration/<date>/` |
| segmentation | `.../Reconstructions/<date>/<segmentation folders>/` | `segmentation/<date>/` |
| tracings | `.../Finished_Neurons/<date>/`, `.../tracing_complete/<date>/` | `tracings/<location>/<date>/` |
| carveouts | `/nrs/funke/mouselight[-v2]/<date>/` (v2 wins) | `carveouts/<date>/` |

1. **plan** checks every value (a refusal is the run's note and the task's first log line) and, for images, that
   HortaCloud can load the sample (`transform.txt`, the root KTX block's header, a `default.N.tif`).
2. **images**: `ktx/` in shards by octant range (one mapped `upload` per shard, on the workers or as LSF jobs),
   then `publish` verifies every object by content and uploads `transform.txt` and the root block last, so
   HortaCloud never discovers a half-published sample; then the manifest `manifests/<date>/images.json`.
3. **registration, segmentation, tracings, carveouts**: one LSF job per folder (`transfer`, deferred), then
   `verify` and the manifest. `tracings.announce` starts the neuron metadata rebuild.
4. **summary** logs a table per product (uploaded, already there, verified, S3 prefix, LSF jobs) and writes it as
   the run's note.

**Params.** `segmentation_dirs`: sub-folders of the segmentation sample (default `stitching-output`).
`image_base`: read the images from this folder instead of the configured bases. `dry_run`: log what would be
uploaded and submitted, write nothing. `skip_preflight`: publish images HortaCloud could not load (warns).

**Re-run.** Clear a failed task (or trigger the same sample again): a sync uploads only what is missing, an LSF
task re-attaches to its job (never two transfers of one folder), and a manifest that did not change is kept.
Marking a deferred LSF task failed kills its job. Site paths, bucket and connections: `include/hortacloud.toml`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import Param, TaskGroup, dag

from hortacloud import sample_dates
from hortacloud.assets import PRODUCT_ASSETS
from hortacloud.config import load_config
from hortacloud.lsf.operator import LsfTransferOperator
from hortacloud.params import FLAG_FORMAT, FOLDER_NAMES_FORMAT, IMAGE_BASE_FORMAT, PRODUCTS_FORMAT, SAMPLE_FORMAT
from hortacloud.products import MAX_SEGMENTATION_DIRS, PRODUCT_NAMES, PRODUCTS
from hortacloud.sample import (
    ABSOLUTE_FOLDER_MAX,
    ABSOLUTE_FOLDER_PATTERN,
    ABSOLUTE_FOLDER_RULE,
    FOLDER_NAME_PATTERN,
    FOLDER_NAME_RULE,
    SAMPLE_PATTERN,
    SAMPLE_RULE,
)
from hortacloud.tasks.upload import (
    announce,
    image_shards,
    jobs,
    plan,
    publish,
    shard_jobs,
    summary,
    upload,
    verify,
)

CONFIG = load_config()
SAMPLE_DATES = sample_dates.cached(CONFIG)


def lsf_jobs(task_id: str, map_index_template: str) -> Any:
    """The DAG's LSF jobs: built from data (never templated), deferred, bounded in time, pooled.

    ``name_scope="dag"``: two runs for one sample follow one live job per source, never two concurrent transfers.
    """
    return LsfTransferOperator.partial(
        task_id=task_id,
        pool=CONFIG.lsf.pool,
        map_index_template=map_index_template,
        name_scope="dag",
        deferrable=True,
        execution_timeout=CONFIG.lsf.execution_timeout,
    )


@dag(
    dag_id=Path(__file__).stem,
    dag_display_name="Publish a MouseLight sample",
    description="Upload a sample's images and cluster products to s3://janelia-mouselight-imagery",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["hortacloud", "mouselight", "upload"],
    max_active_runs=4,
    default_args={
        "owner": "mouselight",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=2),
        "retry_exponential_backoff": True,
    },
    params={
        "sample": Param(
            type="string",
            pattern=SAMPLE_PATTERN,
            format=SAMPLE_FORMAT,
            maxLength=10,
            # Suggestions from a local file the plan step keeps fresh; parsing never lists /nrs (README, Params).
            **({"examples": SAMPLE_DATES} if SAMPLE_DATES else {}),
            title="Sample date",
            description=f"The sample to publish: {SAMPLE_RULE}.",
            section="Sample",
        ),
        "products": Param(
            ["images"],
            type="array",
            items={"type": "string", "enum": list(PRODUCT_NAMES)},
            uniqueItems=True,
            minItems=1,
            format=PRODUCTS_FORMAT,
            examples=list(PRODUCT_NAMES),
            values_display={product.name: product.title for product in PRODUCTS},
            title="Products",
            description="What to upload. Images run on the worker; the others as LSF jobs on the cluster.",
            section="Sample",
        ),
        "image_base": Param(
            None,
            type=["null", "string"],
            pattern=ABSOLUTE_FOLDER_PATTERN,
            maxLength=ABSOLUTE_FOLDER_MAX,
            format=IMAGE_BASE_FORMAT,
            title="Images folder (optional)",
            description="The sample's rendered images, when they are in neither "
            f"{' nor '.join(CONFIG.images.bases)}: {ABSOLUTE_FOLDER_RULE}.",
            section="Where the data is",
        ),
        "segmentation_dirs": Param(
            ["stitching-output"],
            type="array",
            items={"type": "string", "pattern": FOLDER_NAME_PATTERN, "maxLength": 255},
            minItems=1,
            maxItems=MAX_SEGMENTATION_DIRS,
            uniqueItems=True,
            format=FOLDER_NAMES_FORMAT,
            title="Segmentation folders",
            description="Folders below Reconstructions/<date>/ to upload, one per line; each becomes one LSF job. "
            f"Each is {FOLDER_NAME_RULE}.",
            section="Where the data is",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            format=FLAG_FORMAT,
            title="Dry run",
            description="Log what would be uploaded and submitted; write nothing to S3, submit nothing to LSF.",
            section="Options",
        ),
        "skip_preflight": Param(
            False,
            type="boolean",
            format=FLAG_FORMAT,
            title="Skip the pre-flight check",
            description="Publish the images even when transform.txt, the root block or the tiffs would not load in "
            "HortaCloud (the plan step warns instead of refusing).",
            section="Options",
        ),
    },
)
def hortacloud_upload_sample() -> None:
    """Plan, then one task group per product of the table, then the summary of what was published."""
    planned = plan()
    ends = []
    for product in PRODUCTS:
        with TaskGroup(group_id=product.name, tooltip=product.description):
            if product.mechanism == "s3sync" and CONFIG.images.mechanism == "lsf":
                shards = lsf_jobs("upload", "{{ task.source }}").expand_kwargs(shard_jobs(planned[product.name]))
                shards >> (done := publish(planned[product.name]))
            elif product.mechanism == "s3sync":
                uploads = upload.override(
                    pool=CONFIG.images.pool, **({"queue": CONFIG.images.queue} if CONFIG.images.queue else {})
                ).expand(shard=image_shards(planned[product.name]))
                uploads >> (done := publish(planned[product.name]))
            else:
                transferred = lsf_jobs("transfer", "{{ task.job_name }}").expand_kwargs(
                    jobs(product.name, planned[product.name])
                )
                transferred >> (done := verify(product.name, planned[product.name]))
            if product.name in PRODUCT_ASSETS:
                done >> (done := announce.override(outlets=[PRODUCT_ASSETS[product.name]])())
            ends.append(done)
    # Runs once everything has ended (a refused plan keeps its refusal as the note); fails a partial run.
    ends >> summary()


hortacloud_upload_sample()
