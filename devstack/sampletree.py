"""Generate sample folders laid out like Janelia's: a sparse KTX octree plus the top-level files.

Used by the tests, the demo and the benchmark. Contents are random bytes (incompressible, like real blocks).
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

from hortacloud.preflight import ktx_header

EXTRA_FILES = ("default.0.tif", "default.1.tif", "tilebase.cache.yml", "transform.txt")
# Names a real tree may hold and a naive sync gets wrong: spaces, non-ASCII, URL-special characters, and a
# file and a folder whose names sort differently as keys ("a-b" < "a/" < "a0").
ODD_NAMES = (
    "notes with spaces.txt",
    "ünïcødé-ß.ktx",
    "plus+percent%hash#question?.ktx",
    "a-b.ktx",
    "a/inside.ktx",
    "a0.ktx",
)


def octree_paths(depth: int) -> Iterator[tuple[str, ...]]:
    """Octant paths from the root (``()``) down to ``depth`` levels, breadth first."""
    for level in range(depth + 1):
        yield from itertools.product("12345678", repeat=level)


def block_key(path: tuple[str, ...]) -> str:
    """``ktx/3/7/block_8_xy_37.ktx`` for octant path (3, 7); the root is ``ktx/block_8_xy_.ktx``."""
    folder = "/".join(("ktx", *path))
    return f"{folder}/block_8_xy_{''.join(path)}.ktx"


def write_random(path: Path, size: int, rng: random.Random) -> None:
    """Write ``size`` random bytes to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            chunk = min(remaining, 1 << 20)
            handle.write(rng.randbytes(chunk))
            remaining -= chunk


def make_sample(
    folder: Path,
    *,
    depth: int = 2,
    block_size: Callable[[random.Random], int] = lambda rng: rng.randint(1024, 4096),
    odd_names: bool = True,
    extras: tuple[str, ...] = EXTRA_FILES,
    seed: int = 0,
) -> Path:
    """Write a sample folder: the octree to ``depth`` levels, ``extras`` beside ``ktx/``, odd names inside it."""
    rng = random.Random(seed)
    for path in octree_paths(depth):
        write_random(folder / block_key(path), block_size(rng), rng)
    write_root_header(folder / block_key(()), depth)
    if odd_names:
        for name in ODD_NAMES:
            write_random(folder / "ktx" / name, rng.randint(10, 2000), rng)
    for name in extras:
        if name == "transform.txt":
            origin = "ox: 75000000\noy: 12000000\noz: 30000000\n"
            (folder / name).write_text(f"{origin}sx: 1\nsy: 1\nsz: 1\nnl: {depth + 1}\n")
        else:
            write_random(folder / name, rng.randint(2000, 8000), rng)
    return folder


def write_root_header(path: Path, depth: int) -> None:
    """Put a KTX header with the keys Horta reads over the start of the root block (the rest stays random)."""
    header = ktx_header({"multiscale_total_levels": str(depth + 1), "corner_xyzs": "[[0, 0, 0], [1, 1, 1]]"})
    body = path.read_bytes()
    path.write_bytes(header + body[len(header) :])


def make_flat_tree(
    folder: Path, count: int, size: Callable[[random.Random], int], *, seed: int = 0, big: tuple[int, ...] = ()
) -> Path:
    """``count`` KTX blocks laid out as an octree (one block per node folder), plus files of the ``big`` sizes."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = octree_paths(8)
    for _ in range(count):
        write_random(folder / block_key(next(paths)), size(rng), rng)
    for number, big_size in enumerate(big):
        write_random(folder / f"default.{number}.tif", big_size, rng)
    return folder


def tree_bytes(folder: Path) -> tuple[int, int]:
    """(files, bytes) below ``folder``."""
    files = total = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            files += 1
            total += os.path.getsize(os.path.join(directory, name))
    return files, total
