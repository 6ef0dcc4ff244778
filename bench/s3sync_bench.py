"""Our sync engine against ``s5cmd sync``, ``aws s3 sync`` and a plain boto3 uploader on one local SeaweedFS.

Each tool syncs the same generated trees to its own prefixes, cold (three rounds to fresh prefixes, the tool order
rotated each round) and then with nothing changed (five runs); the table shows the median wall time, files/s,
MB/s, peak RSS and our time as a ratio of each tool's. The trees: *small* (5,000
files of 64 KiB), *mixed* (5,000 of 64-512 KiB plus two of 64 MiB) and *ktx* (a real sample's shape: 48 blocks of
36-46 MiB over three octree levels plus two 160 MiB tiffs). For each tree a disk-write ceiling (``dd ...
conv=fdatasync`` of the tree's bytes, on the disk SeaweedFS writes to) says how close to the machine's limit the
cold syncs run. On the no-op phase a *floor* is timed too (``bench.noop_floor``: the same listing and comparison
in a few lines of standard library): the start-up no Python engine can go below. A last pair of runs compares our
peak RSS on a 5,000-file and a 50,000-file tree (memory must not grow with the tree).

Run with ``make bench``; ``--quick`` uses trees a tenth the size to check the harness itself.
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devstack.s3server import S3Endpoint, SeaweedS3
from devstack.sampletree import make_flat_tree, tree_bytes

BUCKET = "bench"
KIB = 1024
MIB = 1024 * KIB
#: Times each tool syncs a tree cold (to fresh prefixes) and with nothing to do; the median is the figure.
COLD_ROUNDS = 3
NO_OP_RUNS = 5


@dataclass
class Measurement:
    """One timed sync: which tool, tree and phase, with its wall time, the tree's size and the peak RSS."""

    tool: str
    tree: str
    phase: str
    seconds: float
    files: int
    size: int
    peak_rss_mib: float

    @property
    def files_per_second(self) -> float:
        """Files synced per wall second."""
        return self.files / self.seconds

    @property
    def mb_per_second(self) -> float:
        """Megabytes (10^6 bytes) synced per wall second."""
        return self.size / 1e6 / self.seconds


def _high_water_kib(pid: int) -> int | None:
    """VmHWM of a live process: the peak RSS of the program it runs now (None once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command; fails loudly if the command does.

    Peak RSS is the program's own VmHWM, sampled every 20 ms until it exits. Not ``wait4``'s ru_maxrss: Linux
    carries the pre-exec high-water mark over exec, so every child of this (larger) process would report at least
    this process's RSS at spawn time, whatever it used itself.
    """
    os.sync()  # the previous run's dirty pages are written back before this one is timed, not during it
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ended: list[float] = []

    def wait() -> None:
        process.wait()
        ended.append(time.perf_counter())

    # The exit is timed by a thread blocked in wait(), not by the sampling loop (a 20-ms granularity would be a
    # quarter of a no-op's time); the sampler stops once the program is gone.
    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    peak_kib = 0
    while waiter.is_alive():
        peak_kib = max(peak_kib, _high_water_kib(process.pid) or 0)
        waiter.join(0.02)
    seconds = ended[0] - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {process.returncode}:\n{stderr[-2000:]}")
    return seconds, peak_kib / 1024


def tool_commands(tools_venv: Path, endpoint: S3Endpoint) -> dict[str, Callable[[Path, str], list[str]]]:
    """Tool name -> a function giving the argv that syncs a local tree to an S3 URL; exits if s5cmd is missing."""
    s5cmd_binaries = list(tools_venv.glob("lib/python*/site-packages/s5cmd/bin/s5cmd"))
    if not s5cmd_binaries:
        raise SystemExit(f"s5cmd not found in {tools_venv}: run `make bench` (it installs the rival tools)")
    s5cmd = str(s5cmd_binaries[0])
    aws = str(tools_venv / "bin" / "aws")
    return {
        "boto3": lambda src, dst: [sys.executable, "-m", "bench.boto3_sync", str(src), dst],
        "floor": lambda src, dst: [sys.executable, "-m", "bench.noop_floor", str(src), dst],
        "hortacloud": lambda src, dst: [
            sys.executable,
            "-m",
            "hortacloud.s3sync",
            "--progress-interval",
            "3600",
            str(src),
            dst,
        ],
        "s5cmd": lambda src, dst: [s5cmd, "--endpoint-url", endpoint.url, "sync", f"{src}/", dst],
        "aws": lambda src, dst: [
            aws,
            "--endpoint-url",
            endpoint.url,
            "s3",
            "sync",
            str(src),
            dst,
            "--only-show-errors",
        ],
    }


def make_trees(root: Path, scale: float) -> dict[str, Path]:
    """The benchmark trees under ``root`` by name (see the module docstring); ``scale`` shrinks them."""
    count = max(int(5000 * scale), 50)
    blocks = max(int(48 * scale), 12)
    return {
        "small": make_flat_tree(root / "small", count, lambda rng: 64 * KIB, seed=1),
        "mixed": make_flat_tree(
            root / "mixed", count, lambda rng: rng.randint(64 * KIB, 512 * KIB), seed=2, big=(64 * MIB, 64 * MIB)
        ),
        "ktx": make_flat_tree(
            root / "ktx", blocks, lambda rng: rng.randint(36 * MIB, 46 * MIB), seed=4, big=(160 * MIB, 160 * MIB)
        ),
    }


def disk_ceiling(folder: Path, size: int) -> float:
    """MB/s of writing ``size`` bytes to ``folder`` with ``dd ... conv=fdatasync`` (the disk's own limit)."""
    target = folder / "dd-ceiling.bin"
    count = max(size // MIB, 1)
    started = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={count}", "conv=fdatasync"],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - started
    target.unlink()
    return count * MIB / 1e6 / seconds


def print_table(rows: list[Measurement]) -> None:
    """Print the results table, with our time as a ratio of each row's tool."""
    print(
        f"\n{'tree':<7} {'phase':<6} {'tool':<11} {'wall s':>8} {'files/s':>9} {'MB/s':>8} {'peak RSS MiB':>13} "
        f"{'ours/tool':>10}"
    )
    ours = {(row.tree, row.phase): row.seconds for row in rows if row.tool == "hortacloud"}
    for row in rows:
        ratio = ours[(row.tree, row.phase)] / row.seconds
        print(
            f"{row.tree:<7} {row.phase:<6} {row.tool:<11} {row.seconds:>8.2f} {row.files_per_second:>9.0f} "
            f"{row.mb_per_second:>8.1f} {row.peak_rss_mib:>13.1f} {ratio:>10.2f}"
        )


def byte_compile_engine() -> None:
    """Write the engine's and the floor's ``.pyc`` files, as installing a wheel does.

    The checkout is an editable install, and under ``PYTHONDONTWRITEBYTECODE`` (set on this machine) every run
    would compile the package's source afresh: a cost no installed engine pays.
    """
    import hortacloud.s3sync

    for folder in (Path(hortacloud.s3sync.__file__ or "").parent, Path(__file__).parent):
        compileall.compile_dir(folder, quiet=1)
    compileall.compile_file(Path(hortacloud.__file__ or ""), quiet=1)


def main() -> int:
    """Parse the command line, run the benchmark in a work folder and give the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools-venv", type=Path, required=True, help="venv holding awscli and s5cmd")
    parser.add_argument("--quick", action="store_true", help="trees a tenth the size (harness check)")
    parser.add_argument("--workdir", type=Path, default=None, help="where trees and server data go")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    byte_compile_engine()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hortacloud-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run(args.tools_venv.resolve(), workdir, scale, args.strict)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def run(tools_venv: Path, workdir: Path, scale: float, strict: bool) -> int:
    """Time every tool on every tree, then our memory against tree size; print the targets, 1 if strict and missed."""
    print(f"Generating trees in {workdir} ...", flush=True)
    trees = make_trees(workdir / "trees", scale)
    server = SeaweedS3(workdir / "seaweedfs", buckets=(BUCKET,))
    endpoint = server.start()
    print(f"SeaweedFS (pid {server.pid}) at {endpoint.url}", flush=True)
    try:
        env = {**os.environ, **endpoint.client_env()}
        env |= {"AWS_CONFIG_FILE": str(workdir / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "none")}
        commands = tool_commands(tools_venv, endpoint)
        rows: list[Measurement] = []
        ceilings: dict[str, float] = {}
        for tree_name, tree in trees.items():
            files, size = tree_bytes(tree)
            ceilings[tree_name] = disk_ceiling(workdir, size)
            print(f"  {tree_name}: disk-write ceiling {ceilings[tree_name]:.0f} MB/s", flush=True)
            for phase in ("cold", "no-op"):
                # The floor only lists and compares, so it times the no-op against what we uploaded cold.
                tools = [tool for tool in commands if tool != "floor" or phase == "no-op"]
                random.Random(tree_name + phase).shuffle(tools)
                times: dict[str, list[float]] = {tool: [] for tool in tools}
                peaks: dict[str, float] = dict.fromkeys(tools, 0.0)
                # Cold: COLD_ROUNDS rounds, each to fresh prefixes, the order rotated so that every tool runs in
                # another place (the first writer after the disk-ceiling run is slowed, whoever it is). No-op: it
                # lasts tens of milliseconds on the ktx tree, so each tool runs NO_OP_RUNS times.
                for round_number in range(COLD_ROUNDS if phase == "cold" else NO_OP_RUNS):
                    turn = round_number % len(tools)
                    for tool in tools[turn:] + tools[:turn]:
                        prefix = "hortacloud" if tool == "floor" else tool
                        copy = round_number if phase == "cold" else 0
                        seconds, peak = run_measured(
                            commands[tool](tree, f"s3://{BUCKET}/{prefix}/{tree_name}/{copy}/"), env
                        )
                        times[tool].append(seconds)
                        peaks[tool] = max(peaks[tool], peak)
                for tool in tools:
                    seconds = statistics.median(times[tool])
                    rows.append(Measurement(tool, tree_name, phase, seconds, files, size, peaks[tool]))
                    shown = ", ".join(f"{t:.2f}" for t in times[tool])
                    print(f"  {tree_name} {phase} {tool}: median {seconds:.2f} s ({shown}), ", end="")
                    print(f"peak RSS {peaks[tool]:.1f} MiB", flush=True)
        print_table(rows)
        print("\nOur cold MB/s as a fraction of the disk-write ceiling (the same bytes, dd conv=fdatasync):")
        for tree_name in trees:
            ours = next(r for r in rows if (r.tool, r.tree, r.phase) == ("hortacloud", tree_name, "cold"))
            share = ours.mb_per_second / ceilings[tree_name]
            print(f"  {tree_name:<6} {ours.mb_per_second:7.1f} of {ceilings[tree_name]:7.1f} MB/s ({share:.0%})")

        print("\nMemory: our peak RSS against tree size (4 KiB files)", flush=True)
        _, baseline = run_measured([sys.executable, "-m", "hortacloud.s3sync", "--help"], env)
        print(f"  interpreter and imports alone (--help): peak RSS {baseline:.1f} MiB", flush=True)
        rss: dict[int, float] = {}
        for count in (int(5000 * scale), int(50000 * scale)):
            tree = make_flat_tree(workdir / "trees" / f"mem{count}", count, lambda rng: 4 * KIB, seed=3)
            seconds, rss[count] = run_measured(commands["hortacloud"](tree, f"s3://{BUCKET}/mem/{count}/"), env)
            print(f"  {count:>6} files: {seconds:.2f} s, peak RSS {rss[count]:.1f} MiB", flush=True)
    finally:
        server.stop()

    def time_of(tool: str, tree: str, phase: str) -> float:
        return next(r.seconds for r in rows if (r.tool, r.tree, r.phase) == (tool, tree, phase))

    small_count, large_count = sorted(rss)
    checks = [
        (
            f"cold {tree}: at least as fast as {tool}",
            time_of("hortacloud", tree, "cold") <= time_of(tool, tree, "cold"),
        )
        for tree in trees
        for tool in ("s5cmd", "aws")
    ]
    checks += [
        (
            f"no-op {tree}: within 1.5x of s5cmd ({time_of('hortacloud', tree, 'no-op') / s5cmd:.2f}x; the Python "
            f"floor alone {time_of('floor', tree, 'no-op') / s5cmd:.2f}x)",
            time_of("hortacloud", tree, "no-op") <= 1.5 * s5cmd,
        )
        for tree in trees
        for s5cmd in [time_of("s5cmd", tree, "no-op")]
    ]
    checks += [
        (f"peak RSS {tree} cold: at most 256 MiB ({peak:.0f})", peak <= 256)
        for tree in trees
        for peak in [next(r.peak_rss_mib for r in rows if (r.tool, r.tree, r.phase) == ("hortacloud", tree, "cold"))]
    ]
    growth = rss[large_count] / rss[small_count] - 1
    checks.append(
        (f"peak RSS {large_count:,} vs {small_count:,} files within 10% ({growth:+.1%})", abs(growth) <= 0.10)
    )
    print("\nTargets:")
    for label, ok in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {label}")
    return 1 if strict and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
