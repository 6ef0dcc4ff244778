"""Splitting a sample's ``ktx/`` octree into shards of about equal bytes, each a contiguous range of octants.

The plan step walks ``ktx/`` once, in key order, and spools every file; the octree's folders (``1/``, ``1/2/``, ...)
are the units a shard is made of. The units of the shallowest level that gives enough of them (at least four per
shard, so the cut can be even) are cut, in key order, into ``count`` ranges of about ``total / count`` bytes each;
then each shard's file list (key, size, mtime) is written from the spool, so nothing walks the tree twice. A range
of octants is a few sub-prefixes to list in S3 and a short name in the UI (``ktx/1/ .. ktx/3/4/``).
"""

from __future__ import annotations

import bisect
import json
import math
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hortacloud.s3sync.local import LocalFile, write_file_list

#: Deepest octree level used as a unit (8, 64, 512 folders): enough for even shards of any real sample.
MAX_DEPTH = 3
UNITS_PER_SHARD = 4


@dataclass
class Shard:
    """One part of ``ktx/``: its octree folders, files and bytes, and the file list the plan step wrote for it.

    ``units`` are its folders in key order; ``upper_keys`` the blocks of the folders above them that it carries.
    """

    number: int
    units: list[str] = field(default_factory=list)
    upper_keys: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    file_list: str = ""

    @property
    def prefixes(self) -> list[str]:
        """What the shard lists in S3 (relative to ``ktx/``): its folders, and each upper block by its own key."""
        return sorted(self.units + self.upper_keys)

    @property
    def name(self) -> str:
        """The shard as the UI shows it: its range of octants."""
        if not self.units:
            return f"ktx shard {self.number}"
        first, last = f"ktx/{self.units[0]}", f"ktx/{self.units[-1]}"
        return first if first == last else f"{first} .. {last}"


def shard_count(total_bytes: int, *, shards: int, target_bytes: int, most: int) -> int:
    """How many shards: ``shards`` when set, else one per ``target_bytes`` of the sample; at most ``most``."""
    wanted = shards if shards > 0 else math.ceil(total_bytes / target_bytes) if total_bytes else 1
    return max(1, min(wanted, most))


def unit_of(key: str, depth: int) -> str | None:
    """The octree folder of ``key`` at ``depth`` (``"1/2/"`` at depth 2), or None for a file above that depth."""
    parts = key.split("/")
    if len(parts) <= depth:
        return None
    return "/".join(parts[:depth]) + "/"


def _cut(units: list[tuple[str, int]], count: int) -> list[list[str]]:
    """``units`` (key order, bytes each) cut into at most ``count`` contiguous ranges of about equal bytes."""
    total = sum(size for _, size in units)
    ranges: list[list[str]] = [[]]
    done = 0
    for unit, size in units:
        # Start the next range once this one holds its share, as long as ranges are left to fill.
        boundary = total * len(ranges) / count
        if ranges[-1] and len(ranges) < count and done + size / 2 > boundary:
            ranges.append([])
        ranges[-1].append(unit)
        done += size
    return ranges


def plan_shards(
    files: Iterable[LocalFile], count_for: int | None, lists_dir: Path, **sizing: int
) -> tuple[list[Shard], list[LocalFile]]:
    """Shard the files of ``ktx/`` (keys relative to it, key order) and write each shard's file list.

    ``count_for`` fixes the number of shards; None derives it from the bytes (``shard_count(**sizing)``). Returns
    the shards (each with its list written under ``lists_dir``) and the files directly in ``ktx/`` (no octant:
    the root blocks), which the caller publishes itself.
    """
    lists_dir.mkdir(parents=True, exist_ok=True)
    top: list[LocalFile] = []
    per_depth: list[dict[str, int]] = [defaultdict(int) for _ in range(MAX_DEPTH + 1)]
    total = 0
    with tempfile.TemporaryFile("w+", encoding="utf-8", prefix="hortacloud-shards-") as spool:
        for item in files:
            if "/" not in item.key:
                top.append(item)
                continue
            spool.write(json.dumps([item.key, item.path, item.size, item.mtime]) + "\n")
            total += item.size
            for depth in range(1, MAX_DEPTH + 1):
                unit = unit_of(item.key, depth)
                if unit is not None:
                    per_depth[depth][unit] += item.size
        count = count_for if count_for else shard_count(total, **sizing) if sizing else 1
        # The shallowest level with enough folders for an even cut, else (a shallow tree) the one with the most.
        depth = next(
            (d for d in range(1, MAX_DEPTH + 1) if len(per_depth[d]) >= count * UNITS_PER_SHARD),
            max(range(1, MAX_DEPTH + 1), key=lambda d: (len(per_depth[d]), -d)),
        )
        units = sorted(per_depth[depth].items())
        shards = [Shard(number + 1, group) for number, group in enumerate(_cut(units, count)) if group]
        owner = {unit: shard for shard in shards for unit in shard.units}
        spool.seek(0)
        _write_lists(spool, shards, owner, depth, lists_dir)
    return shards, top


def _write_lists(
    spool: Iterable[str], shards: list[Shard], owner: dict[str, Shard], depth: int, lists_dir: Path
) -> None:
    """Each spooled file into its shard's list (key order is kept, as the spool is in key order).

    A block less deep than the unit level (``1/block_8_xy_.ktx`` when units are ``1/2/``: every octree folder
    holds its own blocks) goes to the shard of the first unit below its folder, which lists it by its key.
    """
    ordered = sorted((unit, shard) for shard in shards for unit in shard.units)
    handles = {}
    try:
        for shard in shards:
            shard.file_list = str(lists_dir / f"shard-{shard.number:03d}.jsonl")
            handles[shard.number] = open(shard.file_list + ".tmp", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
            handles[shard.number].write(json.dumps({"hortacloud_file_list": 1, "root": ""}) + "\n")
        for line in spool:
            key, _path, size, mtime = json.loads(line)
            unit = unit_of(key, depth)
            found = owner.get(unit) if unit else None
            if found is None:
                shard = _carrier(key, shards, ordered)
                shard.upper_keys.append(key)
            else:
                shard = found
            handles[shard.number].write(json.dumps([key, size, mtime]) + "\n")
            shard.files += 1
            shard.bytes += size
    finally:
        for handle in handles.values():
            handle.close()
    for shard in shards:
        Path(shard.file_list + ".tmp").replace(shard.file_list)


def _carrier(key: str, shards: list[Shard], ordered: list[tuple[str, Shard]]) -> Shard:
    """The shard that carries a block above the unit level.

    The one of the first unit below its folder, else (a leaf folder above the unit level) the one of the next unit
    in key order, else the last shard.
    """
    folder = key.rsplit("/", 1)[0] + "/"
    below = next((shard for unit, shard in ordered if unit.startswith(folder)), None)
    if below is not None:
        return below
    after = bisect.bisect_right([unit for unit, _ in ordered], key)
    return ordered[after][1] if after < len(ordered) else shards[-1]


def files_of(shard: Shard, root: str) -> Iterator[LocalFile]:
    """The shard's files, as its list names them, below ``root``."""
    from hortacloud.s3sync.local import read_file_list

    return read_file_list(Path(shard.file_list), root)


__all__ = ["Shard", "files_of", "plan_shards", "shard_count", "unit_of", "write_file_list"]
