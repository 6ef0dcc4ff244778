"""The upload DAG's tasks: plan, images upload, the LSF jobs' kwargs, verification, the tracings announcement.

Each ``@task`` takes what it needs from the context and calls a plain function of the package; the DAG file
(``dags/hortacloud_upload_sample.py``) only wires them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from hortacloud.config import SiteConfig, load_config
from hortacloud.images import engine_from_s3hook, upload_images
from hortacloud.lsf.commands import transfer_command
from hortacloud.products import PRODUCT_NAMES, PlanError, PlanRequest, parse_request, plan_sample
from hortacloud.run_notes import RunNotes, markdown_text
from hortacloud.s3sync import SyncItem
from hortacloud.sample import InvalidRequest

log = logging.getLogger(__name__)


# -- the plan --------------------------------------------------------------------------------------------------------


def plan_step(
    params: Mapping[str, Any], *, dag_id: str, run_id: str, logger: logging.Logger = log
) -> dict[str, list[dict[str, Any]]]:
    """Check the trigger values, resolve each chosen product's sources and log the plan.

    Returns, per product of the table, the list of transfers (empty for products not chosen). Bad input and
    products with nothing to upload fail the task at once, before anything is transferred, without retries: the
    refusal is the first line the task logs and becomes the run's note.
    """
    config = load_config()
    notes = RunNotes(config.airflow_api.conn_id)
    try:
        request = parse_request(dict(params))
        plan = plan_sample(config, request)
    except (InvalidRequest, PlanError) as err:
        refusal = f"Refused, nothing was uploaded or submitted: {err}"
        logger.error("%s", refusal)
        notes.set(dag_id, run_id, markdown_text(refusal))
        raise AirflowFailException(refusal) from None
    logger.info(
        "Sample %s, products %s%s; bucket s3://%s",
        request.sample,
        ", ".join(request.products),
        " (dry run: nothing will be written)" if request.dry_run else "",
        config.s3.bucket,
    )
    notes.set(dag_id, run_id, markdown_text(run_title(request)))
    for warning in plan.warnings:
        logger.warning("%s", warning)
    logger.info("The plan, as the old generated scripts would have read:\n%s", "\n".join(plan.script_lines(config)))
    return {name: [transfer.to_dict() for transfer in plan.transfers[name]] for name in PRODUCT_NAMES}


def run_title(request: PlanRequest) -> str:
    """What a run publishes, in one line: the run's note while it runs."""
    dry = "Dry run: " if request.dry_run else ""
    return f"{dry}{request.sample}: {', '.join(request.products)}"


@task(multiple_outputs=True, retries=0)
def plan(**context: Any) -> dict[str, list[dict[str, Any]]]:
    """Check the trigger values, find each chosen product's sources, log the plan (see ``plan_step``)."""
    return plan_step(context["params"], dag_id=context["dag"].dag_id, run_id=context["run_id"])


# -- images ----------------------------------------------------------------------------------------------------------


@task
def upload(transfers: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
    """Sync the images transfers (``ktx/`` and the top-level files), or skip when images were not chosen."""
    if not transfers:
        raise AirflowSkipException("images were not chosen for this run")
    params = context["params"]
    summary = upload_images(transfers, sample=str(params["sample"]), dry_run=bool(params.get("dry_run")), logger=log)
    log.info(
        "images: %s uploaded (%.1f MiB), %s already there, %s failed; verified: %s",
        summary["files_uploaded"],
        summary["bytes_uploaded"] / 2**20,
        summary["files_skipped"],
        summary["files_failed"],
        summary["verified"],
    )
    return summary


# -- cluster products ------------------------------------------------------------------------------------------------


def transfer_job_kwargs(config: SiteConfig, transfer: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    """``LsfTransferOperator`` kwargs for one planned cluster transfer (``.partial(...).expand_kwargs(...)``).

    ``transfer`` is ``Transfer.to_dict()``: product, source, prefix, job_name, is_file. The AWS profile is named on
    the command line; its keys stay in the cluster user's AWS configuration, never on a command line. Polling and
    timeouts are not here: the operator reads them from the site configuration when it runs.
    """
    lsf = config.lsf
    destination = f"s3://{config.s3.bucket}/{str(transfer['prefix']).lstrip('/')}"
    template = lsf.transfer_command
    if not lsf.aws_profile:
        # No profile configured: drop the option rather than pass an empty one.
        template = re.sub(r"\s*--profile\s+\{aws_profile\}", "", template)
    output_file = os.path.join(lsf.output_dir, "%J.out") if lsf.output_dir else ""
    return {
        "command": transfer_command(
            template, source=str(transfer["source"]), destination=destination, aws_profile=lsf.aws_profile
        ),
        "job_name": str(transfer.get("job_name") or transfer["product"]),
        "source": str(transfer["source"]),
        "lsf_conn_id": lsf.conn_id,
        "slots": lsf.slots,
        "project": lsf.project,
        "lsf_queue": lsf.queue,
        "runlimit_minutes": lsf.runlimit_minutes,
        "output_file": output_file,
        "dry_run_submit": dry_run,
    }


@task
def jobs(transfers: list[dict[str, Any]], **context: Any) -> list[dict[str, Any]]:
    """The kwargs of one LSF job per planned folder of a cluster product, or skip when it was not chosen."""
    if not transfers:
        raise AirflowSkipException("not chosen for this run")
    config = load_config()
    dry_run = bool(context["params"].get("dry_run"))
    return [transfer_job_kwargs(config, item, dry_run=dry_run) for item in transfers]


def verify_sources(
    product: str, transfers: Sequence[Mapping[str, Any]], *, logger: logging.Logger = log
) -> dict[str, Any]:
    """After a cluster product's LSF jobs ended DONE: every source file is in S3 with its size, or fail.

    The jobs' ``aws s3 sync`` exit codes are trusted for errors it saw; this checks what it could not see (a job
    killed after LSF recorded DONE, a transfer command that exits 0 on partial failure, files that appeared while
    it ran). It walks the sources and lists the prefixes as the images verification does; nothing is uploaded.
    """
    config = load_config()
    engine = engine_from_s3hook(config, logger)
    items = [SyncItem(item["source"], item["prefix"], bool(item.get("is_file"))) for item in transfers]
    problems = engine.verify(items)
    if problems:
        raise AirflowFailException(
            f"{product}: the LSF jobs ended DONE, but S3 does not hold every source file with its size "
            f"(first {len(problems)} shown):\n  " + "\n  ".join(problems) + "\nA new run for this sample transfers "
            "again (clearing the transfer task in this run would re-attach to its finished job)."
        )
    destinations = sorted({f"s3://{config.s3.bucket}/{item.key}" for item in items})
    logger.info("%s: every source file is in S3 with its size under %s", product, ", ".join(destinations))
    return {"verified": True, "transfers": len(items), "destinations": destinations}


@task
def verify(product: str, transfers: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
    """Check the product's sources against S3 after its jobs (``verify_sources``); skip when nothing ran."""
    if not transfers:
        raise AirflowSkipException(f"{product} was not chosen for this run")
    if context["params"].get("dry_run"):
        raise AirflowSkipException("Dry run: nothing was transferred, so nothing is verified")
    return verify_sources(product, transfers)


@task(retries=0)
def announce(**context: Any) -> None:
    """Every transfer of the group succeeded: emit its asset (once per run; a dry run uploaded nothing)."""
    if context["params"]["dry_run"]:
        raise AirflowSkipException("Dry run: nothing was uploaded, so nothing is announced")
