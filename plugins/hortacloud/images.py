"""The images product at real size: shards over workers or the cluster, discovery files last, a manifest.

The plan step (on a worker that sees the sample) walks ``ktx/`` once and cuts it into shards of about equal bytes
(``hortacloud.s3sync.shards``), writing each shard's file list to ``[images] shard_lists_dir``; the sample's other
top-level files make one more shard. Each shard is then uploaded by the sync engine, in an Airflow task
(``[images] mechanism = "worker"``) or as an LSF job on a cluster node (``"lsf"``). ``images.publish`` runs only when
every shard succeeded: it verifies the whole sample against the lists (sizes, and the ETags the shards' uploads
answered with), then uploads the two files HortaCloud discovers a sample by, ``transform.txt`` and
``ktx/block_8_xy_.ktx``, and writes the manifest. A failed, partial or cancelled publish of a new sample is
therefore never discoverable.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hortacloud.config import SiteConfig
from hortacloud.s3sync.control import BotocoreCredentials
from hortacloud.s3sync.engine import SyncEngine, SyncItem, read_results
from hortacloud.s3sync.local import LocalFile, walk_sorted, write_file_list
from hortacloud.s3sync.remote import MIB, CrtS3, RemoteObject, key_ordered, location_from_boto3_client
from hortacloud.s3sync.shards import plan_shards

log = logging.getLogger(__name__)

#: The files HortaCloud discovers a sample by: uploaded last, by images.publish.
DISCOVERY = ("transform.txt",)
ROLE_SHARD, ROLE_DISCOVERY = "shard", "discovery"


def engine_from_s3hook(config: SiteConfig, logger: logging.Logger | None = None) -> SyncEngine:
    """A sync engine on the connection ``[s3] conn_id``.

    The connection decides everything a boto3 client would: keys or an assumed role (``role_arn``; refreshed for
    long uploads), region, endpoint_url and addressing style. Only the bytes travel through the CRT client.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=config.s3.conn_id)
    location = location_from_boto3_client(hook.get_conn(), config.s3.bucket)
    credentials = hook.get_session(region_name=location.region).get_credentials()
    sync = config.sync
    s3 = CrtS3(
        location,
        BotocoreCredentials(credentials),
        part_size=sync.part_size_mib * MIB,
        multipart_threshold=sync.multipart_threshold_mib * MIB,
        memory_limit=sync.memory_budget_mib * MIB,
        checksum=sync.checksum,
        request_timeout=sync.request_timeout_seconds,
    )
    return SyncEngine(
        s3,
        config.s3.bucket,
        workers=sync.workers,
        memory_budget=sync.memory_budget_mib * MIB,
        progress_interval=sync.progress_interval_seconds,
        stall_timeout=sync.stall_timeout_seconds,
        logger=logger,
    )


def plan_images(
    config: SiteConfig, transfers: Sequence[Mapping[str, Any]], sample: str, lists_dir: Path
) -> list[dict[str, Any]]:
    """The images transfers of the plan (``ktx/`` and the top-level files) as shards and discovery files.

    Each shard is ``{"role": "shard", "number", "name", "source", "prefix", "file_list", "results", "prefixes",
    "files", "bytes"}``: the engine syncs the files its list names (below ``source``) to ``prefix``, listing only
    ``prefixes`` of it. The discovery files are ``{"role": "discovery", "source", "key"}``, in upload order.
    """
    images = config.images
    tree = next(t for t in transfers if not t.get("is_file"))
    ktx_root, ktx_prefix = str(tree["source"]), str(tree["prefix"])
    base, prefix = os.path.dirname(ktx_root), ktx_prefix[: -len("ktx/")]
    root_block = images.root_block.removeprefix("ktx/")
    files = walk_sorted(ktx_root, lambda message: log.warning("%s", message))
    shards, ktx_top = plan_shards(
        files,
        images.shards or None,
        lists_dir,
        shards=images.shards,
        target_bytes=int(images.target_shard_gib * 1024 * MIB),
        most=images.max_shards,
    )
    planned = [
        {
            "role": ROLE_SHARD,
            "number": shard.number,
            "name": shard.name,
            "source": ktx_root,
            "prefix": ktx_prefix,
            "file_list": shard.file_list,
            "results": shard.file_list.replace(".jsonl", ".results.jsonl"),
            "prefixes": shard.prefixes,
            "files": shard.files,
            "bytes": shard.bytes,
        }
        for shard in shards
    ]
    # The other top-level files (the tiffs, tilebase.cache.yml, ktx/'s own files but the root block): one more shard.
    top = [LocalFile(f"ktx/{item.key}", item.path, item.size, item.mtime) for item in ktx_top if item.key != root_block]
    for transfer in transfers:
        name = os.path.basename(str(transfer["source"]))
        if transfer.get("is_file") and name not in DISCOVERY:
            info = os.stat(str(transfer["source"]))
            top.append(LocalFile(name, str(transfer["source"]), info.st_size, info.st_mtime))
    if top:
        top.sort(key=lambda item: item.key)
        file_list = lists_dir / "top-files.jsonl"
        count, size = write_file_list(file_list, base, top)
        planned.append(
            {
                "role": ROLE_SHARD,
                "number": 0,
                "name": "top-level files",
                "source": base,
                "prefix": prefix,
                "file_list": str(file_list),
                "results": str(lists_dir / "top-files.results.jsonl"),
                "prefixes": [item.key for item in top],
                "files": count,
                "bytes": size,
            }
        )
    discovery = [t for t in transfers if t.get("is_file") and os.path.basename(str(t["source"])) in DISCOVERY]
    planned += [{"role": ROLE_DISCOVERY, "source": str(t["source"]), "key": str(t["prefix"])} for t in discovery]
    planned.append(
        {"role": ROLE_DISCOVERY, "source": os.path.join(base, images.root_block), "key": prefix + images.root_block}
    )
    return planned


def shard_item(shard: Mapping[str, Any]) -> SyncItem:
    """The sync engine's item for one planned shard."""
    return SyncItem(
        str(shard["source"]), str(shard["prefix"]), file_list=str(shard["file_list"]), prefixes=tuple(shard["prefixes"])
    )


def upload_shard(
    config: SiteConfig, shard: Mapping[str, Any], *, dry_run: bool, logger: logging.Logger
) -> dict[str, Any]:
    """Sync one shard here (``[images] mechanism = "worker"``); the summary for XCom."""
    engine = engine_from_s3hook(config, logger)
    label = f"images shard {shard['name']}"
    summary = engine.run(
        [shard_item(shard)], dry_run=dry_run, label=label, results_path=None if dry_run else str(shard["results"])
    )
    result = summary.to_dict()
    result["warnings"] = result["warnings"][:20]
    return result


def shard_job_kwargs(config: SiteConfig, shard: Mapping[str, Any], sample: str, *, dry_run: bool) -> dict[str, Any]:
    """``LsfTransferOperator`` kwargs for one shard (``[images] mechanism = "lsf"``).

    The job runs the cluster's install of the engine on the shard's file list and writes the ETags its uploads got
    to the shard's results file, which ``images.publish`` checks.
    """
    images, lsf = config.images, config.lsf
    prefixes = " ".join(f"--prefix {shlex.quote(p)}" for p in shard["prefixes"])
    command = images.shard_command.format(
        file_list=shlex.quote(str(shard["file_list"])),
        results=shlex.quote(str(shard["results"])),
        prefixes=prefixes,
        source=shlex.quote(str(shard["source"]).rstrip("/")),
        destination=shlex.quote(f"s3://{config.s3.bucket}/{shard['prefix']}".rstrip("/")),
    )
    return {
        "command": command,
        "job_name": f"img{sample[5:7]}{sample[8:10]}-{shard['number']}",
        "source": str(shard["name"]),
        **lsf.job_kwargs(),
        "dry_run_submit": dry_run,
    }


def verify_shards(config: SiteConfig, shards: Sequence[Mapping[str, Any]], logger: logging.Logger) -> list[str]:
    """The first problems of the shards in S3, or [] when the sample is complete.

    Every shard's files must be there with their sizes, and with the ETags their uploads answered (the results
    files the shards wrote).
    """
    engine = engine_from_s3hook(config, logger)
    problems: list[str] = []
    for shard in shards:
        results = str(shard["results"])
        uploaded = _last_etags(results) if os.path.exists(results) else iter(())
        problems += engine.verify([shard_item(shard)], uploaded, limit=20 - len(problems))
        if len(problems) >= 20:
            break
    return problems


def publish_discovery(config: SiteConfig, discovery: Sequence[Mapping[str, Any]], logger: logging.Logger) -> list[str]:
    """Upload the discovery files in order (``transform.txt``, then the root block), each verified; their keys.

    Until the root block is up, JACS does not see the sample: this is the last write of a publish.
    """
    engine = engine_from_s3hook(config, logger)
    published = []
    for item in discovery:
        source, key = str(item["source"]), str(item["key"])
        if not os.path.isfile(source):
            logger.warning("images: %s does not exist; HortaCloud will not discover this sample", source)
            continue
        engine.run([SyncItem(source, key, is_file=True)], label=f"discovery file {key}")
        published.append(key)
    return published


def _last_etags(path: str) -> Any:
    """The results file's keys in key order, the last ETag of each (a retried shard appends its own results)."""
    numbered = (RemoteObject(item.key, number, 0.0, item.etag) for number, item in enumerate(read_results(path)))
    previous: RemoteObject | None = None
    for item in key_ordered(numbered):
        if previous is not None and previous.key != item.key:
            yield previous
        previous = item
    if previous is not None:
        yield previous
