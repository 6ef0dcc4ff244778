"""What a neuron metadata run found and did: log lines for people, a small summary for XCom."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hortacloud.metadata.documents import SomaFallback


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
    # Neuron folders HortaCloud cannot turn into a URI ("G-011 (2)"): tracings/<location>/<date>/<folder>.
    not_uri_safe: list[str] = field(default_factory=list)
    empty_swcs: list[str] = field(default_factory=list)
    # Objects the old scripts left that this DAG never writes: key -> reason; removed only with remove_legacy.
    legacy: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    soma_fallbacks: list[SomaFallback] = field(default_factory=list)
    neurons_described: int = 0
    neurons_in_bucket: int = 0
    refusal: str | None = None

    def lines(self) -> list[str]:
        """The report as log lines, one fact a line."""
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
        out += [f"  not URI-safe, left out: {path}" for path in self.not_uri_safe]
        out += [f"  empty SWC, not referenced: {key}" for key in self.empty_swcs]
        out += [f"  left by the old scripts: {key} ({reason})" for key, reason in self.legacy.items()]
        removed = "would remove" if self.dry_run else "removed"
        out += [f"    {removed}: {key}" for key in self.removed]
        if self.legacy and not self.removed and not self.refusal:
            out.append('    kept; trigger with {"remove_legacy": true} to remove exactly these')
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
            "not_uri_safe": list(self.not_uri_safe),
            "empty_swcs": list(self.empty_swcs),
            "legacy": dict(self.legacy),
            "removed": list(self.removed),
            "soma_fallbacks": {f.neuron_id: f.source for f in self.soma_fallbacks},
            "neurons_described": self.neurons_described,
            "neurons_in_bucket": self.neurons_in_bucket,
            "refusal": self.refusal,
        }
