"""
### Rebuild the neuron metadata in `s3://janelia-mouselight-imagery` from NeuronBrowser

Runs every night (cron and time zone from `[neuronbrowser] schedule` and `timezone` in `include/hortacloud.toml`)
and whenever the upload DAG has updated tracings (the `hortacloud_tracings` asset). One run at a time, no catch-up.

1. **fetch_mapping** asks the NeuronBrowser sample-api (connection `hortacloud_neuronbrowser`) for every injection
   and maps sample date (read in America/New_York) -> neuron tag -> neuron id. Any failure (HTTP error, timeout,
   `errors` in the answer, a body that is not JSON, no injections) fails the run before anything is written.
2. **scan** lists `tracings/<location>/<date>/<G-NNN>/` in the bucket: folders, `soma.txt`, which SWCs exist.
3. **build_and_write** builds `neurons/<location>/<date>/metadata.json` (and `images/<date>/neurons.json` for
   tracing_complete when HortaCloud can load that sample), refuses everything when the result describes fewer
   neurons than `[neuronbrowser] min_share` of what the bucket already holds, keeps any file whose new version
   would drop neurons it describes, and writes only files whose bytes changed.
4. **report** logs what happened and returns a small summary (dates in S3, dates without mappings, files written,
   unchanged and refused, neurons whose soma location came from a fallback).

`dry_run` reports what would change and writes nothing. `allow_removals` lets a run drop neurons NeuronBrowser no
longer maps (without it, the files that would lose neurons are kept and the run fails, naming them).
`remove_legacy` deletes exactly the objects the report lists as left by the old scripts (empty `metadata.json` for
dates without neuron folders, `neurons.json` of images HortaCloud cannot load); without it they are only listed.
Neuron folders HortaCloud cannot load (a name such as `G-011 (2)`) and 0-byte SWCs are listed in the report too.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag

from hortacloud.assets import TRACINGS_UPDATED
from hortacloud.config import NEURON_LOCATIONS, load_config
from hortacloud.tasks.metadata import build_and_write, fetch_mapping, report, scan

CONFIG = load_config()
LOCATION_TITLES = {
    "Finished_Neurons": "Finished neurons (tracings/Finished_Neurons)",
    "tracing_complete": "Tracing complete (tracings/tracing_complete; also images/<date>/neurons.json)",
}


@dag(
    dag_id=Path(__file__).stem,
    dag_display_name="Rebuild neuron metadata",
    description="Nightly: neuron metadata in s3://janelia-mouselight-imagery rebuilt from NeuronBrowser",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(
            CONFIG.neuronbrowser.schedule, timezone=CONFIG.timezone, run_immediately=dt.timedelta(0)
        ),
        assets=TRACINGS_UPDATED,
    ),
    # No start_date, and run_immediately a zero window: the first scheduled run is the next nightly one, whenever the
    # DAG is unpaused. With a start_date the cron timetable runs its latest past tick at once; and run_immediately's
    # default, False, still runs it when unpaused within 10% of a day (2.4 h) after it (apache/airflow#64162).
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["hortacloud", "mouselight", "neurons"],
    default_args={
        "owner": "mouselight",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=5),
        "retry_exponential_backoff": True,
    },
    params={
        "locations": Param(
            list(CONFIG.neuronbrowser.locations),
            type="array",
            items={"type": "string", "enum": list(NEURON_LOCATIONS)},
            uniqueItems=True,
            minItems=1,
            examples=list(NEURON_LOCATIONS),
            values_display=LOCATION_TITLES,
            title="Tracing locations",
            description="Which tracings/<location>/ trees to rebuild metadata for.",
            section="Options",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Report what would change; write nothing to S3.",
            section="Options",
        ),
        "allow_removals": Param(
            False,
            type="boolean",
            title="Allow removals",
            description="Write files even when NeuronBrowser no longer maps some of the neurons they describe "
            "(otherwise those files are kept and the run fails, naming the neurons).",
            section="Options",
        ),
        "remove_legacy": Param(
            False,
            type="boolean",
            title="Remove what the old scripts left",
            description="Delete exactly the objects the report lists as left by the old scripts (empty "
            "metadata.json for dates without neuron folders, neurons.json of images HortaCloud cannot load). "
            "Off: they are only reported.",
            section="Options",
        ),
    },
)
def hortacloud_neuron_metadata() -> None:
    """Mapping and bucket scan, then build and write, then the report."""
    build_and_write(fetch_mapping(), scan()) >> report()


hortacloud_neuron_metadata()
