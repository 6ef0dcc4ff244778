"""Neuron metadata from NeuronBrowser and the tracings in S3: plain functions and dataclasses, no Airflow, no S3.

The pipeline: injections -> :func:`build_mapping` (sample date -> tag -> neuron id) -> :func:`build_document` per
tracing location and date, from what the scan of S3 found -> :func:`render` (deterministic bytes) ->
:func:`check_guard` before anything is written. :class:`MetadataReport` collects what happened.

Output contract (HortaCloud's ``HortaDiscoveryAgent``): ``{"title": "<date> MouseLight published neurons",
"neurons": {<idString>: {"originalName": <folder>, ...}}}``. For tracing_complete every entry carries
``somaLocation`` (a missing key rolls back the whole sample's import) and ``injectionLocation``, plus ``consensus`` /
``dendrite`` paths relative to ``images/<date>/`` when those SWC files exist.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date as Date
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

FINISHED = "Finished_Neurons"
COMPLETE = "tracing_complete"
LOCATIONS: tuple[str, ...] = (FINISHED, COMPLETE)
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SWC_FILES = ("consensus", "dendrite")
# Folder names go into relative paths that JACS feeds to java.net.URI.create: keep them URI-safe.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_TAG = re.compile(r"^([A-Za-z]+)-0*(\d+)$")

SomaSource = Literal["soma.txt", "neuron brain area", "injection brain area", "none"]


class MetadataError(ValueError):
    """Input that cannot be turned into metadata; the message names the value and what was expected."""


class GuardRefusal(RuntimeError):
    """The new metadata would be worse than what the bucket holds; nothing was written."""


# --------------------------------------------------------------------------------------------------------------
# Dates and tags


def sample_date(epoch_ms: Any, tz: ZoneInfo) -> str:
    """``sampleDate`` (epoch milliseconds) as ``YYYY-MM-DD`` in ``tz``, never the worker's local zone."""
    if isinstance(epoch_ms, bool) or not isinstance(epoch_ms, int | float):
        raise MetadataError(f"sampleDate {epoch_ms!r} is not epoch milliseconds (expected a JSON number)")
    return datetime.fromtimestamp(epoch_ms / 1000, tz=tz).date().isoformat()


def is_date(name: str) -> bool:
    """True for a strict ``YYYY-MM-DD`` that is a calendar date."""
    if not DATE_RE.match(name):
        return False
    try:
        Date.fromisoformat(name)
    except ValueError:
        return False
    return True


def canonical_tag(tag: str) -> str:
    """The comparison form of a tag or folder name: ``" g-1 "``, ``"G-1"`` and ``"G-001"`` all give ``"G-001"``."""
    tag = tag.strip()
    if match := _TAG.match(tag):
        return f"{match.group(1).upper()}-{int(match.group(2)):03d}"
    return tag.upper()


# --------------------------------------------------------------------------------------------------------------
# The mapping


@dataclass(frozen=True)
class MappedNeuron:
    """One NeuronBrowser neuron as the metadata needs it."""

    neuron_id: str
    tag: str
    brain_area: str | None = None
    injection_area: str | None = None


@dataclass
class NeuronMapping:
    """Sample date -> canonical tag -> neuron, plus what was skipped on the way."""

    dates: dict[str, dict[str, MappedNeuron]] = field(default_factory=dict)
    injections: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    collisions: list[str] = field(default_factory=list)

    @property
    def neuron_count(self) -> int:
        return sum(len(tags) for tags in self.dates.values())

    def lookup(self, date: str, folder: str) -> MappedNeuron | None:
        return self.dates.get(date, {}).get(canonical_tag(folder))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (XCom)."""
        return {
            "dates": {d: {t: asdict(n) for t, n in tags.items()} for d, tags in self.dates.items()},
            "injections": self.injections,
            "skipped": dict(self.skipped),
            "collisions": list(self.collisions),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NeuronMapping:
        return cls(
            dates={d: {t: MappedNeuron(**n) for t, n in tags.items()} for d, tags in data["dates"].items()},
            injections=int(data["injections"]),
            skipped=dict(data["skipped"]),
            collisions=list(data["collisions"]),
        )


def _name(obj: Any) -> str | None:
    """``obj.name`` of a nullable ``{name}`` object, stripped; None when absent or blank."""
    if isinstance(obj, Mapping) and isinstance(obj.get("name"), str) and obj["name"].strip():
        return str(obj["name"]).strip()
    return None


def build_mapping(injections: Iterable[Mapping[str, Any]], tz: ZoneInfo) -> NeuronMapping:
    """Map injections to ``date -> tag -> neuron``.

    Skipped with a count: injections whose sample, sampleDate or neuron list is null or empty, and neurons without
    tag or idString. An injection without a brain area keeps its neurons (counted; its injectionLocation is "").
    Several injections on one date are merged; when two neurons claim one tag (or one id two tags) the first by a
    sort on (id, tag) is kept and the collision is reported, so the result does not depend on the service's order.
    """
    skipped: dict[str, int] = defaultdict(int)
    candidates: dict[str, dict[str, list[MappedNeuron]]] = defaultdict(lambda: defaultdict(list))
    count = 0
    for injection in injections:
        count += 1
        if not isinstance(injection, Mapping):
            raise MetadataError(f"injection {injection!r:.80} is not an object (expected a JSON object)")
        sample = injection.get("sample")
        if not isinstance(sample, Mapping):
            skipped["injections without sample"] += 1
            continue
        if sample.get("sampleDate") is None:
            skipped["injections without sampleDate"] += 1
            continue
        try:
            date = sample_date(sample["sampleDate"], tz)
        except MetadataError as err:
            log.warning("Injection %s skipped: %s", injection.get("id", "?"), err)
            skipped["injections with an unreadable sampleDate"] += 1
            continue
        neurons = injection.get("neurons")
        if not neurons:
            skipped["injections without neurons"] += 1
            continue
        injection_area = _name(injection.get("brainArea"))
        if injection_area is None:
            skipped["injections without brain area (neurons kept)"] += 1
        for neuron in neurons:
            tag = neuron.get("tag") if isinstance(neuron, Mapping) else None
            neuron_id = neuron.get("idString") if isinstance(neuron, Mapping) else None
            if not isinstance(tag, str) or not tag.strip():
                skipped["neurons without tag"] += 1
                continue
            if not isinstance(neuron_id, str) or not neuron_id.strip():
                skipped["neurons without idString"] += 1
                continue
            mapped = MappedNeuron(neuron_id.strip(), tag.strip(), _name(neuron.get("brainArea")), injection_area)
            candidates[date][canonical_tag(tag)].append(mapped)

    mapping = NeuronMapping(injections=count)
    for date in sorted(candidates):
        by_tag: dict[str, MappedNeuron] = {}
        for key in sorted(candidates[date]):
            ranked = sorted(set(candidates[date][key]), key=_rank)
            by_tag[key] = ranked[0]
            for loser in ranked[1:]:
                if loser.neuron_id != ranked[0].neuron_id:
                    skipped["tag collisions"] += 1
                    mapping.collisions.append(
                        f"{date} tag {key}: {loser.neuron_id} and {ranked[0].neuron_id} both claim it; "
                        f"kept {ranked[0].neuron_id}"
                    )
        by_id: dict[str, str] = {}
        for key in sorted(by_tag, key=lambda k: _rank(by_tag[k])):
            neuron_id = by_tag[key].neuron_id
            if neuron_id in by_id:
                skipped["id collisions"] += 1
                mapping.collisions.append(
                    f"{date} id {neuron_id}: tags {by_id[neuron_id]} and {key} both carry it; kept {by_id[neuron_id]}"
                )
                del by_tag[key]
            else:
                by_id[neuron_id] = key
        mapping.dates[date] = dict(sorted(by_tag.items()))
    mapping.skipped = dict(sorted(skipped.items()))
    for message in mapping.collisions:
        log.warning("NeuronBrowser collision: %s", message)
    return mapping


def _rank(neuron: MappedNeuron) -> tuple[str, str, str, str]:
    return (neuron.neuron_id, neuron.tag, neuron.injection_area or "", neuron.brain_area or "")


def near_misses(s3_dates: Iterable[str], mapped_dates: Iterable[str]) -> list[str]:
    """S3 dates without a mapping whose neighbour one day off is mapped (and not itself in S3): likely time zone."""
    in_s3 = set(s3_dates)
    mapped = set(mapped_dates)
    found = []
    for day in sorted(in_s3 - mapped):
        for delta in (-1, 1):
            other = (Date.fromisoformat(day) + timedelta(days=delta)).isoformat()
            if other in mapped and other not in in_s3:
                found.append(f"S3 date {day} has no mapping but NeuronBrowser has {other} (one day off)")
    return found


# --------------------------------------------------------------------------------------------------------------
# soma.txt and the documents


def decode_soma(raw: bytes) -> str:
    """soma.txt as one line of text: BOM and CR/LF removed, UTF-8 (or UTF-16 with BOM), else cp1252."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = raw.decode("utf-16")
    else:
        raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1252", errors="replace")  # Windows-authored folders
    lines = (line.strip() for line in text.replace("\ufeff", "").splitlines())
    return " ".join(line for line in lines if line)


@dataclass(frozen=True)
class NeuronFolder:
    """What the S3 listing says about one neuron folder: soma.txt text (None if absent) and which SWCs exist."""

    name: str
    soma: str | None = None
    swcs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SomaFallback:
    """A neuron whose somaLocation did not come from soma.txt."""

    location: str
    date: str
    neuron_id: str
    folder: str
    source: SomaSource


@dataclass
class DateDocument:
    """The metadata of one location and date."""

    location: str
    date: str
    document: dict[str, Any]
    fallbacks: list[SomaFallback] = field(default_factory=list)
    unmapped_folders: list[str] = field(default_factory=list)

    @property
    def neuron_count(self) -> int:
        return len(self.document["neurons"])

    def body(self) -> bytes:
        return render(self.document)


def title(date: str) -> str:
    """The workspace title HortaCloud uses; keep it stable, JACS ignores a file whose title already exists."""
    return f"{date} MouseLight published neurons"


def swc_path(date: str, folder: str, swc: str) -> str:
    """An SWC path relative to ``images/<date>/``, where HortaCloud resolves it."""
    return f"../../tracings/{COMPLETE}/{date}/{folder}/{swc}.swc"


def build_document(
    location: str,
    date: str,
    folders: Iterable[NeuronFolder],
    mapping: NeuronMapping,
    prefix: str = "G-",
) -> DateDocument | None:
    """The metadata for one location and date, or None when no folder maps to a neuron (nothing to write)."""
    if location not in LOCATIONS:
        raise MetadataError(f"tracing location {location!r} is not one of {', '.join(LOCATIONS)}")
    neurons: dict[str, dict[str, str]] = {}
    fallbacks: list[SomaFallback] = []
    unmapped: list[str] = []
    for folder in sorted(folders, key=lambda f: f.name):
        if not folder.name.startswith(prefix):
            continue
        neuron = mapping.lookup(date, folder.name)
        if neuron is None:
            unmapped.append(folder.name)
            continue
        if not _SAFE_NAME.match(folder.name):
            log.warning("%s/%s/%s skipped: the folder name is not URI-safe", location, date, folder.name)
            unmapped.append(folder.name)
            continue
        if neuron.neuron_id in neurons:
            # Two folders that normalise to one tag ("G-1" and "G-001"): keep the first by name.
            kept = neurons[neuron.neuron_id]["originalName"]
            log.warning(
                "%s/%s: %s and %s map to %s; kept %s", location, date, kept, folder.name, neuron.neuron_id, kept
            )
            continue
        entry = {"originalName": folder.name}
        if location == COMPLETE:
            soma, source = _soma_location(folder, neuron)
            entry["somaLocation"] = soma
            entry["injectionLocation"] = neuron.injection_area or ""
            if source != "soma.txt":
                fallbacks.append(SomaFallback(location, date, neuron.neuron_id, folder.name, source))
            for swc in SWC_FILES:
                if swc in folder.swcs:
                    entry[swc] = swc_path(date, folder.name, swc)
        neurons[neuron.neuron_id] = entry
    if not neurons:
        return None
    document = {"title": title(date), "neurons": neurons}
    return DateDocument(location, date, document, fallbacks, unmapped)


def _soma_location(folder: NeuronFolder, neuron: MappedNeuron) -> tuple[str, SomaSource]:
    if folder.soma:
        return folder.soma, "soma.txt"
    if neuron.brain_area:
        return neuron.brain_area, "neuron brain area"
    if neuron.injection_area:
        return neuron.injection_area, "injection brain area"
    return "", "none"


def render(document: Mapping[str, Any]) -> bytes:
    """Deterministic bytes: sorted keys, two-space indent, ASCII escapes, one trailing newline."""
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def neuron_ids(body: bytes | None) -> set[str]:
    """The neuron ids a metadata object describes (none when absent or unreadable)."""
    if not body:
        return set()
    try:
        neurons = json.loads(body).get("neurons")
    except (ValueError, AttributeError):
        return set()
    return set(neurons) if isinstance(neurons, dict) else set()


def described_neurons(body: bytes | None) -> int:
    """How many neurons an existing metadata object describes (0 when absent or unreadable)."""
    return len(neuron_ids(body))


def check_guard(injections: int, new_neurons: int, existing_neurons: int, min_share: float) -> None:
    """Refuse (raise :class:`GuardRefusal`) when NeuronBrowser gave nothing or the new files describe too little."""
    if injections == 0:
        raise GuardRefusal("NeuronBrowser returned no injections; refusing to write any neuron metadata")
    needed = min_share * existing_neurons
    if new_neurons < needed:
        raise GuardRefusal(
            f"the new metadata describes {new_neurons} neurons, fewer than {min_share:.0%} of the "
            f"{existing_neurons} the bucket already describes (at least {needed:.0f} needed); refusing to write. "
            "Check NeuronBrowser, or lower [neuronbrowser] min_share for a deliberate removal."
        )


# --------------------------------------------------------------------------------------------------------------
# The report


@dataclass
class MetadataReport:
    """What a run found and did; ``lines()`` for the log, ``to_xcom()`` for a small XCom."""

    dry_run: bool = False
    injections: int = 0
    mapped_neurons: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    collisions: list[str] = field(default_factory=list)
    dates_in_s3: dict[str, list[str]] = field(default_factory=dict)
    dates_without_mapping: dict[str, list[str]] = field(default_factory=dict)
    dates_without_folders: dict[str, list[str]] = field(default_factory=dict)
    near_misses: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    # Files kept as they are because the new version would drop neurons they describe: key -> dropped ids.
    removals: dict[str, list[str]] = field(default_factory=dict)
    not_loadable: list[str] = field(default_factory=list)
    soma_fallbacks: list[SomaFallback] = field(default_factory=list)
    neurons_described: int = 0
    neurons_in_bucket: int = 0
    refusal: str | None = None

    def lines(self) -> list[str]:
        verb = "would write" if self.dry_run else "written"
        out = [
            f"Neuron metadata report{' (dry run: nothing written)' if self.dry_run else ''}",
            f"  NeuronBrowser: {self.injections} injections, {self.mapped_neurons} mapped neurons",
        ]
        out += [f"  skipped: {count} {reason}" for reason, count in self.skipped.items()]
        out += [f"  collision: {c}" for c in self.collisions]
        for location, dates in self.dates_in_s3.items():
            missing = self.dates_without_mapping.get(location, [])
            out.append(f"  {location}: {len(dates)} dates in S3, {len(missing)} without neuron mappings")
            out += [f"    no mapping: {d}" for d in missing]
            out += [f"    no neuron folders: {d}" for d in self.dates_without_folders.get(location, [])]
        out += [f"  near miss: {m}" for m in self.near_misses]
        out.append(f"  neurons described: {self.neurons_described} (bucket had {self.neurons_in_bucket})")
        out.append(
            f"  files {verb}: {len(self.written)}, unchanged: {len(self.unchanged)}, refused: {len(self.refused)}"
        )
        out += [f"    {verb}: {key}" for key in self.written]
        out += [f"    refused: {key}" for key in self.refused]
        out += [f"    kept, would drop {', '.join(ids)}: {key}" for key, ids in self.removals.items()]
        out += [f"  neurons.json not written (images incomplete): {d}" for d in self.not_loadable]
        out.append(f"  soma location from a fallback: {len(self.soma_fallbacks)}")
        out += [f"    {f.neuron_id} ({f.date}/{f.folder}): {f.source}" for f in self.soma_fallbacks]
        if self.refusal:
            out.append(f"  REFUSED: {self.refusal}")
        return out

    def to_xcom(self) -> dict[str, Any]:
        """The small summary other tasks and people read: counts, dates, keys and fallback neurons."""
        return {
            "dry_run": self.dry_run,
            "dates_in_s3": {loc: len(dates) for loc, dates in self.dates_in_s3.items()},
            "dates_without_mapping": {loc: list(d) for loc, d in self.dates_without_mapping.items()},
            "written": list(self.written),
            "unchanged": len(self.unchanged),
            "refused": list(self.refused),
            "removals": {key: list(ids) for key, ids in self.removals.items()},
            "not_loadable": list(self.not_loadable),
            "soma_fallbacks": {f.neuron_id: f.source for f in self.soma_fallbacks},
            "refusal": self.refusal,
        }
