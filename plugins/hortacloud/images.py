"""The images product's Airflow side: S3Hook supplies endpoint and credentials, the sync engine does the rest."""

from __future__ import annotations

import logging
from typing import Any

from hortacloud.config import SiteConfig, load_config
from hortacloud.s3sync import MIB, CrtS3, SyncEngine, SyncItem, crt_credentials, location_from_boto3_client


def engine_from_s3hook(config: SiteConfig, logger: logging.Logger | None = None) -> SyncEngine:
    """A sync engine on the connection ``[s3] conn_id``.

    The connection decides everything a boto3 client would: keys or an assumed role (``role_arn``; refreshed for
    long uploads), region, endpoint_url and addressing style. Only the bytes travel through the CRT client.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=config.s3.conn_id)
    location = location_from_boto3_client(hook.get_conn(), config.s3.bucket)
    credentials = hook.get_session(region_name=location.region).get_credentials()
    s3 = CrtS3(
        location,
        crt_credentials(credentials),
        part_size=config.sync.part_size_mib * MIB,
        multipart_threshold=config.sync.multipart_threshold_mib * MIB,
        checksum=config.sync.checksum,
    )
    return SyncEngine(
        s3,
        config.s3.bucket,
        workers=config.sync.workers,
        progress_interval=config.sync.progress_interval_seconds,
        logger=logger,
    )


def upload_images(
    transfers: list[dict[str, Any]],
    *,
    sample: str,
    dry_run: bool,
    config: SiteConfig | None = None,
    logger: logging.Logger | None = None,
) -> dict[str, Any]:
    """Sync the planned images transfers (``ktx/`` and the top-level files); return the summary for XCom.

    Raises :class:`hortacloud.s3sync.SyncError` when anything failed or did not verify.
    """
    config = config or load_config()
    engine = engine_from_s3hook(config, logger)
    items = [SyncItem(item["source"], item["prefix"], bool(item.get("is_file"))) for item in transfers]
    summary = engine.run(items, dry_run=dry_run, label=f"images {sample}").to_dict()
    summary["warnings"] = summary["warnings"][:20]
    summary["destination"] = f"s3://{config.s3.bucket}/images/{sample}/"
    return summary
