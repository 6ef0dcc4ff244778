"""NeuronBrowser's injections as a mapping: sample date (in the site's time zone) -> neuron tag -> neuron id.

Plain Python: no Airflow, no S3.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date as Date
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

FINISHED = "Finished_Neurons"
COMPLETE = "tracing_complete"
LOCATIONS: tuple[str, ...] = (FINISHED, COMPLETE)
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SWC_FILES = ("consensus", "dendrite")
_TAG = re.compile(r"^([A-Za-z]+)-0*(\d+)$")


class MetadataError(ValueError):
    """Input that cannot be turned into metadata; the message names the value and what was expected."""


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
        """How many neurons the mapping holds over all dates."""
        return sum(len(tags) for tags in self.dates.values())

    def lookup(self, date: str, folder: str) -> MappedNeuron | None:
        """The neuron a folder of ``date`` maps to (tags compared in their normal form), or None."""
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
        """The mapping back from its XCom form."""
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
        found = _injection_neurons(injection, tz, skipped)
        if found is not None:
            date, neurons = found
            for mapped in neurons:
                candidates[date][canonical_tag(mapped.tag)].append(mapped)
    mapping = NeuronMapping(injections=count)
    for date in sorted(candidates):
        mapping.dates[date] = _one_per_tag_and_id(date, candidates[date], mapping.collisions, skipped)
    mapping.skipped = dict(sorted(skipped.items()))
    for message in mapping.collisions:
        log.warning("NeuronBrowser collision: %s", message)
    return mapping


def _injection_neurons(injection: Any, tz: ZoneInfo, skipped: dict[str, int]) -> tuple[str, list[MappedNeuron]] | None:
    """An injection's sample date and its usable neurons, or None (counted in ``skipped``) when it has none."""
    if not isinstance(injection, Mapping):
        raise MetadataError(f"injection {injection!r:.80} is not an object (expected a JSON object)")
    sample = injection.get("sample")
    if not isinstance(sample, Mapping):
        skipped["injections without sample"] += 1
        return None
    if sample.get("sampleDate") is None:
        skipped["injections without sampleDate"] += 1
        return None
    try:
        date = sample_date(sample["sampleDate"], tz)
    except MetadataError as err:
        log.warning("Injection %s skipped: %s", injection.get("id", "?"), err)
        skipped["injections with an unreadable sampleDate"] += 1
        return None
    neurons = injection.get("neurons")
    if not neurons:
        skipped["injections without neurons"] += 1
        return None
    injection_area = _name(injection.get("brainArea"))
    if injection_area is None:
        skipped["injections without brain area (neurons kept)"] += 1
    mapped = [_mapped(neuron, injection_area, skipped) for neuron in neurons]
    return date, [neuron for neuron in mapped if neuron is not None]


def _mapped(neuron: Any, injection_area: str | None, skipped: dict[str, int]) -> MappedNeuron | None:
    """One neuron of an injection, or None (counted) without a tag or an idString."""
    tag = neuron.get("tag") if isinstance(neuron, Mapping) else None
    neuron_id = neuron.get("idString") if isinstance(neuron, Mapping) else None
    if not isinstance(tag, str) or not tag.strip():
        skipped["neurons without tag"] += 1
        return None
    if not isinstance(neuron_id, str) or not neuron_id.strip():
        skipped["neurons without idString"] += 1
        return None
    return MappedNeuron(neuron_id.strip(), tag.strip(), _name(neuron.get("brainArea")), injection_area)


def _one_per_tag_and_id(
    date: str, candidates: Mapping[str, list[MappedNeuron]], collisions: list[str], skipped: dict[str, int]
) -> dict[str, MappedNeuron]:
    """One neuron per tag and one tag per neuron id on ``date``, the first by ``_rank``; collisions reported."""
    by_tag: dict[str, MappedNeuron] = {}
    for key in sorted(candidates):
        ranked = sorted(set(candidates[key]), key=_rank)
        by_tag[key] = ranked[0]
        for loser in ranked[1:]:
            if loser.neuron_id != ranked[0].neuron_id:
                skipped["tag collisions"] += 1
                collisions.append(
                    f"{date} tag {key}: {loser.neuron_id} and {ranked[0].neuron_id} both claim it; "
                    f"kept {ranked[0].neuron_id}"
                )
    by_id: dict[str, str] = {}
    for key in sorted(by_tag, key=lambda k: _rank(by_tag[k])):
        neuron_id = by_tag[key].neuron_id
        if neuron_id in by_id:
            skipped["id collisions"] += 1
            collisions.append(
                f"{date} id {neuron_id}: tags {by_id[neuron_id]} and {key} both carry it; kept {by_id[neuron_id]}"
            )
            del by_tag[key]
        else:
            by_id[neuron_id] = key
    return dict(sorted(by_tag.items()))


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
