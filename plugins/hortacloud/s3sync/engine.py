"""The sync engine: plan, upload and verify folders, file lists and single files into one bucket.

How a sync runs, in three passes that each stream and never hold the tree in memory:

1. plan: walk the local tree (or read the plan step's file list) in S3 key order and merge-join it with the bucket
   listing of the same prefixes; what must go up (new, other size, or newer locally, as ``aws s3 sync`` decides) is
   spooled to a temporary file, which also gives exact totals for the progress ETA. Incomplete multipart uploads
   that an earlier, killed sync left below those prefixes are aborted;
2. upload: stream the spool into the CRT client, at most ``workers`` files and a bounded number of bytes in flight
   (``memory_budget``); every PUT's ETag is spooled;
3. verify: list again: every source file must be there with its size, and every object uploaded must carry the
   ETag its PUT answered with (so an object whose re-upload was lost, leaving the old bytes of the same size, is
   caught). Any failure or mismatch raises :class:`SyncError`; a partial upload is never reported as success.

A re-run after a crash plans again and so uploads only what is missing (resumable by construction).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hortacloud.s3sync.control import S3Error
from hortacloud.s3sync.local import LocalFile, overlay, read_file_list, walk_sorted
from hortacloud.s3sync.progress import Progress
from hortacloud.s3sync.remote import MIB, CrtS3, RemoteObject, Uploaded, key_ordered

log = logging.getLogger(__name__)


class SyncError(RuntimeError):
    """Some files did not reach S3 intact; ``summary`` says how many, ``failures`` which (first ones)."""

    def __init__(self, message: str, summary: SyncSummary, failures: list[str]) -> None:
        super().__init__(message)
        self.summary = summary
        self.failures = failures


@dataclass(frozen=True)
class SyncItem:
    """What to put under ``key``: a folder (``key`` ends in ``/``), one file (``is_file``), or a file list.

    ``file_list`` names a list written by the plan step (the files below ``source``, so the tree is not walked
    again); ``prefixes`` then restricts the listing of ``key`` to those sub-prefixes (a shard's octants).
    ``overlays`` are folders laid over ``source`` in that order: for a key more than one holds, the last one's
    file is what S3 should hold (the carveouts' two roots).
    """

    source: str
    key: str
    is_file: bool = False
    file_list: str | None = None
    prefixes: tuple[str, ...] = ()
    overlays: tuple[str, ...] = ()


@dataclass
class SyncSummary:
    """Counts and bytes of one sync; small enough for XCom."""

    files_total: int = 0
    bytes_total: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    files_skipped: int = 0
    bytes_skipped: int = 0
    files_failed: int = 0
    bytes_failed: int = 0
    multipart_aborted: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    verified: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-able dict (XCom)."""
        return asdict(self)


def needs_upload(local: LocalFile, remote: RemoteObject | None) -> str | None:
    """Why ``local`` must go up, or None when the object in S3 already matches (``aws s3 sync`` rules).

    S3 keeps LastModified to the second, so the local time is compared at that precision too; otherwise a file
    written and uploaded within the same second would look newer on every run.
    """
    if remote is None:
        return "new"
    if remote.size != local.size:
        return f"size {local.size} differs from {remote.size} in S3"
    if int(local.mtime) > remote.mtime:
        return "newer locally"
    return None


def merge_join(
    local: Iterable[LocalFile], remote: Iterable[RemoteObject]
) -> Iterator[tuple[LocalFile, RemoteObject | None]]:
    """Pair each local file with the object of the same key; both streams must be in key order.

    Objects only in S3 are passed over: a sync adds and replaces, it never deletes.
    """
    remote_iter = iter(remote)
    current = next(remote_iter, None)
    for item in local:
        while current is not None and current.key < item.key:
            current = _next_in_order(remote_iter, current.key)
        if current is not None and current.key == item.key:
            yield item, current
            current = _next_in_order(remote_iter, current.key)
        else:
            yield item, None


def _next_in_order(remote_iter: Iterator[RemoteObject], previous_key: str) -> RemoteObject | None:
    following = next(remote_iter, None)
    if following is not None and following.key <= previous_key:
        raise S3Error(f"S3 listing out of key order ({following.key!r} after {previous_key!r})")
    return following


class ByteBudget:
    """Bytes in flight, bounded by ``limit``.

    ``acquire(n)`` waits until ``n`` more fit (or nothing is in flight, so one item larger than the whole budget
    still goes, alone).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, amount: int) -> None:
        """Wait for room for ``amount`` bytes, then take it."""
        with self._cond:
            while self.in_flight and self.in_flight + amount > self.limit:
                self._cond.wait()
            self.in_flight += amount
            self.peak = max(self.peak, self.in_flight)

    def release(self, amount: int) -> None:
        """Give ``amount`` bytes back."""
        with self._cond:
            self.in_flight -= amount
            self._cond.notify_all()


@dataclass
class _Pending:
    key: str
    path: str
    size: int
    reserved: int


class SyncEngine:
    """Plan, upload and verify a list of :class:`SyncItem` into one bucket.

    :param workers: files in flight at once.
    :param memory_budget: bytes the engine may hold for uploads: the CRT client's buffer pool (multipart parts)
        and, beside it, single-PUT files read whole, at most a quarter of the budget at a time.
    :param stall_timeout: seconds without a byte sent while uploads are in flight before they are cancelled and
        the sync fails (an endpoint that stopped answering mid-upload).
    """

    def __init__(
        self,
        s3: CrtS3,
        bucket: str,
        *,
        workers: int,
        memory_budget: int,
        progress_interval: float = 30.0,
        stall_timeout: float = 300.0,
        logger: logging.Logger | None = None,
        dry_run_list_limit: int = 10_000,
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.workers = workers
        self.memory_budget = memory_budget
        self.progress_interval = progress_interval
        self.stall_timeout = stall_timeout
        self.log = logger or log
        self.dry_run_list_limit = dry_run_list_limit

    # -- pass 1: plan -----------------------------------------------------------------------------------------

    def _remote(self, item: SyncItem) -> Iterator[RemoteObject]:
        """The listing of an item's prefixes, keys relative to ``item.key``, in S3 key order."""
        if not item.prefixes:
            return key_ordered(self.s3.list_objects(self.bucket, item.key))
        listed = (
            RemoteObject(prefix + obj.key, obj.size, obj.mtime, obj.etag)
            for prefix in item.prefixes
            for obj in self.s3.list_objects(self.bucket, item.key + prefix)
        )
        return key_ordered(listed)

    def pairs(
        self, item: SyncItem, warn: Callable[[str], None] = log.warning
    ) -> Iterator[tuple[LocalFile, RemoteObject | None]]:
        """Each source file of ``item`` with the object of the same key in S3 (None if there is none)."""
        if item.is_file:
            info = os.stat(item.source)
            local = LocalFile("", item.source, info.st_size, info.st_mtime)
            remote = next((obj for obj in self.s3.list_objects(self.bucket, item.key) if obj.key == ""), None)
            yield local, remote
            return
        if item.file_list:
            files: Iterable[LocalFile] = read_file_list(Path(item.file_list), item.source)
        else:
            for folder in (item.source, *item.overlays):
                if not os.path.isdir(folder):
                    raise FileNotFoundError(f"Source folder {folder} does not exist")
            trees = [walk_sorted(folder, warn) for folder in (item.source, *item.overlays)]
            files = overlay(trees) if item.overlays else trees[0]
        yield from merge_join(files, self._remote(item))

    def plan(self, items: list[SyncItem], spool: TextIO, summary: SyncSummary, dry_run: bool) -> None:
        """Pass 1: compare each source with the bucket; spool what must go up and count what is already there."""
        listed = 0
        for item in items:
            for local, remote in self.pairs(item, summary.warnings.append):
                summary.files_total += 1
                summary.bytes_total += local.size
                reason = needs_upload(local, remote)
                if reason is None:
                    summary.files_skipped += 1
                    summary.bytes_skipped += local.size
                    continue
                key = item.key + local.key
                spool.write(json.dumps([key, local.path, local.size]) + "\n")
                if dry_run:
                    listed += 1
                    if listed <= self.dry_run_list_limit:
                        self.log.info("would upload s3://%s/%s (%s bytes, %s)", self.bucket, key, local.size, reason)

    def abort_stale_uploads(self, items: list[SyncItem], started: float) -> int:
        """Abort the incomplete multipart uploads below the items' prefixes that began before this sync.

        A sync killed mid-upload (SIGKILL, a lost node) leaves its started multipart uploads behind; their parts
        cost storage on AWS until a lifecycle rule removes them. Whoever syncs that prefix next owns them.
        """
        aborted = 0
        for item in items:
            prefixes = [item.key] if item.is_file or not item.prefixes else [item.key + p for p in item.prefixes]
            for prefix in prefixes:
                for upload in self.s3.multipart_uploads(self.bucket, prefix):
                    if upload.initiated < started and (not item.is_file or upload.key == item.key):
                        self.s3.abort_multipart_upload(self.bucket, upload)
                        self.log.info("Aborted an incomplete multipart upload of %s from an earlier sync", upload.key)
                        aborted += 1
        return aborted

    # -- pass 2: upload ---------------------------------------------------------------------------------------

    def _reservation(self, size: int) -> int:
        """Bytes one upload holds outside the CRT's own pool: a single PUT is read whole, a multipart one is not."""
        return min(size, self.s3.multipart_threshold) if size < self.s3.multipart_threshold else 0

    def upload(self, spool: TextIO, results: TextIO, progress: Progress, summary: SyncSummary) -> list[str]:
        """Pass 2: upload the spooled files; spool each success's ``[key, etag]``; return the failures."""
        failures: list[str] = []
        slots = threading.BoundedSemaphore(self.workers)
        budget = ByteBudget(max(self.memory_budget // 4, self.s3.multipart_threshold))
        in_flight: dict[int, Any] = {}
        finished: queue.SimpleQueue[int] = queue.SimpleQueue()
        lock = threading.Lock()
        try:
            for number, line in enumerate(spool):
                key, path, size = json.loads(line)
                pending = _Pending(key, path, size, self._reservation(size))

                def on_done(result: Uploaded, pending: _Pending = pending, number: int = number) -> None:
                    with lock:
                        if result.error is None:
                            summary.files_uploaded += 1
                            summary.bytes_uploaded += pending.size
                            results.write(json.dumps([pending.key, result.etag]) + "\n")
                        else:
                            summary.files_failed += 1
                            summary.bytes_failed += pending.size
                            failures.append(f"{pending.key}: {result.error}")
                    progress.finished(result.error is not None)
                    finished.put(number)
                    budget.release(pending.reserved)
                    slots.release()

                slots.acquire()
                budget.acquire(pending.reserved)
                while not finished.empty():
                    in_flight.pop(finished.get(), None)
                if progress.stalled:
                    on_done(Uploaded(f"not sent: no upload progress for {self.stall_timeout:g}s"))
                    continue
                try:
                    in_flight[number] = self.s3.upload(self.bucket, key, path, size, on_done, progress.sent)
                except Exception as err:  # the file vanished or cannot be read: count it, go on
                    on_done(Uploaded(f"{type(err).__name__}: {err}"))
            self._wait_for(in_flight, progress)
        except BaseException:
            # Killed (the task was marked failed, a signal): cancelled requests abort their multipart uploads.
            for request in list(in_flight.values()):
                request.cancel()
            raise
        return failures

    def _wait_for(self, in_flight: dict[int, Any], progress: Progress) -> None:
        """Wait for the requests still in flight; cancel them all when the uploads stall."""
        for request in list(in_flight.values()):
            while True:
                try:
                    request.finished_future.result(1.0)
                    break
                except TimeoutError:
                    if progress.stalled:
                        for other in list(in_flight.values()):
                            other.cancel()
                except Exception:  # the failure was counted by on_done
                    break

    # -- pass 3: verify ---------------------------------------------------------------------------------------

    def verify(self, items: list[SyncItem], uploaded: Iterable[RemoteObject] = (), limit: int = 20) -> list[str]:
        """Pass 3: list again; return up to ``limit`` problems.

        A problem is a source file missing or of another size in S3, or an uploaded object whose ETag is not the one
        its PUT answered with (``uploaded``: full keys, key order).
        """
        problems: list[str] = []
        sent = iter(uploaded)
        expected = next(sent, None)
        for item in items:
            for local, remote in self.pairs(item, lambda _message: None):
                key = item.key + local.key
                while expected is not None and expected.key < key:
                    expected = next(sent, None)
                problem = _problem(key, local, remote, expected if expected and expected.key == key else None)
                if problem:
                    problems.append(problem)
                    if len(problems) >= limit:
                        return problems
        return problems

    # -- all three --------------------------------------------------------------------------------------------

    def run(
        self, items: list[SyncItem], *, dry_run: bool = False, label: str = "sync", results_path: str | None = None
    ) -> SyncSummary:
        """Sync ``items``; return the summary, or raise :class:`SyncError` unless everything is in S3 intact.

        ``results_path`` receives each uploaded key with the ETag S3 answered (JSON lines, appended per attempt in
        key order), for a verification elsewhere (the images shards' jobs run on cluster nodes; the DAG verifies on
        a worker).
        """
        started = time.monotonic()
        wall_started = time.time()
        summary = SyncSummary(dry_run=dry_run)
        with (
            tempfile.TemporaryFile("w+", encoding="utf-8", prefix="hortacloud-plan-") as spool,
            tempfile.TemporaryFile("w+", encoding="utf-8", prefix="hortacloud-etags-") as results,
        ):
            self.plan(items, spool, summary, dry_run)
            to_upload = summary.files_total - summary.files_skipped
            bytes_to_upload = summary.bytes_total - summary.bytes_skipped
            self.log.info(
                "%s: %s files (%.1f MiB) in the source, %s already in s3://%s, %s to upload (%.1f MiB)",
                label,
                f"{summary.files_total:,}",
                summary.bytes_total / MIB,
                f"{summary.files_skipped:,}",
                self.bucket,
                f"{to_upload:,}",
                bytes_to_upload / MIB,
            )
            for warning in summary.warnings:
                self.log.warning("%s", warning)
            if dry_run:
                if to_upload > self.dry_run_list_limit:
                    self.log.info("... and %s more (not listed)", f"{to_upload - self.dry_run_list_limit:,}")
                summary.seconds = time.monotonic() - started
                return summary
            summary.multipart_aborted = self.abort_stale_uploads(items, wall_started)
            failures: list[str] = []
            if to_upload:
                spool.seek(0)
                with Progress(
                    label, to_upload, bytes_to_upload, self.progress_interval, self.stall_timeout, self.log
                ) as progress:
                    try:
                        failures = self.upload(spool, results, progress, summary)
                    finally:
                        if results_path:  # also after a failure: what did go up is checked later all the same
                            results.seek(0)
                            _append_results(results_path, _sorted_results(results))
                    self.log.info("%s", progress.line())
            if failures:
                summary.seconds = time.monotonic() - started
                shown = "\n  ".join(failures[:20])
                raise SyncError(
                    f"{label}: {summary.files_failed:,} of {to_upload:,} uploads failed; nothing is reported as "
                    f"done. Re-run to upload only what is missing. First failures:\n  {shown}",
                    summary,
                    failures[:20],
                )
            results.seek(0)
            # When nothing was uploaded, the plan's listing already matched every file by size: that is the check.
            problems = self.verify(items, _sorted_results(results)) if to_upload else []
        summary.seconds = time.monotonic() - started
        if problems:
            shown = "\n  ".join(problems)
            raise SyncError(f"{label}: verification failed, S3 does not hold the source:\n  {shown}", summary, problems)
        summary.verified = True
        return summary


def _problem(key: str, local: LocalFile, remote: RemoteObject | None, sent: RemoteObject | None) -> str:
    """What is wrong with one key after a sync, or '' when S3 holds what was meant to be there."""
    if remote is None:
        return f"{key}: {local.size} bytes locally, missing in S3"
    if remote.size != local.size:
        return f"{key}: {local.size} bytes locally, {remote.size} bytes in S3"
    if sent is not None and sent.etag and remote.etag and sent.etag != remote.etag:
        return f"{key}: S3 holds other bytes than were sent (ETag {remote.etag}, the upload answered {sent.etag})"
    return ""


def _sorted_results(results: TextIO) -> Iterator[RemoteObject]:
    """The spooled ``[key, etag]`` lines (completion order) as RemoteObjects in key order."""

    def read() -> Iterator[RemoteObject]:
        for line in results:
            key, etag = json.loads(line)
            yield RemoteObject(key, 0, 0.0, etag)

    return key_ordered(read())


def _append_results(path: str, uploaded: Iterable[RemoteObject]) -> None:
    """Append one attempt's ``[key, etag]`` lines (key order) to a results file; a retry appends its own."""
    with open(path, "a", encoding="utf-8") as out:
        for item in uploaded:
            out.write(json.dumps([item.key, item.etag]) + "\n")


def read_results(path: str) -> Iterator[RemoteObject]:
    """A results file written by ``run(results_path=...)``: uploaded keys with their ETags, in key order."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            key, etag = json.loads(line)
            yield RemoteObject(key, 0, 0.0, etag)
