"""Cutting ``ktx/`` into shards: contiguous octant ranges of about equal bytes, every file in exactly one list."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from devstack.sampletree import block_key, octree_paths
from hortacloud.s3sync.local import LocalFile, read_file_list
from hortacloud.s3sync.shards import plan_shards, shard_count, unit_of


def _octree(depth: int, seed: int = 1) -> list[LocalFile]:
    """Every node of an octree to ``depth`` levels with a block of 36-46 MiB (keys relative to ktx/)."""
    rng = random.Random(seed)
    files = [
        LocalFile(block_key(path).removeprefix("ktx/"), "/k/" + block_key(path), rng.randint(36, 46) << 20, 0.0)
        for path in octree_paths(depth)
    ]
    return sorted(files, key=lambda item: item.key)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 12])
def test_every_file_is_in_exactly_one_shard_and_the_shards_are_balanced(tmp_path: Path, count: int) -> None:
    files = _octree(3)
    shards, top = plan_shards(files, count, tmp_path)
    assert [item.key for item in top] == ["block_8_xy_.ktx"]  # the root block: the caller publishes it last
    listed = [f.key for shard in shards for f in read_file_list(Path(shard.file_list), "/k/ktx")]
    below = sorted(item.key for item in files if "/" in item.key)
    assert sorted(listed) == below and len(listed) == len(set(listed))
    assert len(shards) == count
    sizes = [shard.bytes for shard in shards]
    assert max(sizes) <= 1.35 * sum(sizes) / count, sizes
    for shard in shards:
        keys = [f.key for f in read_file_list(Path(shard.file_list), "/k/ktx")]
        assert keys == sorted(keys)  # each list in key order, as the engine merge-joins it
        # Whatever a shard holds, it lists: each file is below one of its prefixes (or is one).
        assert all(any(key.startswith(prefix) for prefix in shard.prefixes) for key in keys)
        assert shard.files == len(keys)


def test_shards_are_contiguous_octant_ranges_named_by_them(tmp_path: Path) -> None:
    shards, _ = plan_shards(_octree(2), 3, tmp_path)
    units = [unit for shard in shards for unit in shard.units]
    assert units == sorted(units)  # ranges follow each other in key order
    assert shards[0].name.startswith("ktx/1/") and " .. " in shards[0].name


def test_the_count_follows_the_bytes_when_not_set() -> None:
    tib = 1 << 40
    assert shard_count(3 * tib, shards=0, target_bytes=250 << 30, most=64) == 13
    assert shard_count(3 * tib, shards=0, target_bytes=1 << 30, most=64) == 64
    assert shard_count(10 << 20, shards=0, target_bytes=250 << 30, most=64) == 1
    assert shard_count(3 * tib, shards=5, target_bytes=250 << 30, most=64) == 5


def test_unit_of_cuts_a_key_at_a_depth() -> None:
    assert unit_of("1/2/3/block.ktx", 2) == "1/2/"
    assert unit_of("1/block.ktx", 2) is None


@pytest.mark.parametrize("depth", [1, 2])
def test_a_shallow_tree_still_shards_every_file(tmp_path: Path, depth: int) -> None:
    files = _octree(depth)
    shards, top = plan_shards(files, 12, tmp_path)
    listed = [f.key for shard in shards for f in read_file_list(Path(shard.file_list), "/k")]
    assert sorted(listed) == sorted(item.key for item in files if "/" in item.key)
    assert 1 <= len(shards) <= 12 and [item.key for item in top] == ["block_8_xy_.ktx"]
