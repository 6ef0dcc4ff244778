"""The triggerer side of ``LsfJobOperator``: polls one LSF job with bjobs until it ends, without blocking the loop."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Hashable
from typing import Any, Literal

from airflow.triggers.base import BaseTrigger, TriggerEvent

from hortacloud.lsf import NEED_HISTORY, BjobsResult, JobWatch, LsfError, LsfHook


class BjobsBatch:
    """One ``bjobs`` call for every LSF trigger of this triggerer that polls through the same connection.

    LSF admins count calls, not jobs: a sample's dozen transfers polled one by one cost a dozen bjobs calls a
    minute. Triggers wake on the same wall-clock ticks (multiples of their poll interval); the first request of a
    tick opens a short window, and every job id asked for within it goes into one ``bjobs`` call whose answer, or
    failure, all of them share (Nextflow's LSF executor polls the same way). A caller that is cancelled while it
    waits leaves the call to the others.

    :param hook: a prepared ``LsfHook``; the batch calls ``astatuses`` on it.
    :param window: seconds the first request of a tick waits for the others.
    """

    def __init__(self, hook: LsfHook, window: float) -> None:
        self.hook = hook
        self.window = window
        self.calls = 0
        self._waiting: dict[str, list[asyncio.Future[BjobsResult]]] = {}
        self._flush: asyncio.Task[None] | None = None

    async def status(self, job_id: str) -> BjobsResult:
        """The answer of the next bjobs call, which will include ``job_id``."""
        future: asyncio.Future[BjobsResult] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, []).append(future)
        if self._flush is None:
            self._flush = asyncio.create_task(self._call_after_window())
        return await future

    async def _call_after_window(self) -> None:
        await asyncio.sleep(self.window)
        waiting, self._waiting, self._flush = self._waiting, {}, None
        futures = [future for group in waiting.values() for future in group if not future.done()]
        if not futures:
            return
        self.calls += 1
        try:
            result = await self.hook.astatuses(sorted(waiting, key=int))
        except Exception as err:
            for future in futures:
                if not future.done():
                    future.set_exception(err)
        else:
            for future in futures:
                if not future.done():
                    future.set_result(result)


# One set of batches per event loop (the triggerer runs one; tests run many in turn).
_BATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, BjobsBatch]] = weakref.WeakKeyDictionary()


def bjobs_batch(key: Hashable, hook: LsfHook, window: float) -> BjobsBatch:
    """The batch of this event loop for ``key`` (connection, profile, format, timeout, interval), made on first use."""
    batches = _BATCHES.setdefault(asyncio.get_running_loop(), {})
    if key not in batches:
        batches[key] = BjobsBatch(hook, window)
    return batches[key]


def until_next_tick(interval: float, now: float) -> float:
    """Seconds to the next wall-clock multiple of ``interval``, so triggers with one interval poll together."""
    return interval - now % interval


class LsfJobTrigger(BaseTrigger):
    """Poll an LSF job (``bjobs -a -json -o ...``) and fire exactly one event when it ends.

    The polls of every trigger in one triggerer that share a connection are batched into one bjobs call per tick
    (``BjobsBatch``).

    The event payload is ``{"status": "success"|"failed"|"error", "job_id", "job_name", "stat", "exit_code",
    "exit_reason", "message"}``. Transient failures are retried with backoff; after ``max_poll_failures`` in a row
    the trigger fires ``error`` (the job is left alone: a task retry re-attaches to it by name). A job missing from
    bjobs is given ``not_found_grace`` seconds after ``submitted_at``, then bhist is asked.

    ``on_kill`` (Airflow 3.3: the user marked the task failed or cleared it) runs ``bkill`` when ``cancel_on_kill``;
    a triggerer restart or a cancelled ``run()`` never kills the job.

    :param job_id: the LSF job id.
    :param job_name: its ``-J`` name; a record under another name means the id was reused.
    :param submitted_at: epoch seconds of submission (start of the not-found grace period).
    :param lsf_conn_id: see ``LsfHook``.
    :param profile: see ``LsfHook``.
    :param poll_interval: seconds between bjobs calls.
    :param first_poll_after: seconds to wait before the first bjobs call. An event fired within seconds of the
        deferral can reach the scheduler before the executor's report that the deferring worker exited; the
        scheduler then takes that stale report for the resumed try and fails it (apache/airflow#66374, #72716:
        still open in 3.3 for a try already re-queued or running). Waiting lets the report land first; a job that
        ends sooner is seen at the first poll.
    :param not_found_grace: seconds after submission during which "not found" is not yet alarming.
    :param max_poll_failures: consecutive failed polls tolerated.
    :param command_timeout: seconds each LSF command may take.
    :param output_format: ``json`` or ``text``.
    :param bhist_files: ``bhist -n``.
    :param cancel_on_kill: whether ``on_kill`` runs bkill.
    """

    def __init__(
        self,
        *,
        job_id: str,
        job_name: str,
        submitted_at: float,
        lsf_conn_id: str | None = LsfHook.default_conn_name,
        profile: str = "",
        poll_interval: float = 60.0,
        first_poll_after: float = 10.0,
        not_found_grace: float = 120.0,
        max_poll_failures: int = 10,
        command_timeout: float = 120.0,
        output_format: Literal["json", "text"] = "json",
        bhist_files: int = 2,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.job_name = job_name
        self.submitted_at = submitted_at
        self.lsf_conn_id = lsf_conn_id
        self.profile = profile
        self.poll_interval = poll_interval
        self.first_poll_after = first_poll_after
        self.not_found_grace = not_found_grace
        self.max_poll_failures = max_poll_failures
        self.command_timeout = command_timeout
        self.output_format = output_format
        self.bhist_files = bhist_files
        self.cancel_on_kill = cancel_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "job_name": self.job_name,
                "submitted_at": self.submitted_at,
                "lsf_conn_id": self.lsf_conn_id,
                "profile": self.profile,
                "poll_interval": self.poll_interval,
                "first_poll_after": self.first_poll_after,
                "not_found_grace": self.not_found_grace,
                "max_poll_failures": self.max_poll_failures,
                "command_timeout": self.command_timeout,
                "output_format": self.output_format,
                "bhist_files": self.bhist_files,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    def _hook(self, retries: int = 0) -> LsfHook:
        # Polls are retried by the watch (backoff, bounded failures); a single call is not retried inside the hook.
        return LsfHook(
            self.lsf_conn_id,
            profile=self.profile,
            command_timeout=self.command_timeout,
            retries=retries,
            retry_delay=min(self.poll_interval, 5.0),
            output_format=self.output_format,
            bhist_files=self.bhist_files,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watch = JobWatch(
            job_id=self.job_id,
            job_name=self.job_name,
            submitted_at=self.submitted_at,
            not_found_grace=self.not_found_grace,
            max_poll_failures=self.max_poll_failures,
            log=self.log,
        )
        try:
            hook = self._hook()
            await hook.aprepare()
            batch = bjobs_batch(
                (self.lsf_conn_id, self.profile, self.output_format, self.command_timeout, self.poll_interval),
                hook,
                window=min(0.5, self.poll_interval / 4),
            )
            self.log.info("Following LSF job %s (%s) every %gs", self.job_id, self.job_name, self.poll_interval)
            # The job was just submitted; an event fired within seconds of the deferral can race the executor's
            # report of the deferring worker (see first_poll_after).
            await asyncio.sleep(self.first_poll_after)
            while True:
                outcome: dict[str, Any] | str | None
                try:
                    outcome = watch.observe(await batch.status(self.job_id), time.time())
                    if outcome == NEED_HISTORY:
                        outcome = watch.observe_history(await hook.ahistory(self.job_id))
                except LsfError as err:
                    outcome = watch.observe_failure(err)
                if isinstance(outcome, dict):
                    yield TriggerEvent(outcome)
                    return
                if watch.failures:
                    await asyncio.sleep(watch.backoff(self.poll_interval))
                else:
                    await asyncio.sleep(until_next_tick(self.poll_interval, time.time()))
        except asyncio.CancelledError:
            # Triggerer shutdown, reassignment or timeout: the job keeps running and is not killed here.
            raise
        except Exception as err:
            self.log.exception("Following LSF job %s failed", self.job_id)
            yield TriggerEvent(watch.payload("error", f"Following LSF job {self.job_id} failed: {err!r}"))

    async def on_kill(self) -> None:
        """The user killed the deferred task (Airflow 3.3): bkill the job; a finished or unknown job is fine."""
        if not self.cancel_on_kill:
            self.log.info("Task killed; LSF job %s left running (cancel_on_kill is off)", self.job_id)
            return
        hook = self._hook(retries=2)
        await hook.aprepare()
        outcome = await hook.akill(self.job_id)
        self.log.info("Task killed: bkill %s -> %s", self.job_id, outcome)
