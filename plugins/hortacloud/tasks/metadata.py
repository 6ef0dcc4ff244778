"""The neuron metadata DAG's tasks: fetch the mapping, scan the bucket, build and write, report.

Each ``@task`` resolves its connections at run time (never at DAG parse time), calls the plain functions of
``hortacloud.metadata`` and returns JSON-able values for XCom; the DAG file only wires them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow.sdk import TriggerRule, task
from airflow.sdk.exceptions import AirflowFailException

from hortacloud.config import SiteConfig, load_config
from hortacloud.metadata.bucket import BucketScan, apply, scan_bucket
from hortacloud.metadata.documents import GuardRefusal, check_guard
from hortacloud.metadata.mapping import LOCATIONS, NeuronMapping, build_mapping
from hortacloud.metadata.report import MetadataReport
from hortacloud.run_notes import RunNotes, markdown_text

log = logging.getLogger(__name__)


def _s3_client(config: SiteConfig) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=config.s3.conn_id).get_conn()


def mapping_from_neuronbrowser(config: SiteConfig | None = None) -> dict[str, Any]:
    """Ask NeuronBrowser for every injection and map them; fails on any NeuronBrowser problem or an empty answer."""
    from hortacloud.neuronbrowser import NeuronBrowserHook

    config = config or load_config()
    nb = config.neuronbrowser
    hook = NeuronBrowserHook(
        nb.conn_id,
        connect_timeout=nb.connect_timeout_seconds,
        read_timeout=nb.read_timeout_seconds,
        retries=nb.retries,
        backoff=nb.backoff_seconds,
    )
    mapping = build_mapping(hook.injections(), config.tz)
    check_guard(mapping.injections, 0, 0, 0.0)  # no injections: refuse before anything else runs
    log.info(
        "Mapped %d neurons on %d sample dates (%s) from %d injections",
        mapping.neuron_count,
        len(mapping.dates),
        config.timezone,
        mapping.injections,
    )
    for reason, count in mapping.skipped.items():
        log.info("Skipped: %d %s", count, reason)
    return mapping.to_json()


def scan_tracings(locations: Sequence[str], config: SiteConfig | None = None) -> dict[str, Any]:
    """List the tracings of ``locations`` in the bucket (folders, soma.txt, SWC presence, image readiness)."""
    config = config or load_config()
    nb = config.neuronbrowser
    result = scan_bucket(
        _s3_client(config),
        config.s3.bucket,
        _checked(locations),
        prefix=nb.neuron_prefix,
        images_requires=nb.neurons_json_requires,
    )
    return result.to_json()


def build_and_apply(
    mapping: dict[str, Any],
    scanned: dict[str, Any],
    locations: Sequence[str],
    *,
    dry_run: bool,
    publish: Callable[[dict[str, Any]], None],
    allow_removals: bool = False,
    remove_legacy: bool = False,
    config: SiteConfig | None = None,
) -> dict[str, Any]:
    """Build every document, guard, write what changed; ``publish`` gets the report (also before a refusal)."""
    config = config or load_config()
    nb = config.neuronbrowser
    try:
        report = apply(
            _s3_client(config),
            config.s3.bucket,
            NeuronMapping.from_json(mapping),
            BucketScan.from_json(scanned),
            _checked(locations),
            prefix=nb.neuron_prefix,
            min_share=nb.min_share,
            dry_run=dry_run,
            allow_removals=allow_removals,
            remove_legacy=remove_legacy,
        )
    except GuardRefusal as err:
        refused: MetadataReport | None = getattr(err, "report", None)
        if refused is not None:
            publish(report_payload(refused))
        raise
    payload = report_payload(report)
    publish(payload)
    return payload


def report_payload(report: MetadataReport) -> dict[str, Any]:
    """The report as the report task reads it: log lines and the small XCom."""
    return {"lines": report.lines(), "xcom": report.to_xcom()}


def _checked(locations: Sequence[str]) -> list[str]:
    unknown = [loc for loc in locations if loc not in LOCATIONS]
    if unknown or not locations:
        raise ValueError(f"locations {list(locations)!r} must be a non-empty subset of {list(LOCATIONS)}")
    return [loc for loc in LOCATIONS if loc in locations]


def run_title(params: Mapping[str, Any]) -> str:
    """What a metadata run rebuilds, in one line: its note while it runs."""
    dry = "Dry run: " if params.get("dry_run") else ""
    return f"{dry}neuron metadata of {', '.join(params.get('locations') or ())}"


def report_note(params: Mapping[str, Any], report: Mapping[str, Any] | None) -> str:
    """The run's note (Markdown) at its end: files written, unchanged, kept; neurons; or why nothing was written."""
    title = markdown_text(run_title(params))
    if not report:
        return f"{title}: FAILED before a report (NeuronBrowser or the bucket scan; see their logs); nothing written"
    xcom = report["xcom"]
    if xcom.get("refusal"):
        return f"{title}: REFUSED, nothing written: {markdown_text(str(xcom['refusal']))}"
    verb = "would write" if xcom.get("dry_run") else "written"
    described, had = xcom.get("neurons_described", "?"), xcom.get("neurons_in_bucket", "?")
    facts = [
        f"neurons described: {described} (the bucket had {had})",
        f"images not loadable yet (no neurons.json): {len(xcom.get('not_loadable') or [])}",
        f"folders HortaCloud cannot load: {len(xcom.get('not_uri_safe') or [])}",
        f"empty SWCs left out: {len(xcom.get('empty_swcs') or [])}",
        f"left by the old scripts: {len(xcom.get('legacy') or {})}, removed: {len(xcom.get('removed') or [])}",
        *(f"{verb}: {key}" for key in xcom["written"][:8]),
    ]
    if len(xcom["written"]) > 8:
        facts.append(f"and {len(xcom['written']) - 8} more (the report task's log lists them)")
    head = (
        f"{title}: {len(xcom['written'])} file(s) {verb}, {xcom['unchanged']} unchanged, "
        f"{len(xcom.get('removals') or {})} kept (would lose neurons)"
    )
    return "\n".join([head, "", *(f"- {markdown_text(fact)}" for fact in facts)])


def log_report(report: dict[str, Any] | None) -> dict[str, Any]:
    """Log the report pushed by build_and_write; fail the run when there is none or it was refused."""
    if not report:
        raise RuntimeError(
            "No neuron metadata report: an earlier task failed (see its log); nothing was written by this run"
        )
    for line in report["lines"]:
        log.info("%s", line)
    if report["xcom"]["refusal"]:
        raise GuardRefusal(report["xcom"]["refusal"])
    xcom: dict[str, Any] = report["xcom"]
    if removals := xcom.get("removals"):
        kept = "; ".join(f"{key} would drop {', '.join(ids)}" for key, ids in removals.items())
        raise GuardRefusal(
            f"{len(removals)} file(s) kept as they are because NeuronBrowser no longer maps neurons they describe: "
            f"{kept}. Everything else was written. If NeuronBrowser is right, trigger this DAG with "
            '{"allow_removals": true}.'
        )
    return xcom


# -- the tasks -------------------------------------------------------------------------------------------------------


@task
def fetch_mapping(**context: Any) -> dict[str, Any]:
    """Ask NeuronBrowser for every injection and map sample date -> tag -> neuron id."""
    notes = RunNotes(load_config().airflow_api.conn_id)
    notes.set(context["dag"].dag_id, context["run_id"], markdown_text(run_title(context["params"])))
    return mapping_from_neuronbrowser()


@task
def scan(**context: Any) -> dict[str, Any]:
    """List the chosen tracing locations in the bucket."""
    return scan_tracings(context["params"]["locations"])


@task(retries=0)
def build_and_write(mapping: dict[str, Any], scanned: dict[str, Any], **context: Any) -> None:
    """Build every document, guard, write what changed; the report goes to XCom ``report`` for the report task."""
    params, ti = context["params"], context["ti"]
    try:
        build_and_apply(
            mapping,
            scanned,
            params["locations"],
            dry_run=params["dry_run"],
            allow_removals=params["allow_removals"],
            remove_legacy=params.get("remove_legacy", False),
            publish=lambda report: ti.xcom_push(key="report", value=report),
        )
    except GuardRefusal as err:
        raise AirflowFailException(f"Refused, nothing written: {err}") from err  # retrying cannot help


@task(trigger_rule=TriggerRule.ALL_DONE, retries=0)
def report(**context: Any) -> dict[str, Any]:
    """Log the run's report, write it as the run's note, return its summary; fail the run on anything upstream."""
    found = context["ti"].xcom_pull(task_ids="build_and_write", key="report")
    notes = RunNotes(load_config().airflow_api.conn_id)
    notes.set(context["dag"].dag_id, context["run_id"], report_note(context["params"], found))
    return log_report(found)
