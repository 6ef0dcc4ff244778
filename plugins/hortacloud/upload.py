"""Task bodies of the upload DAG, kept out of the DAG file so it only wires."""

from __future__ import annotations

import logging
from typing import Any

from hortacloud.config import load_config
from hortacloud.products import PRODUCT_NAMES, PlanError, PlanRequest, parse_request, plan_sample
from hortacloud.run_notes import RunNotes, markdown_text
from hortacloud.sample import InvalidRequest

log = logging.getLogger(__name__)


def plan_step(
    params: dict[str, Any], *, dag_id: str, run_id: str, logger: logging.Logger = log
) -> dict[str, list[dict[str, Any]]]:
    """Check the trigger values, resolve each chosen product's sources and log the plan.

    Returns, per product of the table, the list of transfers (empty for products not chosen). Bad input and
    products with nothing to upload fail the task at once, before anything is transferred, without retries: the
    refusal is the first line the task logs and becomes the run's note.
    """
    from airflow.sdk.exceptions import AirflowFailException

    config = load_config()
    notes = RunNotes(config.airflow_api.conn_id)
    try:
        request = parse_request(params)
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


def images_step(
    transfers: list[dict[str, Any]], params: dict[str, Any], logger: logging.Logger = log
) -> dict[str, Any]:
    """Sync the images transfers, or skip when images were not chosen."""
    from airflow.sdk.exceptions import AirflowSkipException

    from hortacloud.images import upload_images

    if not transfers:
        raise AirflowSkipException("images were not chosen for this run")
    summary = upload_images(transfers, sample=str(params["sample"]), dry_run=bool(params.get("dry_run")), logger=logger)
    logger.info(
        "images: %s uploaded (%.1f MiB), %s already there, %s failed; verified: %s",
        summary["files_uploaded"],
        summary["bytes_uploaded"] / 2**20,
        summary["files_skipped"],
        summary["files_failed"],
        summary["verified"],
    )
    return summary


def verify_step(
    product: str, transfers: list[dict[str, Any]], params: dict[str, Any], logger: logging.Logger = log
) -> dict[str, Any]:
    """After a cluster product's LSF jobs ended DONE: every source file is in S3 with its size, or the task fails.

    The jobs' ``aws s3 sync`` exit codes are trusted for errors it saw; this checks what it could not see (a job
    killed after LSF recorded DONE, a transfer command that exits 0 on partial failure, files that appeared while
    it ran). It walks the sources and lists the prefixes as the images verification does; nothing is uploaded.
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from hortacloud.images import engine_from_s3hook
    from hortacloud.s3sync import SyncItem

    if not transfers:
        raise AirflowSkipException(f"{product} was not chosen for this run")
    if params.get("dry_run"):
        raise AirflowSkipException("Dry run: nothing was transferred, so nothing is verified")
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
