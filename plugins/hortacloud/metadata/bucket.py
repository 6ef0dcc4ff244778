"""The S3 side of neuron metadata: scan the tracings, compare, and write only what changed.

One boto3 client from the amazon provider's S3Hook (connection ``[s3] conn_id``) does every list, read and write.
SWC presence comes from listings only; SWCs are never downloaded. The plan is built and guarded completely before
the first write, so a refusal writes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hortacloud.metadata.documents import (
    DateDocument,
    GuardRefusal,
    NeuronFolder,
    build_document,
    check_guard,
    decode_soma,
    described_neurons,
    is_uri_safe,
    neuron_ids,
)
from hortacloud.metadata.mapping import COMPLETE, SWC_FILES, NeuronMapping, is_date, near_misses
from hortacloud.metadata.report import MetadataReport

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"


def tracings_prefix(location: str) -> str:
    """The bucket prefix of one tracing location's trees."""
    return f"tracings/{location}/"


def metadata_key(location: str, date: str) -> str:
    """The key of one location and date's ``metadata.json``."""
    return f"neurons/{location}/{date}/metadata.json"


def neurons_json_key(date: str) -> str:
    """The key of a sample's ``neurons.json``, the file HortaCloud imports."""
    return f"images/{date}/neurons.json"


# --------------------------------------------------------------------------------------------------------------
# Listing and reading


def list_subprefixes(client: Any, bucket: str, prefix: str) -> list[str]:
    """Names of the "folders" directly under ``prefix`` (paginated, Delimiter "/"), sorted."""
    names = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for item in page.get("CommonPrefixes", []):
            names.append(item["Prefix"][len(prefix) :].rstrip("/"))
    return sorted(names)


def list_objects(client: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    """Every key under ``prefix`` with its size (paginated)."""
    found: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend((item["Key"], int(item.get("Size", 0))) for item in page.get("Contents", []))
    return found


def list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix`` (paginated)."""
    return [key for key, _ in list_objects(client, bucket, prefix)]


def read_object(client: Any, bucket: str, key: str) -> bytes | None:
    """The bytes of ``key``, or None when it does not exist."""
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        return None
    body: bytes = response["Body"].read()
    return body


def object_exists(client: Any, bucket: str, key: str) -> bool:
    """True when ``key`` exists (a HEAD request; a 404 is False, any other error is raised)."""
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


# --------------------------------------------------------------------------------------------------------------
# The scan


@dataclass
class BucketScan:
    """What the tracings in S3 hold: location -> date -> neuron folders; and which image dates HortaCloud can load.

    ``empty_swcs`` are the 0-byte SWC keys (never referenced); ``neurons_json`` maps every ``images/<date>/`` that
    holds a ``neurons.json`` to whether HortaCloud can load those images (tracing_complete scans only).
    """

    locations: dict[str, dict[str, list[NeuronFolder]]] = field(default_factory=dict)
    images_ready: dict[str, bool] = field(default_factory=dict)
    empty_swcs: list[str] = field(default_factory=list)
    neurons_json: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (XCom)."""
        return {
            "locations": {
                loc: {
                    day: [{"name": f.name, "soma": f.soma, "swcs": sorted(f.swcs)} for f in folders]
                    for day, folders in dates.items()
                }
                for loc, dates in self.locations.items()
            },
            "images_ready": dict(self.images_ready),
            "empty_swcs": list(self.empty_swcs),
            "neurons_json": dict(self.neurons_json),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BucketScan:
        """The scan back from its XCom form."""
        return cls(
            locations={
                loc: {
                    day: [NeuronFolder(f["name"], f["soma"], frozenset(f["swcs"])) for f in folders]
                    for day, folders in dates.items()
                }
                for loc, dates in data["locations"].items()
            },
            images_ready=dict(data["images_ready"]),
            empty_swcs=list(data.get("empty_swcs", [])),
            neurons_json=dict(data.get("neurons_json", {})),
        )


def scan_dates(client: Any, bucket: str, location: str) -> list[str]:
    """The strict ``YYYY-MM-DD`` prefixes under ``tracings/<location>/``; anything else is logged and ignored."""
    dates = []
    for name in list_subprefixes(client, bucket, tracings_prefix(location)):
        if is_date(name):
            dates.append(name)
        else:
            log.info("Ignoring %s%s/: not a YYYY-MM-DD date", tracings_prefix(location), name)
    return dates


def scan_date(
    client: Any, bucket: str, location: str, date: str, prefix: str, empty_swcs: list[str] | None = None
) -> list[NeuronFolder]:
    """Neuron folders of one date (one recursive listing); soma.txt is read for tracing_complete only.

    A 0-byte SWC counts as absent (the old script skipped empty files; HortaCloud's import fails on one); its key
    is logged and added to ``empty_swcs``.
    """
    base = f"{tracings_prefix(location)}{date}/"
    files: dict[str, set[str]] = {}
    for key, size in list_objects(client, bucket, base):
        parts = key[len(base) :].split("/")
        if len(parts) < 2 or not parts[0].startswith(prefix):
            continue  # files at the date level, consensus/, Backup/, R- folders
        names = files.setdefault(parts[0], set())
        if len(parts) != 2:
            continue
        if size == 0 and parts[1].removesuffix(".swc") in SWC_FILES:
            log.warning("%s is empty (0 bytes): not referenced in the metadata", key)
            if empty_swcs is not None:
                empty_swcs.append(key)
            continue
        names.add(parts[1])
    folders = []
    for name in sorted(files):
        soma = None
        if location == COMPLETE and "soma.txt" in files[name]:
            raw = read_object(client, bucket, f"{base}{name}/soma.txt")
            soma = decode_soma(raw) if raw is not None else None
        swcs = frozenset(swc for swc in SWC_FILES if f"{swc}.swc" in files[name])
        folders.append(NeuronFolder(name, soma, swcs))
    return folders


def _image_ready(client: Any, bucket: str, date: str, requires: Sequence[str]) -> bool:
    missing = [f for f in requires if not object_exists(client, bucket, f"images/{date}/{f}")]
    if missing:
        log.info("images/%s/ lacks %s", date, ", ".join(missing))
    return not missing


def scan_bucket(
    client: Any,
    bucket: str,
    locations: Sequence[str],
    *,
    prefix: str = "G-",
    images_requires: Sequence[str] = ("transform.txt", "ktx/block_8_xy_.ktx", "default.0.tif"),
) -> BucketScan:
    """Scan the tracing locations; for tracing_complete dates also check ``images/<date>/`` for HortaCloud.

    With tracing_complete, every ``images/<date>/neurons.json`` is found too (one HEAD per image date), so the
    ones the old scripts left for images HortaCloud cannot load can be reported.
    """
    scan = BucketScan()
    for location in locations:
        dates = scan_dates(client, bucket, location)
        log.info("tracings/%s: %d dates", location, len(dates))
        scan.locations[location] = {
            date: scan_date(client, bucket, location, date, prefix, scan.empty_swcs) for date in dates
        }
        if location == COMPLETE:
            for date in dates:
                scan.images_ready[date] = _image_ready(client, bucket, date, images_requires)
            for date in filter(is_date, list_subprefixes(client, bucket, "images/")):
                if object_exists(client, bucket, neurons_json_key(date)):
                    ready = scan.images_ready.get(date)
                    scan.neurons_json[date] = (
                        _image_ready(client, bucket, date, images_requires) if ready is None else ready
                    )
    return scan


# --------------------------------------------------------------------------------------------------------------
# Plan, guard, write


@dataclass(frozen=True)
class PlannedWrite:
    """One object the run wants to hold ``body``."""

    key: str
    body: bytes


def plan(
    mapping: NeuronMapping,
    scan: BucketScan,
    locations: Iterable[str],
    report: MetadataReport,
    *,
    prefix: str = "G-",
) -> tuple[list[PlannedWrite], list[DateDocument]]:
    """Build every document; fill the report's date lists, near misses, fallbacks and not-loadable dates."""
    writes: list[PlannedWrite] = []
    documents: list[DateDocument] = []
    for location in locations:
        dates = scan.locations.get(location, {})
        _report_dates(location, dates, mapping, report, prefix)
        for date in sorted(dates):
            _report_unsafe_names(location, date, dates[date], report, prefix)
            if date not in mapping.dates:
                continue
            document = build_document(location, date, dates[date], mapping, prefix)
            if document is None:
                log.warning("tracings/%s/%s/: no folder matches a mapped neuron; nothing to write", location, date)
                continue
            if document.unmapped_folders:
                log.info("%s/%s: folders without a neuron: %s", location, date, ", ".join(document.unmapped_folders))
            documents.append(document)
            report.soma_fallbacks.extend(document.fallbacks)
            writes.extend(_writes_of(document, scan, report))
    return writes, documents


def _report_dates(
    location: str,
    dates: Mapping[str, Sequence[NeuronFolder]],
    mapping: NeuronMapping,
    report: MetadataReport,
    prefix: str,
) -> None:
    """The location's dates in the report and the log: all of them, those without a mapping or folders, near misses."""
    report.dates_in_s3[location] = sorted(dates)
    report.dates_without_mapping[location] = [d for d in sorted(dates) if d not in mapping.dates]
    report.dates_without_folders[location] = [d for d in sorted(dates) if not dates[d]]
    for date in report.dates_without_folders[location]:
        log.warning("tracings/%s/%s/ has no %s neuron folders", location, date, prefix)
    for date in report.dates_without_mapping[location]:
        log.warning("tracings/%s/%s/ has no neuron mappings in NeuronBrowser", location, date)
    for miss in near_misses(dates, mapping.dates):
        log.warning("%s: %s", location, miss)
        report.near_misses.append(f"{location}: {miss}")


def _report_unsafe_names(
    location: str, date: str, folders: Sequence[NeuronFolder], report: MetadataReport, prefix: str
) -> None:
    """Neuron folders HortaCloud could not load: listed in the report under ``not_uri_safe``, warned in the log."""
    for folder in folders:
        if folder.name.startswith(prefix) and not is_uri_safe(folder.name):
            path = f"{tracings_prefix(location)}{date}/{folder.name}"
            log.warning(
                "%s/ left out: HortaCloud turns SWC paths into java.net.URI, which refuses this folder name "
                "(allowed: letters, digits, '.', '_', '-'); rename the folder to publish it",
                path,
            )
            report.not_uri_safe.append(path)


def _writes_of(document: DateDocument, scan: BucketScan, report: MetadataReport) -> list[PlannedWrite]:
    """The document's ``metadata.json``, and for tracing_complete its ``neurons.json`` when HortaCloud can load it."""
    body = document.body()
    writes = [PlannedWrite(metadata_key(document.location, document.date), body)]
    if document.location == COMPLETE:
        if scan.images_ready.get(document.date):
            writes.append(PlannedWrite(neurons_json_key(document.date), body))
        else:
            log.warning(
                "Not writing %s: images/%s/ lacks the files HortaCloud needs to load it yet",
                neurons_json_key(document.date),
                document.date,
            )
            report.not_loadable.append(document.date)
    return writes


def existing_metadata(client: Any, bucket: str, locations: Iterable[str]) -> dict[str, bytes]:
    """Every ``neurons/<location>/<date>/metadata.json`` already in the bucket, by key."""
    found = {}
    for location in locations:
        for key in list_keys(client, bucket, f"neurons/{location}/"):
            if key.endswith("/metadata.json"):
                body = read_object(client, bucket, key)
                if body is not None:
                    found[key] = body
    return found


def _is_empty_document(body: bytes) -> bool:
    """A 0-byte object, or a JSON object whose ``neurons`` is empty or missing (what the old scripts left)."""
    if not body.strip():
        return True
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("neurons", {}) == {}


def legacy_objects(
    scan: BucketScan, existing: Mapping[str, bytes], locations: Iterable[str], planned: Iterable[str]
) -> dict[str, str]:
    """Objects the old scripts left that this DAG never writes, each with the reason; key -> reason.

    Exactly two kinds: an empty ``neurons/<location>/<date>/metadata.json`` whose date has no neuron folders under
    ``tracings/<location>/``, and an ``images/<date>/neurons.json`` whose images HortaCloud cannot load.
    """
    planned = set(planned)
    legacy: dict[str, str] = {}
    for location in locations:
        dates = scan.locations.get(location, {})
        for key, body in existing.items():
            date = key.removeprefix(f"neurons/{location}/").removesuffix("/metadata.json")
            if key != metadata_key(location, date) or key in planned or dates.get(date):
                continue
            if _is_empty_document(body):
                legacy[key] = f"empty, and {tracings_prefix(location)}{date}/ has no neuron folders"
    for date, ready in scan.neurons_json.items():
        if not ready and neurons_json_key(date) not in planned:
            legacy[neurons_json_key(date)] = f"images/{date}/ is not loadable by HortaCloud"
    return dict(sorted(legacy.items()))


def apply(
    client: Any,
    bucket: str,
    mapping: NeuronMapping,
    scan: BucketScan,
    locations: Sequence[str],
    *,
    prefix: str = "G-",
    min_share: float = 0.9,
    dry_run: bool = False,
    allow_removals: bool = False,
    remove_legacy: bool = False,
) -> MetadataReport:
    """Plan, guard, then write what differs; on a refusal nothing is written.

    On refusal ``report.refusal`` is set and :class:`GuardRefusal` raised with the report attached as
    ``err.report``.

    A file whose new version would drop neurons it describes is kept as it is (``report.removals``) unless
    ``allow_removals``: a neuron that vanished from NeuronBrowser is more often an outage or a data-entry slip than
    an unpublishing, and HortaCloud would lose it. The other files are written.

    Objects the old scripts left (:func:`legacy_objects`) are reported in ``report.legacy``; with
    ``remove_legacy`` exactly those are deleted, after the guard passed (a dry run only lists them).
    """
    report = MetadataReport(
        dry_run=dry_run,
        injections=mapping.injections,
        mapped_neurons=mapping.neuron_count,
        skipped=dict(mapping.skipped),
        collisions=list(mapping.collisions),
    )
    writes, documents = plan(mapping, scan, locations, report, prefix=prefix)
    report.empty_swcs = list(scan.empty_swcs)
    existing = existing_metadata(client, bucket, locations)
    report.legacy = legacy_objects(scan, existing, locations, (w.key for w in writes))
    for key, reason in report.legacy.items():
        log.warning("Left by the old scripts: %s (%s)", key, reason)
    report.neurons_in_bucket = sum(described_neurons(body) for body in existing.values())
    report.neurons_described = sum(d.neuron_count for d in documents)
    changed: list[PlannedWrite] = []
    for write in writes:
        current = (
            existing.get(write.key) if write.key.startswith("neurons/") else read_object(client, bucket, write.key)
        )
        if current == write.body:
            report.unchanged.append(write.key)
            continue
        dropped = sorted(neuron_ids(current) - neuron_ids(write.body))
        if dropped and not allow_removals:
            log.warning("Keeping %s as it is: the new version would drop %s", write.key, ", ".join(dropped))
            report.removals[write.key] = dropped
            continue
        if dropped:
            log.warning("%s: dropping %s (allow_removals)", write.key, ", ".join(dropped))
        changed.append(write)
    try:
        check_guard(mapping.injections, report.neurons_described, report.neurons_in_bucket, min_share)
    except GuardRefusal as err:
        report.refusal = str(err)
        report.refused = [w.key for w in changed]
        report.unchanged = []
        err.report = report  # type: ignore[attr-defined]
        raise
    for write in changed:
        if not dry_run:
            client.put_object(Bucket=bucket, Key=write.key, Body=write.body, ContentType=JSON_CONTENT_TYPE)
            log.info("Wrote s3://%s/%s (%d bytes)", bucket, write.key, len(write.body))
        else:
            log.info("Would write s3://%s/%s (%d bytes)", bucket, write.key, len(write.body))
        report.written.append(write.key)
    if remove_legacy:
        _remove(client, bucket, report, dry_run)
    return report


def _remove(client: Any, bucket: str, report: MetadataReport, dry_run: bool) -> None:
    """Delete exactly the legacy objects of the report (``remove_legacy``); a dry run only says so."""
    for key in report.legacy:
        if dry_run:
            log.info("Would remove s3://%s/%s (%s)", bucket, key, report.legacy[key])
        else:
            client.delete_object(Bucket=bucket, Key=key)
            log.info("Removed s3://%s/%s (%s)", bucket, key, report.legacy[key])
        report.removed.append(key)
