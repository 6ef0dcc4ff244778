"""Task bodies of the upload DAG, kept out of the DAG file so it only wires."""

from __future__ import annotations

import logging
from typing import Any

from hortacloud.config import load_config
from hortacloud.products import PRODUCT_NAMES, PlanError, parse_request, plan_sample
from hortacloud.sample import InvalidRequest

log = logging.getLogger(__name__)


def plan_step(params: dict[str, Any], logger: logging.Logger = log) -> dict[str, list[dict[str, Any]]]:
    """Check the trigger values, resolve each chosen product's sources and log the plan.

    Returns, per product of the table, the list of transfers (empty for products not chosen). Bad input and
    products with nothing to upload fail the task at once, before anything is transferred, without retries.
    """
    from airflow.sdk.exceptions import AirflowFailException

    config = load_config()
    try:
        request = parse_request(params)
        plan = plan_sample(config, request)
    except (InvalidRequest, PlanError) as err:
        raise AirflowFailException(str(err)) from None
    logger.info(
        "Sample %s, products %s%s; bucket s3://%s",
        request.sample,
        ", ".join(request.products),
        " (dry run: nothing will be written)" if request.dry_run else "",
        config.s3.bucket,
    )
    for warning in plan.warnings:
        logger.warning("%s", warning)
    logger.info("The plan, as the old generated scripts would have read:\n%s", "\n".join(plan.script_lines(config)))
    return {name: [transfer.to_dict() for transfer in plan.transfers[name]] for name in PRODUCT_NAMES}


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
