"""The metadata documents HortaCloud reads: one per tracing location and date, rendered to deterministic bytes.

Output contract (HortaCloud's ``HortaDiscoveryAgent``): ``{"title": "<date> MouseLight published neurons",
"neurons": {<idString>: {"originalName": <folder>, ...}}}``. For tracing_complete every entry carries
``somaLocation`` (a missing key rolls back the whole sample's import) and ``injectionLocation``, plus ``consensus`` /
``dendrite`` paths relative to ``images/<date>/`` when those SWC files exist. Plain Python: no Airflow, no S3.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hortacloud.metadata.mapping import COMPLETE, LOCATIONS, SWC_FILES, MappedNeuron, MetadataError, NeuronMapping

log = logging.getLogger(__name__)

# Folder names go into relative paths that JACS feeds to java.net.URI.create: keep them URI-safe.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

SomaSource = Literal["soma.txt", "neuron brain area", "injection brain area", "none"]


class GuardRefusal(RuntimeError):
    """The new metadata would be worse than what the bucket holds; nothing was written."""


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
        """How many neurons the document describes."""
        return len(self.document["neurons"])

    def body(self) -> bytes:
        """The document's bytes as they are written (``render``)."""
        return render(self.document)


def is_uri_safe(name: str) -> bool:
    """True when ``name`` can stand in a relative path that JACS turns into a ``java.net.URI``."""
    return bool(_SAFE_NAME.match(name))


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
        if not is_uri_safe(folder.name):
            continue  # reported by the caller (hortacloud.metadata.bucket.plan), never looked up
        neuron = mapping.lookup(date, folder.name)
        if neuron is None:
            unmapped.append(folder.name)
            continue
        if neuron.neuron_id in neurons:
            # Two folders that normalise to one tag ("G-1" and "G-001"): keep the first by name.
            kept = neurons[neuron.neuron_id]["originalName"]
            log.warning(
                "%s/%s: %s and %s map to %s; kept %s", location, date, kept, folder.name, neuron.neuron_id, kept
            )
            continue
        neurons[neuron.neuron_id] = _entry(location, date, folder, neuron, fallbacks)
    if not neurons:
        return None
    document = {"title": title(date), "neurons": neurons}
    return DateDocument(location, date, document, fallbacks, unmapped)


def _entry(
    location: str, date: str, folder: NeuronFolder, neuron: MappedNeuron, fallbacks: list[SomaFallback]
) -> dict[str, str]:
    """One neuron's entry; for tracing_complete with its soma and injection locations and SWC paths."""
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
    return entry


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
