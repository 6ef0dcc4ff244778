"""The upload DAG's tasks: plan, images upload, the LSF jobs' kwargs, verification, the tracings announcement.

Each ``@task`` takes what it needs from the context and calls a plain function of the package; the DAG file
(``dags/hortacloud_upload_sample.py``) only wires them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from airflow.sdk import TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from hortacloud import sample_dates
from hortacloud.config import SiteConfig, load_config
from hortacloud.images import (
    ROLE_DISCOVERY,
    ROLE_SHARD,
    engine_from_s3hook,
    plan_images,
    publish_discovery,
    shard_job_kwargs,
    upload_shard,
    verify_shards,
)
from hortacloud.lsf.commands import transfer_command
from hortacloud.lsf.operator import STATE_KEY
from hortacloud.products import (
    PRODUCT_NAMES,
    PRODUCTS,
    PRODUCTS_BY_NAME,
    PlanError,
    PlanRequest,
    SamplePlan,
    parse_request,
    plan_sample,
)
from hortacloud.run_notes import NOTE_LIMIT, RunNotes, markdown_text
from hortacloud.s3sync import manifest
from hortacloud.s3sync.engine import SyncItem
from hortacloud.sample import InvalidRequest
from hortacloud.summary import ProductRow, markdown, product_result, shard_totals, text_table

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
        planned = _planned(config, plan, request, dag_id, run_id, logger)
    except (InvalidRequest, PlanError) as err:
        refusal = f"Refused, nothing was uploaded or submitted: {err}"
        logger.error("%s", refusal)
        notes.set(dag_id, run_id, markdown_text(refusal))
        raise AirflowFailException(refusal) from None
    notes.set(dag_id, run_id, markdown_text(run_title(request)))
    sample_dates.refresh(config)  # the trigger form's suggestions, from where the bases are mounted
    return planned


def _planned(
    config: SiteConfig, plan: SamplePlan, request: PlanRequest, dag_id: str, run_id: str, logger: logging.Logger
) -> dict[str, list[dict[str, Any]]]:
    """The plan logged, and its transfers per product; the images cut into shards (their lists written)."""
    lists_dir = shard_lists_dir(config, dag_id, run_id, request.sample) if plan.transfers["images"] else None
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
    planned = {name: [transfer.to_dict() for transfer in plan.transfers[name]] for name in PRODUCT_NAMES}
    if lists_dir is not None:
        planned["images"] = plan_images(config, planned["images"], request.sample, lists_dir)
        _log_shards(planned["images"], config, logger)
    return planned


def _log_shards(images: Sequence[Mapping[str, Any]], config: SiteConfig, logger: logging.Logger) -> None:
    shards = [item for item in images if item["role"] == ROLE_SHARD]
    files = sum(int(item["files"]) for item in shards)
    size = sum(int(item["bytes"]) for item in shards)
    logger.info(
        "images: %d shard(s) by %s, %s files, %.1f GiB; the discovery files go up last:\n  %s",
        len(shards),
        config.images.mechanism,
        f"{files:,}",
        size / 2**30,
        "\n  ".join(
            f"{item['name']}: {int(item['files']):,} files, {int(item['bytes']) / 2**20:,.1f} MiB" for item in shards
        ),
    )


def shard_lists_dir(config: SiteConfig, dag_id: str, run_id: str, sample: str) -> Path:
    """Where this run's shard lists go: ``[images] shard_lists_dir`` (else beside the LSF output), per run."""
    base = config.images.shard_lists_dir or (
        os.path.join(config.lsf.output_dir, "shard-lists") if config.lsf.output_dir else ""
    )
    if not base:
        if config.images.mechanism == "lsf":
            raise PlanError(
                "images: [images] mechanism 'lsf' needs a folder the cluster nodes and the workers share for the "
                "shard lists: set [images] shard_lists_dir (or [lsf] output_dir)"
            )
        base = os.path.join(tempfile.gettempdir(), "hortacloud-shard-lists")
    return Path(base) / _safe(dag_id) / _safe(run_id) / sample


def _safe(name: str) -> str:
    """A run id as one folder name (``manual__2026-12-01T21:05:07+00:00`` has ``:`` and ``+``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def run_title(request: PlanRequest) -> str:
    """What a run publishes, in one line: the run's note while it runs."""
    dry = "Dry run: " if request.dry_run else ""
    return f"{dry}{request.sample}: {', '.join(request.products)}"


@task(multiple_outputs=True, retries=0)
def plan(**context: Any) -> dict[str, list[dict[str, Any]]]:
    """Check the trigger values, find each chosen product's sources, log the plan (see ``plan_step``)."""
    return plan_step(context["params"], dag_id=context["dag"].dag_id, run_id=context["run_id"])


# -- images ----------------------------------------------------------------------------------------------------------


def _shards(transfers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if not transfers:
        raise AirflowSkipException("images were not chosen for this run")
    return [dict(item) for item in transfers if item["role"] == ROLE_SHARD]


@task
def image_shards(transfers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The planned shards of the images (``[images] mechanism = "worker"``), one mapped upload each."""
    return _shards(transfers)


@task(map_index_template="{{ shard_name }}")
def upload(shard: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Sync one shard of the images here; its name (an octant range) is the task's map index in the UI."""
    get_current_context()["shard_name"] = shard["name"]  # type: ignore[typeddict-unknown-key]
    summary = upload_shard(load_config(), shard, dry_run=bool(context["params"].get("dry_run")), logger=log)
    log.info(
        "%s: %s uploaded (%.1f MiB), %s already there; verified: %s",
        shard["name"],
        f"{summary['files_uploaded']:,}",
        summary["bytes_uploaded"] / 2**20,
        f"{summary['files_skipped']:,}",
        summary["verified"],
    )
    return summary


@task
def shard_jobs(transfers: list[dict[str, Any]], **context: Any) -> list[dict[str, Any]]:
    """The LSF job of each planned shard (``[images] mechanism = "lsf"``)."""
    config, params = load_config(), context["params"]
    return [
        shard_job_kwargs(config, shard, str(params["sample"]), dry_run=bool(params.get("dry_run")))
        for shard in _shards(transfers)
    ]


@task(retries=1)
def publish(transfers: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
    """After every shard: verify the whole sample, upload the discovery files last, write the manifest."""
    if not transfers:
        raise AirflowSkipException("images were not chosen for this run")
    params = context["params"]
    if params.get("dry_run"):
        raise AirflowSkipException("Dry run: nothing was uploaded, so nothing is published")
    config, sample = load_config(), str(params["sample"])
    shards = [item for item in transfers if item["role"] == ROLE_SHARD]
    problems = verify_shards(config, shards, log)
    if problems:
        raise AirflowFailException(
            f"images {sample}: the shards ended, but S3 does not hold every file as it was sent (first "
            f"{len(problems)} shown); the sample stays undiscoverable:\n  " + "\n  ".join(problems)
        )
    discovery = [item for item in transfers if item["role"] == ROLE_DISCOVERY]
    published = publish_discovery(config, discovery, log)
    prefixes = [f"images/{sample}/ktx/", *sorted(published)]
    top = [item for shard in shards if shard["number"] == 0 for item in shard["prefixes"]]
    prefixes += [f"images/{sample}/{item}" for item in top if not item.startswith("ktx/")]
    manifest = write_manifest(config, context, "images", sorted(set(prefixes)), [s["source"] for s in shards[:1]])
    log.info("images %s published: HortaCloud can discover s3://%s/images/%s/", sample, config.s3.bucket, sample)
    return {"verified": True, "shards": len(shards), "discovery": published, "manifest": manifest}


# -- cluster products ------------------------------------------------------------------------------------------------


def transfer_job_kwargs(config: SiteConfig, transfer: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    """``LsfTransferOperator`` kwargs for one planned cluster transfer (``.partial(...).expand_kwargs(...)``).

    ``transfer`` is ``Transfer.to_dict()``: product, source, prefix, job_name, is_file. The AWS profile is named on
    the command line; its keys stay in the cluster user's AWS configuration, never on a command line. Polling and
    timeouts are not here: the operator reads them from the site configuration when it runs.
    """
    return {
        "command": _transfer_command(config, transfer),
        "job_name": str(transfer.get("job_name") or transfer["product"]),
        "source": str(transfer["source"]),
        **config.lsf.job_kwargs(),
        "dry_run_submit": dry_run,
    }


def _transfer_command(config: SiteConfig, transfer: Mapping[str, Any]) -> str:
    lsf = config.lsf
    destination = f"s3://{config.s3.bucket}/{str(transfer['prefix']).lstrip('/')}"
    template = lsf.transfer_command
    if not lsf.aws_profile:
        # No profile configured: drop the option rather than pass an empty one.
        template = re.sub(r"\s*--profile\s+\{aws_profile\}", "", template)
    return transfer_command(
        template, source=str(transfer["source"]), destination=destination, aws_profile=lsf.aws_profile
    )


def overlaid(transfers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """An overlay product's transfers as one: the first source, the later ones laid over it, in order."""
    first = dict(transfers[0])
    first["overlays"] = [str(item["source"]) for item in transfers[1:]]
    return [first]


@task
def jobs(product: str, transfers: list[dict[str, Any]], **context: Any) -> list[dict[str, Any]]:
    """The kwargs of one LSF job per planned folder of a cluster product, or skip when it was not chosen.

    A product whose sources overlay one prefix (carveouts) is one job running them in order, so the last root
    wins where both hold a path, as the old script's sequential syncs did.
    """
    if not transfers:
        raise AirflowSkipException("not chosen for this run")
    config = load_config()
    dry_run = bool(context["params"].get("dry_run"))
    if not PRODUCTS_BY_NAME[product].overlay or len(transfers) == 1:
        return [transfer_job_kwargs(config, item, dry_run=dry_run) for item in transfers]
    (job,) = [transfer_job_kwargs(config, item, dry_run=dry_run) for item in overlaid(transfers)]
    job["command"] = " && ".join(_transfer_command(config, item) for item in transfers)
    job["job_name"] = str(transfers[0]["job_name"]).rsplit("-", 1)[0]
    job["source"] = " + ".join(str(item["source"]) for item in transfers)
    return [job]


def verify_sources(
    product: str, transfers: Sequence[Mapping[str, Any]], *, logger: logging.Logger = log
) -> dict[str, Any]:
    """After a cluster product's LSF jobs ended DONE: every source file is in S3 with its size, or fail.

    The jobs' ``aws s3 sync`` exit codes are trusted for errors it saw; this checks what it could not see (a job
    killed after LSF recorded DONE, a transfer command that exits 0 on partial failure, files that appeared while
    it ran). It walks the sources and lists the prefixes as the images verification does; nothing is uploaded.
    For an overlay product the last source's file is expected where sources share a path.
    """
    config = load_config()
    engine = engine_from_s3hook(config, logger)
    if PRODUCTS_BY_NAME[product].overlay and len(transfers) > 1:
        transfers = overlaid(transfers)
    items = [
        SyncItem(item["source"], item["prefix"], bool(item.get("is_file")), overlays=tuple(item.get("overlays", ())))
        for item in transfers
    ]
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
    """Check the product's sources against S3 after its jobs (``verify_sources``), then write its manifest."""
    if not transfers:
        raise AirflowSkipException(f"{product} was not chosen for this run")
    if context["params"].get("dry_run"):
        raise AirflowSkipException("Dry run: nothing was transferred, so nothing is verified")
    result = verify_sources(product, transfers)
    prefixes = sorted({str(item["prefix"]) for item in transfers})
    sources = [str(item["source"]) for item in transfers]
    result["manifest"] = write_manifest(load_config(), context, product, prefixes, sources)
    return result


@task(retries=0)
def announce(**context: Any) -> None:
    """Every transfer of the group succeeded: emit its asset (once per run; a dry run uploaded nothing)."""
    if context["params"]["dry_run"]:
        raise AirflowSkipException("Dry run: nothing was uploaded, so nothing is announced")


# -- manifests -------------------------------------------------------------------------------------------------------


def write_manifest(
    config: SiteConfig, context: Mapping[str, Any], product: str, prefixes: Sequence[str], sources: Sequence[str]
) -> dict[str, Any] | None:
    """The product's manifest after it was verified, written unless unchanged: key, objects, bytes (None: off)."""
    if not config.manifests.enabled:
        return None
    sample = str(context["params"]["sample"])
    key = config.manifests.key.format(sample=sample, product=product)
    engine = engine_from_s3hook(config, log)
    dag_run = context.get("dag_run")
    started = getattr(dag_run, "start_date", None)
    provenance = {
        "dag_id": context["dag"].dag_id,
        "run_id": context["run_id"],
        "hortacloud_version": version("hortacloud"),
        "product": product,
        "sample": sample,
        "sources": list(sources),
        "started": started.isoformat() if started else None,
        "ended": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    with tempfile.TemporaryDirectory(prefix="hortacloud-manifest-") as folder:
        path = Path(folder) / "manifest.json"
        digest = manifest.build(engine.s3, config.s3.bucket, prefixes, provenance, path)
        written = manifest.publish(engine.s3, config.s3.bucket, key, path, digest["value"])
    log.info(
        "%s: manifest s3://%s/%s %s (%s objects, %s bytes, digest %s)",
        product,
        config.s3.bucket,
        key,
        "written" if written else "unchanged, kept as it was",
        f"{digest['count']:,}",
        f"{digest['bytes']:,}",
        digest["value"],
    )
    return {"key": key, "objects": digest["count"], "bytes": digest["bytes"]}


# -- the summary -----------------------------------------------------------------------------------------------------

#: The task whose result says a product is published (and verified), per product.
_FINAL_TASK = {"images": "publish"}
#: The task that ran its LSF jobs (their ids are in its XCom ``lsf_job``).
_JOB_TASK = {"images": "upload"}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [value]
    return [item for item in value if item is not None]


def summary_rows(
    params: Mapping[str, Any],
    planned: Mapping[str, Sequence[Mapping[str, Any]]],
    states: Mapping[str, str | None],
    pull: Any,
) -> list[ProductRow]:
    """One row per product of the table; ``pull(task_id, key)`` reads an XCom of this run (every map index)."""
    chosen, dry_run, sample = set(params.get("products") or ()), bool(params.get("dry_run")), str(params["sample"])
    rows = []
    for product in PRODUCTS:
        name = product.name
        own = [state for key, state in states.items() if key.startswith(f"{name}.")]
        row = ProductRow(name, product_result(own, chosen=name in chosen, dry_run=dry_run))
        if name in chosen:
            transfers = planned.get(name) or []
            row.prefixes = [f"images/{sample}/"] if name == "images" else sorted({str(t["prefix"]) for t in transfers})
            final: Mapping[str, Any] = next(
                iter(_as_list(pull(f"{name}.{_FINAL_TASK.get(name, 'verify')}", "return_value"))), {}
            )
            row.verified = bool(final.get("verified")) if final else (False if row.failed else None)
            if isinstance(final.get("manifest"), Mapping):
                row.objects, row.object_bytes = final["manifest"]["objects"], final["manifest"]["bytes"]
            jobs = _as_list(pull(f"{name}.{_JOB_TASK.get(name, 'transfer')}", STATE_KEY))
            row.jobs = [str(job["job_id"]) for job in jobs if isinstance(job, Mapping) and job.get("job_id")]
            if name == "images" and (totals := shard_totals(_as_list(pull("images.upload", "return_value")))):
                row.uploaded, row.uploaded_bytes, row.already_there = totals
        rows.append(row)
    return rows


@task(trigger_rule=TriggerRule.ALL_DONE, retries=0)
def summary(**context: Any) -> dict[str, Any]:
    """What the run published, per product: logged as a table and written as the run's note; fails a partial run."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    params, ti, config = context["params"], context["ti"], load_config()
    planned = ti.xcom_pull(task_ids="plan")  # not an argument: a refused plan leaves none, and this still runs
    states = RuntimeTaskInstance.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
    states = {key: value for key, value in states.items() if key != ti.task_id}
    if not planned:
        raise AirflowFailException("No plan: the plan step refused the run or failed (its log says why)")
    rows = summary_rows(params, planned, states, lambda task_id, key: ti.xcom_pull(task_ids=task_id, key=key))
    failed = [row.product for row in rows if row.failed]
    running = [row.product for row in rows if row.result == "running"]
    verdict = f"FAILED: {', '.join(failed)}" if failed else ("incomplete" if running else "done")
    title = f"{run_title(parse_request(dict(params)))} ({verdict})"  # the plan's own title, with the verdict
    for line in [title, *text_table(rows, config.s3.bucket)]:
        log.info("%s", line)
    RunNotes(config.airflow_api.conn_id).set(
        ti.dag_id, ti.run_id, markdown(title, rows, config.s3.bucket, config.s3.browse_url, NOTE_LIMIT)
    )
    if failed or running:
        raise AirflowFailException(
            f"This run did not publish everything: {', '.join(failed + running)} did not end well (see their task "
            "logs); what did publish is in the table above."
        )
    return {"title": title, "products": {row.product: row.result for row in rows}}
