"""Progress of the uploads: counters updated from CRT threads, a line in the log at a steady pace, stall detection."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from hortacloud.s3sync.remote import MIB


class Progress:
    """Counts files and bytes; a reporter thread logs a line every ``interval`` seconds.

    When no byte has been sent for ``stall_timeout`` seconds while files remain, ``stalled`` turns true (and stays
    so): the engine then cancels what is in flight and fails the sync, naming the stall.
    """

    def __init__(
        self, label: str, files: int, total_bytes: int, interval: float, stall_timeout: float, logger: logging.Logger
    ) -> None:
        self.label = label
        self.files = files
        self.total_bytes = total_bytes
        self.interval = interval
        self.stall_timeout = stall_timeout
        self.log = logger
        self.done_files = 0
        self.sent_bytes = 0
        self.failed = 0
        self.stalled = False
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self._last_progress = self.started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report_loop, name="s3sync-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sent(self, count: int) -> None:
        """``count`` more bytes went out (a CRT progress callback)."""
        with self.lock:
            self.sent_bytes += count
            self._last_progress = time.monotonic()

    def finished(self, failed: bool) -> None:
        """One file is done, well or not."""
        with self.lock:
            self.done_files += 1
            self.failed += failed
            self._last_progress = time.monotonic()

    def line(self) -> str:
        """Files, MiB, rate and ETA so far, as one log line."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        with self.lock:
            files, sent, failed = self.done_files, min(self.sent_bytes, self.total_bytes), self.failed
        rate = sent / elapsed
        eta = (self.total_bytes - sent) / rate if rate > 0 else float("inf")
        eta_text = str(dt.timedelta(seconds=round(eta))) if eta != float("inf") else "unknown"
        return (
            f"{self.label}: {files:,}/{self.files:,} files, {sent / MIB:,.1f}/{self.total_bytes / MIB:,.1f} MiB, "
            f"{rate / MIB:,.1f} MiB/s, {files / elapsed:,.0f} files/s, ETA {eta_text}"
            + (f", {failed:,} failed" if failed else "")
        )

    def _report_loop(self) -> None:
        tick = min(self.interval, 1.0)
        next_line = time.monotonic() + self.interval
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self.lock:
                idle = now - self._last_progress
                remaining = self.done_files < self.files
            if remaining and idle > self.stall_timeout and not self.stalled:
                self.stalled = True
                self.log.error("%s: no upload progress for %.0fs; cancelling what is in flight", self.label, idle)
            if now >= next_line:
                self.log.info("%s", self.line())
                next_line = now + self.interval
